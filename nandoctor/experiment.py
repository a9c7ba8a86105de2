"""Retrain a run's config with a patch under a bounded step budget: the experiment behind
`diagnose --verify`, `fix --verify` and `check`.

Experiments run in worker processes (one per core); each worker pins BLAS to one thread so
parallel runs do not oversubscribe the cores. Results are plain dicts, so they cross processes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

MIN_BUDGET = 200
MAX_BUDGET = 3000


def budget_for(run) -> int:
    """Steps an experiment gets: enough to reach the original failure again (twice its step, so a
    fix that only delays it does not pass), never more than the original run planned."""
    total = int(run.meta.get("total_steps") or 0) or MAX_BUDGET
    fn = run.first_nonfinite
    want = max(MIN_BUDGET, 2 * int(fn["step"])) if fn and fn.get("step") else MAX_BUDGET
    return max(1, min(total, want))


def _worker_init() -> None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def train_and_diagnose(raw: dict, patch: dict | None, max_steps: int | None, out_dir: str | None,
                       config_file: str | None = None) -> dict[str, Any]:
    """Train raw config (+ patch) for at most max_steps and diagnose it. Runs in a worker."""
    from nandoctor.config import from_mapping
    from nandoctor.config.paths import apply_all
    from nandoctor.diagnose import diagnose_dir
    from nandoctor.errors import NandoctorError
    from nandoctor.training import run_training

    patched = apply_all(raw, patch or {})
    if max_steps:
        patched = apply_all(patched, {"training.max_steps": max_steps})
    try:
        cfg = from_mapping(patched, file=config_file, default_name=Path(config_file or "run").stem)
        out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="nandoctor-exp-")) / "run"
        result, run_dir, _ = run_training(cfg, Path(config_file) if config_file else None, out)
        d = diagnose_dir(run_dir)
    except NandoctorError as exc:
        return {"error": exc.render()}
    return summarize(d, result.seconds)


def summarize(d, seconds: float | None = None) -> dict[str, Any]:
    """What a before/after comparison needs from a diagnosed run, as plain data."""
    from nandoctor.telemetry.reader import load_run

    run = load_run(d.run)
    final = next((e["train_loss"] for e in reversed(run.epochs) if _finite(e["train_loss"])), None)
    metric = next((m for e in reversed(run.epochs) for m in (e["val_metric"], e["train_metric"]) if _finite(m)),
                  None)
    top = d.causes[0] if d.causes else None
    fix = next((f for f in top.fixes if f.patch), None) if top else None
    return {"run": d.run, "status": d.status, "steps": len(run.steps["step"]), "healthy": d.healthy,
            "verdict": d.verdict, "final_loss": final, "metric": metric,
            "seconds": seconds if seconds is not None else run.meta.get("ended", 0) - run.meta.get("started", 0),
            "top": top.id if top else None, "top_severity": top.severity if top else None,
            "fix": fix.summary if fix else None, "first_nonfinite": d.first_nonfinite}


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def run_many(jobs: list[tuple], workers: int | None = None) -> list[dict]:
    """Run train_and_diagnose(*job) for each job, in parallel across the cores, in order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        return [train_and_diagnose(*job) for job in jobs]
    # spawn, not fork: the worker sets its BLAS thread count before it first imports NumPy
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(train_and_diagnose, *zip(*jobs, strict=True)))


def raw_config(run_dir: Path) -> dict:
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
