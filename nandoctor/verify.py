"""Diagnoses verified by experiment: retrain with each top cause's fix and re-rank.

A cause whose fix restores health rises; one whose fix changes nothing falls. The baseline is
retrained under the same step budget, so a fix is compared with the unpatched config on equal
terms (a failure that happens late in the original run is inside the budget by construction).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nandoctor.diagnose.finding import Diagnosis
from nandoctor.diagnose.rank import order_below_roots
from nandoctor.errors import RunError
from nandoctor.experiment import budget_for, raw_config, run_many
from nandoctor.telemetry.reader import Run

RESTORED_BONUS = 0.3
IMPROVED_BONUS = 0.1
NO_CHANGE_FACTOR = 0.5


def _improved(base: dict, new: dict) -> bool:
    if base.get("first_nonfinite") and not new.get("first_nonfinite"):
        return True
    bl, nl = base.get("final_loss"), new.get("final_loss")
    if bl is not None and nl is not None and nl < 0.8 * bl:
        return True
    bm, nm = base.get("metric"), new.get("metric")
    return bm is not None and nm is not None and nm > bm + 0.05


def verify(run: Run, diagnosis: Diagnosis, top: int = 3) -> Diagnosis:
    if run.config is None or not (run.path / "config.yaml").exists():
        raise RunError("cannot verify: the run has no config.yaml to retrain", file=str(run.path))
    candidates = [(c, next(f for f in c.fixes if f.patch)) for c in diagnosis.causes
                  if any(f.patch for f in c.fixes)][:top]
    if not candidates:
        return diagnosis
    raw = raw_config(run.path)
    budget = budget_for(run)
    jobs = [(raw, None, budget, None)] + [(raw, fix.patch, budget, None) for _, fix in candidates]
    results = run_many(jobs)
    base = results[0]
    for (cause, fix), res in zip(candidates, results[1:], strict=True):
        if "error" in res:
            outcome = f"could not retrain: {res['error']}"
        elif res["healthy"] and not base.get("healthy"):
            cause.score = min(1.0, cause.score + RESTORED_BONUS)
            outcome = "restored health"
        elif _improved(base, res):
            cause.score = min(1.0, cause.score + IMPROVED_BONUS)
            outcome = "improved but not healthy"
        else:
            cause.score *= NO_CHANGE_FACTOR
            outcome = "changed nothing"
        line = (f"verified by experiment: {fix.summary} -> {outcome} "
                f"({_describe(res)} vs unpatched {_describe(base)}, {budget} steps, same seed)")
        cause.evidence.append(line)
        diagnosis.verification.append({"id": cause.id, "patch": fix.patch, "outcome": outcome, "summary": line,
                                       "patched": _public(res), "baseline": _public(base)})
    failed_roots = {v["id"] for v in diagnosis.verification if v["outcome"] == "changed nothing"}
    for cause in diagnosis.causes:  # the experiment overrules a root whose fix did nothing
        if cause.explained_by in failed_roots:
            cause.explained_by = None
    diagnosis.causes = order_below_roots(diagnosis.causes)
    for res in results:
        if res.get("run"):
            shutil.rmtree(Path(res["run"]).parent, ignore_errors=True)
    return diagnosis


def _describe(res: dict) -> str:
    if "error" in res:
        return "error"
    loss = res.get("final_loss")
    text = res["status"] + (f", loss {loss:.3g}" if loss is not None else "")
    return text + (f", metric {res['metric']:.3g}" if res.get("metric") is not None else "")


def _public(res: dict) -> dict:
    return {k: res.get(k) for k in ("status", "steps", "healthy", "final_loss", "metric", "seconds", "verdict")}
