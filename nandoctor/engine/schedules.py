"""Learning-rate schedules: `lr(step, epoch)` with 1-based steps and 0-based epoch index.

Epoch-wise schedules (step, exponential) change at epoch boundaries; cosine ones per step;
reduce_on_plateau reacts to the epoch's mean training loss through `end_epoch`.
"""

from __future__ import annotations

import math

from nandoctor.config.schema import ScheduleConfig


class Schedule:
    name = "constant"

    def __init__(self, cfg: ScheduleConfig, base_lr: float, epochs: int, total_steps: int):
        self.cfg, self.base, self.epochs, self.total = cfg, base_lr, epochs, max(1, total_steps)

    def lr(self, step: int, epoch: int) -> float:
        return self.base

    def end_epoch(self, train_loss: float) -> None:
        """Called with the epoch's mean training loss; only the plateau schedule listens."""


class Step(Schedule):
    """lr = base gamma^(epoch // step_size); step_size defaults to max(1, epochs // 3)."""

    name = "step"

    def lr(self, step, epoch):
        size = self.cfg.step_size or max(1, self.epochs // 3)
        return self.base * self.cfg.gamma ** (epoch // size)


class Exponential(Schedule):
    """lr = base gamma^epoch."""

    name = "exponential"

    def lr(self, step, epoch):
        return self.base * self.cfg.gamma**epoch


def _cosine(base: float, floor: float, t: int, span: int) -> float:
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * min(t, span) / max(1, span)))


class Cosine(Schedule):
    """lr = min_lr + (base - min_lr) (1 + cos(pi (step - 1) / total)) / 2."""

    name = "cosine"

    def lr(self, step, epoch):
        return _cosine(self.base, self.cfg.min_lr, step - 1, self.total)


class WarmupCosine(Schedule):
    """Linear warmup base * step / warmup over `warmup` steps (default 5 % of all), then cosine."""

    name = "warmup_cosine"

    def lr(self, step, epoch):
        w = self.cfg.warmup if self.cfg.warmup is not None else max(1, round(0.05 * self.total))
        if step <= w:
            return self.base * step / max(1, w)
        return _cosine(self.base, self.cfg.min_lr, step - 1 - w, self.total - w)


class ReduceOnPlateau(Schedule):
    """Multiply lr by `factor` when the epoch loss has not improved for `patience` epochs."""

    name = "reduce_on_plateau"

    def __init__(self, *args):
        super().__init__(*args)
        self.current, self.best, self.bad = self.base, math.inf, 0

    def lr(self, step, epoch):
        return self.current

    def end_epoch(self, train_loss):
        if train_loss < self.best:
            self.best, self.bad = train_loss, 0
            return
        self.bad += 1
        if self.bad > self.cfg.patience:
            self.current *= self.cfg.factor
            self.bad = 0


SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (
    Schedule, Step, Exponential, Cosine, WarmupCosine, ReduceOnPlateau)}


def make_schedule(cfg: ScheduleConfig, base_lr: float, epochs: int, total_steps: int) -> Schedule:
    return SCHEDULES[cfg.name](cfg, base_lr, epochs, total_steps)
