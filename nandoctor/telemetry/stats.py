"""Summary statistics of one tensor, in the column order of `store.STAT_COLUMNS`.

Norms come from a BLAS dot product; when that sum of squares is finite every entry is finite, so
the non-finite count costs nothing on healthy steps and is computed only when it can be non-zero.
"""

from __future__ import annotations

import math

import numpy as np

SATURATION = 0.01  # within 1 % of an output limit, where the derivative is below ~0.01


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

    precise: two-pass std (activations, whose mean can dwarf their spread); otherwise std comes
    from the sums already needed for the norm (weights and gradients, centred near 0)."""
    flat = x.reshape(-1)
    n = flat.size
    if n == 0:
        return (None,) * 10
    if flat.dtype == np.float16:
        flat = flat.astype(np.float32)
    s2 = float(np.dot(flat, flat))
    s1 = float(flat.sum(dtype=np.float64)) if precise else float(flat.sum())
    nonfinite = 0.0
    if not (math.isfinite(s2) and math.isfinite(s1)):
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
    std = float(flat.std(dtype=np.float64)) if precise else math.sqrt(max(s2 / n - mean * mean, 0.0))
    norm = math.sqrt(s2) if not nonfinite else math.inf
    zero = 1.0 - np.count_nonzero(flat) / n if zeros else None
    sat = None
    if saturation:  # over the finite entries, like every other statistic
        sat_in = x
        if nonfinite:
            sat_in = x[np.isfinite(x).all(axis=1)] if saturation == "softmax" and x.ndim == 2 else flat
        sat = saturated_fraction(sat_in, saturation)
    return (mean, std, mn, mx, max(-mn, mx), norm, nonfinite, sat, zero, ratio)
