"""Step 0: the untrained network on one batch, and the initial loss against chance.

It runs the real forward in train mode (batch statistics, dropout) and then restores the dropout
RNG and the batch-norm running statistics, so recording a preflight never changes training.
"""

from __future__ import annotations

import math

import numpy as np

from nandoctor.telemetry.stats import saturated_fraction

PREFLIGHT_ROWS = 256


def chance_loss(loss: str, n_classes: int | None, Y: np.ndarray) -> float | None:
    """The loss of a predictor that knows nothing: ln C, ln 2, or the target variance for mse."""
    if loss == "cross_entropy" and n_classes:
        return math.log(n_classes)
    if loss == "binary_cross_entropy":
        return math.log(2)
    if loss == "mse" and len(Y):
        return float(np.mean(np.var(np.asarray(Y, dtype=np.float64), axis=0)))
    return None


def preflight(trainer) -> dict:
    model, rows = trainer.model, min(PREFLIGHT_ROWS, len(trainer.X))
    xb, yb = trainer.X[:rows], trainer.Y[:rows]
    saved = [(layer.rng.bit_generator.state, None if layer.running_mean is None else
              (layer.running_mean.copy(), layer.running_var.copy())) for layer in model.layers]
    with np.errstate(all="ignore"):
        model.forward(xb, train=True, fused_output=trainer.loss.fused)
        out = model.layers[-1].buf
        loss_obj = type(trainer.loss)(trainer.cfg.loss, trainer.cfg.model.layers[-1].activation)
        initial = loss_obj.forward(out.z, out.a, yb) if rows else math.nan  # fused losses fill `a`
        layers = []
        for layer in model.layers:
            b = layer.buf
            a = b.a.astype(np.float64)
            finite = np.isfinite(a)
            layers.append({
                "layer": layer.index,
                "pre_activation_std": float(np.std(b.lin[np.isfinite(b.lin)])) if np.isfinite(b.lin).any() else None,
                "activation_std": float(np.std(a[finite])) if finite.any() else None,
                "activation_abs_max": float(np.abs(a[finite]).max()) if finite.any() else None,
                "saturated": saturated_fraction(b.a, layer.act.name),
                "zero": float(np.mean(b.a == 0)),
                "nonfinite": float(1 - finite.mean()) if a.size else 0.0,
            })
    for layer, (state, running) in zip(model.layers, saved, strict=True):
        layer.rng.bit_generator.state = state
        if running is not None:
            layer.running_mean[...], layer.running_var[...] = running
    chance = chance_loss(trainer.cfg.loss.name, trainer.data.n_classes, trainer.Y)
    return {"rows": rows, "initial_loss": initial if math.isfinite(initial) else None,
            "chance_loss": chance, "layers": layers}
