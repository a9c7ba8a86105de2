"""Distributed runs: where each rank records, and reading the ranks together. Needs no PyTorch.

Layout: rank 0 records into the run directory itself and rank k > 0 into `<run_dir>/rank<k>/`, each
a complete run directory (its own telemetry.sqlite). So `load_run(run_dir)` reads rank 0 unchanged
and every rank can be diagnosed on its own; rank 0's meta says `world_size`, and every rank's meta
says its `rank`. `merge_ranks` reads them all and names the rank and step where trouble started.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from nandoctor.errors import RunError
from nandoctor.telemetry.reader import load_run
from nandoctor.telemetry.store import DB_NAME

RANK_DIR = re.compile(r"^rank(\d+)$")
# execution order inside one step: the earliest phase is where the trouble started
PHASES = {"data": 0, "forward": 1, "loss": 2, "backward": 3, "update": 4}
STATUS_ORDER = ("diverged", "interrupted", "running", "completed")  # the merged status is the first that occurs


def distributed() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed process group, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:
        pass
    return 0, 1


def rank_dir(run_dir: str | Path, rank: int) -> Path:
    """Where `rank` records: the run directory for rank 0, `rank<k>/` inside it otherwise."""
    run_dir = Path(run_dir)
    return run_dir if rank == 0 else run_dir / f"rank{rank}"


def rank_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(rank, directory) of every rank that recorded, rank 0 first."""
    run_dir = Path(run_dir)
    found = [(0, run_dir)] if (run_dir / DB_NAME).exists() else []
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            m = RANK_DIR.match(child.name)
            if m and child.is_dir() and (child / DB_NAME).exists():
                found.append((int(m.group(1)), child))
    return sorted(found)


def trouble_key(event: dict, rank: int) -> tuple:
    """Sort key of a first-non-finite event: earliest step, then earliest phase in the step, then a
    producer before a propagator (a rank that received NaN gradients from the all-reduce only passed
    them on), then the lowest rank."""
    step = event.get("step")
    return (step if isinstance(step, int) else math.inf, PHASES.get(str(event.get("phase")), 5),
            0 if event.get("role", "producer") == "producer" else 1, rank)


def merge_ranks(run_dir: str | Path) -> dict[str, Any]:
    """Read every rank of a (possibly distributed) run and name where trouble started.

    Returns {"world_size": int (ranks found, or the recorded world size if larger),
             "ranks": [{"rank", "path", "status", "steps", "first_nonfinite"}],
             "first_nonfinite": the earliest event over all ranks with "rank" added, or None,
             "rank": that event's rank (None when nothing went non-finite),
             "path": the directory of that rank (rank 0's when nothing went non-finite),
             "status": diverged if any rank diverged, else interrupted, running, completed in that order,
             "missing": ranks the world size promises but that left no directory}.
    A single-process run gives one rank. Raises RunError when the directory holds no run."""
    dirs = rank_dirs(run_dir)
    if not dirs:
        raise RunError("not a run directory (no telemetry for any rank)", file=str(run_dir))
    ranks, best = [], None
    world = 1
    for rank, path in dirs:
        run = load_run(path)
        world = max(world, int(run.meta.get("world_size") or 1))
        fn = run.first_nonfinite
        entry = {"rank": rank, "path": str(path), "status": run.status, "steps": int(run.meta.get("steps") or
                                                                                     len(run.steps["step"])),
                 "first_nonfinite": fn}
        ranks.append(entry)
        if fn and (best is None or trouble_key(fn, rank) < trouble_key(best[1], best[0])):
            best = (rank, fn, path)
    statuses = {r["status"] for r in ranks}
    status = next((s for s in STATUS_ORDER if s in statuses), "completed")
    present = {r["rank"] for r in ranks}
    return {
        "world_size": max(world, len(ranks)),
        "ranks": ranks,
        "first_nonfinite": None if best is None else {**best[1], "rank": best[0]},
        "rank": None if best is None else best[0],
        "path": str(dirs[0][1] if best is None else best[2]),
        "status": status,
        "missing": [k for k in range(world) if k not in present],
    }
