"""Per-layer statistics of a recorded step, and the update the optimizer then applies to each layer.

At a sampled step (or an anomaly) `record` writes what the forward hooks gathered (pre-activation, norm
output, activation, dL/d(output)) with the weight, bias and gradient statistics, and snapshots each
weight; the optimizer's post-step hook then measures the update it applied (weights after minus the
snapshot) and the update/weight ratio. The same hook tells a misplaced rec.step (after optimizer.step)
from a well placed one.
"""

from __future__ import annotations

import math

import torch

from nandoctor.telemetry.store import RunWriter
from nandoctor.torch.guard import Guard
from nandoctor.torch.modules import SATURATING, LayerInfo
from nandoctor.torch.stats import quiet
from nandoctor.torch.stats import stats as tstats
from nandoctor.torch.tracer import Tracer

SNAPSHOT_KEEP = 2**25  # parameters: keep update-snapshot buffers between sampled steps up to this size


class LayerStats:
    def __init__(self, layers: list[LayerInfo], writer: RunWriter, tracer: Tracer, guard: Guard):
        self.layers, self.writer, self.tracer, self.guard = layers, writer, tracer, guard
        self.optimizer: torch.optim.Optimizer | None = None
        self._handle = None
        self._stepped_at = -1  # the tracer's forward count at the last optimizer step
        self._snap: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        self._bufs: dict[int, torch.Tensor] = {}
        self._keep = sum(info.weight.numel() for info in layers) <= SNAPSHOT_KEEP
        self._snap_step = 0
        self.last_recorded = 0  # the last step whose statistics were written

    def set_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self.optimizer is optimizer:
            return
        if self._handle is not None:
            self._handle.remove()
        self.optimizer = optimizer
        self._handle = optimizer.register_step_post_hook(self._after_optimizer)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()

    def lr(self) -> float | None:
        """The learning rate of the optimizer's first param group."""
        opt = self.optimizer
        if opt is None or not opt.param_groups:
            return None
        lr = opt.param_groups[0].get("lr")
        try:
            return float(lr)
        except (TypeError, ValueError):
            return None

    def update_note(self, dtype: str) -> str:
        """Why an optimizer step can turn finite weights and gradients non-finite (`dtype`: the model's)."""
        opt = self.optimizer
        eps = opt.param_groups[0].get("eps") if opt is not None and opt.param_groups else None
        if dtype == "float16" and isinstance(eps, float) and eps < 6e-8:
            return (f"; {type(opt).__name__} eps {eps:g} rounds to 0 in float16, so a gradient of exactly 0 "
                    f"gives 0/0 = NaN in the update")
        lr = self.lr()
        return f"; lr {lr:g}" if lr is not None else ""

    def stepped_since_forward(self) -> bool:
        """The optimizer stepped after the last forward: rec.step comes after optimizer.step."""
        return self._stepped_at == self.tracer.forwards and self.tracer.forwards > 0

    def record(self, k: int, from_trace: bool = False) -> None:
        self.last_recorded = k
        w, pend = self.writer, self.tracer.pending
        if from_trace:  # an anomaly at a step that was not sampled: best effort from the kept references
            for e in self.tracer.trace:
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
            if self.optimizer is not None:  # the post-step hook measures the update against a copy
                self._snap.append((i, W, self._snapshot(i, W), weight[5]))
        pend.clear()
        self._snap_step = k

    def discard(self) -> None:
        """Forget the snapshots: no update will be measured against them."""
        self._snap = []

    def _snapshot(self, i: int, W: torch.Tensor) -> torch.Tensor:
        """A copy of W before the optimizer step: into a buffer kept between sampled steps for models up to
        SNAPSHOT_KEEP parameters (allocating 1 MB on CPU costs more than copying it), a fresh clone above."""
        if self._keep:
            buf = self._bufs.get(i)
            if buf is None or buf.shape != W.shape or buf.dtype != W.dtype or buf.device != W.device:
                buf = self._bufs[i] = torch.empty_like(W, memory_format=torch.contiguous_format)
            return buf.copy_(W.detach())
        return W.detach().clone()

    def _after_optimizer(self, optimizer, args, kwargs) -> None:
        self._stepped_at = self.tracer.forwards
        if not self._snap or self.guard.broken:
            return
        with self.guard.timed("the optimizer post-step hook"):
            try:
                k = self._snap_step
                with torch.no_grad(), quiet():
                    for i, W, before, wn in self._snap:
                        u = tstats(torch.sub(W.detach(), before, out=before))
                        ratio = u[5] / wn if u[5] is not None and wn and math.isfinite(wn) else None
                        self.writer.stats(k, i, "update", (*u[:9], ratio))
            finally:
                self._snap = []
