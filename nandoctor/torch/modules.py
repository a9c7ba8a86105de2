"""Which modules of a PyTorch model are nandoctor "layers", and what follows each of them.

A layer is a module that owns a weight of two or more dimensions directly (nn.Linear, nn.Conv*,
nn.Embedding, nn.LSTM, nn.MultiheadAttention, custom modules with an nn.Parameter matrix), in the
order of `model.named_modules()`, named by its module path (`encoder.fc1`). Normalisation modules
(BatchNorm, LayerNorm, GroupNorm, InstanceNorm) and activation modules are not layers: they belong
to the layer that ran just before them, as in the NumPy engine where a layer is
z = x W + b -> norm -> activation. The registration order gives a first guess of that ownership;
the first training forward replaces it with the order the modules actually ran in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

# activation module -> the name the diagnoser knows (nandoctor's activation names where one fits)
ACTIVATIONS: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu", nn.LeakyReLU: "leaky_relu", nn.PReLU: "leaky_relu",
    nn.RReLU: "leaky_relu", nn.ELU: "elu", nn.CELU: "elu", nn.SELU: "selu", nn.GELU: "gelu", nn.SiLU: "silu",
    nn.Mish: "mish", nn.Softplus: "softplus", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "sigmoid",
    nn.Tanh: "tanh", nn.Hardtanh: "tanh", nn.Softsign: "softsign", nn.Softmax: "softmax",
    nn.LogSoftmax: "log_softmax",
}
NORMS: tuple[tuple[type, str], ...] = (
    (_BatchNorm, "batch"), (nn.LayerNorm, "layer"), (nn.GroupNorm, "group"), (_InstanceNorm, "instance"),
)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
SATURATING = ("sigmoid", "tanh", "softmax")  # tensor_stats can measure their saturation
DEAD_CAPABLE = ("relu",)  # units that can die (exactly 0 for every input)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
            continue
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        return model


def norm_name(module: nn.Module) -> str | None:
    for cls, name in NORMS:
        if isinstance(module, cls):
            return name
    return None


def activation_name(module: nn.Module) -> str | None:
    return ACTIVATIONS.get(type(module))


def weight_of(module: nn.Module) -> nn.Parameter | None:
    """The module's own weight matrix: `weight` if it has >= 2 dims, else its first >= 2-D parameter."""
    w = module._parameters.get("weight")
    if isinstance(w, torch.Tensor) and w.ndim >= 2:
        return w
    for p in module._parameters.values():
        if isinstance(p, torch.Tensor) and p.ndim >= 2:
            return p
    return None


@dataclass
class LayerInfo:
    index: int
    name: str
    module: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    fan_in: int
    fan_out: int
    params: int
    init_std: float
    activation: str | None = None  # None until known; "linear" when nothing follows
    activation_source: str = "none"  # static | module | functional | loss | none
    norm: str | None = None
    dropout: float = 0.0

    def row(self) -> dict:
        return {"layer": self.index, "name": self.name, "fan_in": self.fan_in, "fan_out": self.fan_out,
                "params": self.params, "activation": self.activation or "linear", "init": "unknown",
                "init_std": self.init_std, "norm": self.norm, "dropout": self.dropout}


def fans(module: nn.Module, w: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) as the NumPy engine means them: inputs summed into one unit, units.

    Linear (out, in) -> (in, out); ConvNd (out, in/groups, *k) -> (in/groups * prod(k), out);
    Embedding -> (1, dim): each output reads one row, so N(0, 1) rows are unit scale."""
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return 1, int(w.shape[1])
    receptive = math.prod(int(s) for s in w.shape[2:]) if w.ndim > 2 else 1
    return int(w.shape[1]) * receptive, int(w.shape[0])


def discover(root: nn.Module) -> tuple[list[LayerInfo], dict[nn.Module, str], dict[nn.Module, str]]:
    """(layers, activation module -> name, norm module -> name), with a static guess of what follows
    each layer from the registration order."""
    layers: list[LayerInfo] = []
    acts: dict[nn.Module, str] = {}
    norms: dict[nn.Module, str] = {}
    last: LayerInfo | None = None
    for name, m in root.named_modules():
        nname, aname = norm_name(m), activation_name(m)
        if nname is not None:
            norms[m] = nname
            if last is not None and last.norm is None:
                last.norm = nname
                last.params += sum(p.numel() for p in m.parameters(recurse=False))
            continue
        if aname is not None:
            acts[m] = aname
            if last is not None and last.activation is None:
                last.activation, last.activation_source = aname, "static"
            continue
        if isinstance(m, DROPOUTS):
            if last is not None and not last.dropout:
                last.dropout = float(m.p)
            continue
        w = weight_of(m)
        if w is None:
            continue
        fan_in, fan_out = fans(m, w)
        bias = m._parameters.get("bias")
        with torch.no_grad():
            std = float(w.detach().double().std()) if w.numel() > 1 else 0.0
        last = LayerInfo(index=len(layers), name=name or type(m).__name__, module=m, weight=w,
                         bias=bias if isinstance(bias, torch.Tensor) else None, fan_in=fan_in, fan_out=fan_out,
                         params=sum(p.numel() for p in m.parameters(recurse=False)), init_std=std)
        layers.append(last)
    return layers, acts, norms


# ---- functional activations (F.relu(self.fc1(x)) in forward): inferred once, from values ----------

def _candidates() -> list[tuple[str, object]]:
    F = torch.nn.functional
    return [("relu", F.relu), ("leaky_relu", F.leaky_relu), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
            ("gelu", F.gelu), ("gelu", lambda z: F.gelu(z, approximate="tanh")), ("elu", F.elu),
            ("softplus", F.softplus), ("silu", F.silu), ("selu", F.selu)]


def infer_activation(z: torch.Tensor, a: torch.Tensor) -> str | None:
    """The elementwise function f with a == f(z) (allowing dropout's zeros and 1/(1-p) scale), or
    None when no known function fits. z and a are one layer's output and the next layer's input."""
    if z.shape != a.shape or not z.is_floating_point() or not a.is_floating_point():
        return None
    z, a = z.detach().float(), a.detach().float()
    finite = torch.isfinite(z) & torch.isfinite(a)
    if not bool(finite.any()):
        return None
    z, a = z[finite], a[finite]
    tol = 1e-3 * (1.0 + float(a.abs().max()))
    if bool(torch.allclose(a, z, atol=tol, rtol=1e-3)):
        return "linear"
    kept = a != 0
    for name, f in _candidates():
        fz = f(z)
        if bool(torch.allclose(a, fz, atol=tol, rtol=1e-3)):
            return name
        # dropout in between: zeros where dropped, f(z) / (1 - p) elsewhere
        ok = kept & (fz.abs() > 1e-6)
        if int(ok.sum()) >= 8:
            ratio = a[ok] / fz[ok]
            c = float(ratio.median())
            if c > 1.0 + 1e-3 and bool(torch.allclose(ratio, torch.full_like(ratio, c), rtol=1e-3, atol=1e-3)):
                return name
    return None


def infer_inplace(a: torch.Tensor) -> str | None:
    """An activation applied in place (F.relu(x, inplace=True)): only the output is left; guess from its range."""
    if not a.is_floating_point() or a.numel() == 0:
        return None
    a = a.detach().float()
    a = a[torch.isfinite(a)]
    if a.numel() == 0:
        return None
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and bool((a == 0).any()):
        return "relu"
    if lo >= 0 and hi <= 1:
        return "sigmoid"
    if lo >= -1 and hi <= 1:
        return "tanh"
    return None
