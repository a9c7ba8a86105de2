"""Summary statistics of one tensor, in the column order of `store.STAT_COLUMNS`.

Telemetry can run on every step, so a healthy tensor costs a handful of memory passes, each a BLAS
call or a SIMD reduction: the sum as a matrix-vector product with ones (numpy's pairwise sum is
~3x slower), the sum of squares as a dot product, min and max. When those sums are finite every
entry is finite; otherwise (or when the squares overflow) the careful path counts the non-finite
entries and recomputes over the finite ones in float64.
"""

from __future__ import annotations

import math

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
                 saturation: str | None = None, ratio: float | None = None, moments: bool = True) -> tuple:
    """(mean, std, min, max, abs_max, norm, nonfinite, saturated, zero, ratio) of x.

    precise: a shifted variance (activations, whose mean can dwarf their spread); otherwise std comes
    from the sums already needed for the norm (weights and gradients, centred near 0). moments=False
    leaves the mean and std out (None) of a finite x, and with them the pass for the sum. x may be a
    strided view (the engine's outputs sit beside a column of ones)."""
    n = x.size
    if n == 0:
        return (None,) * 10
    m = x if x.ndim == 2 else x.reshape(-1, x.shape[-1] if x.ndim > 2 else 1)
    if m.dtype == np.float16:
        m = m.astype(np.float32)
    elif not m.flags.c_contiguous:  # numpy runs ~2x slower on strided rows: one copy is cheaper
        m = _contiguous(m)
    sums = _shifted_moments(m) if precise else _moments(m) if moments else _norm(m)
    if sums is None:
        return _careful_stats(x, m.reshape(-1), precise, zeros, saturation, ratio)
    mean, std, norm = sums
    mn, mx = float(np.minimum.reduce(m, axis=None)), float(np.maximum.reduce(m, axis=None))
    zero = None
    if zeros:  # count_nonzero on floats is ~5x slower than on the comparison
        zero = 1.0 - np.count_nonzero(np.not_equal(m, 0, out=_scratch("bool", n, BOOL).reshape(m.shape))) / n
    sat = saturated_fraction(x, saturation) if saturation else None
    return (mean, std, mn, mx, max(-mn, mx), norm, 0.0, sat, zero, ratio)


def scaled_stats(stats: tuple, c: float) -> tuple:
    """The statistics of c * x from those of finite x (zeros and saturation not carried over): a
    fused SGD update is -lr times the gradient, so it needs no pass of its own. Exact up to the
    rounding of c * x to the tensor's dtype."""
    mean, std, mn, mx, abs_max, norm = stats[:6]
    lo, hi = (c * mn, c * mx) if c >= 0 else (c * mx, c * mn)
    a = abs(c)
    mean, std = (None, None) if mean is None else (c * mean, a * std)  # left out (moments=False)
    return (mean, std, lo, hi, a * abs_max, a * norm, 0.0, None, None, None)


def stats_many(specs: list[tuple]) -> list[tuple]:
    """`tensor_stats` (ratio None) of each (x, precise, zeros, saturation, moments). Small tensors
    are copied into one float64 buffer and reduced per segment, a dozen numpy calls for all of them;
    their std is the two-pass one in float64 (left out, like a large tensor's, without moments). A
    segment with NaN/Inf is redone by `tensor_stats`."""
    out: list = [None] * len(specs)
    small = []
    for k, (x, precise, zeros, saturation, moments) in enumerate(specs):
        if 0 < x.size <= PACK_MAX:
            small.append(k)
        else:
            out[k] = tensor_stats(x, precise=precise, zeros=zeros, saturation=saturation, moments=moments)
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
        x, precise, zeros, saturation, moments = specs[k]
        if not ok:
            out[k] = tensor_stats(x, precise=precise, zeros=zeros, saturation=saturation)
            continue
        sat = saturated_fraction(x, saturation) if saturation else None
        mean_std = row[:2] if moments else (None, None)
        out[k] = (*mean_std, *row[2:6], 0.0, sat, row[6] if zeros else None, None)
    return out


def _contiguous(m: np.ndarray) -> np.ndarray:
    out = _scratch("contiguous", m.size, m.dtype).reshape(m.shape)
    np.copyto(out, m)
    return out


def _sum(m: np.ndarray) -> float:
    """Sum of a 2-D array as ones @ m @ ones: BLAS reads it once."""
    rows, cols = m.shape
    return float(np.dot(np.dot(_scratch("ones", rows, m.dtype), m), _scratch("ones", cols, m.dtype)))


def _norm(m: np.ndarray) -> tuple[None, None, float] | None:
    """(None, None, norm) from the sum of squares alone; None if it is not finite."""
    flat = m.reshape(-1)
    s2 = float(np.dot(flat, flat))
    return (None, None, math.sqrt(s2)) if math.isfinite(s2) else None


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
