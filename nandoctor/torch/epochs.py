"""What one epoch of a PyTorch run accumulates until `rec.epoch` (or `rec.close`) writes it: the step losses
(the default train_loss), the accuracy over the sampled batches (the default train_metric, from the
model outputs the hooks already hold: no extra forward) and, per ReLU layer, the units that were positive
for at least one sampled input (the rest are dead, once enough rows were seen)."""

from __future__ import annotations

import math

import numpy as np
import torch

DEAD_MIN_ROWS = 256  # sampled rows an epoch needs before units that never fired are called dead


class Epoch:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.losses: list[float] = []
        self.steps = 0
        self.correct = 0
        self.seen = 0
        self.alive: dict[int, torch.Tensor] = {}  # layer -> units positive for at least one sampled input
        self.alive_rows: dict[int, int] = {}

    def step(self, loss: float) -> None:
        self.losses.append(loss)
        self.steps += 1

    def activations(self, i: int, a: torch.Tensor) -> None:
        """A sampled activation (B, units, ...) of layer i: its units (features, or channels) that fired."""
        with torch.no_grad():
            alive = a.detach().reshape(a.shape[0], a.shape[1], -1).amax(dim=(0, 2)) > 0
        old = self.alive.get(i)
        self.alive[i] = alive if old is None or old.shape != alive.shape else old | alive
        self.alive_rows[i] = self.alive_rows.get(i, 0) + int(a.shape[0])

    def predictions(self, out: torch.Tensor | None, targets: torch.Tensor, output_activation: str | None) -> None:
        """A sampled classification batch: the model output `out` against `targets` (labels or one-hot)."""
        if out is None or out.ndim < 1 or out.shape[0] != targets.shape[0]:
            return
        with torch.no_grad():
            if out.ndim >= 2 and out.shape[-1] > 1:
                pred = out.argmax(dim=-1)
                y = targets.argmax(dim=-1) if targets.ndim == out.ndim else targets
            else:
                threshold = 0.0 if output_activation == "sigmoid" else 0.5
                pred = (out.reshape(-1) > threshold).long()
                y = targets.reshape(-1).long()
            if pred.shape != y.shape:
                return
            self.correct += int((pred == y.to(pred.device)).sum())
            self.seen += int(y.numel())

    def record(self, epoch: int, train_loss: float | None, val_loss: float | None, train_metric: float | None,
               val_metric: float | None) -> dict:
        """The epochs row (NaN for what is unknown), train_loss and train_metric defaulting to what was seen."""
        if train_loss is None:
            train_loss = float(np.mean(self.losses)) if self.losses else math.nan
        if train_metric is None and self.seen:
            train_metric = self.correct / self.seen
        rec = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               "train_metric": train_metric, "val_metric": val_metric}
        return {k: (math.nan if v is None else float(v)) if k != "epoch" else v for k, v in rec.items()}

    def dead_units(self) -> list[tuple[int, int, int]]:
        """(layer, dead units, units) of the layers sampled over at least DEAD_MIN_ROWS rows."""
        dead = []
        for i, alive in self.alive.items():
            if self.alive_rows.get(i, 0) >= DEAD_MIN_ROWS:
                dead.append((i, int((~alive).sum()), int(alive.numel())))
        return dead
