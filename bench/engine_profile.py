"""Engine profile: where one bare `Trainer.train_step` spends its time, for each benchmark shape.

Nothing in the engine is changed. Per shape:

1. Census: one step runs on arrays viewed as `Probe`, an ndarray subclass whose `__array_ufunc__`,
   `__array_function__`, `__getitem__` and `__setitem__` see every numpy call the step makes
   (operators and methods included: `a += b`, `z > 0`, `x.sum()`, fancy indexing), record it with
   its plain-array operands, and time it. Calls on no array (`np.arange`) and numpy-scalar
   arithmetic are not seen.
2. Replay: the recorded calls are re-run from a flat list, with the same operands and out= buffers,
   all of them or one category at a time (matmul, norms, elementwise, reductions, indexing). A
   replay is the step without the engine's Python: the interpreter running its code, attribute
   look-ups, argument handling, the Python objects of temporaries.
3. The plain step, every replay, interleaved in short blocks (best block each, as in the speed
   section). Python = plain step - full replay.

Python function calls per step come from cProfile. All of it runs with the BLAS thread count the
engine picks for the shape (engine.threads), as the speed section does. The census's own per-op times (top-ops table)
include the probe's timer, ~0.1 µs a call, so they read high for the tiny net.
"""

from __future__ import annotations

import cProfile
import operator
import pstats
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from rich.table import Table

from bench._util import LR, SHAPES, CpuWatch, Shape, Timer, batches, fmt_rate, interleave, make_trainer

BLOCK_S, BLOCKS = 0.08, 6
QUICK_BLOCK_S, QUICK_BLOCKS = 0.04, 3
CENSUS_STEPS = 10
TOP_OPS = 6
CATEGORIES = ("matmul", "norms", "eltwise", "reduce", "index")


# ---- the probe ------------------------------------------------------------------------------------

class _Census:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.log: list[tuple[str, Callable, tuple, dict]] = []

    def add(self, key: str, dt: float, f: Callable, args: tuple, kwargs: dict) -> None:
        self.calls[key] += 1
        self.seconds[key] += dt
        self.log.append((key, f, args, kwargs))


CENSUS = _Census()


def _plain(x):
    if isinstance(x, Probe):
        return x.view(np.ndarray)
    if type(x) is tuple:
        return tuple(_plain(v) for v in x)
    if type(x) is list:
        return [_plain(v) for v in x]
    return x


def _probe(x):
    return x.view(Probe) if type(x) is np.ndarray else x


def _size(arrays) -> int:
    return max((a.size for a in arrays if isinstance(a, np.ndarray)), default=1)


def _shape(x) -> str:
    return "x".join(map(str, x.shape)) if isinstance(x, np.ndarray) and x.ndim else "s"


