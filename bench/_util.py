"""Shared pieces: the benchmark shapes, builders for both engines, BLAS facts and timing helpers."""

from __future__ import annotations

import math
import os
import statistics
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

SEED = 0
LR = 0.01
N_BATCHES = 8  # pre-generated batches, cycled
# Idle OpenBLAS workers spin ~2^28 cycles (~0.1 s) before sleeping, and OpenMP's a while too; on 2 cores
# the spinning pool of the library that just ran halves the next one's speed, so blocks start after this.
SETTLE_S = 0.2


@dataclass(frozen=True)
class Shape:
    sizes: tuple[int, ...]  # input, hidden..., classes
    batch: int
    target_ratio: float  # nandoctor steps/s over torch steps/s
    label: str
    gemm_target: float | None = None  # fraction of the machine's float32 GEMM rate, where it applies

    @property
    def name(self) -> str:
        return "-".join(map(str, self.sizes))

    def flops(self) -> int:
        """One training step's matmul flops: forward 2*B*in*out a layer, backward 4*B*in*out a layer
        (dW and dx), less the first layer's dx which is never computed."""
        b, pairs = self.batch, list(zip(self.sizes[:-1], self.sizes[1:], strict=True))
        fwd = sum(2 * b * i * o for i, o in pairs)
        bwd = sum(4 * b * i * o for i, o in pairs) - 2 * b * pairs[0][0] * pairs[0][1]
        return fwd + bwd


SHAPES: tuple[Shape, ...] = (
    Shape((2, 16, 16, 2), 32, 6.0, "tiny"),
    Shape((64, 128, 128, 10), 64, 2.5, "small"),
    Shape((784, 256, 256, 10), 128, 1.6, "mnist"),
    Shape((784, 1000, 1000, 1000, 10), 256, 1.2, "wide", gemm_target=0.85),
)


# ---- data ----------------------------------------------------------------------------------------

def batches(shape: Shape, n: int = N_BATCHES) -> list[tuple[np.ndarray, np.ndarray]]:
    """n random (float32 (B, D), int64 (B,)) batches from a fixed seed."""
    rng = np.random.default_rng(SEED)
    d, c, b = shape.sizes[0], shape.sizes[-1], shape.batch
    return [(rng.standard_normal((b, d), dtype=np.float32), rng.integers(0, c, b, dtype=np.int64))
            for _ in range(n)]


# ---- nandoctor -----------------------------------------------------------------------------------

def make_trainer(shape: Shape):
    """A Trainer for the shape: ReLU hidden layers, softmax + cross_entropy, plain SGD lr 0.01."""
    from nandoctor.config import from_mapping
    from nandoctor.engine.trainer import Trainer

    d, *hidden, c = shape.sizes
    cfg = from_mapping({
        "seed": SEED,
        "data": {"generator": "blobs", "n_features": d, "n_classes": c},
        "model": {"layers": [*({"units": h, "activation": "relu"} for h in hidden),
                             {"units": c, "activation": "softmax"}]},
        "loss": "cross_entropy",
        "optimizer": {"name": "sgd", "lr": LR},
        "training": {"batch_size": shape.batch, "dtype": "float32"},
    }, default_name="bench")
    rng = np.random.default_rng(SEED + 1)
    n = 2 * shape.batch
    data = types.SimpleNamespace(
        X_train=rng.standard_normal((n, d), dtype=np.float32), y_train=rng.integers(0, c, n),
        X_val=rng.standard_normal((8, d), dtype=np.float32), y_val=rng.integers(0, c, 8),
        task="classification", n_classes=c, feature_names=tuple(f"x{i}" for i in range(d)), profile={})
    return Trainer(cfg, data)


def nandoctor_step(shape: Shape) -> Callable[[int], None]:
    """step(i) runs one bare engine step (forward, loss, backward, grad norm, update) on batch i."""
    trainer = make_trainer(shape)
    data = batches(shape)
    train_step, n = trainer.train_step, len(data)
    # the engine's own BLAS thread policy, as Trainer.run applies it, held until step.release()
    threads = trainer.blas_threads()
    threads.__enter__()

    def step(i: int) -> None:
        xb, yb = data[i % n]
        train_step(xb, yb, LR)

    step.release = lambda: threads.__exit__(None, None, None)  # type: ignore[attr-defined]

    step.trainer = trainer  # type: ignore[attr-defined]
    return step


# ---- torch -----------------------------------------------------------------------------------------

@cache
def torch_module():
    """torch, or None when it is not importable."""
    try:
        import torch
    except Exception:  # ImportError, or a broken install raising something else
        return None
    return torch


def torch_step(shape: Shape, threads: int) -> Callable[[int], None] | None:
    """The equivalent PyTorch CPU loop: nn.Sequential of Linear+ReLU, F.cross_entropy, optim.SGD."""
    torch = torch_module()
    if torch is None:
        return None
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    mods: list = []
    for i, (a, b) in enumerate(zip(shape.sizes[:-1], shape.sizes[1:], strict=True)):
        mods.append(nn.Linear(a, b))
        if i < len(shape.sizes) - 2:
            mods.append(nn.ReLU())
    model = nn.Sequential(*mods).float()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches(shape)]
    n = len(data)

    def step(i: int) -> None:
        xb, yb = data[i % n]
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()

    return step


