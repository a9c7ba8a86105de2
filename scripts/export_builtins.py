"""Write the built-in data sets to nandoctor/data/builtin/*.npz from scikit-learn's bundled copies.

Run once, by hand, with scikit-learn installed in a throwaway environment; nandoctor itself never
imports scikit-learn. Arrays are plain (no pickle), so the package loads them with allow_pickle=False:

    python3 -m venv /tmp/skl && /tmp/skl/bin/pip install scikit-learn
    /tmp/skl/bin/python scripts/export_builtins.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn import datasets

LOADERS = {
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
    "digits": datasets.load_digits,
}
OUT = Path(__file__).resolve().parent.parent / "nandoctor" / "data" / "builtin"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, load in LOADERS.items():
        bunch = load()
        X = np.ascontiguousarray(bunch.data, dtype=np.float64)
        y = np.asarray(bunch.target, dtype=np.int64)
        feature_names = np.array([str(f) for f in bunch.feature_names], dtype=np.str_)
        np.savez_compressed(OUT / f"{name}.npz", X=X, y=y, feature_names=feature_names)
        print(f"{name}: X {X.shape}, {len(np.unique(y))} classes -> {OUT / name}.npz")


if __name__ == "__main__":
    main()
