"""Summary statistics of one tensor, in the column order of `store.STAT_COLUMNS`.

Telemetry can run on every step, so a healthy tensor costs a handful of memory passes, each a BLAS
call or a SIMD reduction: the sum as a matrix-vector product with ones (numpy's pairwise sum is
~3x slower), the sum of squares as a dot product, min and max. When those sums are finite every
entry is finite; otherwise (or when the squares overflow) the careful path counts the non-finite
entries and recomputes over the finite ones in float64.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np

SATURATION = 0.01  # within 1 % of an output limit, where the derivative is below ~0.01
# Activations get a shifted one-pass variance, var = mean((x - c)^2) - (mean - c)^2. Its rounding error
# grows with (mean - c)^2 / var, so a shift (first entry) farther than this from the mean is retried at
# the mean, where the formula is the two-pass one.
SHIFT_SLACK = 4.0
PACK_MAX = 2048  # tensors up to this size are summarised together (`stats_many`): call overhead dominates them

_SCRATCH: dict[tuple[str, np.dtype], np.ndarray] = {}  # grown on demand; telemetry runs on one thread
BOOL, FLOAT64 = np.dtype(np.bool_), np.dtype(np.float64)


def _scratch(kind: str, n: int, dtype: np.dtype) -> np.ndarray:
    key = (kind, dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.size < n:
        buf = _SCRATCH[key] = np.ones(n, dtype) if kind == "ones" else np.empty(n, dtype)
    return buf[:n]


def saturated_fraction(a: np.ndarray, activation: str) -> float | None:
    """Share of sigmoid/tanh outputs within 1 % of their limits (softmax: top probability > 0.99)."""
    if activation == "sigmoid":
        return float(np.count_nonzero((a < SATURATION) | (a > 1 - SATURATION))) / a.size
    if activation == "tanh":
        return float(np.count_nonzero(np.abs(a) > 1 - SATURATION)) / a.size
    if activation == "softmax" and a.ndim == 2 and a.shape[0]:
        return float(np.count_nonzero(a.max(axis=1) > 1 - SATURATION)) / a.shape[0]
    return None


def tensor_stats(x: np.ndarray, *, precise: bool = False, zeros: bool = False,
                 saturation: str | None = None, ratio: float | None = None) -> tuple:
    """(mean, std, min, max, abs_max, norm, nonfinite, saturated, zero, ratio) of x.

    precise: a shifted variance (activations, whose mean can dwarf their spread); otherwise std comes
    from the sums already needed for the norm (weights and gradients, centred near 0). x may be a
    strided view (the engine's outputs sit beside a column of ones)."""
    n = x.size
    if n == 0:
        return (None,) * 10
    m = x if x.ndim == 2 else x.reshape(-1, x.shape[-1] if x.ndim > 2 else 1)
    if m.dtype == np.float16:
        m = m.astype(np.float32)
    elif not m.flags.c_contiguous:  # numpy runs ~2x slower on strided rows: one copy is cheaper
        m = _contiguous(m)
    moments = _shifted_moments(m) if precise else _moments(m)
    if moments is None:
        return _careful_stats(x, m.reshape(-1), precise, zeros, saturation, ratio)
    mean, std, norm = moments
    mn, mx = float(np.minimum.reduce(m, axis=None)), float(np.maximum.reduce(m, axis=None))
    zero = None
    if zeros:  # count_nonzero on floats is ~5x slower than on the comparison
        zero = 1.0 - np.count_nonzero(np.not_equal(m, 0, out=_scratch("bool", n, BOOL).reshape(m.shape))) / n
    sat = saturated_fraction(x, saturation) if saturation else None
    return (mean, std, mn, mx, max(-mn, mx), norm, 0.0, sat, zero, ratio)


def scaled_stats(stats: tuple, c: float) -> tuple:
    """The statistics of c * x from those of finite x (zeros and saturation not carried over): a
    fused SGD update is -lr times the gradient, so it needs no pass of its own. Exact up to the
    rounding of c * x to the tensor's dtype. A mean and std left out (`segment_stats`) stay None."""
    mean, std, mn, mx, abs_max, norm = stats[:6]
    lo, hi = (c * mn, c * mx) if c >= 0 else (c * mx, c * mn)
    a = abs(c)
    mean, std = (None, None) if mean is None else (c * mean, a * std)
    return (mean, std, lo, hi, a * abs_max, a * norm, 0.0, None, None, None)


def segment_stats(flat: np.ndarray, bounds: list[int], zeros: bool = False) -> list[tuple]:
    """`tensor_stats` (mean and std None) of each segment flat[bounds[k]:bounds[k + 1]] of one
    contiguous float32/float64 buffer, such as the model's flat parameters or gradients: one
    `reduceat` each for min and max over all segments, a dot product per segment for the norm and,
    with zeros, one comparison over the buffer. Leaving the mean and std out saves the sum's memory
    pass; min and max come along with the abs-max. A segment with NaN/Inf (or whose squares
    overflow) gets the full `tensor_stats`, as it would anywhere else."""
    lo, hi = bounds[0], bounds[-1]
    if flat.dtype not in (np.float32, np.float64) or any(b <= a for a, b in pairwise(bounds)):
        return [tensor_stats(flat[a:b], zeros=zeros) for a, b in pairwise(bounds)]
    span = flat[lo:hi]
    starts = np.subtract(bounds[:-1], lo)
    mn, mx = np.minimum.reduceat(span, starts).tolist(), np.maximum.reduceat(span, starts).tolist()
    if zeros:
        nonzero = np.not_equal(span, 0, out=_scratch("bool", span.size, BOOL))
    out = []
    for k, (a, b) in enumerate(pairwise(bounds)):
        seg = flat[a:b]
        s2 = float(np.dot(seg, seg))
        if not math.isfinite(s2):  # else every entry is finite
            out.append(tensor_stats(seg, zeros=zeros))
            continue
        zero = 1.0 - np.count_nonzero(nonzero[a - lo:b - lo]) / (b - a) if zeros else None
        out.append((None, None, mn[k], mx[k], max(-mn[k], mx[k]), math.sqrt(s2), 0.0, None, zero, None))
    return out


def stats_many(specs: list[tuple[np.ndarray, bool, bool, str | None]]) -> list[tuple]:
    """`tensor_stats` (ratio None) of each (x, precise, zeros, saturation). Small tensors are copied
    into one float64 buffer and reduced per segment, a dozen numpy calls for all of them; their
    std is the two-pass one in float64. A segment with NaN/Inf is redone by `tensor_stats`."""
    out: list = [None] * len(specs)
    small = []
    for k, (x, precise, zeros, saturation) in enumerate(specs):
        if 0 < x.size <= PACK_MAX:
            small.append(k)
        else:
            out[k] = tensor_stats(x, precise=precise, zeros=zeros, saturation=saturation)
    if not small:
        return out
    arrays = [specs[k][0].reshape(-1) for k in small]
    sizes = np.array([a.size for a in arrays])
    starts = np.zeros(len(arrays), np.intp)
    np.cumsum(sizes[:-1], out=starts[1:])
    total = int(starts[-1] + sizes[-1])
    pack = np.concatenate(arrays, out=_scratch("pack", total, FLOAT64))
    work = _scratch("pack_work", total, FLOAT64)
    s1 = np.add.reduceat(pack, starts)
    s2 = np.add.reduceat(np.multiply(pack, pack, out=work), starts)
    np.subtract(pack, np.repeat(s1 / sizes, sizes), out=work)
    centred = np.add.reduceat(np.multiply(work, work, out=work), starts)
    mn, mx = np.minimum.reduceat(pack, starts), np.maximum.reduceat(pack, starts)
    nonzero = np.add.reduceat(np.not_equal(pack, 0, out=_scratch("bool", total, BOOL)), starts, dtype=np.intp)
    finite = (np.isfinite(s1) & np.isfinite(s2)).tolist()
    table = np.column_stack([s1 / sizes, np.sqrt(centred / sizes), mn, mx, np.maximum(-mn, mx), np.sqrt(s2),
                             1.0 - nonzero / sizes]).tolist()
    for k, row, ok in zip(small, table, finite, strict=True):
        x, precise, zeros, saturation = specs[k]
        if not ok:
            out[k] = tensor_stats(x, precise=precise, zeros=zeros, saturation=saturation)
            continue
        sat = saturated_fraction(x, saturation) if saturation else None
        out[k] = (*row[:6], 0.0, sat, row[6] if zeros else None, None)
    return out


def _contiguous(m: np.ndarray) -> np.ndarray:
    out = _scratch("contiguous", m.size, m.dtype).reshape(m.shape)
    np.copyto(out, m)
    return out


def _sum(m: np.ndarray) -> float:
    """Sum of a 2-D array as ones @ m @ ones: BLAS reads it once."""
    rows, cols = m.shape
    return float(np.dot(np.dot(_scratch("ones", rows, m.dtype), m), _scratch("ones", cols, m.dtype)))


def _moments(m: np.ndarray) -> tuple[float, float, float] | None:
    """(mean, std, norm) from the sum and the sum of squares; None if either is not finite."""
    n, flat = m.size, m.reshape(-1)
    s2, s1 = float(np.dot(flat, flat)), _sum(m)
    if not (math.isfinite(s2) and math.isfinite(s1)):
        return None
    mean = s1 / n
    return mean, math.sqrt(max(s2 / n - mean * mean, 0.0)), math.sqrt(s2)


def _shifted_moments(m: np.ndarray) -> tuple[float, float, float] | None:
    """(mean, std, norm) from sums of d = m - c, c the first entry or, if that is far off, the mean."""
    n = m.size
    d = _scratch("shift", n, m.dtype).reshape(m.shape)
    flat = d.reshape(-1)
    c = m.dtype.type(m.item(0))
    for _ in range(2):
        np.subtract(m, c, out=d)
        sd, dd = _sum(d), float(np.dot(flat, flat))
        if not (math.isfinite(sd) and math.isfinite(dd)):
            return None
        shift = sd / n
        var = dd / n - shift * shift
        if shift * shift <= SHIFT_SLACK * var:
            break
        c = m.dtype.type(float(c) + shift)
    c = float(c)
    return c + shift, math.sqrt(max(var, 0.0)), math.sqrt(max(dd + 2 * c * sd + n * c * c, 0.0))


def _careful_stats(x: np.ndarray, flat: np.ndarray, precise: bool, zeros: bool, saturation: str | None,
                   ratio: float | None) -> tuple:
    """Statistics over the finite entries in float64, with the non-finite fraction (norm: inf)."""
    n = flat.size
    finite = np.isfinite(flat)
    good = np.count_nonzero(finite)
    nonfinite = (n - good) / n
    if good < n:
        flat = flat[finite]
        if not good:
            return (None, None, None, None, None, math.inf, 1.0, None, None, None)
    wide = flat.astype(np.float64)
    s1, s2 = float(wide.sum()), float(np.dot(wide, wide))
    n = flat.size
    mn, mx = float(flat.min()), float(flat.max())
    mean = s1 / n
    std = float(wide.std()) if precise else math.sqrt(max(s2 / n - mean * mean, 0.0))
    norm = math.sqrt(s2) if not nonfinite else math.inf
    zero = 1.0 - np.count_nonzero(flat) / n if zeros else None
    sat = None
    if saturation:  # over the finite entries, like every other statistic
        sat_in = x
        if nonfinite:
            sat_in = x[np.isfinite(x).all(axis=1)] if saturation == "softmax" and x.ndim == 2 else flat
        sat = saturated_fraction(sat_in, saturation)
    return (mean, std, mn, mx, max(-mn, mx), norm, nonfinite, sat, zero, ratio)
