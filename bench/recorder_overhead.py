"""Recorder overhead: what `nandoctor.torch.Recorder` costs a PyTorch training loop.

The loop is the MNIST-shape MLP of the engine benchmark (784-256-256-10, ReLU, batch 128,
F.cross_entropy, plain SGD lr 0.01, float32, CPU): zero_grad, forward, loss, backward, step. It runs
in four copies, each its own model with the same initial weights: two without the recorder (their
difference is the noise floor), one with `rec.step(loss, opt)` at the default settings, one with
`rec.step(loss, opt, inputs=x, targets=y)` (adds the data profile and a per-step non-finite check of
the batch).

Timing is built to survive a busy machine: torch runs on one thread (the recorder's work is in the
calling thread, and an idle OpenMP pool spinning against other processes distorts two-thread
timings far more than the recorder costs), the copies take turns in blocks of 5 steps in a rotating
order (so drift and cache effects hit them alike, while the recorder's cost cap still sees its own
loop's step times), and each step is timed in thread CPU time, which other processes cannot inflate, and in
wall time. A loop's step time is the mean over all its steps (the
sampled ones included: they are the recorder's cost too). Overhead = recorded / bare - 1. The copies are warmed past the
recorder's 20 dense steps first, so this is the steady state: per-layer statistics every 10th step
or less often (the cost cap), SQLite commits about once a second.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from bench._util import LR, SEED, SHAPES, CpuWatch, batches
from bench._util import torch_module as _torch

TARGET = 0.10  # overhead at default settings
STEPS, QUICK_STEPS = 2000, 400  # timed steps per loop
WARM_STEPS = 40
BLOCK = 5  # steps per turn
SHAPE = next(s for s in SHAPES if s.label == "mnist")


def loop(run_dir: Path | None, pass_batches: bool = False) -> tuple[Callable[[int], None], object]:
    """step(i) of the PyTorch loop, optionally recorded into run_dir; returns (step, recorder or None)."""
    torch = _torch()
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(SEED)
    mods: list = []
    for i, (a, b) in enumerate(itertools.pairwise(SHAPE.sizes)):
        mods.append(nn.Linear(a, b))
        if i < len(SHAPE.sizes) - 2:
            mods.append(nn.ReLU())
    model = nn.Sequential(*mods)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches(SHAPE)]
    n = len(data)
    rec = None
    if run_dir is not None:
        from nandoctor.torch import Recorder

        rec = Recorder(model, run_dir)

    def step(i: int) -> None:
        xb, yb = data[i % n]
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        if rec is not None:
            if pass_batches:
                rec.step(loss, opt, inputs=xb, targets=yb)
            else:
                rec.step(loss, opt)
        opt.step()

    return step, rec


def measure(steps: dict[str, Callable[[int], None]], n: int) -> dict[str, tuple[float, float]]:
    """{name: (mean thread-CPU seconds, mean wall seconds)} per step, the loops taking turns in blocks
    in a rotating order."""
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    wall: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps.items())
    for b, start in enumerate(range(0, n, BLOCK)):
        r = b % len(order)
        for name, step in order[r:] + order[:r]:
            for i in range(start, min(start + BLOCK, n)):
                c0, w0 = time.thread_time(), time.perf_counter()
                step(WARM_STEPS + i)
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.thread_time() - c0)
    return {k: (sum(cpu[k]) / len(cpu[k]), sum(wall[k]) / len(wall[k])) for k in steps}


def run(quick: bool) -> Table:
    n = QUICK_STEPS if quick else STEPS
    table = Table(title=f"Recorder overhead: PyTorch {SHAPE.name} MLP, batch {SHAPE.batch}, SGD, float32 CPU "
                        f"(target <= {TARGET:.0%} at default settings)", title_justify="left")
    for col in ("loop", "ms/step CPU (wall)", "overhead CPU (wall)", "target"):
        table.add_column(col, justify="left" if col == "loop" else "right")
    torch = _torch()
    if torch is None:
        table.add_row("torch not importable", "-", "-", "-")
        table.caption = "install torch (pip install 'nandoctor[torch]') to measure the recorder"
        return table
    watch = CpuWatch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="nandoctor-bench-rec-"))
    recs = []
    try:
        loops = {"bare": loop(None), "bare (again)": loop(None), "rec": loop(tmp / "loss-only"),
                 "rec+batches": loop(tmp / "with-batches", pass_batches=True)}
        recs = [r for _, r in loops.values() if r is not None]
        steps = {k: s for k, (s, _) in loops.items()}
        for i in range(WARM_STEPS):  # past the recorder's dense steps, and torch's lazy first-step work
            for step in steps.values():
                step(i)
        t = measure(steps, n)
        base_cpu = (t["bare"][0] + t["bare (again)"][0]) / 2
        base_wall = (t["bare"][1] + t["bare (again)"][1]) / 2
        labels = {"bare": "PyTorch loop, no recorder", "bare (again)": "  the same again (noise floor)",
                  "rec": "+ rec.step(loss, opt)  [default]",
                  "rec+batches": "+ rec.step(loss, opt, inputs=x, targets=y)"}
        for key, label in labels.items():
            cpu, wall = t[key]
            over_cpu, over_wall = cpu / base_cpu - 1, wall / base_wall - 1
            target = ""
            if key.startswith("rec"):
                target = f"<= {TARGET:.0%} " + ("[green]ok[/]" if over_cpu <= TARGET else "[red]MISS[/]")
            table.add_row(label, f"{1e3 * cpu:.3f} [dim]({1e3 * wall:.3f})[/]",
                          f"{100 * over_cpu:+.1f} % [dim]({100 * over_wall:+.1f} %)[/]", target)
        rec = loops["rec"][1]
        steps_done, sampled, stride = rec.step_no, rec.sampler.samples, rec.sampler.stride
    finally:
        for r in recs:
            r.close()
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    table.caption = "\n".join(filter(None, [
        f"torch {torch.__version__} on 1 thread; {n} steps per loop, the loops taking turns in blocks of {BLOCK}; "
        f"per-step thread CPU time (wall time), mean over all steps; overhead = recorded / bare - 1",
        f"default settings: every='auto': 20 dense steps, then every 10th step or less often so that the statistics "
        f"cost <= 3 % of the step time; the default loop ran {steps_done} steps, {sampled} with per-layer "
        f"statistics (stride at the end: {stride})",
        watch.note()]))
    table.caption_justify = "left"
    return table
