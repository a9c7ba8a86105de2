"""Engine speed: float32 training steps/s of nandoctor's bare step against the equivalent PyTorch CPU loop.

For each shape both loops (and, for the wide net, a bare numpy GEMM of the same size class) are timed
in the same process in short interleaved blocks, so machine noise hits them alike. Each column is the
best block (noise from other processes only ever slows a block down, so the best is the least disturbed
estimate of what the code can do), with the median block in parentheses; the ratio is of the bests.
The nandoctor step is `Trainer.train_step` (forward, loss, backward, global grad norm, finiteness
checks, SGD update) on pre-made batches; torch's is zero_grad, forward, F.cross_entropy, backward,
SGD step. A third loop, the step's own matmuls alone, gives the ratio ceiling: the ratio the engine
would reach if everything but numpy's GEMMs were free.
"""

from __future__ import annotations

import os

from rich.table import Table

from bench._util import (
    SETTLE_S,
    SHAPES,
    CpuWatch,
    Timer,
    blas_summary,
    fmt_rate,
    gemm_floor_step,
    gemm_step,
    interleave,
    nandoctor_step,
    torch_step,
)
from bench._util import torch_module as _torch

BLOCK_S = 0.15  # seconds per timed block (at the fastest step seen in warm-up)
BLOCKS = 10  # blocks per loop
QUICK_BLOCK_S, QUICK_BLOCKS = 0.08, 4


def run(quick: bool) -> Table:
    block_s, blocks = (QUICK_BLOCK_S, QUICK_BLOCKS) if quick else (BLOCK_S, BLOCKS)
    watch = CpuWatch()
    blas, threads = blas_summary()
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
        torch_note = (f"torch {torch.__version__}: {torch.get_num_threads()} threads "
                      f"(set to NumPy's BLAS count; os.cpu_count() = {os.cpu_count()})")
    else:
        torch_note = "torch not importable: torch columns skipped"

    table = Table(title="Engine training speed (float32, ReLU MLP, softmax + cross-entropy, SGD lr 0.01)",
                  title_justify="left")
    for col in ("shape", "batch", "nandoctor steps/s", "torch steps/s", "ratio", "target", "GEMM-only ceiling"):
        table.add_column(col, justify="left" if col == "shape" else "right")
    table.add_column("% GEMM rate (target)", justify="right")

    gemm_gflops = None
    for shape in SHAPES:
        step = nandoctor_step(shape)
        ours = Timer(step, block_s)
        floor = Timer(gemm_floor_step(step.trainer), block_s)
        timers = [ours, floor]
        tstep = torch_step(shape, threads)
        theirs = Timer(tstep, block_s) if tstep is not None else None
        if theirs:
            timers.append(theirs)
        gemm = None
        if shape.gemm_target is not None:
            gstep, gflop = gemm_step(shape.batch, 1000, 1000)
            gemm = Timer(gstep, block_s / 4, min_steps=20)
            timers.append(gemm)
        interleave(timers, blocks)
        step.release()

        ratio = ours.best / theirs.best if theirs else None
        met = "" if ratio is None else (" [green]ok[/]" if ratio >= shape.target_ratio else " [red]MISS[/]")
        frac_text = "-"
        if gemm is not None:
            gemm_gflops = gemm.best * gflop / 1e9  # the ceiling: the best block
            frac = ours.best * shape.flops() / (gemm.best * gflop)
            mark = "[green]ok[/]" if frac >= shape.gemm_target else "[red]MISS[/]"
            frac_text = f"{100 * frac:.0f} % (>= {100 * shape.gemm_target:.0f} %) {mark}"
        table.add_row(
            shape.name, str(shape.batch),
            _rate(ours),
            _rate(theirs) if theirs else "-",
            f"{ratio:.2f}x" if ratio is not None else "-",
            f">= {shape.target_ratio:g}x{met}",
            f"{floor.best / theirs.best:.2f}x" if theirs else f"{fmt_rate(floor.best)}/s",
            frac_text,
        )

    lines = [f"NumPy {_np_version()} BLAS: {blas}", torch_note,
             f"steps/s: best (median) of {blocks} interleaved blocks of ~{block_s:g} s per loop, "
             f"each after a {SETTLE_S:g} s pause and {ours.rewarm} untimed steps; ratio = best / best",
             "GEMM-only ceiling: the step's own matmuls alone (same operands and out= buffers), as steps/s over "
             "torch's: the ratio if all else were free"]
    if gemm_gflops is not None:
        lines.append(f"% GEMM rate: step flops x steps/s over the float32 GEMM rate (256x1000)@(1000x1000), "
                     f"numpy matmul out=, best block: {gemm_gflops:.1f} GFLOP/s; "
                     f"wide step = {SHAPES[-1].flops() / 1e9:.2f} GFLOP")
    lines.append(watch.note())
    table.caption = "\n".join(filter(None, lines))
    table.caption_justify = "left"
    return table


def _rate(t: Timer) -> str:
    return f"{fmt_rate(t.best)} [dim]({fmt_rate(t.median)})[/]"


def _np_version() -> str:
    import numpy as np

    return np.__version__
