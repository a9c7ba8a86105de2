"""The forward of a PyTorch training step as the recorder sees it: hooks on the model and its modules.

The model's own pre/post hooks run at every forward and keep references only (its arguments, the RNG
state, its input and output). Module hooks (layers, norms, activation modules) are attached only for
the forwards of sampled steps, and for a replay, so an ordinary step runs PyTorch's hook-free path;
they append each module call to `trace` (what `locate` scans), put the sampled statistics in
`pending` (what `LayerStats.record` writes), and register tensor hooks for dL/d(layer output) (`gout`).
At the first forward they also learn which module or elementwise function (F.relu, torch.sigmoid ...)
follows each layer, which `settle` then writes into the layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nandoctor.torch import locate as loc
from nandoctor.torch.epochs import Epoch
from nandoctor.torch.guard import Guard
from nandoctor.torch.lossgraph import output_fns
from nandoctor.torch.modules import DEAD_CAPABLE, SATURATING, LayerInfo, infer_activation, infer_inplace
from nandoctor.torch.replay import restored, rng_state, set_rng_state
from nandoctor.torch.stats import quiet
from nandoctor.torch.stats import stats as tstats


def first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, list | tuple):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, dict):
        for o in out.values():
            t = first_tensor(o)
            if t is not None:
                return t
    return None


class Tracer:
    """model, layers: the unwrapped model and its layers; acts, norms: its activation and norm modules
    (module -> name). params: the trainable parameters (their device is the RNG's). every_step: module
    and output-gradient hooks at every step, not only sampled ones (under DDP, where they tell the rank
    that produced a non-finite gradient from the ranks that received it through the all-reduce)."""

    def __init__(self, model: nn.Module, layers: list[LayerInfo], acts: dict[nn.Module, str],
                 norms: dict[nn.Module, str], params: list[torch.Tensor], guard: Guard, epoch: Epoch,
                 every_step: bool):
        self.model, self.layers, self._acts, self._norms, self._params = model, layers, acts, norms, params
        self.guard, self.epoch, self.every_step = guard, epoch, every_step
        self.sampling = False  # this forward's statistics are sampled
        self.calibrating = True  # the first step: learn what follows each layer
        self.trace: list[loc.Entry] = []
        self.pending: dict[tuple[int, str], tuple] = {}  # (layer, tensor) -> statistics of the sampled step
        self.gout: dict[int, torch.Tensor] = {}
        self.root_in: Any = None
        self.root_out: Any = None
        self.out_fns: set[int] = set()  # grad_fns of the first forward's outputs: where the loss graph stops
        self.forwards = 0
        self._current: int | None = None
        self._act_done: set[int] = set()
        self._calib_out: dict[int, torch.Tensor] = {}  # first forward: each layer's output before its activation
        self._calib_ref: dict[int, torch.Tensor] = {}
        self._act_site: dict[int, str] = {}  # where a functional activation's output is seen: norm | next
        self._exec_act: dict[int, str] = {}
        self._exec_norm: dict[int, str] = {}
        self._replaying = False
        self._root_args: Any = None
        self._root_kwargs: Any = None
        self._rng: tuple | None = None
        self._module_handles: list[Any] = []
        names = {m: n for n, m in model.named_modules()}
        self._hook_fns = [(info.module, self._layer_hook(info)) for info in layers]
        self._hook_fns += [(m, self._side_hook(1, names.get(m, "norm"))) for m in norms]
        self._hook_fns += [(m, self._side_hook(2, names.get(m, "activation"))) for m in acts]
        self._handles = [model.register_forward_pre_hook(self._root_pre, with_kwargs=True),
                         model.register_forward_hook(self._root_post)]
        self._hooks(True)  # the first forward is always traced: it calibrates

    def set_sampling(self, on: bool) -> None:
        """Whether the next forward is sampled: its module hooks attached or not."""
        self.sampling = on
        self._hooks(on or self.every_step)

    def _hooks(self, on: bool) -> None:
        """Module hooks: attached for the forwards of sampled steps (and for a replay), detached otherwise,
        so the forward of an ordinary step runs PyTorch's hook-free fast path."""
        if on and not self._module_handles:
            self._module_handles = [m.register_forward_hook(fn) for m, fn in self._hook_fns]
        elif not on and self._module_handles:
            for h in self._module_handles:
                h.remove()
            self._module_handles = []

    def end_step(self) -> None:
        """Drop the step's tensors: nothing outlives the step."""
        self.trace.clear()
        self.gout.clear()
        self.root_in = self.root_out = self._root_args = self._root_kwargs = None

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._hooks(False)
        self._handles.clear()

    def last_layer(self) -> int | None:
        executed = [e.layer for e in self.trace if e.kind == 0]
        return executed[-1] if executed else (len(self.layers) - 1 if self.layers else None)

    def settle(self) -> None:
        """End of the first step: the activation and norm that ran after each layer replace the guess from
        the registration order (a layer that ran with nothing after it is linear)."""
        self.calibrating = False
        ran = {e.layer for e in self.trace if e.kind == 0}
        for info in self.layers:
            act = self._exec_act.get(info.index)
            if act is not None:
                info.activation, info.activation_source = act.removeprefix("functional:"), \
                    "functional" if act.startswith("functional:") else "module"
            elif info.index in ran:
                info.activation, info.activation_source = "linear", "none"
            if info.index in self._exec_norm:
                info.norm = self._exec_norm[info.index]
        self._calib_out.clear()
        self._calib_ref.clear()

    # ---- the model's own hooks (hot path: every training forward) --------------------------------------
    def _root_pre(self, module, args, kwargs) -> None:
        """A training forward starts: keep its arguments and the RNG state (references and a 5 KB copy), so
        that the forward of a step that goes non-finite can be re-run with module hooks to locate it."""
        if self.guard.broken or self._replaying or not torch.is_grad_enabled():
            return
        self._root_args, self._root_kwargs = args, kwargs
        self._rng = rng_state(self._device())
        self._current = None
        self._act_done.clear()

    def _root_post(self, module, args, out) -> None:
        """The model's forward ended: keep its input and output (references) for rec.step. The trace of
        module calls is dropped by rec.step, so several forwards before one step (gradient accumulation)
        all stay in it, in execution order."""
        if self.guard.broken or self._replaying or not torch.is_grad_enabled():
            return
        self.root_in, self.root_out = (args[0] if args else None), out
        self.forwards += 1
        if self.calibrating:
            self.out_fns = output_fns(out, set())

    # ---- module hooks (sampled steps and replays) --------------------------------------------------------
    def _layer_hook(self, info: LayerInfo):
        i = info.index
        trace, name = self.trace, info.name
        gout = self.gout

        def grad_hook(g: torch.Tensor) -> None:
            gout[i] = g
            if self.sampling and not self.guard.broken:
                with self.guard.timed("a gradient hook"):
                    if self.layers[i].activation in (None, "linear") or (i, "activation") not in self.pending:
                        with quiet():  # dL/dz: the output gradient too where nothing follows the layer
                            self.pending[(i, "grad_output")] = tstats(g, zeros=True)

        def hook(module, args, out) -> None:
            if self.guard.broken or not (self._replaying or torch.is_grad_enabled()):
                return
            x = args[0] if args else None
            o = out if isinstance(out, torch.Tensor) else first_tensor(out)
            prev = self._current
            self._current = i
            self._act_done.discard(i)
            trace.append(loc.Entry(i, 0, name, x, o))
            if (self.sampling or self.every_step) and o is not None and o.requires_grad:
                o.register_hook(grad_hook)
            if self.sampling or self.calibrating:
                with self.guard.timed("a forward hook"), quiet():
                    self._sample_layer(i, prev, x, o)

        return hook

    def _side_hook(self, kind: int, name: str):
        """Hook of a norm (kind 1) or activation (kind 2) module: it belongs to the layer that ran last."""

        def hook(module, args, out) -> None:
            if self.guard.broken or not (self._replaying or torch.is_grad_enabled()):
                return
            i = self._current
            if i is None or (kind == 2 and i in self._act_done):
                return
            o = out if isinstance(out, torch.Tensor) else first_tensor(out)
            x = args[0] if args else None
            self.trace.append(loc.Entry(i, kind, name, x, o))
            if kind == 2:
                self._act_done.add(i)
            if self.sampling or self.calibrating:
                with self.guard.timed("a forward hook"), quiet():
                    if kind == 2:
                        if self.calibrating:
                            self._exec_act.setdefault(i, self._acts[module])
                        self._sample_activation(i, self._acts[module], o)
                        return
                    if self.calibrating:
                        self._exec_norm.setdefault(i, self._norms[module])
                    if i not in self._act_done:
                        self._functional(i, x, "norm")
                    if self.calibrating and i not in self._exec_act and isinstance(o, torch.Tensor):
                        self._calib_out[i], self._calib_ref[i] = o.detach().clone(), o
                    if self.sampling:
                        self.pending[(i, "normalized")] = tstats(o, precise=True)

        return hook

    def _sample_layer(self, i: int, prev: int | None, x: Any, o: Any) -> None:
        if prev is not None and prev != i and prev not in self._act_done:
            self._functional(prev, x, "next")
        if self.calibrating and isinstance(o, torch.Tensor):
            self._calib_out[i], self._calib_ref[i] = o.detach().clone(), o
        if self.sampling:
            self.pending[(i, "pre_activation")] = tstats(o, precise=True)

    def _functional(self, i: int, x: Any, site: str) -> None:
        """No activation module ran after layer i, and `x` is what the next module (a norm, or the next
        layer) received. At the first forward: infer which elementwise function (F.relu, torch.sigmoid ...)
        turned layer i's output into x. At sampled steps: x is layer i's activation."""
        if not isinstance(x, torch.Tensor):
            return
        if self.calibrating:
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
        if self.sampling:
            self._act_done.add(i)
            self._sample_activation(i, act, x)

    def _sample_activation(self, i: int, act: str, a: Any) -> None:
        if not self.sampling or not isinstance(a, torch.Tensor):
            return
        self.pending[(i, "activation")] = tstats(a, precise=True, zeros=True,
                                                 saturation=act if act in SATURATING else None)
        if act in DEAD_CAPABLE and a.ndim >= 2 and i < len(self.layers) - 1:
            self.epoch.activations(i, a)
        if a.requires_grad:
            pending = self.pending

            def grad_hook(g: torch.Tensor) -> None:
                with self.guard.timed("a gradient hook"), quiet():
                    pending[(i, "grad_output")] = tstats(g, zeros=True)

            a.register_hook(grad_hook)

    # ---- replay -------------------------------------------------------------------------------------------
    def can_replay(self) -> bool:
        """The step's forward ran without module hooks (nothing traced) and its arguments are kept."""
        return not self.trace and self._root_args is not None

    def replay(self) -> None:
        """Re-run the forward of the step that went non-finite, with module hooks, to trace it: the same
        arguments and weights (rec.step runs before optimizer.step), the RNG state it started from (the
        same dropout masks), and module buffers (batch-norm running statistics) and the RNG restored
        afterwards, so training continues exactly as without the replay."""
        with restored(self.model, self._device()):
            self._replaying = True
            self._current = None
            self._act_done.clear()
            self._hooks(True)
            try:
                if self._rng is not None:
                    set_rng_state(self._rng)
                with torch.no_grad():
                    self.model(*self._root_args, **(self._root_kwargs or {}))
            except Exception as exc:  # a model that cannot be re-run: locate with what is known
                self.guard.warn_once("replay", f"nandoctor: could not re-run the forward to locate the "
                                               f"non-finite value ({exc!r})")
            finally:
                self._replaying = False
                self._hooks(self.sampling or self.every_step)

    def _device(self) -> torch.device | None:
        return self._params[0].device if self._params else None
