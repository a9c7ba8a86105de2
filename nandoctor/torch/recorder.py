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
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import os
import time
import traceback
import warnings
import weakref
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nandoctor.telemetry.monitor import SPIKE_FACTOR, SPIKE_FLOOR, SPIKE_REFRESH, SPIKE_WINDOW
from nandoctor.telemetry.preflight import chance_loss
from nandoctor.telemetry.store import DB_NAME, RunWriter
from nandoctor.torch import locate as loc
from nandoctor.torch.ddp import rank_dir
from nandoctor.torch.lossgraph import infer_loss
from nandoctor.torch.modules import (
    DEAD_CAPABLE,
    SATURATING,
    LayerInfo,
    discover,
    infer_activation,
    infer_inplace,
    unwrap,
)
from nandoctor.torch.profile import BatchProfile
from nandoctor.torch.sampling import BUDGET, Sampler
from nandoctor.torch.stats import stats as tstats

_BLAS_DTYPES = (torch.float32, torch.float64)
SNAPSHOT_KEEP = 2**25  # parameters: keep update-snapshot buffers between sampled steps up to this size
DEAD_MIN_ROWS = 256  # sampled rows an epoch needs before units that never fired are called dead
LOSS_NAMES = ("cross_entropy", "binary_cross_entropy", "mse", "mae", "huber", "nll")


def _quiet() -> np.errstate:
    """Overflowing statistics are the point here, not a warning."""
    return np.errstate(all="ignore")


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, list | tuple):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, dict):
        for o in out.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _rng_state(device: torch.device | None) -> tuple:
    """The RNG states a forward draws from (dropout): the CPU generator's, and the model's CUDA device's."""
    cuda = torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None
    return torch.get_rng_state(), cuda, device


def _set_rng_state(state: tuple) -> None:
    cpu, cuda, device = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _grad_fns(out: Any, found: set[int]) -> set[int]:
    if isinstance(out, torch.Tensor):
        if out.grad_fn is not None:
            found.add(id(out.grad_fn))
    elif isinstance(out, list | tuple):
        for o in out:
            _grad_fns(o, found)
    elif isinstance(out, dict):
        for o in out.values():
            _grad_fns(o, found)
    return found


def _distributed() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed process group, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:
        pass
    return 0, 1


