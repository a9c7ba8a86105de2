"""The diagnoser: facts from a recorded run -> every rule -> ranked root causes with evidence and fixes."""

from __future__ import annotations

from pathlib import Path

from nandoctor.diagnose.facts import Facts, build_facts
from nandoctor.diagnose.finding import Diagnosis, Finding, Fix
from nandoctor.diagnose.helpers import g
from nandoctor.diagnose.rank import rank
from nandoctor.diagnose.rules import BY_ID, RULES
from nandoctor.telemetry.reader import Run, load_run

__all__ = ["BY_ID", "RULES", "Diagnosis", "Finding", "Fix", "diagnose", "diagnose_dir"]


def diagnose(run: Run) -> Diagnosis:
    facts = build_facts(run)
    findings = [f for f in (rule.check(facts) for rule in RULES) if f is not None]
    causes = rank(findings)
    healthy = not any(c.severity == "error" for c in causes)
    return Diagnosis(run=str(run.path), status=run.status, healthy=healthy, verdict=verdict(facts, causes, healthy),
                     first_nonfinite=run.first_nonfinite, causes=causes)


def diagnose_dir(path: str | Path) -> Diagnosis:
    return diagnose(load_run(path))


def verdict(f: Facts, causes: list[Finding], healthy: bool) -> str:
    metric = "accuracy" if f.task == "classification" else "R^2"
    progress = f"loss {g(f.initial_loss)} -> {g(f.final_loss)}"
    if f.final_metric == f.final_metric:
        progress += f", {metric} {f.final_metric:.3g}"
    top = causes[0] if causes else None
    if healthy:
        note = f" ({len(causes)} note{'s' if len(causes) != 1 else ''})" if causes else ""
        return f"healthy{' so far' if f.status == 'running' else ''}: {progress}{note}"
    if f.diverged:
        fn = f.first_nonfinite or {}
        where = f"step {fn.get('step')}" + (f", phase {fn.get('phase')}" if fn.get("phase") else "")
        return f"diverged at {where}; most likely cause: {top.title.lower()} ({top.id})"
    return f"did not learn ({progress}); most likely cause: {top.title.lower()} ({top.id})"
