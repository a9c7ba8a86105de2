"""Telemetry overhead: the engine step alone against the same step with the Monitor recording it.

For each benchmark shape three loops run interleaved in one process: the bare `Trainer.train_step`,
the step plus `Monitor.step` at the default `monitor.every: auto` (past its dense start, so the
sampled stride applies), and the step plus `Monitor.step` at `every: 1` (per-layer statistics on
every step). Each writes a real SQLite run store in a temporary directory. All three run under the
BLAS thread count `Trainer.run` would use for the shape. Targets (issue 4): <= 5 % at the default and
<= 15 % at every step on 784-256-256-10, batch 128.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.table import Table

from bench._util import LR, SETTLE_S, SHAPES, CpuWatch, Timer, batches, interleave, make_trainer

BLOCK_S, BLOCKS = 0.2, 8
QUICK_BLOCK_S, QUICK_BLOCKS = 0.08, 3
TARGETS = {"784-256-256-10": (0.05, 0.15)}
LONG_RUN = 1_000_000  # total steps the auto stride is computed for: a long run, so the stride is the steady one


def _monitored_step(shape, every, root: Path):
    from nandoctor.config import from_mapping
    from nandoctor.engine.trainer import StepInfo
    from nandoctor.telemetry.monitor import Monitor

    trainer = make_trainer(shape)
    trainer.total_steps = LONG_RUN
    cfg = from_mapping({**_raw(trainer.cfg), "monitor": {"every": every}}, default_name="bench")
    run_dir = root / f"{shape.name}-{every}"
    run_dir.mkdir()
    monitor = Monitor(run_dir, cfg)
    monitor.start(trainer)
    data = batches(shape)
    n = len(data)
    offset = 1000  # past the dense first steps of `auto`

    def step(i: int) -> None:
        xb, yb = data[i % n]
        value, gnorm, failed = trainer.train_step(xb, yb, LR)
        k = offset + i
        trainer.step_no = k
        monitor.step(trainer, StepInfo(k, 1, value, LR, gnorm, "ok" if failed is None else "nonfinite"))

    step.monitor = monitor  # type: ignore[attr-defined]
    return step


def _raw(cfg) -> dict:
    from nandoctor.config import to_mapping

    raw = to_mapping(cfg)
    raw.pop("monitor", None)
    return raw


def _bare_step(shape):
    trainer = make_trainer(shape)
    data = batches(shape)
    n = len(data)

    def step(i: int) -> None:
        xb, yb = data[i % n]
        trainer.train_step(xb, yb, LR)

    step.trainer = trainer  # type: ignore[attr-defined]
    return step


def run(quick: bool) -> Table:
    block_s, blocks = (QUICK_BLOCK_S, QUICK_BLOCKS) if quick else (BLOCK_S, BLOCKS)
    table = Table(title="Telemetry overhead (float32, the bench shapes): engine step vs step + Monitor",
                  title_justify="left")
    for col in ("shape", "batch", "bare steps/s", "auto steps/s", "overhead auto", "every:1 steps/s",
                "overhead every:1", "target (auto / every:1)"):
        table.add_column(col, justify="left" if col == "shape" else "right")
    watch = CpuWatch()
    with tempfile.TemporaryDirectory(prefix="nandoctor-bench-") as tmp:
        root = Path(tmp)
        for shape in SHAPES:
            steps = [_bare_step(shape), _monitored_step(shape, "auto", root), _monitored_step(shape, 1, root)]
            with steps[0].trainer.blas_threads():
                timers = [Timer(s, block_s) for s in steps]
                interleave(timers, blocks, SETTLE_S)
            for s in steps[1:]:
                s.monitor.writer.close()
            bare, auto, every = (t.best for t in timers)
            target = TARGETS.get(shape.name)
            table.add_row(shape.name, str(shape.batch), f"{bare:,.0f}", f"{auto:,.0f}", f"{bare / auto - 1:+.1%}",
                          f"{every:,.0f}", f"{bare / every - 1:+.1%}",
                          f"<= {target[0]:.0%} / <= {target[1]:.0%}" if target else "-")
    table.caption = ("overhead = bare rate / monitored rate - 1 (best of interleaved blocks); `auto` samples every "
                     f"max(10, total/4000)-th step of a long run; {blocks} blocks of ~{block_s}s each\n{watch.note()}")
    return table
