"""`tensor_stats` for torch tensors, cheap enough for every sampled step of a real training loop.

Returns exactly the tuple of `nandoctor.telemetry.stats.tensor_stats` (the column order of
`store.STAT_COLUMNS`: mean, std, min, max, abs_max, norm, nonfinite, saturated, zero, ratio) with the
same definitions, computed with fewer passes:

- CPU float32/float64: NumPy views of the tensor's memory (no copy): the BLAS dot for the norm,
  SIMD min/max, torch's vectorised sum for the mean (NumPy's pairwise float32 sum is ~6x slower);
  `precise` (activations, whose mean can dwarf their spread) is a two-pass std: the mean first, then
  the dot of the centred values. float16/bfloat16 are widened to float32 first.
- any other device (CUDA ...): the same reductions on the device and one `.tolist()` sync, so
  parameters and activations never travel to the host.
- when the sums are not finite (NaN/Inf entries, or finite values that overflow), the exact but
  slower `tensor_stats` on a host copy, which counts and skips the non-finite entries.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from nandoctor.telemetry.stats import SATURATION, saturated_fraction, tensor_stats

EMPTY = (None,) * 10
SMALL = 65536  # below this a NumPy sum beats the torch call's dispatch cost
_NATIVE = (torch.float32, torch.float64)


def stats(t: torch.Tensor | None, *, precise: bool = False, zeros: bool = False, saturation: str | None = None,
          ratio: float | None = None) -> tuple:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
        return EMPTY
    t = t.detach()
    if t.device.type == "cpu":
        if t.dtype not in _NATIVE:
            t = t.float()
        return _host(t, precise, zeros, saturation, ratio)
    return _device(t, precise, zeros, saturation, ratio)


def _host(t: torch.Tensor, precise: bool, zeros: bool, saturation: str | None, ratio: float | None) -> tuple:
    a = t.numpy()
    flat = a.reshape(-1)
    n = flat.size
    s2 = float(np.dot(flat, flat))
    s1 = float(np.add.reduce(flat)) if n <= SMALL else float(t.sum())
    if not (math.isfinite(s2) and math.isfinite(s1)):
        return _exact(a, precise, zeros, saturation, ratio)
    mean = s1 / n
    if precise:
        d = flat - flat.dtype.type(mean)
        std = math.sqrt(max(float(np.dot(d, d)) / n, 0.0))
    else:
        std = math.sqrt(max(s2 / n - mean * mean, 0.0))
    mn, mx = float(flat.min()), float(flat.max())
    zero = float(np.count_nonzero(flat == 0)) / n if zeros else None
    sat = saturated_fraction(a, saturation) if saturation else None
    return (mean, std, mn, mx, max(-mn, mx), math.sqrt(s2), 0.0, sat, zero, ratio)


def _device(t: torch.Tensor, precise: bool, zeros: bool, saturation: str | None, ratio: float | None) -> tuple:
    f = t.reshape(-1)
    if f.dtype not in _NATIVE:
        f = f.float()
    n = f.numel()
    s1 = f.sum()
    vals = [torch.dot(f, f), s1, f.min(), f.max()]
    if precise:
        d = f - s1 / n
        vals.append(torch.dot(d, d))
    if zeros:
        vals.append((f == 0).sum())
    if saturation in ("sigmoid", "tanh"):
        low = (f.abs() > 1 - SATURATION) if saturation == "tanh" else ((f < SATURATION) | (f > 1 - SATURATION))
        vals.append(low.sum())
    elif saturation == "softmax" and t.ndim == 2 and t.shape[0]:
        vals.append((t.max(dim=1).values > 1 - SATURATION).sum())
    out = torch.stack([v.to(torch.float64) for v in vals]).tolist()  # the one host sync
    s2, s1v, mn, mx = out[:4]
    if not (math.isfinite(s2) and math.isfinite(s1v)):
        return _exact(t.to("cpu", torch.float32).numpy(), precise, zeros, saturation, ratio)
    rest = out[4:]
    mean = s1v / n
    std = math.sqrt(max(rest.pop(0) / n, 0.0)) if precise else math.sqrt(max(s2 / n - mean * mean, 0.0))
    zero = rest.pop(0) / n if zeros else None
    sat = None
    if saturation in ("sigmoid", "tanh"):
        sat = rest.pop(0) / n
    elif saturation == "softmax" and t.ndim == 2 and t.shape[0]:
        sat = rest.pop(0) / t.shape[0]
    return (mean, std, mn, mx, max(-mn, mx), math.sqrt(s2), 0.0, sat, zero, ratio)


def quiet() -> np.errstate:
    """Overflowing statistics are the point here, not a warning."""
    return np.errstate(all="ignore")


def _exact(a: np.ndarray, precise: bool, zeros: bool, saturation: str | None, ratio: float | None) -> tuple:
    with quiet():
        return tensor_stats(a, precise=precise, zeros=zeros, saturation=saturation, ratio=ratio)
