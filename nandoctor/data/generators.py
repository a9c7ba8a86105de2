"""Synthetic data sets, keyed by exactly `names.GENERATORS` (a test holds them equal).

Every generator has the signature `fn(rng, n_samples, n_features, n_classes, noise) -> (X, y)` with
X float64 of shape (n, d). Classification generators return int64 labels 0..C-1 of shape (n,),
balanced to within one sample and in random order, so that a split without shuffling
(`validation_split: 0`) still sees every class; regression generators return float64 y of shape (n,).
Arguments a generator has no use for (the number of classes of a regression set) are ignored; the
config loader has already rejected values a generator cannot honour.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nandoctor.errors import DataError

Generator = Callable[[np.random.Generator, int, int, int | None, float], tuple[np.ndarray, np.ndarray]]


def _balanced_labels(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n, dtype=np.int64) % n_classes)


def blobs(rng, n_samples, n_features, n_classes, noise):
    """Isotropic Gaussian clusters; `noise` is the cluster std, centres as in scikit-learn's box."""
    centres = rng.uniform(-10.0, 10.0, size=(n_classes, n_features))
    y = _balanced_labels(rng, n_samples, n_classes)
    return centres[y] + noise * rng.standard_normal((n_samples, n_features)), y


def moons(rng, n_samples, n_features, n_classes, noise):
    """Two interleaving half circles; the angle is drawn at random rather than on a grid."""
    y = _balanced_labels(rng, n_samples, 2)
    t = rng.uniform(0.0, np.pi, n_samples)
    upper = np.column_stack([np.cos(t), np.sin(t)])
    lower = np.column_stack([1.0 - np.cos(t), 0.5 - np.sin(t)])
    X = np.where(y[:, None] == 0, upper, lower)
    return X + noise * rng.standard_normal(X.shape), y


def circles(rng, n_samples, n_features, n_classes, noise):
    """Outer circle of radius 1 (class 0) around an inner one of radius 0.5 (class 1)."""
    y = _balanced_labels(rng, n_samples, 2)
    t = rng.uniform(0.0, 2.0 * np.pi, n_samples)
    radius = np.where(y == 0, 1.0, 0.5)
    X = radius[:, None] * np.column_stack([np.cos(t), np.sin(t)])
    return X + noise * rng.standard_normal(X.shape), y


def spirals(rng, n_samples, n_features, n_classes, noise):
    """One arm per class (the CS231n data set): `noise` jitters the angle, in radians, as there."""
    y = _balanced_labels(rng, n_samples, n_classes)
    r = rng.uniform(0.0, 1.0, n_samples)
    theta = 2.0 * np.pi * y / n_classes + 4.0 * r + noise * rng.standard_normal(n_samples)
    return r[:, None] * np.column_stack([np.sin(theta), np.cos(theta)]), y


def xor(rng, n_samples, n_features, n_classes, noise):
    """Label = sign parity of the first two features; the rest are distractors. Noise blurs X only."""
    if n_features < 2:
        raise DataError("generator 'xor' needs at least 2 features", path="data.n_features")
    X = rng.uniform(-1.0, 1.0, size=(n_samples, n_features))
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(np.int64)
    return X + noise * rng.standard_normal(X.shape), y


def checkerboard(rng, n_samples, n_features, n_classes, noise):
    """4x4 board of unit cells on [-2, 2)^2, colour = parity of the cell's row + column."""
    X = rng.uniform(-2.0, 2.0, size=(n_samples, 2))
    cells = np.floor(X + 2.0).astype(np.int64)
    y = (cells.sum(axis=1) % 2).astype(np.int64)
    return X + noise * rng.standard_normal(X.shape), y


def linear(rng, n_samples, n_features, n_classes, noise):
    """y = X w + noise with X and w standard normal, so the target has unit-order scale."""
    X = rng.standard_normal((n_samples, n_features))
    w = rng.standard_normal(n_features)
    return X, X @ w + noise * rng.standard_normal(n_samples)


def sine(rng, n_samples, n_features, n_classes, noise):
    """y = sum_j sin(x_j) + noise on U(-pi, pi)^d: smooth, but not learnable by a linear model."""
    X = rng.uniform(-np.pi, np.pi, size=(n_samples, n_features))
    return X, np.sin(X).sum(axis=1) + noise * rng.standard_normal(n_samples)


GENERATORS: dict[str, Generator] = {
    "blobs": blobs,
    "moons": moons,
    "circles": circles,
    "spirals": spirals,
    "xor": xor,
    "checkerboard": checkerboard,
    "linear": linear,
    "sine": sine,
}
