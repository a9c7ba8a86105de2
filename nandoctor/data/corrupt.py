"""Deliberate corruption of a clean data set, to reproduce the data problems the diagnoser looks for.

Applied in the SPEC's order: label_noise, scale, feature_scales, offset, outliers, missing. Each
random kind draws from its own seeded stream, so turning one on does not move the others' draws.
"""

from __future__ import annotations

import numpy as np

from nandoctor.config.schema import DataConfig
from nandoctor.errors import DataError
from nandoctor.seeding import stream

OUTLIER_FACTOR = 100.0


def corrupt(X: np.ndarray, y: np.ndarray, cfg: DataConfig, seed: int, n_classes: int | None,
            *, file: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return corrupted copies of X (n, d) and y; `n_classes` None means regression (no label noise).

    Classification labels must already be encoded as 0..n_classes-1.
    """
    X = np.array(X, dtype=np.float64)
    y = np.array(y)
    n, d = X.shape
    if cfg.label_noise > 0 and n_classes is not None:
        rng = stream(seed, "corrupt.label_noise")
        rows = _choose(rng, n, cfg.label_noise)
        y[rows] = rng.integers(0, n_classes, size=len(rows))  # may redraw the same label, as in the SPEC
    X *= cfg.scale
    if cfg.feature_scales is not None:
        if len(cfg.feature_scales) != d:
            raise DataError(f"feature_scales has {len(cfg.feature_scales)} entries but the data has {d} "
                            f"feature{'s' if d != 1 else ''}", file=file, path="data.feature_scales",
                            hint="give one multiplier per feature")
        X *= np.asarray(cfg.feature_scales, dtype=np.float64)
    X += cfg.offset
    if cfg.outliers > 0:
        X[_choose(stream(seed, "corrupt.outliers"), n, cfg.outliers)] *= OUTLIER_FACTOR
    if cfg.missing > 0:
        X[np.unravel_index(_choose(stream(seed, "corrupt.missing"), n * d, cfg.missing), X.shape)] = np.nan
    return X, y


def _choose(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """round(fraction * n) distinct indexes: an exact count, so a 1 % setting means 1 %, not about 1 %."""
    return rng.choice(n, size=round(fraction * n), replace=False)
