"""The checks every rec.step runs whatever the sampling stride: whether the gradients are finite (and their
global norm when it is taken), and whether the loss spiked.

Gradients. The global L2 norm is one pass over every gradient: taken at sampled steps, and at every step
with grad_norm="every", in float16/bfloat16 (x^T dz can overflow while dz stays finite), or when no layer
has a bias. Between them a probe decides finiteness for the price of one small gradient: the bias
gradient of the first layer that has one. A bias gradient sums its layer's output gradient, and a NaN
born anywhere in backward reaches the first layers: dz_{k-1} = (dz_k W_k^T) * f'(z_{k-1}).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch

from nandoctor.telemetry.monitor import SPIKE_FACTOR, SPIKE_FLOOR, SPIKE_REFRESH, SPIKE_WINDOW
from nandoctor.torch.modules import LayerInfo
from nandoctor.torch.stats import quiet

_BLAS_DTYPES = (torch.float32, torch.float64)


def _numpy_sqnorm(grads: list[torch.Tensor]) -> float:
    """Sum of squares of CPU float32/64 gradients, a BLAS dot each through NumPy views."""
    s2 = 0.0
    with quiet():
        for g in grads:
            a = g.numpy().reshape(-1)
            s2 += float(np.dot(a, a))
    return s2


class GradCheck:
    """params: the trainable parameters; layers: the model's layers (the probe is a bias of theirs);
    every: the global norm at every step (grad_norm="every")."""

    def __init__(self, params: list[torch.Tensor], layers: list[LayerInfo], every: bool):
        self.params = params
        self.probe_params = [info.bias for info in layers if info.bias is not None and info.bias.requires_grad][:1]
        self.full = every or not self.probe_params  # the global norm at every step

    def norm(self) -> tuple[float, bool]:
        """(global L2 norm of the gradients, all finite): one pass over the gradients. On CPU a BLAS dot
        per gradient through NumPy views (about 2x faster than torch._foreach_norm); elsewhere one fused
        foreach reduction accumulated in float32."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return math.nan, True
        if all(g.device.type == "cpu" and g.dtype in _BLAS_DTYPES and g.layout == torch.strided for g in grads):
            total = math.sqrt(_numpy_sqnorm(grads))
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

    def probe(self) -> tuple[float | None, bool]:
        """(None, finite) from the small gradients only; the exact global norm when they are not finite."""
        grads = [p.grad for p in self.probe_params if p.grad is not None]
        if not grads:
            return None, True
        if grads[0].device.type == "cpu" and all(g.dtype in _BLAS_DTYPES for g in grads):
            s = _numpy_sqnorm(grads)  # a few tiny CPU tensors: NumPy views beat torch's per-op dispatch
        else:
            try:
                norms = torch._foreach_norm([g for g in grads if g.layout == torch.strided])
            except Exception:
                norms = [torch.linalg.vector_norm(g) for g in grads if g.layout == torch.strided]
            s = float(torch.stack([n.to(norms[0].device) for n in norms]).sum()) if norms else 0.0
        if math.isfinite(s):
            return None, True
        return self.norm()


class SpikeCheck:
    """Loss above 10x the running median (the NumPy monitor's rule)."""

    def __init__(self):
        self.recent: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self.median = math.inf
        self.scale = math.inf

    def __call__(self, k: int, loss: float) -> bool:
        """Whether the loss of step k is a spike; finite losses join the running median."""
        spike = (math.isfinite(loss) and len(self.recent) >= SPIKE_REFRESH and loss > SPIKE_FACTOR * self.median
                 and loss > SPIKE_FLOOR * self.scale)
        if math.isfinite(loss):
            self.recent.append(loss)
            if len(self.recent) == SPIKE_REFRESH and self.scale == math.inf:
                self.scale = float(np.median(self.recent))
            if k % SPIKE_REFRESH == 0 or self.median == math.inf:
                self.median = float(np.median(self.recent))
        return spike
