"""Engine profile: where one bare `Trainer.train_step` spends its time, for each benchmark shape.

Three measurements per shape, none of which changes the engine:

* step: the plain step's time (best of short blocks, as in the speed section).
* GEMM floor: the step's own matmuls alone (same operands, layouts and out= buffers, read off the layers
  after a step), i.e. what the step would cost if everything else were free.
* numpy op census: the same step on arrays viewed as a probing ndarray subclass, whose
  `__array_ufunc__` / `__array_function__` / `__getitem__` / `__setitem__` count every numpy call
  (operators and methods included: `a += b`, `z > 0`, `x.sum()`, fancy indexing) and time the call
  itself on the plain arrays. Calls on no array (np.arange) and numpy-scalar arithmetic are not seen.
  What the census does not account for of the plain step time is Python: the interpreter running the
  engine's code, attribute look-ups, argument handling, temporaries' Python objects.

Python function calls per step come from cProfile.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections import defaultdict

import numpy as np
from rich.table import Table

from bench._util import LR, SHAPES, Shape, Timer, batches, fmt_rate, make_trainer

BLOCK_S, BLOCKS = 0.1, 8
QUICK_BLOCK_S, QUICK_BLOCKS = 0.05, 3
CENSUS_STEPS = 20
TOP_OPS = 6


# ---- the probe ------------------------------------------------------------------------------------

class _Census:
    def __init__(self) -> None:
        self.calls: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, key: str, dt: float) -> None:
        self.calls[key] += 1
        self.seconds[key] += dt


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


def _shape(x) -> str:
    return "x".join(map(str, x.shape)) if isinstance(x, np.ndarray) and x.ndim else "s"


class Probe(np.ndarray):
    """An ndarray that records every numpy call made on it (see the module doc)."""

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
        CENSUS.add(name, dt)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return tuple(map(_probe, result)) if isinstance(result, tuple) else _probe(result)

    def __array_function__(self, func, types, args, kwargs):
        args, plain_kwargs = _plain(args), {k: _plain(v) for k, v in kwargs.items()}
        t0 = time.perf_counter()
        result = func(*args, **plain_kwargs)
        dt = time.perf_counter() - t0
        CENSUS.add(f"np.{func.__name__}" + (f" ({args[0].size:,})" if func is np.dot else ""), dt)
        if kwargs.get("out") is not None:
            return kwargs["out"]
        return _probe(result)

    def __getitem__(self, key):
        plain, key = self.view(np.ndarray), _plain(key)
        t0 = time.perf_counter()
        result = plain[key]
        CENSUS.add("[...] read" if _is_basic(key) else "[fancy] read", time.perf_counter() - t0)
        return _probe(result)

    def __setitem__(self, key, value):
        plain, key, value = self.view(np.ndarray), _plain(key), _plain(value)
        t0 = time.perf_counter()
        plain[key] = value
        CENSUS.add("[...] write" if _is_basic(key) else "[fancy] write", time.perf_counter() - t0)


def _is_basic(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return not any(isinstance(k, np.ndarray | list) for k in keys)


def _probe_trainer(trainer) -> None:
    """Re-point every array the step touches at a Probe view of the same memory."""
    model = trainer.model
    model.params, model.grads = model.params.view(Probe), model.grads.view(Probe)
    for layer, spans in zip(model.layers, model.slices, strict=True):
        shapes = dict(layer.param_shapes())
        layer.bind({k: model.params[s].reshape(shapes[k]) for k, s in spans.items()},
                   {k: model.grads[s].reshape(shapes[k]) for k, s in spans.items()})
        for buf in layer._sets.values():
            for k, v in vars(buf).items():
                if type(v) is np.ndarray:
                    setattr(buf, k, v.view(Probe))
    trainer.optimizer.params = model.params
    trainer.optimizer.tmp = trainer.optimizer.tmp.view(Probe)
    trainer.update = trainer.update.view(Probe)
    trainer._grad_bufs = {k: v.view(Probe) for k, v in trainer._grad_bufs.items()}


# ---- measurements ---------------------------------------------------------------------------------

def _gemm_floor(trainer):
    """A closure running exactly the step's matmuls on the step's own buffers."""
    calls = []
    for i, layer in enumerate(trainer.model.layers):
        s = layer.buf
        calls.append((s.x, layer.W, s.lin))
        calls.append((s.x.T, s.dz_used, layer.dW))
        if i > 0:
            calls.append((s.dz_used, layer.W.T, s.dx))

    def step(i: int) -> None:
        for a, b, out in calls:
            np.matmul(a, b, out=out)

    return step


def _python_calls(shape: Shape, steps: int) -> tuple[float, list[tuple[str, float]]]:
    """(Python function calls per step, top engine functions by own time per step in µs)."""
    trainer, data = make_trainer(shape), batches(shape)
    for i in range(3):
        trainer.train_step(*data[i % len(data)], LR)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(steps):
        trainer.train_step(*data[i % len(data)], LR)
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[1] for v in stats.stats.values())  # primitive + recursive calls
    return total / steps, []


def profile_shape(shape: Shape, block_s: float, blocks: int) -> dict:
    data = batches(shape)
    trainer = make_trainer(shape)
    n = len(data)

    def plain(i: int) -> None:
        trainer.train_step(*data[i % n], LR)

    step_t = Timer(plain, block_s)
    gemm_t = Timer(_gemm_floor(trainer), block_s)
    for _ in range(blocks):
        step_t.block()
        gemm_t.block()
    step_s, gemm_s = 1 / step_t.best, 1 / gemm_t.best

    probed = make_trainer(shape)
    probed.train_step(*data[0], LR)  # allocate the buffer sets, then re-point them
    _probe_trainer(probed)
    pdata = [(x.view(Probe), y.view(Probe)) for x, y in data]
    for i in range(3):
        probed.train_step(*pdata[i % n], LR)
    best: dict[str, float] | None = None
    calls: dict[str, int] = {}
    steps = max(3, min(CENSUS_STEPS, round(1.0 / step_s)))
    for i in range(steps):  # per op, the fastest of the steps (noise only slows down)
        CENSUS.calls.clear()
        CENSUS.seconds.clear()
        probed.train_step(*pdata[i % n], LR)
        calls = dict(CENSUS.calls)
        best = dict(CENSUS.seconds) if best is None else {k: min(v, CENSUS.seconds[k]) for k, v in best.items()}
    py_calls, _ = _python_calls(shape, steps=max(5, steps))
    return {"step": step_s, "gemm_floor": gemm_s, "op_s": best or {}, "op_calls": calls, "py_calls": py_calls}


def _category(op: str) -> str:
    if op.startswith("matmul"):
        return "matmul"
    if op.startswith("np.dot"):
        return "norms (dot)"
    if "[" in op:
        return "indexing"
    if ".reduce" in op or op.startswith("np.sum"):
        return "reductions"
    return "elementwise"


CATEGORIES = ("matmul", "norms (dot)", "elementwise", "reductions", "indexing")


def run(quick: bool) -> list[Table]:
    block_s, blocks = (QUICK_BLOCK_S, QUICK_BLOCKS) if quick else (BLOCK_S, BLOCKS)
    summary = Table(title="Engine step profile: µs per step (share of the step)", title_justify="left")
    for col in ("shape", "batch", "step", "GEMM floor", *CATEGORIES, "Python + rest", "numpy calls",
                "py calls"):
        summary.add_column(col, justify="left" if col == "shape" else "right")
    tops = Table(title=f"Top {TOP_OPS} numpy ops per shape (µs per step, fastest of the census steps)",
                 title_justify="left")
    for col in ("shape", "op", "calls", "µs", "share of step"):
        tops.add_column(col, justify="left" if col in ("shape", "op") else "right")

    for shape in SHAPES:
        r = profile_shape(shape, block_s, blocks)
        step = r["step"]
        cat_s = dict.fromkeys(CATEGORIES, 0.0)
        for op, s in r["op_s"].items():
            cat_s[_category(op)] += s
        rest = step - sum(cat_s.values())

        def cell(s: float, step: float = step) -> str:
            return f"{1e6 * s:,.0f} ({100 * s / step:.0f}%)" if s >= 1e-6 * 100 else \
                f"{1e6 * s:.1f} ({100 * s / step:.0f}%)"

        summary.add_row(shape.name, str(shape.batch), f"{1e6 * step:,.1f} ({fmt_rate(1 / step)}/s)",
                        cell(r["gemm_floor"]), *(cell(cat_s[c]) for c in CATEGORIES), cell(rest),
                        str(sum(r["op_calls"].values())), f"{r['py_calls']:.0f}")
        ranked = sorted(r["op_s"].items(), key=lambda kv: -kv[1])[:TOP_OPS]
        for j, (op, s) in enumerate(ranked):
            tops.add_row(shape.name if j == 0 else "", op, str(r["op_calls"][op]), f"{1e6 * s:,.1f}",
                         f"{100 * s / step:.1f}%", end_section=j == len(ranked) - 1)
    summary.caption = ("step: plain Trainer.train_step, best block; GEMM floor: the step's matmuls alone; "
                       "categories: time inside numpy calls (probe census);\nPython + rest = step - numpy "
                       "calls (interpreter, attribute look-ups, temporaries' objects); numpy calls per step "
                       "as counted by the probe; py calls: Python function calls per step (cProfile)")
    summary.caption_justify = "left"
    return [summary, tops]
