"""Build the data a run trains on: load or generate → corrupt → split → impute → preprocess → profile.

Target handling lives here, once for every source: the task is inferred when the config leaves it
open, class labels of any kind are encoded as 0..C-1, and rows without a class label are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nandoctor import names
from nandoctor.config.schema import DataConfig
from nandoctor.data import prepare
from nandoctor.data.builtin import load_builtin
from nandoctor.data.corrupt import corrupt
from nandoctor.data.files import load_csv, load_npz
from nandoctor.data.generators import GENERATORS
from nandoctor.data.profile import build_profile
from nandoctor.errors import DataError
from nandoctor.seeding import stream

MAX_INFERRED_CLASSES = 20


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and validation arrays, float64 features, ready for the engine (which casts the dtype).

    X_*: (n, n_features). Classification: y_* int64 labels 0..n_classes-1, shape (n,).
    Regression: y_* float64, shape (n, k), k = 1 unless an npz file gave a 2-D y; n_classes is None.
    Without a validation split, X_val/y_val have zero rows. `profile` is described in data.profile.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    task: str
    n_classes: int | None
    n_features: int
    feature_names: tuple[str, ...]
    profile: dict[str, Any]


def load_dataset(cfg: DataConfig, seed: int, base_dir: Path | None = None, file: str | None = None) -> Dataset:
    """Build the data set of a resolved `DataConfig` (see config.load.resolve).

    `base_dir` is the config file's directory, against which csv/npz paths are read (default: the
    working directory); `file` is the config file's name, for error messages.
    """
    X, y, feature_names, target = _load(cfg, seed, base_dir, file)
    X, y = corrupt(X, y, cfg, seed, target["n_classes"], file=file)
    X_train, y_train, X_val, y_val = prepare.split(X, y, cfg.validation_split, stream(seed, "split"))
    X_raw = X_train
    X_train, y_train, X_val, y_val, incomplete = prepare.impute(X_train, y_train, X_val, y_val, cfg.impute,
                                                                file=file)
    X_train, X_val = prepare.preprocess(X_train, X_val, cfg.preprocess)
    profile = build_profile(X_raw, X_train, y_train, X_val, y_val, feature_names=feature_names,
                            dropped_incomplete_rows=incomplete, **target)
    return Dataset(X_train, y_train, X_val, y_val, target["task"], target["n_classes"], X.shape[1],
                   feature_names, profile)


def _load(cfg: DataConfig, seed: int, base_dir: Path | None, file: str | None):
    """(X, y, feature names, target facts) with y already in the Dataset's form."""
    if cfg.generator is not None:
        try:
            X, y = GENERATORS[cfg.generator](stream(seed, "data"), cfg.n_samples, cfg.n_features,
                                             cfg.n_classes, cfg.noise)
        except DataError as exc:  # a generator knows nothing of the config file
            raise DataError(exc.message, file=file, path=exc.path, hint=exc.hint) from None
        feature_names = tuple(f"x{j}" for j in range(X.shape[1]))
        if cfg.generator in names.REGRESSION_GENERATORS:
            return X, y.reshape(-1, 1), feature_names, _facts("regression", None, None, 0)
        return X, y, feature_names, _facts("classification", cfg.n_classes, range(cfg.n_classes), 0)
    if cfg.builtin is not None:
        X, y, feature_names = load_builtin(cfg.builtin)
        key = "data.builtin"
    elif cfg.csv is not None:
        X, y, feature_names = load_csv(_resolve(cfg.csv, base_dir), cfg.target, cfg.task, file=file)
        key = "data.target"
    else:
        X, y, feature_names = load_npz(_resolve(cfg.npz, base_dir), file=file)
        key = "data.npz"
    y, keep, target = encode_target(y, cfg.task, key=key, file=file)
    return X[keep], y, feature_names, target


def encode_target(y: np.ndarray, task: str | None, *, key: str, file: str | None = None):
    """(y in the Dataset's form, mask of rows kept, target facts for the profile).

    Classification drops rows without a label (NaN, empty); regression keeps non-finite targets,
    which are the diagnoser's business. `key` is the config path to blame in errors.
    """
    text = y.dtype.kind == "U"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if text:
        missing = np.isin(np.char.lower(np.char.strip(y)), ["", "nan"])
    else:
        missing = ~np.isfinite(y.reshape(len(y), -1)).all(axis=1)
    if missing.all():
        raise DataError("the target column has no values", file=file, path=key)
    task = task or ("regression" if y.ndim == 2 else _infer_task(y[~missing], text))
    if task == "regression":
        if text:
            raise DataError("the target holds text labels, which a regression task cannot use", file=file,
                            path="data.task", hint="set data.task: classification")
        return y.reshape(len(y), -1).astype(np.float64), np.ones(len(y), dtype=bool), _facts(task, None, None, 0)
    if y.ndim != 1:
        raise DataError(f"classification needs one label per row, but y has shape {y.shape}", file=file,
                        path=key, hint="for one-hot targets save y.argmax(axis=1)")
    classes, labels = np.unique(y[~missing], return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"only one class ({classes[0].item()}) in the target: classification needs at least two",
                        file=file, path=key, hint="check the target column, or set data.task: regression")
    facts = _facts(task, len(classes), classes, int(missing.sum()))
    return labels.astype(np.int64), ~missing, facts


def _infer_task(labels: np.ndarray, text: bool) -> str:
    """Text, or integer values with few distinct ones, are class labels; anything else is a quantity."""
    if text:
        return "classification"
    few = len(np.unique(labels)) <= MAX_INFERRED_CLASSES
    return "classification" if few and np.all(labels == np.round(labels)) else "regression"


def _facts(task: str, n_classes: int | None, classes, dropped: int) -> dict[str, Any]:
    return {"task": task, "n_classes": n_classes, "classes": None if classes is None else list(classes),
            "dropped_target_rows": dropped}


def _resolve(path: str, base_dir: Path | None) -> Path:
    return Path(base_dir or ".") / Path(path).expanduser()