def gemm_floor_step(trainer) -> Callable[[int], None]:
    """The trainer's own matmuls alone (forward x@W, backward x.T@dz and dz@W.T) on its buffers, as left by
    its last step: the time a step would take if everything but the GEMMs were free."""
    calls = []
    for i, layer in enumerate(trainer.model.layers):
        s = layer.buf
        calls += [(s.x, layer.W, s.lin), (s.x.T, s.dz_used, layer.dW)]
        if i > 0:
            calls.append((s.dz_used, layer.W.T, s.dx))

    def step(i: int) -> None:
        for a, b, out in calls:
            np.matmul(a, b, out=out)

    return step


# ---- GEMM ceiling ----------------------------------------------------------------------------------

def gemm_step(m: int = 256, k: int = 1000, n: int = 1000) -> tuple[Callable[[int], None], int]:
    """(step, flops): one float32 (m x k) @ (k x n) numpy matmul into a preallocated out."""
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)

    def step(i: int) -> None:
        np.matmul(a, b, out=out)

    return step, 2 * m * k * n


# ---- timing -----------------------------------------------------------------------------------------

class Timer:
    """Times `step` in blocks of a fixed number of steps, calibrated once to about `block_s` seconds."""

    def __init__(self, step: Callable[[int], None], block_s: float, min_steps: int = 5, rewarm: int = 2,
                 warmup_s: float = 0.3):
        self.step, self.rewarm, self.i = step, rewarm, 0
        self.rates: list[float] = []
        self._run(max(3, rewarm))  # first touch: buffers, caches, thread pools
        # warm-up, which also calibrates: the fastest single step (noise only ever slows a step down)
        t_end, fastest, n = time.perf_counter() + warmup_s, math.inf, 0
        while n < 3 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            self._run(1)
            fastest = min(fastest, time.perf_counter() - t0)
            n += 1
        self.steps = max(min_steps, round(block_s / fastest))

    def _run(self, n: int) -> None:
        step, i = self.step, self.i
        for j in range(i, i + n):
            step(j)
        self.i = i + n

    def block(self, settle: float = 0.0) -> None:
        """Sleep `settle` s (so the other library's idle threads stop spinning on the cores), run a few
        untimed steps (to wake this library's threads), then time one block."""
        if settle:
            time.sleep(settle)
        self._run(self.rewarm)
        t0 = time.perf_counter()
        self._run(self.steps)
        self.rates.append(self.steps / (time.perf_counter() - t0))

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def best(self) -> float:
        return max(self.rates)

    @property
    def spread(self) -> float:
        """(max - min) / median of the block rates."""
        return (max(self.rates) - min(self.rates)) / self.median if len(self.rates) > 1 else 0.0


def interleave(timers: list[Timer], blocks: int, settle: float = SETTLE_S) -> None:
    """Round-robin blocks of every timer, rotating who goes first so no one always follows the same."""
    for r in range(blocks):
        k = r % len(timers)
        for t in timers[k:] + timers[:k]:
            t.block(settle)


# ---- environment -------------------------------------------------------------------------------------

def blas_summary() -> tuple[str, int]:
    """(one line on NumPy's BLAS: library, version, kernel, threads; its thread count)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        for info in threadpool_info():
            if info.get("user_api") == "blas":
                threads = int(info.get("num_threads") or 1)
                return (f"{info.get('internal_api')} {info.get('version')} kernel {info.get('architecture')}, "
                        f"{threads} threads ({info.get('threading_layer')}; threadpoolctl)"), threads
    threads = default_blas_threads()
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        text = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        text = "unknown BLAS"
    return f"{text}, {threads} threads (assumed: env or os.cpu_count(); install threadpoolctl to see)", threads


def default_blas_threads() -> int:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def fmt_rate(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


class CpuWatch:
    """How busy other processes kept the CPUs while this one ran (Linux /proc; None elsewhere)."""

    def __init__(self) -> None:
        self.start = self._read()
        self.t0 = time.perf_counter()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        return busy, int(own[11]) + int(own[12])  # utime + stime, all threads

    def others(self) -> float | None:
        """Fraction of all CPUs' time used by other processes since construction."""
        end = self._read()
        if self.start is None or end is None:
            return None
        ticks = os.sysconf("SC_CLK_TCK") * (time.perf_counter() - self.t0) * (os.cpu_count() or 1)
        return max(0.0, ((end[0] - self.start[0]) - (end[1] - self.start[1])) / ticks)

    def note(self) -> str:
        frac = self.others()
        if frac is None:
            return ""
        color = "green" if frac < 0.05 else "yellow" if frac < 0.25 else "red"
        return (f"[{color}]other processes used {100 * frac:.0f} % of the CPUs during this section"
                f"{'' if frac < 0.05 else ': numbers are disturbed, rerun on a quiet machine'}[/]")
