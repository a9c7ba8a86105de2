"""Train/validation split, imputation and preprocessing, all fitted on the training split only.

Statistics come from the finite entries of each column, so one NaN or Inf neither poisons a column's
mean nor disappears: under `impute: none` it stays non-finite for the diagnoser to find.
"""

from __future__ import annotations

import numpy as np

from nandoctor.errors import DataError

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def finite_stats(X: np.ndarray) -> dict[str, np.ndarray]:
    """Per column of X (n, d): mean, std (population), min, max over finite entries, NaN where a
    column has none; and `nonfinite`, the count of NaN/Inf entries."""
    finite = np.isfinite(X)
    count = finite.sum(axis=0)
    none = count == 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = np.where(finite, X, 0.0).sum(axis=0) / count
        deviation = np.where(finite, X - mean, 0.0)
        var = (deviation * deviation).sum(axis=0) / count
    low = np.where(finite, X, np.inf).min(axis=0, initial=np.inf)
    high = np.where(finite, X, -np.inf).max(axis=0, initial=-np.inf)
    return {"mean": mean, "std": np.sqrt(var), "min": np.where(none, np.nan, low),
            "max": np.where(none, np.nan, high), "nonfinite": len(X) - count}


def split(X: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator) -> Split:
    """Shuffled (X_train, y_train, X_val, y_val); `fraction` 0 keeps every row, in order, for training.

    At least one row stays in training, and a positive fraction always yields at least one
    validation row when there are two rows or more.
    """
    n = len(X)
    n_val = min(n - 1, max(1, round(fraction * n))) if fraction > 0 else 0
    if n_val == 0:
        return X, y, X[:0], y[:0]
    order = rng.permutation(n)
    val, train = order[:n_val], order[n_val:]
    return X[train], y[train], X[val], y[val]


def impute(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, method: str,
           *, file: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Replace non-finite feature entries (mean/median of the training column) or drop their rows.

    `drop` also drops rows whose (regression) target is non-finite: a careful user asking to drop
    incomplete rows means both. Returns the four arrays and the number of rows dropped.
    """
    if method == "none":
        return X_train, y_train, X_val, y_val, 0
    if method == "drop":
        keep_train, keep_val = _complete(X_train, y_train), _complete(X_val, y_val)
        if not keep_train.any():
            raise DataError("impute: drop removed every training row (each has a NaN or Inf)",
                            file=file, path="data.impute", hint="use impute: mean or median")
        dropped = int((~keep_train).sum() + (~keep_val).sum())
        return X_train[keep_train], y_train[keep_train], X_val[keep_val], y_val[keep_val], dropped
    fill = finite_stats(X_train)["mean"] if method == "mean" else _finite_median(X_train)
    fill = np.where(np.isnan(fill), 0.0, fill)  # a column without any finite training value
    return (np.where(np.isfinite(X_train), X_train, fill), y_train,
            np.where(np.isfinite(X_val), X_val, fill), y_val, 0)


def preprocess(X_train: np.ndarray, X_val: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Standardize or min-max scale both splits with the training split's statistics.

    A constant (or empty) column is shifted but divided by 1, so it becomes 0 instead of NaN.
    """
    if method == "none":
        return X_train, X_val
    stats = finite_stats(X_train)
    if method == "standardize":
        shift, divisor = stats["mean"], stats["std"]
    else:
        shift, divisor = stats["min"], stats["max"] - stats["min"]
    shift = np.where(np.isnan(shift), 0.0, shift)
    divisor = np.where(np.isfinite(divisor) & (divisor > 0), divisor, 1.0)
    return (X_train - shift) / divisor, (X_val - shift) / divisor


def _complete(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    finite_y = np.isfinite(y)
    return np.isfinite(X).all(axis=1) & (finite_y if y.ndim == 1 else finite_y.all(axis=1))


def _finite_median(X: np.ndarray) -> np.ndarray:
    columns = (col[np.isfinite(col)] for col in X.T)
    return np.array([np.median(c) if c.size else np.nan for c in columns], dtype=np.float64)
