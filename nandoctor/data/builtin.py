"""The small real data sets shipped inside the package (see builtin/SOURCES.md for origin and licences).

They are stored as plain `.npz` arrays so that loading needs neither scikit-learn nor pickle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nandoctor.errors import DataError

DIRECTORY = Path(__file__).resolve().parent / "builtin"


def load_builtin(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(X float64 (n, d), y int64 labels 0..C-1 (n,), feature names) of a `names.BUILTINS` data set."""
    path = DIRECTORY / f"{name}.npz"
    if not path.is_file():
        raise DataError(f"built-in data set '{name}' is missing from the installation ({path})",
                        path="data.builtin", hint="reinstall nandoctor")
    with np.load(path, allow_pickle=False) as archive:
        X = archive["X"].astype(np.float64)
        y = archive["y"].astype(np.int64)
        feature_names = tuple(str(f) for f in archive["feature_names"])
    return X, y, feature_names
