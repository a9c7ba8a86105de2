"""The training loop: batches, the step, per-epoch evaluation, and the cheap per-step health checks.

Each step runs forward -> loss -> backward -> global gradient norm -> clip -> update (computed
into a buffer) -> apply. Finiteness is checked on scalars the step needs anyway (the loss and the
gradient norm) plus bounds derived from them, so a step makes one pass over the parameters for its
checks (more only when the bounds get loose); only when one fires does `locate`
scan the step's buffers, before the weights are touched, to name the producer of the first
non-finite value.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from nandoctor.config.schema import Config
from nandoctor.engine.locate import locate
from nandoctor.engine.losses import make_loss, prepare_targets
from nandoctor.engine.model import MLP
from nandoctor.engine.optimizers import clip, make_optimizer
from nandoctor.engine.schedules import make_schedule
from nandoctor.engine.threads import blas_threads_for
from nandoctor.seeding import stream

if TYPE_CHECKING:
    from nandoctor.data import Dataset


class Observer(Protocol):
    """What telemetry implements; every hook receives the trainer so it can read any buffer."""

    def start(self, trainer: Trainer) -> None: ...
    def step(self, trainer: Trainer, info: StepInfo) -> None: ...
    def epoch(self, trainer: Trainer, record: dict) -> None: ...
    def nonfinite(self, trainer: Trainer, event: dict) -> None: ...
    def end(self, trainer: Trainer, status: str) -> None: ...


@dataclass
class StepInfo:
    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    status: str = "ok"  # ok | nonfinite
    batch: np.ndarray | None = None  # row indexes of the batch


@dataclass
class TrainResult:
    status: str  # completed | diverged | interrupted
    steps: int
    first_nonfinite: dict | None
    epochs: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def sqnorm(x: np.ndarray) -> float:
    """Squared L2 norm with a float64 result; float16 is accumulated in float32 so the norm itself
    does not overflow where the values do not."""
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    return float(np.dot(x, x))


def _finite_sqnorm(x: np.ndarray) -> tuple[float, bool]:
    """(squared norm, all finite); a norm that overflows from finite huge values stays finite-flagged."""
    n2 = sqnorm(x)
    if math.isfinite(n2):
        return n2, True
    if np.isfinite(x).all():
        big = float(np.abs(x).max())
        return float(np.sum((x.astype(np.float64) / big) ** 2)) * big * big, True
    return n2, False


class Trainer:
    def __init__(self, cfg: Config, data: Dataset, observer: Observer | None = None):
        self.cfg, self.data, self.observer = cfg, data, observer
        t = cfg.training
        self.dtype = np.dtype(t.dtype)
        with np.errstate(all="ignore"):  # float16 casts of huge raw data overflow by design
            self.X = data.X_train.astype(self.dtype)
            self.Xv = data.X_val.astype(self.dtype)
        layers = cfg.model.layers
        self.units = layers[-1].units
        self.Y = prepare_targets(data.y_train, cfg.loss.name, data.task, self.units, self.dtype)
        self.Yv = prepare_targets(data.y_val, cfg.loss.name, data.task, self.units, self.dtype)
        self.model = MLP(self.X.shape[1], layers, dtype=self.dtype, seed=cfg.seed)
        self.loss = make_loss(cfg.loss, layers[-1].activation)
        self.optimizer = make_optimizer(cfg.optimizer, self.model.params)
        n = len(self.X)
        self.batch_size = n if t.batch_size == "full" else min(int(t.batch_size), max(n, 1))
        self.steps_per_epoch = max(1, math.ceil(n / self.batch_size))
        total = t.epochs * self.steps_per_epoch
        self.total_steps = min(total, t.max_steps) if t.max_steps else total
        self.schedule = make_schedule(cfg.schedule, cfg.optimizer.lr, t.epochs, self.total_steps)
        self._update = np.zeros_like(self.model.params)
        self._update_lr: float | None = None  # set when `update` is still to be computed (fused SGD step)
        self._stop, self._fused = t.stop_on_nonfinite, self.loss.fused  # read once, not every step
        self._clips = cfg.optimizer.clip_value is not None or cfg.optimizer.clip_norm is not None
        self._next = np.empty_like(self.model.params) if self.dtype == np.float16 else None
        self._grad_bufs: dict[int, np.ndarray] = {}
        self.shuffle_rng = stream(cfg.seed, "shuffle")
        self.step_no = 0
        self.first_nonfinite: dict | None = None
        self.nonfinite_steps = 0
        self.backward_ran = self.update_applied = False  # what the last step got through (telemetry reads it)
        self.track_weight_norms = False  # set by an observer for the steps it will record
        self.weight_norms: list[float] = []
        self.dead_units: list[tuple[int, int, int]] = []  # (layer, units dead on the training set, units)
        self.last_loss = math.nan
        self._safe = float(np.finfo(self.dtype).max) / 4  # magnitudes below this cannot overflow in one add
        self._p_bound = math.inf  # upper bound on max |weight|, inf until measured (see _still_finite)

    # ---- one step -------------------------------------------------------------------------
    def _grad_buf(self, batch: int) -> np.ndarray:
        buf = self._grad_bufs.get(batch)
        if buf is None:
            buf = self._grad_bufs[batch] = np.empty((batch, self.units), self.dtype)
        return buf

    def train_step(self, xb: np.ndarray, yb: np.ndarray, lr: float) -> tuple[float, float, str | None]:
        """One step on a batch; returns (loss, grad norm, phase of the first failed check or None).
        On a failed check before the update the parameters are left untouched."""
        model, loss, stop = self.model, self.loss, self._stop
        self.backward_ran = self.update_applied = False
        self._update_lr = None
        model.forward(xb, True, self._fused)
        out = model.layers[-1].buf
        value = loss.forward(out.z, out.a, yb)
        if stop and not math.isfinite(value):
            return value, math.nan, "loss"
        grad, wrt = loss.backward(self._grad_buf(len(xb)))
        model.backward(grad, wrt)
        self.backward_ran = True
        g2, ok = _finite_sqnorm(model.grads)
        if stop and not ok:
            return value, math.nan, "backward"
        gnorm = clip(model.grads, self.cfg.optimizer, math.sqrt(g2)) if self._clips else math.sqrt(g2)
        if self.track_weight_norms:  # telemetry's update/weight ratio needs the weights before the update
            self.weight_norms = [math.sqrt(sqnorm(layer.W.reshape(-1))) for layer in model.layers]
        failed = None if math.isfinite(value) else "loss"
        failed = failed or (None if ok else "backward")
        u_max = self.optimizer.max_step(lr, gnorm)
        if u_max < self._safe and self.dtype != np.float16 and self.optimizer.apply(model.params, model.grads, lr):
            self._update_lr = lr
            return self._applied(value, gnorm, failed, u_max)
        upd = self.optimizer.compute(model.grads, lr, self._update)
        if not u_max < self._safe:  # no cheap bound on the update: measure it
            u2, u_ok = _finite_sqnorm(upd)
            u_max = math.sqrt(u2)
            if not u_ok:
                failed = failed or "update"
                if stop:
                    return value, gnorm, failed
        if self.dtype == np.float16:
            # Finite weights plus a finite update overflow easily at 65504: try the sum first and
            # keep the last good weights if it fails. Wider dtypes take the in-place fast path.
            nxt = np.add(model.params, upd, out=self._next)
            if failed is None and not self._still_finite(nxt, u_max):
                failed = "update"
                if stop:
                    return value, gnorm, failed
            model.params[...] = nxt
            return self._applied(value, gnorm, failed, None)
        np.add(model.params, upd, out=model.params)
        return self._applied(value, gnorm, failed, u_max)

    def _applied(self, value: float, gnorm: float, failed: str | None, u_max: float | None):
        """The end of a step whose update was added; u_max (None: already checked) bounds it."""
        self.update_applied = True
        if failed is None and u_max is not None and not self._still_finite(self.model.params, u_max):
            failed = "update"
        if failed is not None:
            self._p_bound = math.inf  # the weights may hold anything now: measure them next time
        return value, gnorm, failed

    @property
    def update(self) -> np.ndarray:
        """The update of the last step (applied, or stopped by a check), flat like the parameters.
        A fused SGD step never wrote it: it is computed here on first read, from the gradients and
        lr still in place, bit for bit what the step added."""
        if self._update_lr is not None:
            np.multiply(self.model.grads, -self._update_lr, out=self._update)
            self._update_lr = None
        return self._update

    @property
    def update_scale(self) -> float | None:
        """c when the last step's update is exactly c * gradients and was never written out (a fused
        SGD step), so telemetry can derive its statistics from the gradients' instead of building it."""
        return -self._update_lr if self._update_lr is not None else None

    def _still_finite(self, p: np.ndarray, u_max: float) -> bool:
        """Are the weights p, finite before a step no larger than u_max, still finite? While
        |w| <= bound and bound + u_max < max/4 nothing can overflow, so a running bound replaces a
        pass over all parameters; p is only measured (and the bound reset to its norm) when the
        bound gets that large, which a float32 run never sees."""
        bound = self._p_bound + u_max
        if bound < self._safe:
            self._p_bound = bound
            return True
        p2, ok = _finite_sqnorm(p)
        self._p_bound = math.sqrt(p2) if ok else math.inf
        return ok

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> TrainResult:
        obs = self.observer
        t0 = time.perf_counter()
        status, epochs = "completed", []
        self.first_nonfinite = self._check_data()
        if obs:
            obs.start(self)
            if self.first_nonfinite:
                obs.nonfinite(self, self.first_nonfinite)
        try:
            with np.errstate(all="ignore"), self.blas_threads():
                status = self._loop(epochs)
        except KeyboardInterrupt:
            status = "interrupted"
        result = TrainResult(status, self.step_no, self.first_nonfinite, epochs, time.perf_counter() - t0)
        if obs:
            obs.end(self, status)
        return result

    def blas_threads(self):
        """The BLAS thread count this model's products run with (see engine.threads)."""
        fan = [(layer.fan_in, layer.fan_out) for layer in self.model.layers]
        return blas_threads_for(fan, self.batch_size)

    def _loop(self, epochs: list[dict]) -> str:
        t, obs = self.cfg.training, self.observer
        n = len(self.X)
        for epoch in range(t.epochs):
            order = self.shuffle_rng.permutation(n) if t.shuffle else np.arange(n)
            losses, diverged = [], False
            for start in range(0, n, self.batch_size):
                if self.step_no >= self.total_steps:
                    break
                idx = order[start:start + self.batch_size]
                self.step_no += 1
                lr = self.schedule.lr(self.step_no, epoch)
                value, gnorm, failed = self.train_step(self.X[idx], self.Y[idx], lr)
                self.last_loss = value
                losses.append(value)
                info = StepInfo(self.step_no, epoch + 1, value, lr, gnorm, "ok" if failed is None else "nonfinite",
                                idx)
                self.nonfinite_steps += failed is not None
                if failed is not None and self.first_nonfinite is None:
                    event = locate(self.model, self.cfg.loss.name, self.cfg.loss.stable, failed, self.update)
                    self.first_nonfinite = {"step": self.step_no, "epoch": epoch + 1, **event}
                    if obs:
                        obs.nonfinite(self, self.first_nonfinite)
                if obs:
                    obs.step(self, info)
                if failed is not None and t.stop_on_nonfinite:
                    diverged = True
                    break
            epochs.append(self._epoch_record(epoch + 1, losses))
            if obs:
                obs.epoch(self, epochs[-1])
            if diverged:
                return "diverged"
            self.schedule.end_epoch(float(np.mean(losses)) if losses else math.nan)
            if self.step_no >= self.total_steps:
                break
        return "diverged" if self.nonfinite_steps else "completed"

    def _check_data(self) -> dict | None:
        """Step 0: non-finite inputs or targets are the first non-finite event, in phase `data`."""
        parts = []
        d = self.data
        for split, X, y, cast in (("train", d.X_train, d.y_train, self.X), ("validation", d.X_val, d.y_val, self.Xv)):
            bad_x = ~np.isfinite(X)
            overflow = int((~np.isfinite(cast)).sum() - bad_x.sum())
            if overflow:
                parts.append(f"{overflow} input values overflow when cast to {self.dtype} in the {split} split "
                             f"(|x| max {float(np.abs(X[np.isfinite(X)]).max()):.4g}, "
                             f"{self.dtype} max {np.finfo(self.dtype).max:.4g})")
            if bad_x.any():
                cols = np.flatnonzero(bad_x.any(axis=0))
                names = [d.feature_names[c] if c < len(d.feature_names) else str(c) for c in cols]
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                parts.append(f"{int(bad_x.sum())} non-finite input values in the {split} split "
                             f"(features: {shown})")
            if np.issubdtype(np.asarray(y).dtype, np.floating) and not np.isfinite(y).all():
                parts.append(f"{int((~np.isfinite(y)).sum())} non-finite targets in the {split} split")
        if not parts:
            return None
        return {"step": 0, "epoch": 0, "phase": "data", "layer": None, "tensor": "input", "role": "producer",
                "detail": "; ".join(parts), "count": 0, "size": int(self.X.size)}

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self, X: np.ndarray, Y: np.ndarray, labels: np.ndarray,
                 alive: list[np.ndarray] | None = None) -> tuple[float, float]:
        """(loss, metric) in eval mode; the loss is per sample, times the batch size for `sum`."""
        if len(X) == 0:
            return math.nan, math.nan
        z, a = self.model.infer(X, alive)
        loss = self.loss.__class__(self.cfg.loss, self.cfg.model.layers[-1].activation)
        value = loss.forward(z, a.copy(), Y)
        if self.cfg.loss.reduction == "sum":
            value *= self.batch_size / len(X)
        return value, self.metric(a, Y, labels)

    def metric(self, a: np.ndarray, Y: np.ndarray, labels: np.ndarray) -> float:
        """Accuracy for classification, R^2 for regression."""
        a = a.astype(np.float64)
        if self.data.task == "classification":
            pred = a.argmax(axis=1) if a.shape[1] > 1 else (a[:, 0] > 0.5).astype(np.int64)
            return float(np.mean(pred == labels))
        y = Y.astype(np.float64)
        ss_tot = float(((y - y.mean(axis=0)) ** 2).sum())
        ss_res = float(((a - y) ** 2).sum())
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan

    def _epoch_record(self, epoch: int, losses: list[float]) -> dict:
        train_loss = float(np.mean(losses)) if losses else math.nan
        alive = [np.zeros(layer.fan_out, bool) for layer in self.model.layers]
        _, train_metric = self.evaluate(self.X, self.Y, self.data.y_train, alive)
        self.dead_units = [(layer.index, int((~seen).sum()), layer.fan_out)
                           for layer, seen in zip(self.model.layers[:-1], alive, strict=False)]
        val_loss, val_metric = self.evaluate(self.Xv, self.Yv, self.data.y_val)
        return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                "train_metric": train_metric, "val_metric": val_metric}
