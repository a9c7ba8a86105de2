"""The diagnoser's development corpus: healthy base configs, one injected fault each, labelled by cause.

    python -m bench.corpus --build [--n N] [--seed S] [--out FILE]   # rebuild (a few minutes on 2 cores)
    python -m bench.corpus                                            # print the stats of the cached corpus

How a case is made (issue 5, item 3):

1. Bases. `make_base` draws a HEALTHY config from a seeded generator: a data set (the generators moons,
   circles, spirals, blobs, xor, checkerboard, linear, sine and the built-ins iris, wine, breast_cancer,
   digits, always with `preprocess: standardize`), 1-4 hidden layers of 8-128 units, a hidden activation
   (relu, tanh, leaky_relu, elu, gelu) with its matching init, an optimizer with a sane learning rate
   (sgd, momentum, adam, rmsprop), a batch size of 16-128 and a step budget that keeps a run well under
   a second. Every base is trained once; one that does not learn (accuracy less than half-way from
   chance to 1, R^2 <= 0.7, or a non-finite loss) is discarded.
2. Faults. `INJECTORS` holds one injector per SPEC cause id. An injector looks at a base and returns a
   fault patch and the canonical fix patch, both in SPEC path syntax (applied to the raw mapping with
   `nandoctor.config.paths.apply_all`), with a variant name and a severity; several variants and
   severities each. Some faults come with the conditions under which they bite, written into the fault
   patch: a deeper stack (saturating, exploding, vanishing), (momentum) SGD instead of adam / rmsprop
   for gradient-scale faults (sum reduction, saturation, depth), a larger batch (sum reduction), longer
   training or a faster lr (textbook losses), fewer epochs (float16 has no BLAS). The fix patch is
   applied on top of the fault patch, so those conditions stay and only the faulty setting is repaired:
   a case is kept only if that alone restores the run.
3. Filter. A case is kept only when the fault really changed the outcome (the faulty run went
   non-finite, or its final validation metric is at least `MIN_DROP` below the base's) AND the fix
   restores it (the fixed run stays finite and gets within `FIX_TOLERANCE` of the base's metric, and
   learns by the same bar as a base). Everything else is counted as discarded, with the reason.

Attempts are drawn per cause in rounds (sized by the yield seen so far) until TARGET_PER_CAUSE cases are
kept or MAX_ATTEMPTS_PER_CAUSE were tried, at most PER_BASE_PER_CAUSE per base. Runs go to a spawn
process pool over the cores; the build is deterministic for a seed (~1200 runs, 6-12 min on 2 cores).

The corpus is cached in `bench/corpus/dev_corpus.json`: the bases (raw configs and their outcomes) and
the cases (base id, label, variant, severity, fault and fix patches, outcome numbers). `case_config`
rebuilds a case's faulty config. Labels are the injected cause, never what the diagnoser says.
Label policy: a fault with a specific cause gets that cause (an init scale off by a large factor is
`bad_init`, even when its symptom is exploding or vanishing gradients); `exploding_gradients` and
`vanishing_gradients` label only faults without a more specific cause: a deep stack whose per-layer
init is within a factor ~1.5 of the right scale and whose gradients still compound over depth.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
CORPUS_FILE = CORPUS_DIR / "dev_corpus.json"
VERSION = 1

MIN_DROP = 0.15  # a fault must cost at least this much validation metric (accuracy or R^2), or go non-finite
FIX_TOLERANCE = 0.10  # a fixed run must get within this of the base's metric
MAX_STEPS = 900  # step budget of a base run
F16_MAX_FLOPS = 2e8  # float16 runs: NumPy has no float16 BLAS, so ~50x slower per flop
DEEP_LAYER_STEPS = 9000  # deep nets: at most this many (layers x steps)
MAX_FLOPS = 1.5e10  # rough training cost cap (multiply-adds * 6 per step, summed over steps)
TARGET_PER_CAUSE = 28
MAX_ATTEMPTS_PER_CAUSE = 90
PER_BASE_PER_CAUSE = 2  # at most this many kept cases of one cause on one base

CAUSES = ("nan_in_data", "unscaled_data", "bad_init", "saturating_activation", "dead_relu", "high_lr", "low_lr",
          "sum_reduction", "unstable_loss", "output_mismatch", "low_precision", "exploding_gradients",
          "vanishing_gradients")

RELU_FAMILY = ("relu", "leaky_relu", "elu", "gelu")


# ---- bases ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataSpec:
    name: str
    task: str
    difficulty: int  # 0 easy .. 2 hard: more steps, more capacity
    builtin: bool = False


DATASETS = (
    DataSpec("moons", "classification", 0), DataSpec("circles", "classification", 1),
    DataSpec("spirals", "classification", 2), DataSpec("blobs", "classification", 0),
    DataSpec("xor", "classification", 1), DataSpec("checkerboard", "classification", 2),
    DataSpec("linear", "regression", 0), DataSpec("sine", "regression", 1),
    DataSpec("iris", "classification", 0, True), DataSpec("wine", "classification", 0, True),
    DataSpec("breast_cancer", "classification", 0, True), DataSpec("digits", "classification", 1, True),
)
BUILTIN_SHAPE = {"iris": (150, 4, 3), "wine": (178, 13, 3), "breast_cancer": (569, 30, 2), "digits": (1797, 64, 10)}

LR_RANGE = {"sgd": (0.03, 0.2), "momentum": (0.005, 0.03), "adam": (0.001, 0.01), "rmsprop": (0.0005, 0.003)}


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def hidden_init(activation: str, rng: np.random.Generator | None = None) -> str:
    """The init that fits a hidden activation (the base's choice, and what fixes restore)."""
    if activation in RELU_FAMILY:
        return _pick(rng, ("he_normal", "he_uniform")) if rng is not None else "he_normal"
    return _pick(rng, ("glorot_uniform", "glorot_normal", "lecun_normal")) if rng is not None else "glorot_uniform"


def _data_section(rng: np.random.Generator, spec: DataSpec) -> tuple[dict, int, int, int | None]:
    """(data mapping, n_samples, n_features, n_classes)."""
    if spec.builtin:
        n, d, c = BUILTIN_SHAPE[spec.name]
        data: dict[str, Any] = {"builtin": spec.name}
    else:
        n = int(rng.choice([300, 400, 500, 600, 800, 1000]))
        data = {"generator": spec.name, "n_samples": n}
        d, c = 2, 2
        if spec.name == "moons":
            data["noise"] = _sig(rng.uniform(0.05, 0.2))
        elif spec.name == "circles":
            data["noise"] = _sig(rng.uniform(0.03, 0.1))
        elif spec.name == "spirals":
            c = int(rng.integers(2, 4))
            data.update(n_classes=c, noise=_sig(rng.uniform(0.05, 0.2)))
        elif spec.name == "blobs":
            d, c = int(rng.integers(2, 11)), int(rng.integers(3, 7))
            data.update(n_features=d, n_classes=c, noise=_sig(rng.uniform(1.0, 2.5)))
        elif spec.name == "xor":
            d = int(rng.integers(2, 5))
            data.update(n_features=d, noise=_sig(rng.uniform(0.02, 0.1)))
        elif spec.name == "checkerboard":
            n = max(n, 800)
            data["n_samples"] = n
        elif spec.name == "linear":
            d, c = int(rng.integers(1, 11)), None
            data.update(n_features=d, noise=_sig(rng.uniform(0.05, 0.5)))
        elif spec.name == "sine":
            d, c = int(rng.integers(1, 3)), None
            data.update(n_features=d, noise=_sig(rng.uniform(0.05, 0.2)))
    data["preprocess"] = "standardize"
    if rng.random() < 0.25:
        data["validation_split"] = 0.25
    return data, n, d, c


def layer_flops(sizes: list[int]) -> int:
    return sum(a * b for a, b in itertools.pairwise(sizes))


def run_cost(raw: dict, n_features: int, n_train: int) -> float:
    """Rough flops of a run: 6 * batch * sum(in*out) per step."""
    layers = raw["model"]["layers"]
    sizes = [n_features, *(int(layer["units"]) for layer in layers)]
    batch = raw["training"]["batch_size"]
    steps = raw["training"]["epochs"] * math.ceil(n_train / batch)
    return 6.0 * batch * layer_flops(sizes) * steps


def make_base(rng: np.random.Generator, index: int) -> dict:
    """One candidate healthy base: {'id', 'data_name', 'task', 'n_classes', 'n_features', 'n_train', 'raw'}."""
    spec = _pick(rng, DATASETS)
    data, n, d, c = _data_section(rng, spec)
    n_train = round(n * (1 - data.get("validation_split", 0.2)))
    depth = int(rng.integers(1, 5))
    widths = [8, 16, 32, 64, 128]
    lo = {0: 0, 1: 2, 2: 3}[spec.difficulty]  # harder data: at least 32 / 64 units
    if spec.name == "digits":
        lo = 2
    width = int(_pick(rng, widths[lo:]))
    if spec.difficulty == 2:
        depth = max(depth, 2)
    activation = _pick(rng, ("relu", "relu", "tanh", "leaky_relu", "elu", "gelu"))
    per_layer_init = rng.random() < 0.5
    init = hidden_init(activation, rng)
    layers: list[dict] = []
    for i in range(depth):
        w = width if rng.random() < 0.7 or i == 0 else max(8, width // 2)
        layer: dict[str, Any] = {"units": int(w), "activation": activation}
        if per_layer_init:
            layer["init"] = init
        layers.append(layer)
    if spec.task == "regression":
        layers.append({"units": 1, "activation": "linear"})
        loss = {"name": "mse" if rng.random() < 0.8 else "huber"}
    elif c == 2 and rng.random() < 0.35:
        layers.append({"units": 1, "activation": "sigmoid"})
        loss = {"name": "binary_cross_entropy"}
    else:
        layers.append({"units": int(c), "activation": "softmax"})
        loss = {"name": "cross_entropy"}
    opt_name = _pick(rng, ("sgd", "momentum", "momentum", "adam", "adam", "rmsprop"))
    if spec.task == "regression" and opt_name == "sgd":
        opt_name = "momentum"
    lo_lr, hi_lr = LR_RANGE[opt_name]
    optimizer = {"name": opt_name, "lr": _sig(_log_uniform(rng, lo_lr, hi_lr), 2)}
    batch = int(rng.choice([16, 32, 64, 128]))
    steps_per_epoch = math.ceil(n_train / batch)
    target_steps = int(int(rng.integers(250, 600)) * (1 + 0.5 * spec.difficulty))
    target_steps = min(target_steps, MAX_STEPS)
    epochs = int(min(80, max(5, round(target_steps / steps_per_epoch))))
    raw: dict[str, Any] = {
        "name": f"base{index:03d}-{spec.name}",
        "seed": int(rng.integers(0, 10_000)),
        "data": data,
        "model": {"layers": layers},
        "loss": loss,
        "optimizer": optimizer,
        "training": {"epochs": epochs, "batch_size": batch},
    }
    if not per_layer_init:
        raw["model"]["init"] = init
    # keep the run cheap: fewer epochs for big nets
    while epochs > 5 and run_cost(raw, d, n_train) > MAX_FLOPS:
        epochs = max(5, int(epochs * 0.8))
        raw["training"]["epochs"] = epochs
    return {"id": f"b{index:03d}", "data_name": spec.name, "task": spec.task, "n_classes": c,
            "n_features": d, "n_train": n_train, "raw": raw}


def learns(outcome: dict, task: str) -> bool:
    """The bar a base (and a fixed run) must pass: finite, and clearly better than chance."""
    if outcome.get("error") or outcome["diverged"] or outcome["metric"] is None:
        return False
    m = outcome["metric"]
    if task == "regression":
        return m > 0.7
    chance = outcome["chance"] or 0.5
    return m >= chance + 0.5 * (1 - chance)


# ---- fault injectors -----------------------------------------------------------------------------------

@dataclass
class Attempt:
    label: str
    variant: str
    severity: str  # mild | moderate | severe
    fault: dict
    fix: dict
    param: Any = None  # the injected number (lr factor, std, missing fraction ...)


def _hidden(base: dict) -> list[int]:
    return list(range(len(base["raw"]["model"]["layers"]) - 1))


def _out(base: dict) -> int:
    return len(base["raw"]["model"]["layers"]) - 1


def _out_layer(base: dict) -> dict:
    return base["raw"]["model"]["layers"][-1]


def _act(base: dict) -> str:
    return base["raw"]["model"]["layers"][0]["activation"]


def _sev(x: float, cuts: tuple[float, float]) -> str:
    return "mild" if x < cuts[0] else "moderate" if x < cuts[1] else "severe"


def _steps_per_epoch(base: dict, batch: int | None = None) -> int:
    return math.ceil(base["n_train"] / (batch or base["raw"]["training"]["batch_size"]))


def _sgd_like(rng, base: dict, fault: dict, p: float = 1.0) -> str:
    """Gradient-scale faults (depth, saturation, sum reduction) show under SGD and are largely divided
    away by adam / rmsprop: with probability p, train such a base with (momentum) SGD at a sane learning
    rate instead. That is a condition of the case, not a fault, and the fix run keeps it.
    Returns the optimizer the case trains with."""
    name = base["raw"]["optimizer"]["name"]
    if name in ("sgd", "momentum") or rng.random() >= p:
        return name
    name = _pick(rng, ("sgd", "momentum"))
    fault["optimizer.name"] = name
    fault["optimizer.lr"] = _sig(_log_uniform(rng, *LR_RANGE[name]), 2)
    return name


def inject_nan_in_data(rng, base) -> Attempt | None:
    frac = _sig(_log_uniform(rng, 0.003, 0.12), 2)
    fault: dict[str, Any] = {"data.missing": frac}
    variant = "missing_features"
    if rng.random() < 0.3:
        fault["data.impute"] = "none"
    if base["data_name"] not in BUILTIN_SHAPE and rng.random() < 0.3:  # unit-scale generator data, unscaled
        fault["data.preprocess"] = "none"
        variant = "missing_features_raw"
    fix = {"data.impute": _pick(rng, ("mean", "mean", "median"))}
    return Attempt("nan_in_data", variant, _sev(frac, (0.01, 0.05)), fault, fix, frac)


def inject_unscaled_data(rng, base) -> Attempt | None:
    d = base["n_features"]
    variants = ["scale", "feature_scales", "offset"]
    if base["data_name"] in ("wine", "breast_cancer", "digits"):
        variants += ["raw_builtin", "raw_builtin"]
    v = _pick(rng, variants)
    fault: dict[str, Any] = {"data.preprocess": "none"}
    if v == "scale":
        s = _sig(_log_uniform(rng, 30, 1e4), 2)
        fault["data.scale"] = s
        sev = _sev(s, (200, 2000))
        param = s
    elif v == "feature_scales":
        span = float(rng.uniform(2, 4.5))  # orders of magnitude between the smallest and largest feature
        exps = rng.uniform(0, span, size=d)
        exps[int(rng.integers(d))] = span
        fault["data.feature_scales"] = [_sig(10 ** e, 2) for e in exps]
        sev = _sev(span, (2.7, 3.5))
        param = _sig(10 ** span, 2)
    elif v == "offset":
        off = _sig(_log_uniform(rng, 50, 5e3), 2) * (1 if rng.random() < 0.7 else -1)
        fault["data.offset"] = off
        sev = _sev(abs(off), (300, 1500))
        param = off
    else:
        sev, param = "moderate", None
    return Attempt("unscaled_data", v, sev, fault, {"data.preprocess": "standardize"}, param)


def _init_fix(base: dict, layers: list[dict] | None = None) -> dict:
    layers = layers if layers is not None else base["raw"]["model"]["layers"]
    fix = {}
    for i, layer in enumerate(layers):
        hidden = i < len(layers) - 1
        fix[f"model.layers.{i}.init"] = hidden_init(layer["activation"]) if hidden else "glorot_uniform"
    return fix


def inject_bad_init(rng, base) -> Attempt | None:
    depth = len(_hidden(base))
    variants = ["large_normal", "large_normal", "large_gain", "zeros", "constant"]
    if depth >= 2:
        variants += ["small_normal", "small_normal"]
    v = _pick(rng, variants)
    fix = _init_fix(base)
    if v == "large_normal":
        std = _sig(_log_uniform(rng, 0.8, 10), 2)
        return Attempt("bad_init", v, _sev(std, (2, 5)), {"model.layers.*.init": {"name": "normal", "std": std}},
                       fix, std)
    if v == "large_gain":
        gain = _sig(_log_uniform(rng, 4, 25), 2)
        name = _pick(rng, ("glorot_uniform", "he_normal", "lecun_normal", "orthogonal"))
        return Attempt("bad_init", v, _sev(gain, (8, 15)), {"model.layers.*.init": {"name": name, "gain": gain}},
                       fix, gain)
    if v == "small_normal":
        std = _sig(_log_uniform(rng, 1e-4, 1.5e-2), 2)
        return Attempt("bad_init", v, _sev(-math.log10(std), (2.3, 3.3)),
                       {"model.layers.*.init": {"name": "normal", "std": std}}, fix, std)
    if v == "zeros":
        return Attempt("bad_init", v, "severe", {"model.layers.*.init": "zeros"}, fix)
    value = _sig(_pick(rng, (1, -1)) * _log_uniform(rng, 0.01, 0.5), 2)
    return Attempt("bad_init", v, "moderate", {"model.layers.*.init": {"name": "constant", "value": value}}, fix,
                   value)


def _relu_fix(base: dict) -> dict:
    fix: dict[str, Any] = {}
    for i in _hidden(base):
        fix[f"model.layers.{i}.activation"] = "relu"
        fix[f"model.layers.{i}.init"] = "he_normal"
    return fix


def inject_saturating_activation(rng, base) -> Attempt | None:
    """Hidden units switched to sigmoid (or tanh) on a deeper net (4-6 hidden layers: the base's layers,
    extended at the base's width when it has fewer), with the init those units are usually given (glorot,
    whose classic sigmoid variant uses gain 4; tanh gain up to 3). Fix: relu + he_normal on the hidden
    layers; the depth stays."""
    layers = base["raw"]["model"]["layers"]
    hidden = _hidden(base)
    act = "sigmoid" if rng.random() < 0.65 else "tanh"
    gain = float(_pick(rng, (1.0, 2.0, 3.0, 4.0))) if act == "sigmoid" else float(_pick(rng, (1.5, 2.0, 3.0)))
    depth = max(len(hidden), int(rng.integers(4, 7)))
    width = int(layers[0]["units"])
    init_name = _pick(rng, ("glorot_uniform", "glorot_normal", "lecun_normal"))
    init: Any = init_name if gain == 1.0 else {"name": init_name, "gain": gain}
    fault: dict[str, Any] = {}
    if depth > len(hidden):
        new = [{"units": int(layers[i]["units"]) if i < len(hidden) else width, "activation": act, "init": init}
               for i in range(depth)]
        fault["model.layers"] = [*new, dict(layers[-1])]
        fault["training.epochs"] = _deep_epochs(base, depth, width)
    else:
        for i in hidden:
            fault[f"model.layers.{i}.activation"] = act
            fault[f"model.layers.{i}.init"] = init
    fix: dict[str, Any] = {}
    for i in range(depth):
        fix[f"model.layers.{i}.activation"] = "relu"
        fix[f"model.layers.{i}.init"] = "he_normal"
    _sgd_like(rng, base, fault, 0.5)
    sev = _sev(gain * depth, (6, 12))
    return Attempt("saturating_activation", f"{act}_hidden" + ("" if gain == 1 else "_gain"), sev, fault, fix,
                   {"depth": depth, "gain": gain})


def inject_dead_relu(rng, base) -> Attempt | None:
    hidden = _hidden(base)
    bias = -_sig(_log_uniform(rng, 0.8, 10), 2)
    which = hidden if rng.random() < 0.7 else hidden[:1]
    fault: dict[str, Any] = {}
    fix: dict[str, Any] = {}
    for i in which:
        fault[f"model.layers.{i}.activation"] = "relu"
        fault[f"model.layers.{i}.bias_init"] = bias
        if _act(base) not in RELU_FAMILY or rng.random() < 0.5:
            fault[f"model.layers.{i}.init"] = "he_normal"
        fix[f"model.layers.{i}.bias_init"] = 0.0
    variant = "negative_bias_all" if len(which) == len(hidden) else "negative_bias_first"
    return Attempt("dead_relu", variant, _sev(-bias, (2, 5)), fault, fix, bias)


def inject_high_lr(rng, base) -> Attempt | None:
    lr = base["raw"]["optimizer"]["lr"]
    factor = _sig(_log_uniform(rng, 30, 1e4), 2)
    return Attempt("high_lr", base["raw"]["optimizer"]["name"], _sev(factor, (150, 1500)),
                   {"optimizer.lr": _sig(lr * factor, 3)}, {"optimizer.lr": lr}, factor)


def inject_low_lr(rng, base) -> Attempt | None:
    lr = base["raw"]["optimizer"]["lr"]
    factor = _sig(_log_uniform(rng, 3e2, 1e6), 2)
    return Attempt("low_lr", base["raw"]["optimizer"]["name"], _sev(factor, (3e3, 1e5)),
                   {"optimizer.lr": _sig(lr / factor, 3)}, {"optimizer.lr": lr}, factor)


def inject_sum_reduction(rng, base) -> Attempt | None:
    old = base["raw"]["training"]["batch_size"]
    batch = int(_pick(rng, (64, 128, 256)))
    fault: dict[str, Any] = {"loss.reduction": "sum"}
    opt = _sgd_like(rng, base, fault)  # adaptive optimizers divide the gradient's scale away
    if batch != old:
        fault["training.batch_size"] = batch
        # keep about the same number of steps with the new batch size
        steps = base["raw"]["training"]["epochs"] * _steps_per_epoch(base)
        fault["training.epochs"] = int(min(200, max(5, round(steps / _steps_per_epoch(base, batch)))))
    return Attempt("sum_reduction", opt, _sev(batch, (100, 200)), fault, {"loss.reduction": "mean"}, batch)


def inject_unstable_loss(rng, base) -> Attempt | None:
    if base["task"] != "classification":
        return None
    out = _out(base)
    raw = base["raw"]
    fault: dict[str, Any] = {"loss.stable": False}
    binary = raw["loss"]["name"] == "binary_cross_entropy"
    if not binary and base["n_classes"] == 2 and rng.random() < 0.7:
        fault.update({f"model.layers.{out}.units": 1, f"model.layers.{out}.activation": "sigmoid",
                      "loss.name": "binary_cross_entropy"})
        binary = True
    # conditions under which the textbook formula meets log(0) / exp overflow: confident logits
    epochs = raw["training"]["epochs"]
    longer = float(_pick(rng, (1.0, 2.0, 3.0)))
    if longer > 1:
        steps = epochs * longer * _steps_per_epoch(base)
        fault["training.epochs"] = int(min(epochs * longer, max(epochs, 1500 // _steps_per_epoch(base))))
        del steps
    # the textbook softmax only overflows (exp(z) > 3.4e38) or underflows (p == 0) once logits differ by
    # ~90-100, which takes a fast optimizer; the textbook sigmoid hits p == 1.0 (log(1 - p)) at z ~ 17
    lr_up = float(_pick(rng, (1.0, 3.0, 5.0) if binary else (5.0, 10.0, 20.0, 30.0)))
    if lr_up > 1:
        fault["optimizer.lr"] = _sig(raw["optimizer"]["lr"] * lr_up, 3)
    sev = _sev(longer * lr_up, (2.5, 6))
    return Attempt("unstable_loss", "textbook_bce" if binary else "textbook_softmax", sev, fault,
                   {"loss.stable": True}, longer * lr_up)


def inject_output_mismatch(rng, base) -> Attempt | None:
    out = _out(base)
    o = f"model.layers.{out}"
    c = base["n_classes"]
    if base["task"] == "regression":
        v = _pick(rng, ("sigmoid_regression", "tanh_regression", "relu_regression", "softmax_regression"))
        act = v.split("_")[0]
        return Attempt("output_mismatch", v, "moderate", {f"{o}.activation": act}, {f"{o}.activation": "linear"})
    raw = base["raw"]
    if raw["loss"]["name"] == "binary_cross_entropy":
        v = _pick(rng, ("softmax_bce", "relu_bce", "linear_bce"))
        act = v.split("_")[0]
        fix = {f"{o}.activation": "softmax", f"{o}.units": 2, "loss.name": "cross_entropy"} \
            if rng.random() < 0.5 else {f"{o}.activation": "sigmoid"}
        return Attempt("output_mismatch", v, "moderate", {f"{o}.activation": act}, fix)
    variants = ["relu_ce", "linear_ce", "sigmoid_ce", "too_few_units"]
    if c >= 3:
        variants += ["sigmoid_mse", "softmax_mse", "tanh_mse"]
    v = _pick(rng, variants)
    fix_ce = {f"{o}.activation": "softmax", "loss.name": "cross_entropy"}
    if v.endswith("_ce"):
        return Attempt("output_mismatch", v, "moderate", {f"{o}.activation": v.split("_")[0]}, fix_ce)
    if v == "too_few_units":
        units = int(rng.integers(1, c))
        return Attempt("output_mismatch", v, _sev(c - units, (1, 3)), {f"{o}.units": units}, {f"{o}.units": c},
                       units)
    act = v.split("_")[0]
    return Attempt("output_mismatch", v, _sev(c, (5, 8)), {f"{o}.activation": act, "loss.name": "mse"}, fix_ce, c)


def inject_low_precision(rng, base) -> Attempt | None:
    """Pure float16 training (SPEC: data, parameters, gradients and optimizer state): adam / rmsprop's
    eps (1e-8) and squared gradients underflow to 0 in float16, small updates round away, large values
    overflow at 65504. Fix: float32. Float16 matmuls have no BLAS, so big bases train fewer epochs (a
    condition the fix run keeps)."""
    raw = base["raw"]
    opt = raw["optimizer"]["name"]
    if opt in ("sgd", "momentum") and rng.random() < 0.7:  # plain SGD in float16 mostly trains fine
        return None
    lr = raw["optimizer"]["lr"]
    epochs = raw["training"]["epochs"]
    cost = run_cost(raw, base["n_features"], base["n_train"])
    fault: dict[str, Any] = {"training.dtype": "float16"}
    v = "float16" if opt in ("adam", "rmsprop") and rng.random() < 0.6 else "float16_small_lr"
    param = None
    more = 1.0
    if v == "float16_small_lr":
        div = _sig(_log_uniform(rng, 3, 30), 2)
        fault["optimizer.lr"] = _sig(lr / div, 3)
        more = min(3.0, div / 2)  # more steps, so float32 at the small rate still gets there
        param = div
    new_epochs = int(max(3, min(epochs * more, epochs * F16_MAX_FLOPS / cost)))
    if new_epochs != epochs:
        fault["training.epochs"] = new_epochs
    sev = "moderate" if param is None else _sev(param, (8, 15))
    return Attempt("low_precision", f"{v}_{opt}", sev, fault, {"training.dtype": "float32"}, param)


def _deep_layers(base: dict, depth: int, activation: str, init: dict, width: int) -> list[dict]:
    last = dict(_out_layer(base))
    return [*({"units": width, "activation": activation, "init": dict(init)} for _ in range(depth)), last]


def _deep_epochs(base: dict, depth: int, width: int) -> int:
    """Epochs for a deep net, so its run costs about what the base's does (and at most MAX_FLOPS)."""
    sizes = [base["n_features"], *([width] * depth), int(_out_layer(base)["units"])]
    batch = base["raw"]["training"]["batch_size"]
    per_epoch = 6.0 * batch * layer_flops(sizes) * _steps_per_epoch(base)
    epochs = base["raw"]["training"]["epochs"]
    by_steps = DEEP_LAYER_STEPS // ((depth + 1) * _steps_per_epoch(base))  # per-layer Python work per step
    return int(max(3, min(epochs, MAX_FLOPS // per_epoch, by_steps)))


def inject_exploding_gradients(rng, base) -> Attempt | None:
    """A deep stack (6-12 layers) with no normalisation, each layer's init only slightly too large
    (gain 1.1-1.5 over the scale that fits its activation): the per-layer init is roughly right and the
    growth comes from compounding over depth, so no more specific cause applies. Fix: clip_norm."""
    act = _act(base) if _act(base) in RELU_FAMILY else _pick(rng, ("relu", "leaky_relu"))
    depth = int(rng.integers(6, 13))
    gain = _sig(rng.uniform(1.0, 1.5), 2)
    name = _pick(rng, ("he_normal", "he_uniform", "orthogonal"))
    init = {"name": name, "gain": gain if name != "orthogonal" else _sig(gain * math.sqrt(2), 2)}
    width = int(_pick(rng, (16, 32, 64)))
    layers = _deep_layers(base, depth, act, init, width)
    fault: dict[str, Any] = {"model.layers": layers, "training.epochs": _deep_epochs(base, depth, width)}
    _sgd_like(rng, base, fault, 0.8)
    sev = _sev(gain ** depth, (5, 30))
    return Attempt("exploding_gradients", f"deep_{act}", sev, fault, {"optimizer.clip_norm": 1.0},
                   {"depth": depth, "gain": gain})


def inject_vanishing_gradients(rng, base) -> Attempt | None:
    """A deep stack (8-14 layers) of softplus / tanh units with a glorot init at or a little below its
    nominal scale (gain 0.6-1): no unit is pinned and no layer's init is far off, but the backward signal
    shrinks layer over layer. Fix: batch norm on the hidden layers."""
    act = _pick(rng, ("softplus", "softplus", "tanh"))
    depth = int(rng.integers(8, 15))
    gain = _sig(float(_pick(rng, (0.6, 0.7, 0.8, 1.0))), 2)
    name = _pick(rng, ("glorot_uniform", "glorot_normal"))
    width = int(_pick(rng, (16, 32, 64)))
    init = {"name": name, "gain": gain} if gain != 1.0 else {"name": name}
    layers = _deep_layers(base, depth, act, init, width)
    fault: dict[str, Any] = {"model.layers": layers, "training.epochs": _deep_epochs(base, depth, width)}
    _sgd_like(rng, base, fault, 0.8)
    fix = {f"model.layers.{i}.norm": "batch" for i in range(depth)}
    sev = _sev(depth / gain, (11, 16))
    return Attempt("vanishing_gradients", f"deep_{act}", sev, fault, fix, {"depth": depth, "gain": gain})


INJECTORS: dict[str, Callable[[np.random.Generator, dict], Attempt | None]] = {
    "nan_in_data": inject_nan_in_data,
    "unscaled_data": inject_unscaled_data,
    "bad_init": inject_bad_init,
    "saturating_activation": inject_saturating_activation,
    "dead_relu": inject_dead_relu,
    "high_lr": inject_high_lr,
    "low_lr": inject_low_lr,
    "sum_reduction": inject_sum_reduction,
    "unstable_loss": inject_unstable_loss,
    "output_mismatch": inject_output_mismatch,
    "low_precision": inject_low_precision,
    "exploding_gradients": inject_exploding_gradients,
    "vanishing_gradients": inject_vanishing_gradients,
}
assert tuple(INJECTORS) == CAUSES


# ---- running ---------------------------------------------------------------------------------------------

def _worker_init() -> None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def train_outcome(raw: dict) -> dict:
    """Train one raw config in a temporary run directory; return its outcome numbers (no diagnosis)."""
    import shutil
    import tempfile

    from nandoctor.config import from_mapping
    from nandoctor.errors import NandoctorError
    from nandoctor.telemetry.reader import load_run
    from nandoctor.training import run_training

    tmp = Path(tempfile.mkdtemp(prefix="nd-corpus-"))
    try:
        cfg = from_mapping(raw, default_name=str(raw.get("name", "case")))
        result, run_dir, _ = run_training(cfg, None, tmp / "run")
        run = load_run(run_dir)
        return outcome_of(run, result.seconds)
    except NandoctorError as exc:
        return {"error": exc.render()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def outcome_of(run, seconds: float | None = None) -> dict:
    """The numbers a case keeps from a run: status, final metric (validation, else training), losses."""
    loss = run.steps["loss"]
    finite = loss[np.isfinite(loss)]
    metric = next((float(m) for e in reversed(run.epochs) for m in (e["val_metric"], e["train_metric"])
                   if _finite(m)), None)
    counts = (run.profile.get("target") or {}).get("class_counts")
    chance = max(counts) / sum(counts) if counts and sum(counts) else None
    fn = run.first_nonfinite
    diverged = run.status == "diverged" or (fn is not None and not bool(run.steps["ok"].all()))
    return {
        "status": run.status, "diverged": bool(diverged), "steps": len(loss),
        "metric": None if metric is None else round(metric, 4),
        "chance": None if chance is None else round(chance, 4),
        "initial_loss": _round(float(finite[0])) if finite.size else None,
        "final_loss": _round(float(np.median(finite[-max(1, finite.size // 10):]))) if finite.size else None,
        "first_nonfinite_step": (fn or {}).get("step"),
        "seconds": None if seconds is None else round(seconds, 3),
    }


def _round(x: float) -> float | None:
    return float(f"{x:.4g}") if math.isfinite(x) else None


class Pool:
    """A spawn process pool across the cores (BLAS pinned to one thread per worker)."""

    BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.pool = None
        self.saved_env = {v: os.environ.get(v) for v in self.BLAS_VARS}
        if self.workers > 1:
            # Workers import this module (so NumPy) while unpickling their first task, before any
            # initializer runs: pin BLAS through the environment they inherit when spawned (lazily, on
            # submit, so it stays set until close). The parent's NumPy is already loaded and unaffected.
            for v in self.BLAS_VARS:
                os.environ.setdefault(v, "1")
            self.pool = ProcessPoolExecutor(max_workers=self.workers, initializer=_worker_init,
                                            mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn, items: list) -> list:
        if not items:
            return []
        if self.pool is None:
            return [fn(x) for x in items]
        return list(self.pool.map(fn, items, chunksize=max(1, min(4, len(items) // (4 * self.workers)))))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        for v, value in self.saved_env.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def case_config(corpus: dict, case: dict, with_fix: bool = False) -> dict:
    """The raw config of a case (the base with the fault patch; with the fix patch on top if asked)."""
    from nandoctor.config.paths import apply_all

    base = corpus["bases_by_id"][case["base"]] if "bases_by_id" in corpus else \
        next(b for b in corpus["bases"] if b["id"] == case["base"])
    raw = apply_all(base["raw"], case["fault"])
    raw["name"] = case["id"]
    return apply_all(raw, case["fix"]) if with_fix else raw


def changed(base_out: dict, out: dict) -> bool:
    """The fault really changed the outcome: it went non-finite, or lost MIN_DROP of the metric."""
    if out.get("error"):
        return False
    if out["diverged"]:
        return True
    if out["metric"] is None:
        return True
    return out["metric"] <= base_out["metric"] - MIN_DROP


def restored(base: dict, base_out: dict, out: dict) -> bool:
    return learns(out, base["task"]) and out["metric"] >= base_out["metric"] - FIX_TOLERANCE


def build(n_bases: int = 72, seed: int = 0, target: int = TARGET_PER_CAUSE, workers: int | None = None,
          log=print) -> dict:
    from nandoctor.config.paths import apply_all

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    candidates = [make_base(rng, i) for i in range(n_bases)]
    runs = 0
    with Pool(workers) as pool:
        outs = pool.map(train_outcome, [c["raw"] for c in candidates])
        runs += len(candidates)
        bases, discarded_bases = [], []
        for c, o in zip(candidates, outs, strict=True):
            c["outcome"] = o
            (bases if learns(o, c["task"]) else discarded_bases).append(c)
        log(f"bases: {len(bases)} of {len(candidates)} learn ({time.perf_counter() - t0:.0f} s)")

        kept: list[dict] = []
        stats: dict[str, Counter] = defaultdict(Counter)
        per_base: Counter = Counter()
        seen: set[str] = set()
        order = {cause: list(rng.permutation(len(bases))) for cause in CAUSES}
        for rnd in range(8):
            attempts: list[tuple[dict, Attempt]] = []
            for cause in CAUSES:
                have = sum(1 for k in kept if k["label"] == cause)
                if have >= target or stats[cause]["attempts"] >= MAX_ATTEMPTS_PER_CAUSE:
                    continue
                # attempts for what is missing at the yield seen so far (first round: a guess)
                tried = stats[cause]["attempts"]
                rate = max(0.2, (have + 1) / (tried + 2)) if tried else 0.75
                want = min(MAX_ATTEMPTS_PER_CAUSE - tried, max(4, math.ceil(1.1 * (target - have) / rate)))
                tries = 0
                while want > 0 and tries < 6 * want + 20:
                    tries += 1
                    if not order[cause]:
                        order[cause] = list(rng.permutation(len(bases)))
                    base = bases[order[cause].pop()]
                    if per_base[(base["id"], cause)] >= PER_BASE_PER_CAUSE:
                        continue
                    att = INJECTORS[cause](rng, base)
                    if att is None:
                        continue
                    key = json.dumps([base["id"], att.fault], sort_keys=True)
                    if key in seen:
                        continue
                    seen.add(key)
                    attempts.append((base, att))
                    stats[cause]["attempts"] += 1
                    want -= 1
            if not attempts:
                break
            faulty = [apply_all(b["raw"], a.fault) for b, a in attempts]
            fouts = pool.map(train_outcome, faulty)
            runs += len(faulty)
            survivors = []
            for (b, a), raw, fo in zip(attempts, faulty, fouts, strict=True):
                if fo.get("error"):
                    stats[a.label]["error"] += 1
                elif not changed(b["outcome"], fo):
                    stats[a.label]["no_change"] += 1
                else:
                    survivors.append((b, a, raw, fo))
            fixed = [apply_all(raw, a.fix) for _, a, raw, _ in survivors]
            xouts = pool.map(train_outcome, fixed)
            runs += len(fixed)
            for (b, a, raw, fo), xo in zip(survivors, xouts, strict=True):
                if not restored(b, b["outcome"], xo):
                    stats[a.label]["fix_failed"] += 1
                    continue
                if per_base[(b["id"], a.label)] >= PER_BASE_PER_CAUSE or \
                        sum(1 for k in kept if k["label"] == a.label) >= target:
                    stats[a.label]["surplus"] += 1
                    continue
                per_base[(b["id"], a.label)] += 1
                stats[a.label]["kept"] += 1
                kept.append({
                    "id": f"c{len(kept):04d}", "base": b["id"], "label": a.label, "variant": a.variant,
                    "severity": a.severity, "param": a.param, "data": b["data_name"],
                    "optimizer": raw["optimizer"]["name"], "fault": a.fault,
                    "fix": a.fix,
                    "outcome": {"base_metric": b["outcome"]["metric"], "chance": b["outcome"]["chance"],
                                "fault_status": fo["status"], "fault_metric": fo["metric"],
                                "fault_first_nonfinite_step": fo["first_nonfinite_step"],
                                "fault_final_loss": fo["final_loss"], "fix_metric": xo["metric"],
                                "fix_status": xo["status"]}})
            done = {c: sum(1 for k in kept if k["label"] == c) for c in CAUSES}
            log(f"round {rnd + 1}: {len(attempts)} attempts, {len(survivors)} changed, kept so far "
                f"{len(kept)} ({time.perf_counter() - t0:.0f} s, {runs} runs) " +
                " ".join(f"{c}={n}" for c, n in done.items()))
    used = {k["base"] for k in kept}
    corpus = {
        "version": VERSION, "seed": seed, "n_candidates": n_bases, "min_drop": MIN_DROP,
        "fix_tolerance": FIX_TOLERANCE, "runs": runs, "build_seconds": round(time.perf_counter() - t0, 1),
        "stats": {c: dict(stats[c]) for c in CAUSES},
        "discarded_bases": [{"id": c["id"], "data": c["data_name"], "outcome": c["outcome"]}
                            for c in discarded_bases],
        "bases": [{k: v for k, v in b.items()} | {"used": b["id"] in used} for b in bases],
        "cases": kept,
    }
    return corpus


def dumps(corpus: dict) -> str:
    """JSON with one base / case per line: compact, and a rebuild diffs line by line."""
    lists = ("discarded_bases", "bases", "cases")
    head = {k: v for k, v in corpus.items() if k not in (*lists, "bases_by_id")}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    for j, key in enumerate(lists):
        items = corpus[key]
        lines.append(f" {json.dumps(key)}: [")
        lines += [f"  {json.dumps(x, separators=(',', ':'))}{',' if i < len(items) - 1 else ''}"
                  for i, x in enumerate(items)]
        lines.append(" ]" + ("," if j < len(lists) - 1 else ""))
    return "\n".join([*lines, "}"]) + "\n"


def save(corpus: dict, path: Path = CORPUS_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(corpus), encoding="utf-8")


def load(path: Path = CORPUS_FILE) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build it with `python -m bench.corpus --build`")
    corpus = json.loads(path.read_text(encoding="utf-8"))
    corpus["bases_by_id"] = {b["id"]: b for b in corpus["bases"]}
    return corpus


def summary(corpus: dict) -> str:
    lines = [f"corpus v{corpus['version']} seed {corpus['seed']}: {len(corpus['bases'])} healthy bases "
             f"({len(corpus['discarded_bases'])} candidates discarded), {len(corpus['cases'])} cases, "
             f"{corpus['runs']} runs in {corpus['build_seconds']} s",
             f"{'cause':24} {'kept':>5} {'tried':>6} {'no_change':>10} {'fix_failed':>11} {'error':>6}  variants"]
    for c in CAUSES:
        s = corpus["stats"].get(c, {})
        variants = Counter(k["variant"] for k in corpus["cases"] if k["label"] == c)
        lines.append(f"{c:24} {s.get('kept', 0):>5} {s.get('attempts', 0):>6} {s.get('no_change', 0):>10} "
                     f"{s.get('fix_failed', 0):>11} {s.get('error', 0):>6}  "
                     + ", ".join(f"{v} {n}" for v, n in variants.most_common()))
    data = Counter(b["data_name"] for b in corpus["bases"])
    lines.append("bases by data set: " + ", ".join(f"{d} {n}" for d, n in data.most_common()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.split("\n")[0])
    p.add_argument("--build", action="store_true", help="rebuild the corpus (trains a few hundred runs)")
    p.add_argument("--n", type=int, default=72, help="candidate base configs (default 72)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=int, default=TARGET_PER_CAUSE, help="kept cases per cause to aim for")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", type=Path, default=CORPUS_FILE)
    args = p.parse_args(argv)
    if args.build:
        corpus = build(args.n, args.seed, args.target, args.workers)
        save(corpus, args.out)
        print(summary(corpus))
        print(f"written {args.out}")
        return 0
    try:
        print(summary(load(args.out)))
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
