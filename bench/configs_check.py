"""Diagnoses of the shipped configs: top-1 with and without `--verify`, the repaired rate, wall times.

Every config in configs/ is trained once (in parallel). For each sick one (`expect.healthy: false`)
the top cause is compared with `expect.causes`, then `verify` retrains the top candidates' fixes and
re-ranks, and the top fix is applied and retrained to see whether the patched config comes out
healthy (the repaired rate). Healthy configs count as correct when diagnosed healthy.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.table import Table

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def run(quick: bool) -> Table:
    from nandoctor import checking
    from nandoctor.config.load import read_yaml
    from nandoctor.diagnose import diagnose
    from nandoctor.experiment import run_many
    from nandoctor.telemetry.reader import load_run
    from nandoctor.verify import verify

    files = sorted(CONFIGS.glob("*.yaml"))
    if quick:
        files = [f for f in files if "mnist" not in f.name]
    with tempfile.TemporaryDirectory(prefix="nandoctor-bench-") as tmp:
        t0 = time.perf_counter()
        results = checking.run_check(files, Path(tmp) / "runs")
        t_check = time.perf_counter() - t0
        sick = [r for r in results if not r.expected_healthy]
        healthy = [r for r in results if r.expected_healthy]
        plain = sum(r.passed for r in sick)
        t0 = time.perf_counter()
        verified, fixes = 0, []
        for r in sick:
            run = load_run(r.outcome["run"])
            d = verify(run, diagnose(run))
            top = d.causes[0].id if d.causes else None
            verified += (not d.healthy) and (not r.expected_causes or top in r.expected_causes)
            fix = next((f for c in d.causes if c.severity == "error" for f in c.fixes if f.patch), None)
            fixes.append((read_yaml(Path(r.config)), fix.patch if fix else None, None, None, r.config))
        t_verify = time.perf_counter() - t0
        t0 = time.perf_counter()
        repaired = sum(bool(o.get("healthy")) for o in run_many([j for j in fixes if j[1]]))
        t_fix = time.perf_counter() - t0
    n = len(sick)
    table = Table(title="Shipped configs: diagnosis accuracy, verification and repair", title_justify="left")
    for col in ("measure", "value", "wall time"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    table.add_row("configs (sick / healthy)", f"{n} / {len(healthy)}", f"{t_check:.1f} s train + diagnose all")
    table.add_row("healthy configs diagnosed healthy", f"{sum(r.passed for r in healthy)}/{len(healthy)}", "")
    table.add_row("top-1 on sick configs, heuristic", f"{plain}/{n} ({plain / max(n, 1):.0%})", "")
    table.add_row("top-1 on sick configs, with --verify", f"{verified}/{n} ({verified / max(n, 1):.0%})",
                  f"{t_verify:.1f} s ({t_verify / max(n, 1):.1f} s per config)")
    table.add_row("repaired (top fix applied, retrained healthy)", f"{repaired}/{n} ({repaired / max(n, 1):.0%})",
                  f"{t_fix:.1f} s")
    return table
