"""The data profile: what the diagnoser knows about the data, computed once when the data is built.

Plain JSON types only (numbers, strings, lists, dicts, None), so it goes into the run directory as
is. Statistics are over finite entries (None where a column has none or overflows); non-finite
entries are counted separately. Layout:

    n_train, n_val, n_features, task, n_classes, classes (original label values, None for regression),
    feature_names, dropped_target_rows, dropped_incomplete_rows,
    features: [{name, mean, std, min, max, abs_max, nonfinite}]  training inputs as the model sees them
    raw:      [{name, mean, std, min, max, nonfinite}]           training inputs before impute/preprocess
    nonfinite_inputs: {train, val}
    target:   {class_counts, val_class_counts} | {mean, std, min, max, nonfinite, val_nonfinite}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nandoctor.data.prepare import finite_stats


def build_profile(X_raw: np.ndarray, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                  y_val: np.ndarray, *, task: str, n_classes: int | None, classes: Sequence | None,
                  feature_names: Sequence[str], dropped_target_rows: int = 0,
                  dropped_incomplete_rows: int = 0) -> dict[str, Any]:
    """`X_raw` is the training split after corruption, before impute/preprocess; the rest is final."""
    features = _columns(X_train, feature_names)
    for f in features:
        f["abs_max"] = None if f["min"] is None else max(abs(f["min"]), abs(f["max"]))
    return {
        "n_train": len(X_train),
        "n_val": len(X_val),
        "n_features": len(feature_names),
        "task": task,
        "n_classes": n_classes,
        "classes": None if classes is None else [_plain(c) for c in classes],
        "feature_names": list(feature_names),
        "dropped_target_rows": int(dropped_target_rows),
        "dropped_incomplete_rows": int(dropped_incomplete_rows),
        "features": features,
        "raw": _columns(X_raw, feature_names),
        "nonfinite_inputs": {"train": _nonfinite(X_train), "val": _nonfinite(X_val)},
        "target": _target(y_train, y_val, n_classes),
    }


def _columns(X: np.ndarray, feature_names: Sequence[str]) -> list[dict[str, Any]]:
    stats = finite_stats(X)
    return [{"name": name, **{key: _number(stats[key][j]) for key in ("mean", "std", "min", "max")},
             "nonfinite": int(stats["nonfinite"][j])} for j, name in enumerate(feature_names)]


def _target(y_train: np.ndarray, y_val: np.ndarray, n_classes: int | None) -> dict[str, Any]:
    if n_classes is not None:
        return {"class_counts": np.bincount(y_train, minlength=n_classes).tolist(),
                "val_class_counts": np.bincount(y_val, minlength=n_classes).tolist()}
    stats = finite_stats(y_train.reshape(-1, 1))
    return {**{key: _number(stats[key][0]) for key in ("mean", "std", "min", "max")},
            "nonfinite": int(stats["nonfinite"][0]), "val_nonfinite": _nonfinite(y_val)}


def _nonfinite(a: np.ndarray) -> int:
    return int(a.size - np.isfinite(a).sum())


def _number(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _plain(value: Any) -> int | float | str:
    """A label value as JSON: 3.0 reads better as 3."""
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value