def _entry_point(where: str):
    """A public method called from the user's training loop: nothing once recording has stopped,
    and a recorder error stops recording (`_fail`) instead of the training."""
    def wrap(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            if self._broken or self.closed:
                return
            try:
                method(self, *args, **kwargs)
            except Exception as exc:
                self._fail(where, exc)
        return guarded
    return wrap


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
        if every != "auto" and (not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be 'auto' or a positive int, not {every!r}")
        if loss is not None and loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {', '.join(LOSS_NAMES)}, not {loss!r}")
        if grad_norm not in ("sampled", "every"):
            raise ValueError(f"grad_norm must be 'sampled' or 'every', not {grad_norm!r}")
        if reduction is not None and reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
        self.strict = strict
        self.rank, self.world_size = _distributed()
        self.root_dir = Path(run_dir)
        self.dir = rank_dir(self.root_dir, self.rank)
        self._prepare_dir(overwrite)
        self.model = unwrap(model)
        self.layers, self._act_names, self._norm_names = discover(self.model)
        self._module_names = {m: n for n, m in self.model.named_modules()}
        self.hints = {"loss": loss, "stable": stable, "reduction": reduction, "task": task}
        self.every, self.total_steps = every, total_steps
        self.sampler = Sampler(every, total_steps, overhead if overhead is not None else math.inf)
        conv_first = bool(self.layers) and isinstance(self.layers[0].module, nn.modules.conv._ConvNd)
        self.profile = BatchProfile(profile_batches, task, feature_names, channels_first=conv_first)

        # state of the step being recorded
        self.step_no, self.epoch_no = 0, 1
        self.first_nonfinite: dict | None = None
        self.nonfinite_steps = 0
        self.closed = False
        self._broken = False
        self._warned: set[str] = set()
        self._sampling = self.sampler.sampled(1)
        self._cost = 0.0  # seconds of sampled work since the last rec.step (the sampler's cost cap)
        self._last_call = math.nan
        self._prev_sampled = False
        self._calibrating = True
        self._trace: list[loc.Entry] = []
        self._current: int | None = None
        self._act_done: set[int] = set()
        self._pending: dict[tuple[int, str], tuple] = {}
        self._gout: dict[int, torch.Tensor] = {}
        self._calib_out: dict[int, torch.Tensor] = {}  # first forward: each layer's output before its activation
        self._calib_ref: dict[int, torch.Tensor] = {}
        self._act_site: dict[int, str] = {}  # where a functional activation's output is seen: norm | next
        self._exec_act: dict[int, str] = {}
        self._exec_norm: dict[int, str] = {}
        self._root_in: Any = None
        self._root_out: Any = None
        self._out_fns: set[int] = set()
        self._forwards = 0
        self._opt_mark = -1
        self._snap: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        self._snap_bufs: dict[int, torch.Tensor] = {}
        self._keep_snapshots = sum(info.weight.numel() for info in self.layers) <= SNAPSHOT_KEEP
        self._snap_step = 0
        self._last_recorded = 0
        self._epoch_losses: list[float] = []
        self._epoch_steps = 0
        self._epoch_correct = 0
        self._epoch_seen = 0
        self._alive: dict[int, torch.Tensor] = {}
        self._alive_rows: dict[int, int] = {}
        self._recent: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self._median = math.inf
        self._scale = math.inf
        self.spikes = 0
        self.loss_info: dict = {}
        self.batch_size: int | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._opt_handle = None
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._handles: list[Any] = []
        self._module_handles: list[Any] = []
        self._module_hook_fns: list[tuple[nn.Module, Any]] = []
        self._replaying = False
        self._root_args: Any = None
        self._root_kwargs: Any = None
        self._rng: tuple | None = None
        # dL/d(layer output) hooks cost ~25 us per layer: every step only under DDP, where they tell the rank
        # that produced a non-finite gradient from the ranks that received it through the all-reduce
        self._grad_every_step = self.world_size > 1
        self._always_hooked = self.world_size > 1  # (the same reason: a trace of every step's forward)
        # the per-step gradient check: the bias gradient of the first layer that has one (a bias gradient sums
        # its layer's output gradient, and a NaN born anywhere in backward reaches the first layers:
        # dz_{k-1} = (dz_k W_k^T) * f'(z_{k-1})); the full global norm is taken at sampled steps, and every
        # step with grad_norm="every", in float16/bfloat16, or when no layer has a bias
        self._probe = [info.bias for info in self.layers if info.bias is not None and info.bias.requires_grad][:1]
        self._full_norm = grad_norm == "every" or not self._probe

        self.writer = RunWriter(self.dir)
        dtype = self.layers[0].weight.dtype if self.layers else next(
            (p.dtype for p in self.model.parameters()), torch.float32)
        self.dtype = str(dtype).replace("torch.", "")
        if self.dtype in ("float16", "bfloat16"):
            self._full_norm = True  # low precision: x^T dz can overflow while dz stays finite
        meta = dict(status="running", pid=os.getpid(), started=time.time(), engine="torch",
                    torch_version=torch.__version__, name=name or self.root_dir.name, dtype=self.dtype,
                    every=every, dense_steps=self.sampler.dense, stride=self.sampler.stride,
                    overhead_budget=overhead, grad_norm=grad_norm,
                    n_params=sum(p.numel() for p in self.model.parameters()), first_nonfinite=None,
                    rank=self.rank, world_size=self.world_size, model_class=type(self.model).__name__,
                    model_summary=str(self.model)[:20000])
        if total_steps:
            meta["total_steps"] = int(total_steps)
        self.writer.set_meta(**meta)
        self.writer.layers([info.row() for info in self.layers])
        self.writer.commit()
        self._attach()
        if optimizer is not None:
            self._set_optimizer(optimizer)
        self._atexit = _register_atexit(self)

    # ---- setup ----------------------------------------------------------------------------------
    def _prepare_dir(self, overwrite: bool) -> None:
        db = self.dir / DB_NAME
        if db.exists():
            if not overwrite:
                raise FileExistsError(f"{self.dir} already holds a recorded run ({DB_NAME}); choose another "
                                      f"directory or pass overwrite=True")
            for suffix in ("", "-wal", "-shm"):
                (self.dir / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _attach(self) -> None:
        """The model's own hooks, for every forward: its input, RNG state and output (references only)."""
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._root_post))
        self._module_hook_fns = [(info.module, self._layer_hook(info)) for info in self.layers]
        self._module_hook_fns += [(m, self._side_hook(1, self._module_names.get(m, "norm"))) for m in self._norm_names]
        self._module_hook_fns += [(m, self._side_hook(2, self._module_names.get(m, "activation")))
                                  for m in self._act_names]
        self._hooks(True)

    def _hooks(self, on: bool) -> None:
        """Module hooks: attached for the forwards of sampled steps (and for a replay), detached otherwise,
        so the forward of an ordinary step runs PyTorch's hook-free fast path."""
        if on and not self._module_handles:
            self._module_handles = [m.register_forward_hook(fn) for m, fn in self._module_hook_fns]
        elif not on and self._module_handles:
            for h in self._module_handles:
                h.remove()
            self._module_handles = []

    def _set_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self._optimizer is optimizer:
            return
        if self._opt_handle is not None:
            self._opt_handle.remove()
        self._optimizer = optimizer
        self._opt_handle = optimizer.register_step_post_hook(self._after_optimizer)

    def _fail(self, where: str, exc: BaseException) -> None:
        """A recorder bug must not stop the user's training: warn once, stop recording."""
        if self.strict:
            raise exc
        self._broken = True
        warnings.warn(f"nandoctor recorder disabled after an error in {where}: {exc!r}\n"
                      f"{traceback.format_exc()}", RuntimeWarning, stacklevel=3)

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(text, RuntimeWarning, stacklevel=3)

    # ---- forward hooks (hot path: every training forward) ----------------------------------------
    def _root_pre(self, module, args, kwargs) -> None:
        """A training forward starts: keep its arguments and the RNG state (references and a 5 KB copy), so
        that the forward of a step that goes non-finite can be re-run with module hooks to locate it."""
        if self._broken or self._replaying or not torch.is_grad_enabled():
            return
        self._root_args, self._root_kwargs = args, kwargs
        self._rng = _rng_state(self._params[0].device if self._params else None)
        self._current = None
        self._act_done.clear()

    def _root_post(self, module, args, out) -> None:
        """The model's forward ended: keep its input and output (references) for rec.step. The trace of
        module calls is dropped by rec.step, so several forwards before one step (gradient accumulation)
        all stay in it, in execution order."""
        if self._broken or self._replaying or not torch.is_grad_enabled():
            return
        self._root_in, self._root_out = (args[0] if args else None), out
        self._forwards += 1
        if self._calibrating:
            self._out_fns = _grad_fns(out, set())

    def _layer_hook(self, info: LayerInfo):
        i = info.index
        trace, name = self._trace, info.name
        gout = self._gout

        def grad_hook(g: torch.Tensor) -> None:
            gout[i] = g
            if self._sampling and not self._broken:
                t0 = time.perf_counter()
                try:
                    if self.layers[i].activation in (None, "linear") or (i, "activation") not in self._pending:
                        with _quiet():  # dL/dz: the output gradient too where nothing follows the layer
                            self._pending[(i, "grad_output")] = tstats(g, zeros=True)
                except Exception as exc:
                    self._fail("a gradient hook", exc)
                self._cost += time.perf_counter() - t0

        def hook(module, args, out) -> None:
            if self._broken or not (self._replaying or torch.is_grad_enabled()):
                return
            x = args[0] if args else None
            o = out if isinstance(out, torch.Tensor) else _first_tensor(out)
            prev = self._current
            self._current = i
            self._act_done.discard(i)
            trace.append(loc.Entry(i, 0, name, x, o))
            if (self._sampling or self._grad_every_step) and o is not None and o.requires_grad:
                o.register_hook(grad_hook)
            if self._sampling or self._calibrating:
                t0 = time.perf_counter()
                try:
                    with _quiet():
                        self._sample_layer(i, prev, x, o)
                except Exception as exc:
                    self._fail("a forward hook", exc)
                self._cost += time.perf_counter() - t0

        return hook

    def _side_hook(self, kind: int, name: str):
        """Hook of a norm (kind 1) or activation (kind 2) module: it belongs to the layer that ran last."""

        def hook(module, args, out) -> None:
            if self._broken or not (self._replaying or torch.is_grad_enabled()):
                return
            i = self._current
            if i is None or (kind == 2 and i in self._act_done):
                return
            o = out if isinstance(out, torch.Tensor) else _first_tensor(out)
            x = args[0] if args else None
            self._trace.append(loc.Entry(i, kind, name, x, o))
            if kind == 2:
                self._act_done.add(i)
            if self._sampling or self._calibrating:
                t0 = time.perf_counter()
                try:
                    with _quiet():
                        if kind == 2:
                            if self._calibrating:
                                self._exec_act.setdefault(i, self._act_names[module])
                            self._sample_activation(i, self._act_names[module], o)
                            return
                        if self._calibrating:
                            self._exec_norm.setdefault(i, self._norm_names[module])
                        if i not in self._act_done:
                            self._functional(i, x, "norm")
                        if self._calibrating and i not in self._exec_act and isinstance(o, torch.Tensor):
                            self._calib_out[i], self._calib_ref[i] = o.detach().clone(), o
                        if self._sampling:
                            self._pending[(i, "normalized")] = tstats(o, precise=True)
                except Exception as exc:
                    self._fail("a forward hook", exc)
                finally:
                    self._cost += time.perf_counter() - t0

        return hook

    def _sample_layer(self, i: int, prev: int | None, x: Any, o: Any) -> None:
        if prev is not None and prev != i and prev not in self._act_done:
            self._functional(prev, x, "next")
        if self._calibrating and isinstance(o, torch.Tensor):
            self._calib_out[i], self._calib_ref[i] = o.detach().clone(), o
        if self._sampling:
            self._pending[(i, "pre_activation")] = tstats(o, precise=True)

    def _functional(self, i: int, x: Any, site: str) -> None:
        """No activation module ran after layer i, and `x` is what the next module (a norm, or the next
        layer) received. At the first forward: infer which elementwise function (F.relu, torch.sigmoid ...)
        turned layer i's output into x. At sampled steps: x is layer i's activation."""
        if not isinstance(x, torch.Tensor):
            return
        if self._calibrating:
            z = self._calib_out.get(i)
            if i in self._exec_act or z is None:
                return
            ref = self._calib_ref.get(i)
            inplace = isinstance(ref, torch.Tensor) and ref.data_ptr() == x.data_ptr() and not torch.equal(ref, z)
            act = infer_inplace(x) if inplace else infer_activation(z, x)
            if act is None or act == "linear":
                return
            self._exec_act[i], self._act_site[i] = "functional:" + act, site
        else:
            info = self.layers[i]
            if info.activation_source != "functional" or self._act_site.get(i) != site:
                return
            act = info.activation
        if self._sampling:
            self._act_done.add(i)
            self._sample_activation(i, act, x)

    def _sample_activation(self, i: int, act: str, a: Any) -> None:
        if not self._sampling or not isinstance(a, torch.Tensor):
            return
        self._pending[(i, "activation")] = tstats(a, precise=True, zeros=True,
                                                  saturation=act if act in SATURATING else None)
        if act in DEAD_CAPABLE and a.ndim >= 2 and i < len(self.layers) - 1:
            with torch.no_grad():  # units (features, or channels) positive for at least one sampled input
                alive = a.detach().reshape(a.shape[0], a.shape[1], -1).amax(dim=(0, 2)) > 0
            old = self._alive.get(i)
            self._alive[i] = alive if old is None or old.shape != alive.shape else old | alive
            self._alive_rows[i] = self._alive_rows.get(i, 0) + int(a.shape[0])
        if a.requires_grad:
            pending = self._pending

            def grad_hook(g: torch.Tensor) -> None:
                t0 = time.perf_counter()
                try:
                    with _quiet():
                        pending[(i, "grad_output")] = tstats(g, zeros=True)
                except Exception as exc:
                    self._fail("a gradient hook", exc)
                self._cost += time.perf_counter() - t0

            a.register_hook(grad_hook)

    # ---- the step ---------------------------------------------------------------------------------
    @_entry_point("rec.step")
    def step(self, loss: Any, optimizer: torch.optim.Optimizer | None = None, *, inputs: Any = None,
             targets: Any = None) -> None:
        """Record one optimizer step: after loss.backward(), before optimizer.step()."""
        try:
            self._step(loss, optimizer, inputs, targets)
        finally:
            self._trace.clear()  # drop the step's tensors: nothing outlives the step
            self._gout.clear()
            self._root_in = self._root_out = self._root_args = self._root_kwargs = None

    def _step(self, loss: Any, optimizer, inputs: Any, targets: Any) -> None:
        now = time.perf_counter()
        if self._last_call == self._last_call:
            self.sampler.measured(now - self._last_call, self._sampling or self._prev_sampled, self._cost)
        self._last_call, self._cost = now, 0.0
        self._prev_sampled = self._sampling
        self.step_no += 1
        k = self.step_no
        if optimizer is not None:
            self._set_optimizer(optimizer)
        if self._opt_mark == self._forwards and self._forwards:
            self._warn_once("placement", "nandoctor: rec.step() ran after optimizer.step(); call it after "
                                         "loss.backward() and before optimizer.step() so the update it measures "
                                         "belongs to the step")
        value = float(loss.detach().float()) if isinstance(loss, torch.Tensor) else float(loss)
        sampled = self._sampling
        data_event = None
        if inputs is not None or targets is not None:
            data_event = self._observe(inputs, targets, k, check=sampled or not math.isfinite(value))
        gnorm, grads_ok = self._grad_norm() if sampled or self._full_norm else self._grad_probe()
        ok = math.isfinite(value) and grads_ok
        if self._calibrating:
            with _quiet():
                self._calibrate(loss, value, inputs, targets)
        if data_event is not None and self.first_nonfinite is None:
            self._nonfinite({"step": k, "epoch": self.epoch_no, **data_event})
        if not ok:
            self.nonfinite_steps += 1
            if self.first_nonfinite is None:
                with _quiet():
                    self._nonfinite(self._locate(value, grads_ok, targets, k))
        anomaly = not ok or self._spike(k, value)
        lr = self._lr()
        self.writer.step(k, self.epoch_no, value, lr, gnorm, "ok" if ok else "nonfinite")
        self._epoch_losses.append(value)
        self._epoch_steps += 1
        if sampled or anomaly:
            t0 = time.perf_counter()
            with _quiet():
                self._record_layers(k, from_trace=not sampled)
                if sampled and isinstance(targets, torch.Tensor):
                    self._running_metric(targets)
            self._cost += time.perf_counter() - t0
        if self.profile.changed and (k <= 1 or self.profile.batches >= self.profile.max_batches or data_event):
            with _quiet():
                self._write_profile()
        self.sampler.advance(k, sampled)
        self._sampling = self.sampler.sampled(k + 1)
        self._hooks(self._sampling or self._always_hooked)

    def _observe(self, inputs: Any, targets: Any, k: int, check: bool = True) -> dict | None:
        if self.batch_size is None:
            x = inputs if isinstance(inputs, torch.Tensor | np.ndarray) else None
            if x is not None and x.ndim:
                self.batch_size = int(x.shape[0])
        bad_x, bad_y, names = self.profile.observe(inputs, targets, check)
        if not (bad_x or bad_y) or self.first_nonfinite is not None:
            return None
        parts = []
        if bad_x:
            shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            parts.append(f"{bad_x} non-finite input values in the batch of step {k} (features: {shown})")
        if bad_y:
            parts.append(f"{bad_y} non-finite targets in the batch of step {k}")
        return {"phase": "data", "layer": None, "tensor": "input" if bad_x else "target", "role": "producer",
                "detail": "; ".join(parts), "count": bad_x + bad_y,
                "size": int(inputs.numel()) if isinstance(inputs, torch.Tensor) else 0, "module": None}

    def _grad_norm(self) -> tuple[float, bool]:
        """(global L2 norm of the gradients, all finite): one pass over the gradients. On CPU a BLAS dot
        per gradient through NumPy views (about 2x faster than torch._foreach_norm); elsewhere one fused
        foreach reduction accumulated in float32."""
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return math.nan, True
        if all(g.device.type == "cpu" and g.dtype in _BLAS_DTYPES and g.layout == torch.strided for g in grads):
            s2 = 0.0
            with _quiet():
                for g in grads:
                    a = g.numpy().reshape(-1)
                    s2 += float(np.dot(a, a))
            total = math.sqrt(s2)
        else:
            grads = [g for g in grads if g.layout == torch.strided]
            try:
                norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
            except Exception:
                norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
            device = norms[0].device
            total = float(torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms])))
        if math.isfinite(total):
            return total, True
        if all(bool(torch.isfinite(g).all()) for g in grads):  # finite values whose norm overflows
            return math.sqrt(sum(float(torch.linalg.vector_norm(g, dtype=torch.float64)) ** 2 for g in grads)), True
        return math.nan, False

    def _grad_probe(self) -> tuple[float | None, bool]:
        """(None, finite) from the small gradients only; the exact global norm when they are not finite."""
        grads = [p.grad for p in self._probe if p.grad is not None]
        if not grads:
            return None, True
        if grads[0].device.type == "cpu" and all(g.dtype in _BLAS_DTYPES for g in grads):
            # a few tiny CPU tensors: NumPy views beat torch's per-op dispatch
            s = 0.0
            for g in grads:
                a = g.numpy().reshape(-1)
                s += float(np.dot(a, a))
        else:
            try:
                norms = torch._foreach_norm([g for g in grads if g.layout == torch.strided])
            except Exception:
                norms = [torch.linalg.vector_norm(g) for g in grads if g.layout == torch.strided]
            s = float(torch.stack([n.to(norms[0].device) for n in norms]).sum()) if norms else 0.0
        if math.isfinite(s):
            return None, True
        return self._grad_norm()

    def _lr(self) -> float | None:
        opt = self._optimizer
        if opt is None or not opt.param_groups:
            return None
        lr = opt.param_groups[0].get("lr")
        try:
            return float(lr)
        except (TypeError, ValueError):
            return None

    def _spike(self, k: int, loss: float) -> bool:
        """Loss above 10x the running median (the NumPy monitor's rule)."""
        spike = (math.isfinite(loss) and len(self._recent) >= SPIKE_REFRESH and loss > SPIKE_FACTOR * self._median
                 and loss > SPIKE_FLOOR * self._scale)
        if math.isfinite(loss):
            self._recent.append(loss)
            if len(self._recent) == SPIKE_REFRESH and self._scale == math.inf:
                self._scale = float(np.median(self._recent))
            if k % SPIKE_REFRESH == 0 or self._median == math.inf:
                self._median = float(np.median(self._recent))
        if spike:
            self.spikes += 1
            self.writer.event(k, self.epoch_no, "loss_spike", "loss", None, "loss",
                              {"loss": loss, "running_median": self._median})
        return spike

    def _locate(self, value: float, grads_ok: bool, targets: Any, k: int) -> dict:
        replayed = not self._trace and self._root_args is not None
        if replayed:
            self._replay()
        event = loc.locate_forward(self._trace, self.layers, self._root_in, k)
        if replayed and event is not None:
            event["detail"] += " [located by re-running the step's forward with module hooks]"
        if event is not None and event["phase"] == "update":
            event["detail"] += self._update_note()
            k = max(k - 1, 1)
        if event is None and not math.isfinite(value):
            out = _first_tensor(self._root_out)
            if out is None and self._trace:
                out = self._trace[-1].out
            event = loc.locate_loss(out, self.loss_info, self.layers, targets)
        if event is None and not grads_ok:
            event = loc.locate_backward(self._trace, self.layers, self._gout, self.world_size > 1)
        if event is None:
            event = {"phase": "backward" if not grads_ok else "loss", "layer": None, "tensor": None,
                     "role": "producer", "detail": "non-finite value (not found in the hooked modules' tensors)",
                     "count": 0, "size": 0, "module": None}
        return {"step": k, "epoch": self.epoch_no, **event}

    def _replay(self) -> None:
        """Re-run the forward of the step that went non-finite, with module hooks, to trace it: the same
        arguments and weights (rec.step runs before optimizer.step), the RNG state it started from (the
        same dropout masks), and module buffers (batch-norm running statistics) and the RNG restored
        afterwards, so training continues exactly as without the replay."""
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        now = _rng_state(self._params[0].device if self._params else None)
        self._replaying = True
        self._current = None
        self._act_done.clear()
        self._hooks(True)
        try:
            if self._rng is not None:
                _set_rng_state(self._rng)
            with torch.no_grad():
                self.model(*self._root_args, **(self._root_kwargs or {}))
        except Exception as exc:  # a model that cannot be re-run: locate with what is known
            self._warn_once("replay", f"nandoctor: could not re-run the forward to locate the non-finite value "
                                      f"({exc!r})")
        finally:
            self._replaying = False
            self._hooks(self._sampling or self._always_hooked)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            _set_rng_state(now)

    def _update_note(self) -> str:
        """Why an optimizer step can turn finite weights and gradients non-finite."""
        opt = self._optimizer
        eps = opt.param_groups[0].get("eps") if opt is not None and opt.param_groups else None
        if self.dtype == "float16" and isinstance(eps, float) and eps < 6e-8:
            return (f"; {type(opt).__name__} eps {eps:g} rounds to 0 in float16, so a gradient of exactly 0 "
                    f"gives 0/0 = NaN in the update")
        lr = self._lr()
        return f"; lr {lr:g}" if lr is not None else ""

    def _nonfinite(self, event: dict) -> None:
        if self.world_size > 1:
            event["rank"] = self.rank
        self.first_nonfinite = event
        self.writer.set_meta(first_nonfinite=event)
        self.writer.event(event["step"], event["epoch"], "nonfinite", event["phase"], event["layer"],
                          event["tensor"], event)

    # ---- step 1: what could only be learnt from a real step ------------------------------------------
    def _calibrate(self, loss: Any, value: float, inputs: Any, targets: Any) -> None:
        self._calibrating = False
        last = self._last_layer()
        for info in self.layers:
            act = self._exec_act.get(info.index)
            if act is not None:
                info.activation, info.activation_source = act.removeprefix("functional:"), \
                    "functional" if act.startswith("functional:") else "module"
            elif info.index in {e.layer for e in self._trace if e.kind == 0}:
                info.activation, info.activation_source = "linear", "none"
            if info.index in self._exec_norm:
                info.norm = self._exec_norm[info.index]
        self._calib_out.clear()
        self._calib_ref.clear()
        self.loss_info = infer_loss(loss, self._out_fns)
        for key in ("loss", "stable", "reduction"):
            hint = self.hints[key]
            if hint is not None:
                self.loss_info["name" if key == "loss" else key] = hint
                self.loss_info["source"] = "hint"
        if last is not None and self.loss_info.get("output_activation") and \
                self.layers[last].activation in (None, "linear"):
            # the loss applies the output activation itself (cross-entropy on logits): record it as the
            # NumPy engine does, where the output layer is softmax and the loss is fused
            self.layers[last].activation = self.loss_info["output_activation"]
            self.layers[last].activation_source = "loss"
        if self.batch_size is None:
            x = self._root_in
            if isinstance(x, torch.Tensor) and x.ndim:
                self.batch_size = int(x.shape[0])
        if self.layers:  # the model may have been cast (.half()) after the recorder was made
            self.dtype = str(self.layers[0].weight.dtype).replace("torch.", "")
            self._full_norm = self._full_norm or self.dtype in ("float16", "bfloat16")
        out = self._trace[0].out if self._trace else None
        compute = str(out.dtype).replace("torch.", "") if isinstance(out, torch.Tensor) else self.dtype
        self.writer.layers([info.row() for info in self.layers])
        output_activation = self.loss_info.get("output_activation") or (
            self.layers[last].activation if last is not None else None)
        self.writer.set_meta(dtype=self.dtype, loss=self.loss_info, output_activation=output_activation,
                             batch_size=self.batch_size,
            compute_dtype=compute, task=self.profile.task(), layer_modules=[
                {"layer": i.index, "module": i.name, "type": type(i.module).__name__,
                 "activation_source": i.activation_source} for i in self.layers])
        self._preflight(value, targets)

    def _last_layer(self) -> int | None:
        executed = [e.layer for e in self._trace if e.kind == 0]
        return executed[-1] if executed else (len(self.layers) - 1 if self.layers else None)

    def _preflight(self, value: float, targets: Any) -> None:
        rows = []
        for info in self.layers:
            i = info.index
            pre = self._pending.get((i, "pre_activation"))
            act = self._pending.get((i, "activation")) or pre
            if pre is None:
                continue
            rows.append({"layer": i, "pre_activation_std": pre[1], "activation_std": act[1],
                         "activation_abs_max": act[4], "saturated": act[7], "zero": act[8],
                         "nonfinite": act[6]})
        name = self.loss_info.get("name")
        last = self._last_layer()
        units = self.layers[last].fan_out if last is not None else None
        n_classes = self.profile.n_classes(units)
        chance = None
        if name == "cross_entropy" and n_classes:
            chance = chance_loss(name, n_classes, np.zeros(0))
        elif name == "binary_cross_entropy":
            chance = chance_loss(name, 2, np.zeros(0))
        elif name == "mse" and isinstance(targets, torch.Tensor) and targets.is_floating_point():
            chance = chance_loss("mse", None, targets.detach().to("cpu", torch.float64).reshape(
                targets.shape[0], -1).numpy())
        self.writer.set_meta(preflight={"rows": self.batch_size, "initial_loss": value if math.isfinite(value)
                                        else None, "chance_loss": chance, "layers": rows, "source": "step 1"})

    # ---- per-layer statistics -----------------------------------------------------------------------
    def _record_layers(self, k: int, from_trace: bool = False) -> None:
        self._last_recorded = k
        w, pend = self.writer, self._pending
        if from_trace:  # an anomaly at a step that was not sampled: best effort from the kept references
            for e in self._trace:
                if e.kind == 0:
                    pend[(e.layer, "pre_activation")] = tstats(e.out, precise=True)
                elif e.kind == 2:
                    act = self.layers[e.layer].activation
                    pend[(e.layer, "activation")] = tstats(e.out, precise=True, zeros=True,
                                                           saturation=act if act in SATURATING else None)
        for (i, tensor), values in pend.items():
            w.stats(k, i, tensor, values)
        for info in self.layers:
            i = info.index
            if (i, "pre_activation") in pend and (i, "activation") not in pend and \
                    info.activation in ("linear", "softmax", "sigmoid") and info.activation_source in ("none", "loss"):
                w.stats(k, i, "activation", pend[(i, "pre_activation")])  # the logits, as the model emits them
            W = info.weight
            weight = tstats(W)
            w.stats(k, i, "weight", weight)
            if info.bias is not None:
                w.stats(k, i, "bias", tstats(info.bias))
            if W.grad is not None:
                w.stats(k, i, "grad_weight", tstats(W.grad))
            if info.bias is not None and info.bias.grad is not None:
                w.stats(k, i, "grad_bias", tstats(info.bias.grad, zeros=True))
            if self._optimizer is not None:  # the post-step hook measures the update against a copy
                self._snap.append((i, W, self._snapshot(i, W), weight[5]))
        pend.clear()
        self._snap_step = k

    def _snapshot(self, i: int, W: torch.Tensor) -> torch.Tensor:
        """A copy of W before the optimizer step: into a buffer kept between sampled steps for models up to
        SNAPSHOT_KEEP parameters (allocating 1 MB on CPU costs more than copying it), a fresh clone above."""
        if self._keep_snapshots:
            buf = self._snap_bufs.get(i)
            if buf is None or buf.shape != W.shape or buf.dtype != W.dtype or buf.device != W.device:
                buf = self._snap_bufs[i] = torch.empty_like(W, memory_format=torch.contiguous_format)
            return buf.copy_(W.detach())
        return W.detach().clone()

    def _after_optimizer(self, optimizer, args, kwargs) -> None:
        self._opt_mark = self._forwards
        if not self._snap or self._broken:
            return
        t0 = time.perf_counter()
        try:
            k = self._snap_step
            with torch.no_grad(), _quiet():
                for i, W, before, wn in self._snap:
                    u = tstats(torch.sub(W.detach(), before, out=before))
                    ratio = u[5] / wn if u[5] is not None and wn and math.isfinite(wn) else None
                    self.writer.stats(k, i, "update", (*u[:9], ratio))
        except Exception as exc:
            self._fail("the optimizer post-step hook", exc)
        finally:
            self._snap = []
            self._cost += time.perf_counter() - t0

    def _running_metric(self, targets: torch.Tensor) -> None:
        """Training accuracy over the sampled batches (the model's output is at hand; no extra forward)."""
        out = _first_tensor(self._root_out)
        if out is None or self.profile.task() != "classification" or out.ndim < 1 or \
                out.shape[0] != targets.shape[0]:
            return
        with torch.no_grad():
            if out.ndim >= 2 and out.shape[-1] > 1:
                pred = out.argmax(dim=-1)
                y = targets.argmax(dim=-1) if targets.ndim == out.ndim else targets
            else:
                threshold = 0.0 if self.loss_info.get("output_activation") == "sigmoid" else 0.5
                pred = (out.reshape(-1) > threshold).long()
                y = targets.reshape(-1).long()
            if pred.shape != y.shape:
                return
            self._epoch_correct += int((pred == y.to(pred.device)).sum())
            self._epoch_seen += int(y.numel())

    def _write_profile(self) -> None:
        last = self._last_layer()
        units = self.layers[last].fan_out if last is not None and self.layers else None
        self.profile.changed = False
        self.writer.set_meta(data_profile=self.profile.to_dict(units), task=self.profile.task())

    # ---- epochs and the end -----------------------------------------------------------------------
    @_entry_point("rec.observe_batch")
    def observe_batch(self, inputs: Any = None, targets: Any = None) -> None:
        """Show a batch to the data profile without a step (e.g. from the DataLoader, before the model)."""
        event = self._observe(inputs, targets, self.step_no + 1)
        if event is not None:
            self._nonfinite({"step": self.step_no + 1, "epoch": self.epoch_no, **event})
        if self.profile.changed and (self.profile.batches <= 1 or event):
            self._write_profile()

    @_entry_point("rec.epoch")
    def epoch(self, train_loss: float | None = None, val_loss: float | None = None,
              train_metric: float | None = None, val_metric: float | None = None) -> None:
        """End an epoch: its losses and metrics (accuracy or R^2). train_loss defaults to the mean of
        the epoch's step losses, train_metric to the accuracy over its sampled batches."""
        self._end_epoch(train_loss, val_loss, train_metric, val_metric)

    def _end_epoch(self, train_loss, val_loss, train_metric, val_metric) -> None:
        if train_loss is None:
            train_loss = float(np.mean(self._epoch_losses)) if self._epoch_losses else math.nan
        if train_metric is None and self._epoch_seen:
            train_metric = self._epoch_correct / self._epoch_seen
        dead = []
        for i, alive in self._alive.items():
            if self._alive_rows.get(i, 0) >= DEAD_MIN_ROWS:
                dead.append((i, int((~alive).sum()), int(alive.numel())))
        rec = {"epoch": self.epoch_no, "train_loss": train_loss, "val_loss": val_loss,
               "train_metric": train_metric, "val_metric": val_metric}
        self.writer.epoch({k: (math.nan if v is None else float(v)) if k != "epoch" else v for k, v in rec.items()},
                          dead)
        if self.epoch_no == 1:
            self.writer.set_meta(steps_per_epoch=self._epoch_steps)
        self.epoch_no += 1
        self._epoch_losses, self._epoch_steps, self._epoch_correct, self._epoch_seen = [], 0, 0, 0
        self._alive.clear()
        self._alive_rows.clear()

    def close(self, status: str | None = None) -> None:
        """Finish the run directory: status completed (or diverged when a step went non-finite) unless given."""
        if self.closed:
            return
        self.closed = True
        for h in self._handles:
            h.remove()
        self._hooks(False)
        if self._opt_handle is not None:
            self._opt_handle.remove()
        self._handles.clear()
        try:
            if not self._broken:
                with _quiet():
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
            self._trace.clear()
            self._pending.clear()
            self._snap = []
            if self._atexit is not None:
                atexit.unregister(self._atexit)
                self._atexit = None

    def _finish(self) -> None:
        """The last records: a partial epoch, parameters an optimizer step made non-finite, the last step."""
        if self._epoch_steps:
            self._end_epoch(None, None, None, None)
        if self.step_no and self.first_nonfinite is None:
            event = loc.locate_params(self.layers, self.step_no)
            if event is not None:
                event["detail"] += self._update_note()
                self.nonfinite_steps += 1
                self._nonfinite({"step": self.step_no, "epoch": max(1, self.epoch_no - 1), **event})
        if self.step_no and self._last_recorded != self.step_no:
            self._record_layers(self.step_no)
            self._snap = []
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
            if not self.closed and not self._broken:
                with contextlib.suppress(Exception):
                    self.writer.event(self.step_no, self.epoch_no, "exception", None, None, None,
                                      {"type": exc_type.__name__, "message": str(exc)[:2000]})
            interrupted = issubclass(exc_type, KeyboardInterrupt) or not self.nonfinite_steps
            self.close("interrupted" if interrupted else "diverged")
        return False


def _register_atexit(rec: Recorder):
    """Close a recorder the script forgot to close when the interpreter exits: the run then counts as
    interrupted (or diverged), unless it reached the total_steps it announced."""
    ref = weakref.ref(rec)

    def finish() -> None:
        r = ref()
        if r is None or r.closed:
            return
        done = r.total_steps is not None and r.step_no >= r.total_steps
        r.close("diverged" if r.nonfinite_steps else ("completed" if done else "interrupted"))

    atexit.register(finish)
    return finish
