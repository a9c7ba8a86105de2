"""`Recorder`: telemetry of a PyTorch training loop, written as a nandoctor run directory.

    rec = Recorder(model, "runs/exp1")               # before the loop (after wrapping in DDP, if any)
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        rec.step(loss, optimizer, inputs=x, targets=y)   # after backward, before optimizer.step()
        optimizer.step()
    rec.close()                                      # or: with Recorder(...) as rec:

What it records, in the NumPy engine's format (nandoctor.telemetry.store):
- every step: loss, lr (param group 0), ok / nonfinite; the global L2 gradient norm at sampled steps
  (every step with grad_norm="every", or in float16/bfloat16), NULL between them;
- at sampled steps (nandoctor.torch.sampling: the engine's retention policy, 20 dense steps then every
  10th, with a cost cap): per layer the pre-activation, norm output, activation and dL/d(output)
  statistics from forward hooks and tensor hooks, weight, bias and gradient statistics, and the update
  the optimizer applied (a post-step hook: parameters after minus before, and the update/weight
  ratio). Anomalies are recorded whatever the stride: non-finite steps, loss spikes;
- the layers table (module paths, fan-in/out, activation, norm, dropout, weight std at attach time),
  the preflight (step 1: initial loss vs chance, per-layer activation scale and saturation), the data
  profile of the batches shown to `rec.step(inputs=, targets=)`, epochs via `rec.epoch(...)`, dead
  ReLU units per epoch (units never positive over the epoch's sampled batches), the loss read from
  the autograd graph (name, stable, reduction), and the first non-finite value located at module
  level (nandoctor.torch.locate).

Cost. Module hooks are attached only for the forwards of sampled steps; an ordinary step runs
PyTorch's hook-free path plus the model's own pre/post hook (its arguments and RNG state, by
reference), `loss.item()`, a finiteness check of one small gradient (the first layer's bias
gradient: it sums that layer's output gradient, which a NaN born anywhere in backward reaches), and
a few list appends. When a step's loss or gradients are not finite and its
forward was not traced, the forward is re-run once with hooks (same arguments, weights and RNG state;
buffers and RNG restored) to locate the producer. `bench/recorder_overhead.py` measures the whole
(6-10 % on the MNIST-shape MLP on a busy 2-CPU machine).

Placement: `rec.step` must run after `loss.backward()` (it reads the gradients) and before
`optimizer.step()` (it snapshots the weights at sampled steps so the post-step hook can measure the
applied update, and a re-run forward must see the step's weights). With gradient clipping, call it
before clipping to record the raw norm. With gradient accumulation, call it once per optimizer step.
A recorder failure never stops training: it warns once and stops recording (strict=True raises).

`Recorder` runs the step; its parts: tracer (hooks, the step's trace), checks (gradients, spikes), anomalies
(non-finite values), layerstats (statistics, updates), epochs, startup (the run's start, step 1), guard.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nandoctor.telemetry.store import RunWriter
from nandoctor.torch import anomalies
from nandoctor.torch.checks import GradCheck, SpikeCheck
from nandoctor.torch.ddp import distributed, rank_dir
from nandoctor.torch.epochs import Epoch
from nandoctor.torch.guard import Guard, entry_point
from nandoctor.torch.layerstats import LayerStats
from nandoctor.torch.modules import discover, unwrap
from nandoctor.torch.profile import BatchProfile
from nandoctor.torch.sampling import BUDGET, Sampler
from nandoctor.torch.startup import LOW_PRECISION, calibrate, check_arguments, prepare_dir, register_atexit, start_meta
from nandoctor.torch.stats import quiet
from nandoctor.torch.tracer import Tracer, first_tensor


class Recorder:
    """Record a PyTorch training loop into a nandoctor run directory (see the module docstring).

    model: the nn.Module being trained (a DDP / DataParallel / torch.compile wrapper is unwrapped).
    run_dir: the run directory; under torch.distributed, rank k > 0 records into run_dir/rank<k>/.
    every: "auto" or N (per-layer statistics every N steps), as the YAML `monitor.every`.
    total_steps: the planned number of optimizer steps, if known (sets the "auto" stride and the meta).
    loss, stable, reduction, task: hints that override what is inferred (the loss from the autograd
        graph at step 1, the task from the targets): loss in cross_entropy | binary_cross_entropy |
        mse | mae | huber; stable False for a hand-written log-likelihood on probabilities;
        reduction mean | sum; task classification | regression.
    optimizer: the optimizer, if known now (else taken from the first rec.step).
    profile_batches: how many batches feed the data profile's statistics.
    feature_names: names of the input features (columns of a 2-D input, channels otherwise) for reports.
    overhead: with every="auto", the share of the step time the sampled statistics may cost (0.03); the
        stride grows (up to 5x) until they fit. None: the NumPy engine's stride exactly.
    grad_norm: "sampled" (the global gradient norm at sampled steps, a cheap finiteness check of the
        small gradients between them) or "every" (the global norm every step, one pass over the gradients).
    overwrite: replace the telemetry of an earlier run in run_dir (else that is an error).
    strict: raise recorder errors instead of warning once and disabling the recorder.
    """

    def __init__(self, model: nn.Module, run_dir: str | Path, every: int | str = "auto", *,
                 total_steps: int | None = None, name: str | None = None, loss: str | None = None,
                 stable: bool | None = None, reduction: str | None = None, task: str | None = None,
                 optimizer: torch.optim.Optimizer | None = None, profile_batches: int = 50,
                 feature_names: list[str] | None = None, overhead: float | None = BUDGET,
                 grad_norm: str = "sampled", overwrite: bool = False, strict: bool = False):
        check_arguments(every, loss, grad_norm, reduction)
        self.guard = Guard(strict)
        self.rank, self.world_size = distributed()
        self.root_dir = Path(run_dir)
        self.dir = rank_dir(self.root_dir, self.rank)
        prepare_dir(self.dir, overwrite)
        self.model = unwrap(model)
        self.layers, acts, norms = discover(self.model)
        self.hints = {"loss": loss, "stable": stable, "reduction": reduction, "task": task}
        self.every, self.total_steps = every, total_steps
        self.sampler = Sampler(every, total_steps, overhead if overhead is not None else math.inf)
        conv_first = bool(self.layers) and isinstance(self.layers[0].module, nn.modules.conv._ConvNd)
        self.profile = BatchProfile(profile_batches, task, feature_names, channels_first=conv_first)

        self.step_no, self.epoch_no = 0, 1
        self.first_nonfinite: dict | None = None
        self.nonfinite_steps = 0
        self.spikes = 0
        self.loss_info: dict = {}
        self.batch_size: int | None = None
        self.closed = False
        self._last_call = math.nan  # when the last rec.step ran: the sampler measures the step time
        self._prev_sampled = False
        self.spike_check = SpikeCheck()
        self._epoch = Epoch()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.grads = GradCheck(params, self.layers, every=grad_norm == "every")

        self.writer = RunWriter(self.dir)
        dtype = self.layers[0].weight.dtype if self.layers else next(
            (p.dtype for p in self.model.parameters()), torch.float32)
        self.dtype = str(dtype).replace("torch.", "")
        if self.dtype in LOW_PRECISION:
            self.grads.full = True  # low precision: x^T dz can overflow while dz stays finite
        self.writer.set_meta(**start_meta(self, name, overhead, grad_norm))
        self.writer.layers([info.row() for info in self.layers])
        self.writer.commit()
        self.tracer = Tracer(self.model, self.layers, acts, norms, params, self.guard, self._epoch,
                             every_step=self.world_size > 1)
        self.tracer.sampling = self.sampler.sampled(1)
        self.layer_stats = LayerStats(self.layers, self.writer, self.tracer, self.guard)
        if optimizer is not None:
            self.layer_stats.set_optimizer(optimizer)
        self._atexit = register_atexit(self)

    # ---- the step ---------------------------------------------------------------------------------
    @entry_point("rec.step")
    def step(self, loss: Any, optimizer: torch.optim.Optimizer | None = None, *, inputs: Any = None,
             targets: Any = None) -> None:
        """Record one optimizer step: after loss.backward(), before optimizer.step()."""
        try:
            self._step(loss, optimizer, inputs, targets)
        finally:
            self.tracer.end_step()

    def _step(self, loss: Any, optimizer, inputs: Any, targets: Any) -> None:
        now = time.perf_counter()
        sampled = self.tracer.sampling
        if self._last_call == self._last_call:
            self.sampler.measured(now - self._last_call, sampled or self._prev_sampled, self.guard.cost)
        self._last_call, self.guard.cost = now, 0.0
        self._prev_sampled = sampled
        self.step_no += 1
        k = self.step_no
        if optimizer is not None:
            self.layer_stats.set_optimizer(optimizer)
        if self.layer_stats.stepped_since_forward():
            self.guard.warn_once("placement", "nandoctor: rec.step() ran after optimizer.step(); call it after "
                                              "loss.backward() and before optimizer.step() so the update it "
                                              "measures belongs to the step")
        value = float(loss.detach().float()) if isinstance(loss, torch.Tensor) else float(loss)
        data_event = None
        if inputs is not None or targets is not None:
            data_event = anomalies.observe(self, inputs, targets, k, check=sampled or not math.isfinite(value))
        gnorm, grads_ok = self._grad_norm()
        ok = math.isfinite(value) and grads_ok
        if self.tracer.calibrating:
            with quiet():
                calibrate(self, loss, value, targets)
        if data_event is not None and self.first_nonfinite is None:
            anomalies.record(self, {"step": k, "epoch": self.epoch_no, **data_event})
        if not ok:
            self.nonfinite_steps += 1
            if self.first_nonfinite is None:
                with quiet():
                    anomalies.record(self, anomalies.locate(self, value, grads_ok, targets, k))
        anomaly = not ok or anomalies.spiked(self, k, value)
        self.writer.step(k, self.epoch_no, value, self.layer_stats.lr(), gnorm, "ok" if ok else "nonfinite")
        self._epoch.step(value)
        if sampled or anomaly:
            t0 = time.perf_counter()
            with quiet():
                self.layer_stats.record(k, from_trace=not sampled)
                if sampled and isinstance(targets, torch.Tensor) and self.profile.task() == "classification":
                    self._epoch.predictions(first_tensor(self.tracer.root_out), targets,
                                            self.loss_info.get("output_activation"))
            self.guard.cost += time.perf_counter() - t0
        if self.profile.changed and (k <= 1 or self.profile.batches >= self.profile.max_batches or data_event):
            with quiet():
                self._write_profile()
        self.sampler.advance(k, sampled)
        self.tracer.set_sampling(self.sampler.sampled(k + 1))

    def _grad_norm(self) -> tuple[float | None, bool]:
        """(the global gradient norm, all gradients finite) where the norm is taken this step, else (None,
        finite) from the probe (nandoctor.torch.checks)."""
        return self.grads.norm() if self.tracer.sampling or self.grads.full else self.grads.probe()

    def _write_profile(self) -> None:
        last = self.tracer.last_layer()
        units = self.layers[last].fan_out if last is not None and self.layers else None
        self.profile.changed = False
        self.writer.set_meta(data_profile=self.profile.to_dict(units), task=self.profile.task())

    # ---- epochs and the end -----------------------------------------------------------------------
    @entry_point("rec.observe_batch")
    def observe_batch(self, inputs: Any = None, targets: Any = None) -> None:
        """Show a batch to the data profile without a step (e.g. from the DataLoader, before the model)."""
        event = anomalies.observe(self, inputs, targets, self.step_no + 1)
        if event is not None:
            anomalies.record(self, {"step": self.step_no + 1, "epoch": self.epoch_no, **event})
        if self.profile.changed and (self.profile.batches <= 1 or event):
            self._write_profile()

    @entry_point("rec.epoch")
    def epoch(self, train_loss: float | None = None, val_loss: float | None = None,
              train_metric: float | None = None, val_metric: float | None = None) -> None:
        """End an epoch: its losses and metrics (accuracy or R^2). train_loss defaults to the mean of
        the epoch's step losses, train_metric to the accuracy over its sampled batches."""
        self._end_epoch(train_loss, val_loss, train_metric, val_metric)

    def _end_epoch(self, train_loss, val_loss, train_metric, val_metric) -> None:
        epoch = self._epoch
        self.writer.epoch(epoch.record(self.epoch_no, train_loss, val_loss, train_metric, val_metric),
                          epoch.dead_units())
        if self.epoch_no == 1:
            self.writer.set_meta(steps_per_epoch=epoch.steps)
        self.epoch_no += 1
        epoch.reset()

    def close(self, status: str | None = None) -> None:
        """Finish the run directory: status completed (or diverged when a step went non-finite) unless given."""
        if self.closed:
            return
        self.closed = True
        self.tracer.close()
        self.layer_stats.close()
        try:
            if not self.guard.broken:
                with quiet():
                    self._finish()
            if status is None:
                status = "diverged" if self.nonfinite_steps else "completed"
            sm = self.sampler
            self.writer.set_meta(status=status, ended=time.time(), steps=self.step_no, spikes=self.spikes,
                                 stride=sm.stride, samples=sm.samples,
                                 step_ms=None if sm.step_seconds != sm.step_seconds else 1e3 * sm.step_seconds,
                                 sample_ms=None if sm.sample_seconds != sm.sample_seconds else
                                 1e3 * sm.sample_seconds)
        finally:
            self.writer.close()
            self.tracer.trace.clear()
            self.tracer.pending.clear()
            self.layer_stats.discard()
            if self._atexit is not None:
                atexit.unregister(self._atexit)
                self._atexit = None

    def _finish(self) -> None:
        """The last records: a partial epoch, parameters an optimizer step made non-finite, the last step."""
        if self._epoch.steps:
            self._end_epoch(None, None, None, None)
        if self.step_no and self.first_nonfinite is None:
            anomalies.check_params(self)
        if self.step_no and self.layer_stats.last_recorded != self.step_no:
            self.layer_stats.record(self.step_no)
            self.layer_stats.discard()
        if self.profile.changed or self.profile.batches:
            self._write_profile()

    @property
    def status(self) -> str:
        return "diverged" if self.nonfinite_steps else "completed"

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            if not self.closed and not self.guard.broken:
                with contextlib.suppress(Exception):
                    self.writer.event(self.step_no, self.epoch_no, "exception", None, None, None,
                                      {"type": exc_type.__name__, "message": str(exc)[:2000]})
            interrupted = issubclass(exc_type, KeyboardInterrupt) or not self.nonfinite_steps
            self.close("interrupted" if interrupted else "diverged")
        return False

