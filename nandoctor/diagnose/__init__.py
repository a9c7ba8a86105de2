"""The diagnoser: facts from a recorded run -> every rule -> ranked root causes with evidence and fixes."""

from __future__ import annotations

from pathlib import Path

from nandoctor.diagnose.facts import Facts, build_facts
from nandoctor.diagnose.finding import Diagnosis, Finding, Fix
from nandoctor.diagnose.helpers import g
from nandoctor.diagnose.rank import rank
from nandoctor.diagnose.rules import BY_ID, RULES
from nandoctor.errors import RunError
from nandoctor.telemetry.reader import Run, load_run

__all__ = ["BY_ID", "RULES", "Diagnosis", "Finding", "Fix", "diagnose", "diagnose_dir"]


def diagnose(run: Run) -> Diagnosis:
    root, ranks = run.path, merged_ranks(run)
    if ranks is not None:
        if ranks["rank"]:  # trouble started on another rank than 0: its record is the one to diagnose
            run = load_run(ranks["path"])
        run.meta["first_nonfinite"] = ranks["first_nonfinite"]
        run.status = ranks["status"]
    try:
        facts = build_facts(run)
        findings = [f for f in (rule.check(facts) for rule in RULES) if f is not None]
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, ArithmeticError) as exc:
        # a run store is outside input: well-formed SQLite holding values of the wrong kind
        raise RunError(f"run store holds values of an unexpected kind ({type(exc).__name__}: {exc})",
                       file=str(run.path)) from None
    causes = rank(findings)
    healthy = not any(c.severity == "error" for c in causes)
    text = verdict(facts, causes, healthy)
    if ranks is not None and ranks["rank"] is not None:
        text += f" (on rank {ranks['rank']} of {ranks['world_size']})"
    per_rank = None if ranks is None else [{k: r[k] for k in ("rank", "path", "status", "steps", "first_nonfinite")}
                                           for r in ranks["ranks"]]
    return Diagnosis(run=str(root), status=run.status, healthy=healthy, verdict=text,
                     first_nonfinite=run.first_nonfinite, causes=causes, ranks=per_rank)


def merged_ranks(run: Run) -> dict | None:
    """A distributed run (PyTorch DDP: rank k > 0 recorded into <run>/rank<k>/): all ranks read together,
    with the rank and step where trouble started. nandoctor.torch.ddp needs no PyTorch."""
    if int(run.meta.get("world_size") or 1) <= 1:
        return None
    from nandoctor.torch.ddp import merge_ranks

    return merge_ranks(run.path)


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
