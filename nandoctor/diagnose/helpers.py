"""Small shared pieces of rule logic: number formatting, severity from harm, fix builders."""

from __future__ import annotations

import math

import numpy as np

from nandoctor.config.paths import compact
from nandoctor.diagnose.facts import Facts, LayerFacts
from nandoctor.diagnose.finding import Fix

RELU_LIKE = ("relu", "leaky_relu", "elu", "gelu", "softplus")


def g(x: float) -> str:
    """A measurement for people: 3 significant digits, 'nan' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3g}"


def pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.0f} %"


def round_lr(lr: float) -> float:
    """One significant digit: 0.0123 -> 0.01."""
    if lr <= 0 or not math.isfinite(lr):
        return lr
    exp = math.floor(math.log10(lr))
    return float(f"{round(lr / 10**exp) * 10**exp:.1g}")


# The top of the usual learning-rate range per optimizer: past it a divergence is the rate's doing;
# below it, in a deep network, the gradients are what blew up.
SANE_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "rmsprop": 0.01, "adagrad": 0.1, "adam": 0.01,
           "adamw": 0.01}
DEEP = 6  # layers


def sane_deep_divergence(facts: Facts) -> bool:
    """A deep network diverged at a learning rate inside the usual range."""
    cfg = facts.cfg
    if cfg is None or not facts.diverged or len(facts.layers) < DEEP:
        return False
    return cfg.optimizer.lr <= SANE_LR.get(cfg.optimizer.name, 0.01)


def current_lr(facts: Facts) -> float | None:
    """The configured learning rate, or for a run without config (PyTorch) the first one it recorded."""
    if facts.cfg is not None:
        return facts.cfg.optimizer.lr
    lr = facts.run.steps["lr"]
    lr = lr[np.isfinite(lr)]
    return float(lr[0]) if lr.size else None


def loss_spec(facts: Facts) -> tuple[str | None, bool | None, str | None]:
    """(name, stable, reduction) of the loss: from the config, else from a recorder's meta["loss"]
    (nandoctor.torch reads it from the autograd graph; None where unknown)."""
    if facts.cfg is not None:
        return facts.cfg.loss.name, facts.cfg.loss.stable, facts.cfg.loss.reduction
    meta = facts.run.meta.get("loss") or {}
    return meta.get("name"), meta.get("stable"), meta.get("reduction")


def matching_init(activation: str) -> str:
    return "he_normal" if activation in RELU_LIKE else "glorot_uniform"


def hidden_activation_patch(layers: list[LayerFacts], activation: str) -> dict:
    """Per-layer patch of the hidden layers only: a `*` would also change the output activation."""
    patch: dict = {}
    for lf in layers:
        if lf.hidden:
            patch[f"{lf.path}.activation"] = activation
            patch[f"{lf.path}.init"] = matching_init(activation)
    return patch


def listing(lead: str, patch: dict) -> str:
    """`lead: path: value, ...`, runs of layers given the same value shown as one slice."""
    return f"{lead}: " + ", ".join(f"{k}: {v}" for k, v in compact(patch).items())


def config_fix(facts: Facts, summary: str, patch: dict, advice: str | None = None) -> Fix:
    """A config patch, or code-level advice (patch null) when the run has no config to patch."""
    if facts.cfg is None:
        return Fix(advice or summary, None)
    return Fix(summary, patch)