def _is_basic(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return not any(isinstance(k, np.ndarray | list) for k in keys)


class Probe(np.ndarray):
    """An ndarray that records and times every numpy call made on it (see the module doc)."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        args = tuple(_plain(x) for x in inputs)
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        f = ufunc if method == "__call__" else getattr(ufunc, method)
        t0 = time.perf_counter()
        result = f(*args, **kwargs)
        dt = time.perf_counter() - t0
        name = ufunc.__name__ + ("" if method == "__call__" else f".{method}")
        if ufunc is np.matmul:
            name += f" {_shape(args[0])}@{_shape(args[1])}"
        else:
            name += f" ({_size((*args, *(out or ()))):,})"
        CENSUS.add(name, dt, f, args, kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return tuple(map(_probe, result)) if isinstance(result, tuple) else _probe(result)

    def __array_function__(self, func, types, args, kwargs):
        args, plain_kwargs = _plain(args), {k: _plain(v) for k, v in kwargs.items()}
        t0 = time.perf_counter()
        result = func(*args, **plain_kwargs)
        dt = time.perf_counter() - t0
        CENSUS.add(f"np.{func.__name__} ({_size(args):,})", dt, func, args, plain_kwargs)
        if kwargs.get("out") is not None:
            return kwargs["out"]
        return _probe(result)

    def __getitem__(self, key):
        plain, key = self.view(np.ndarray), _plain(key)
        t0 = time.perf_counter()
        result = plain[key]
        dt = time.perf_counter() - t0
        CENSUS.add("index read" if _is_basic(key) else "fancy index read", dt, operator.getitem, (plain, key), {})
        return _probe(result)

    def __setitem__(self, key, value):
        plain, key, value = self.view(np.ndarray), _plain(key), _plain(value)
        t0 = time.perf_counter()
        plain[key] = value
        dt = time.perf_counter() - t0
        CENSUS.add("index write" if _is_basic(key) else "fancy index write", dt, operator.setitem,
                   (plain, key, value), {})


def _probe_trainer(trainer) -> None:
    """Re-point every array the step touches at a Probe view of the same memory (after one step, so
    the layers' buffer sets exist)."""
    model = trainer.model
    model.params, model.grads = model.params.view(Probe), model.grads.view(Probe)
    for layer, spans in zip(model.layers, model.slices, strict=True):
        layer.bind(model.params, model.grads, spans)
        for buf in layer._sets.values():
            for k, v in vars(buf).items():
                if type(v) is np.ndarray:
                    setattr(buf, k, v.view(Probe))
    trainer.optimizer.params = model.params
    for name in ("tmp", "chunk"):
        if hasattr(trainer.optimizer, name):
            setattr(trainer.optimizer, name, getattr(trainer.optimizer, name).view(Probe))
    trainer._update = trainer._update.view(Probe)
    trainer._grad_bufs = {k: v.view(Probe) for k, v in trainer._grad_bufs.items()}


def _category(op: str) -> str:
    if op.startswith("matmul"):
        return "matmul"
    if op.startswith("np.dot"):
        return "norms"
    if "index" in op:
        return "index"
    if ".reduce" in op or op.startswith("np.sum"):
        return "reduce"
    return "eltwise"


# ---- measurements ---------------------------------------------------------------------------------

def _census(shape: Shape, data: list) -> tuple[dict[str, float], dict[str, int], list]:
    """(seconds per op key, calls per op key, call log) of the fastest of a few probed steps."""
    trainer = make_trainer(shape)
    trainer.train_step(*data[0], LR)
    _probe_trainer(trainer)
    pdata = [(x.view(Probe), y.view(Probe)) for x, y in data]
    for i in range(3):
        trainer.train_step(*pdata[i % len(pdata)], LR)
    best = None
    for i in range(CENSUS_STEPS):
        CENSUS.reset()
        t0 = time.perf_counter()
        trainer.train_step(*pdata[i % len(pdata)], LR)
        wall = time.perf_counter() - t0
        if best is None or wall < best[0]:
            best = (wall, dict(CENSUS.seconds), dict(CENSUS.calls), CENSUS.log)
    CENSUS.reset()
    assert best is not None
    return best[1], best[2], best[3]


def _replay(log: list) -> Callable[[int], None]:
    calls = [(f, args, kwargs) for _, f, args, kwargs in log]

    def step(i: int) -> None:
        for f, args, kwargs in calls:
            f(*args, **kwargs)

    return step


def _python_calls(shape: Shape, data: list, steps: int = 20) -> float:
    """Python function calls per step (cProfile)."""
    trainer = make_trainer(shape)
    for i in range(3):
        trainer.train_step(*data[i % len(data)], LR)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(steps):
        trainer.train_step(*data[i % len(data)], LR)
    prof.disable()
    return sum(v[1] for v in pstats.Stats(prof).stats.values()) / steps


def profile_shape(shape: Shape, block_s: float, blocks: int) -> dict:
    """Everything runs with the engine's own BLAS thread count for the shape, as training does."""
    trainer = make_trainer(shape)
    with trainer.blas_threads():
        return _profile(shape, trainer, block_s, blocks)


def _profile(shape: Shape, trainer, block_s: float, blocks: int) -> dict:
    data = batches(shape)
    op_s, op_calls, log = _census(shape, data)
    n = len(data)

    def plain(i: int) -> None:
        trainer.train_step(*data[i % n], LR)

    with np.errstate(all="ignore"):  # replays repeat in-place updates; values drift, nothing is read
        timers = {"step": Timer(plain, block_s), "numpy": Timer(_replay(log), block_s)}
        for cat in CATEGORIES:
            part = [entry for entry in log if _category(entry[0]) == cat]
            if part:
                timers[cat] = Timer(_replay(part), block_s)
        interleave(list(timers.values()), blocks, settle=0.0)
    sec = {k: 1 / t.best for k, t in timers.items()}
    return {"sec": sec, "op_s": op_s, "op_calls": op_calls, "py_calls": _python_calls(shape, data)}


# ---- the section ------------------------------------------------------------------------------------

def run(quick: bool) -> list[Table]:
    block_s, blocks = (QUICK_BLOCK_S, QUICK_BLOCKS) if quick else (BLOCK_S, BLOCKS)
    watch = CpuWatch()
    summary = Table(title="Engine step profile: µs per step and share of the step", title_justify="left")
    summary.add_column("shape / batch", no_wrap=True)
    for col in ("step µs", "steps/s", "numpy", *CATEGORIES, "Python", "np/py"):
        summary.add_column(col, justify="right", no_wrap=True)
    tops = Table(title=f"Top {TOP_OPS} numpy ops per shape (census timing)", title_justify="left")
    for col in ("shape", "op (largest operand size)", "calls", "µs", "share of step"):
        tops.add_column(col, justify="left" if col[:2] in ("sh", "op") else "right", no_wrap=True)

    for shape in SHAPES:
        r = profile_shape(shape, block_s, blocks)
        sec = r["sec"]
        step = sec["step"]

        def cell(s: float | None, step: float = step) -> str:
            if s is None:
                return "-"
            us = 1e6 * s
            text = f"{us:,.0f}" if abs(us) >= 100 else f"{us:.1f}"
            return f"{text} {100 * s / step:3.0f}%"

        summary.add_row(f"{shape.name} / {shape.batch}", f"{1e6 * step:,.1f}", fmt_rate(1 / step),
                        cell(sec["numpy"]), *(cell(sec.get(c)) for c in CATEGORIES),
                        cell(step - sec["numpy"]), f"{sum(r['op_calls'].values())} / {r['py_calls']:.0f}")
        ranked = sorted(r["op_s"].items(), key=lambda kv: -kv[1])[:TOP_OPS]
        for j, (op, s) in enumerate(ranked):
            tops.add_row(shape.name if j == 0 else "", op, str(r["op_calls"][op]), f"{1e6 * s:,.1f}",
                         f"{100 * s / step:.1f}%", end_section=j == len(ranked) - 1)
    summary.caption = "\n".join(filter(None, (
        "step: plain Trainer.train_step; numpy: the step's recorded numpy calls replayed with the same operands "
        "and no engine code",
        "(the replay loop adds ~0.1 µs a call); matmul .. index: the replay of one category alone (matmul = the "
        "GEMM floor; norms = np.dot",
        "sqnorms; eltwise = ufunc calls; reduce = sums/max/all; index = [] reads and writes); Python = step - numpy; "
        f"best of {blocks} interleaved",
        "blocks each; np/py: numpy calls per step (probe census; np.arange and scalar math unseen) / Python function "
        "calls per step (cProfile)",
        watch.note())))
    summary.caption_justify = "left"
    return [summary, tops]
