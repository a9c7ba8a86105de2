"""Diagnoser accuracy on the development corpus (`bench/corpus/dev_corpus.json`, see bench/corpus.py).

Every corpus case (a healthy base with one injected fault, labelled with the injected cause) and every
healthy base is trained and diagnosed with `nandoctor.diagnose`. A case counts as correct (top-1) when
the diagnosis is unhealthy and its first-ranked cause is the label. A healthy base is a false alarm
when any cause reaches severity `error`. `quick` runs a deterministic subset (a few cases per cause
and a third of the bases).

Besides the tables, `bench/corpus/last_results.json` gets, for every misdiagnosed case and every false
alarm, the diagnosis' top 3 (id, severity, score) and the facts the rules read
(`nandoctor.diagnose.facts.build_facts`: per-layer update_ratio, grad_norm, saturated, dead, init_std ...;
input_abs_max, input_std_max; diverged, stalled, progress, final_metric, chance_metric, first_nonfinite
...), so thresholds can be calibrated against them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.corpus import CAUSES, CORPUS_DIR, CORPUS_FILE, Pool, case_config, load

RESULTS_FILE = CORPUS_DIR / "last_results.json"
QUICK_PER_CAUSE = 5
QUICK_BASE_EVERY = 3


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/Inf -> None, NumPy scalars -> Python, floats to 4 significant digits."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str | bytes):
        try:
            x = x.item()
        except (TypeError, ValueError):
            return str(x)
    if isinstance(x, bool) or x is None or isinstance(x, str | int):
        return x
    if isinstance(x, float):
        return float(f"{x:.4g}") if math.isfinite(x) else None
    return str(x)


def facts_summary(facts) -> dict:
    """Every scalar fact of the run and of each layer (whatever fields facts.py has today)."""
    skip = {"run", "cfg", "layers"}
    out = {f.name: _clean(getattr(facts, f.name)) for f in dataclasses.fields(facts) if f.name not in skip}
    out["layers"] = [{f.name: _clean(getattr(lf, f.name)) for f in dataclasses.fields(lf)}
                     for lf in getattr(facts, "layers", [])]
    return out


def diagnose_job(job: tuple[str, str, dict]) -> dict:
    """Train one config in a temporary run directory, diagnose it, return the diagnosis in brief + facts."""
    import shutil
    import tempfile
    import traceback

    from nandoctor.config import from_mapping
    from nandoctor.diagnose import diagnose
    from nandoctor.diagnose.facts import build_facts
    from nandoctor.errors import NandoctorError
    from nandoctor.telemetry.reader import load_run
    from nandoctor.training import run_training

    key, kind, raw = job
    tmp = Path(tempfile.mkdtemp(prefix="nd-diagacc-"))
    t0 = time.perf_counter()
    try:
        cfg = from_mapping(raw, default_name=key)
        _, run_dir, _ = run_training(cfg, None, tmp / "run")
        t1 = time.perf_counter()
        run = load_run(run_dir)
        d = diagnose(run)
        t2 = time.perf_counter()
        try:
            facts = facts_summary(build_facts(run))
        except Exception as exc:  # facts are for calibration only: never lose the verdict over them
            facts = {"error": repr(exc)}
        return {"key": key, "kind": kind, "status": d.status, "healthy": d.healthy,
                "top": [[c.id, c.severity, round(float(c.score), 3)] for c in d.causes[:3]],
                "errors": [c.id for c in d.causes if c.severity == "error"],
                "first_nonfinite": _clean(d.first_nonfinite), "facts": facts,
                "train_s": round(t1 - t0, 3), "diagnose_s": round(t2 - t1, 3)}
    except NandoctorError as exc:
        return {"key": key, "kind": kind, "error": exc.render()}
    except Exception:
        return {"key": key, "kind": kind, "error": traceback.format_exc(limit=6)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _select(corpus: dict, quick: bool) -> tuple[list[dict], list[dict]]:
    cases, bases = corpus["cases"], corpus["bases"]
    if not quick:
        return cases, bases
    by_label: dict[str, list[dict]] = defaultdict(list)
    for c in cases:
        by_label[c["label"]].append(c)
    picked = []
    for group in by_label.values():  # spread over the group: variants and severities were drawn in order
        step = max(1, len(group) // QUICK_PER_CAUSE)
        picked += group[::step][:QUICK_PER_CAUSE]
    return picked, bases[::QUICK_BASE_EVERY]


def evaluate(quick: bool = False, corpus_file: Path = CORPUS_FILE, workers: int | None = None) -> dict:
    """Train and diagnose the (subset of the) corpus; returns everything the tables and the JSON need."""
    corpus = load(corpus_file)
    cases, bases = _select(corpus, quick)
    jobs = [(c["id"], "case", case_config(corpus, c)) for c in cases]
    jobs += [(b["id"], "base", b["raw"]) for b in bases]
    t0 = time.perf_counter()
    with Pool(workers) as pool:
        results = pool.map(diagnose_job, jobs)
    wall = time.perf_counter() - t0
    by_key = {r["key"]: r for r in results}
    return {"corpus": corpus, "cases": cases, "bases": bases, "results": by_key, "wall": wall, "quick": quick}


def predicted(r: dict) -> str:
    """What the diagnosis says in one word: the top cause, 'healthy', or 'error'."""
    if r.get("error"):
        return "error"
    if r["healthy"] or not r["top"]:
        return "healthy"
    return r["top"][0][0]


def summarize(ev: dict) -> dict:
    per: dict[str, dict[str, Any]] = {c: {"cases": 0, "correct": 0, "top3": 0, "confused": Counter()} for c in CAUSES}
    mis = []
    for case in ev["cases"]:
        r = ev["results"][case["id"]]
        p = predicted(r)
        s = per.setdefault(case["label"], {"cases": 0, "correct": 0, "top3": 0, "confused": Counter()})
        s["cases"] += 1
        if p == case["label"]:
            s["correct"] += 1
        else:
            s["confused"][p] += 1
            mis.append((case, r))
        if not r.get("error") and case["label"] in [t[0] for t in r["top"]]:
            s["top3"] += 1
    alarms, warned = [], 0
    for base in ev["bases"]:
        r = ev["results"][base["id"]]
        if r.get("error") or not r["healthy"]:
            alarms.append((base, r))
        elif r["top"]:
            warned += 1
    return {"per": per, "mis": mis, "alarms": alarms, "warned": warned}


def write_results(ev: dict, sm: dict, path: Path = RESULTS_FILE) -> None:
    corpus = ev["corpus"]
    per = {c: {"cases": s["cases"], "correct": s["correct"],
               "accuracy": round(s["correct"] / s["cases"], 3) if s["cases"] else None,
               "in_top3": s["top3"], "confused_with": dict(s["confused"].most_common())}
           for c, s in sm["per"].items()}
    n = sum(s["cases"] for s in sm["per"].values())
    correct = sum(s["correct"] for s in sm["per"].values())

    def config_brief(raw: dict) -> dict:
        layers = raw["model"]["layers"]
        return {"layers": [f"{la['units']} {la.get('activation', 'linear')}" for la in layers],
                "loss": raw["loss"], "optimizer": raw["optimizer"], "training": raw["training"],
                "init": raw["model"].get("init")}

    out = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": ev["quick"],
        "corpus": {"file": str(CORPUS_FILE.name), "seed": corpus["seed"], "cases": len(corpus["cases"]),
                   "bases": len(corpus["bases"])},
        "wall_seconds": round(ev["wall"], 1),
        "overall": {"cases": n, "correct": correct, "accuracy": round(correct / n, 3) if n else None},
        "per_cause": per,
        "false_alarms": {"bases": len(ev["bases"]), "count": len(sm["alarms"]), "warnings_only": sm["warned"]},
        "false_alarm_items": [{"base": b["id"], "data": b["data_name"], "config": config_brief(b["raw"]),
                               "outcome": b["outcome"], "top": r.get("top"), "error": r.get("error"),
                               "facts": r.get("facts")} for b, r in sm["alarms"]],
        "misdiagnosed": [{"case": c["id"], "base": c["base"], "label": c["label"], "variant": c["variant"],
                          "severity": c["severity"], "param": c.get("param"), "data": c["data"],
                          "fault": c["fault"], "predicted": predicted(r), "healthy": r.get("healthy"),
                          "status": r.get("status"), "top": r.get("top"), "error": r.get("error"),
                          "outcome": c["outcome"], "facts": r.get("facts")} for c, r in sm["mis"]],
        "all": {k: {"predicted": predicted(r), "top": r.get("top")} for k, r in ev["results"].items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dumps(_clean(out)), encoding="utf-8")


def _dumps(out: dict) -> str:
    """JSON with one misdiagnosed case / false alarm / result per line (greppable, compact)."""
    compact = {"separators": (",", ":")}
    lines = ["{"]
    for n, (key, value) in enumerate(out.items()):
        end = "," if n < len(out) - 1 else ""
        if isinstance(value, list) and value:
            lines.append(f" {json.dumps(key)}: [")
            lines += [f"  {json.dumps(x, **compact)}{',' if i < len(value) - 1 else ''}" for i, x in enumerate(value)]
            lines.append(f" ]{end}")
        elif isinstance(value, dict) and key in ("all", "per_cause") and value:
            lines.append(f" {json.dumps(key)}: {{")
            items = list(value.items())
            lines += [f"  {json.dumps(k)}: {json.dumps(v, **compact)}{',' if i < len(items) - 1 else ''}"
                      for i, (k, v) in enumerate(items)]
            lines.append(f" }}{end}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, **compact)}{end}")
    return "\n".join([*lines, "}"]) + "\n"


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f} %" if b else "-"


def tables(ev: dict, sm: dict) -> list[Table]:
    t = Table(title=f"Diagnoser top-1 accuracy on the development corpus{' (quick subset)' if ev['quick'] else ''}",
              title_justify="left")
    for col in ("cause", "cases", "correct", "accuracy", "in top 3", "confused with (most)"):
        t.add_column(col, justify="left" if col in ("cause", "confused with (most)") else "right")
    n = correct = top3 = 0
    accs = []
    for cause in CAUSES:
        s = sm["per"][cause]
        n, correct, top3 = n + s["cases"], correct + s["correct"], top3 + s["top3"]
        if s["cases"]:
            accs.append(s["correct"] / s["cases"])
        conf = ", ".join(f"{k} {v}" for k, v in s["confused"].most_common(2)) or "-"
        acc = s["correct"] / s["cases"] if s["cases"] else None
        color = "" if acc is None else "green" if acc >= 0.8 else "yellow" if acc >= 0.5 else "red"
        t.add_row(cause, str(s["cases"]), str(s["correct"]),
                  f"[{color}]{_pct(s['correct'], s['cases'])}[/]" if color else "-",
                  _pct(s["top3"], s["cases"]), conf)
    macro = sum(accs) / len(accs) if accs else 0.0
    t.add_section()
    t.add_row("[bold]overall[/]", str(n), str(correct), f"[bold]{_pct(correct, n)}[/]", _pct(top3, n),
              f"macro average over causes {100 * macro:.0f} %")
    corpus = ev["corpus"]
    t.caption = (f"corpus: {len(corpus['cases'])} cases on {len(corpus['bases'])} healthy bases "
                 f"(seed {corpus['seed']}, bench/corpus/{CORPUS_FILE.name}); correct = unhealthy and top cause "
                 f"== injected cause; 'healthy' = missed; details of misses in bench/corpus/{RESULTS_FILE.name}")
    t.caption_justify = "left"

    f = Table(title="False alarms on healthy bases (any cause at severity error)", title_justify="left")
    for col in ("healthy bases", "false alarms", "rate", "warnings only", "alarms (base: top cause)", "wall time"):
        f.add_column(col, justify="left" if col.startswith("alarms") else "right")
    nb = len(ev["bases"])
    na = len(sm["alarms"])
    listing = ", ".join(f"{b['id']} {b['data_name']}: {predicted(r)}" for b, r in sm["alarms"][:6])
    if na > 6:
        listing += f", ... (+{na - 6})"
    total_runs = len(ev["results"])
    f.add_row(str(nb), f"[{'green' if na == 0 else 'red'}]{na}[/]", _pct(na, nb), str(sm["warned"]),
              listing or "-", f"{ev['wall']:.0f} s for {total_runs} runs")
    return [t, f]


def run(quick: bool) -> list[Table]:
    ev = evaluate(quick)
    sm = summarize(ev)
    write_results(ev, sm)
    return tables(ev, sm)


if __name__ == "__main__":
    import sys

    from rich.console import Console

    console = Console(width=150)
    for table in run("--quick" in sys.argv[1:]):
        console.print(table)
