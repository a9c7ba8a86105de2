"""Generators and built-in data sets: registry, shapes, labels, determinism, and each one's geometry."""

from __future__ import annotations

import numpy as np
import pytest

from nandoctor import names
from nandoctor.data.builtin import DIRECTORY, load_builtin
from nandoctor.data.generators import GENERATORS
from nandoctor.errors import DataError
from nandoctor.seeding import stream

# name -> (n_features, n_classes) to call it with; n_classes None marks regression
CASES = {"blobs": (4, 5), "moons": (2, 2), "circles": (2, 2), "spirals": (2, 3), "xor": (3, 2),
         "checkerboard": (2, 2), "linear": (3, None), "sine": (2, None)}


def generate(name, seed=0, n=301, noise=0.1):
    d, c = CASES[name]
    return GENERATORS[name](stream(seed, "data"), n, d, c, noise)


def test_registry_matches_the_spec_names():
    assert tuple(GENERATORS) == names.GENERATORS
    assert set(CASES) == set(names.GENERATORS)


@pytest.mark.parametrize("name", names.GENERATORS)
def test_shapes_dtypes_and_labels(name):
    d, c = CASES[name]
    X, y = generate(name)
    assert X.shape == (301, d) and X.dtype == np.float64
    assert np.isfinite(X).all()
    assert y.shape == (301,)
    if c is None:
        assert y.dtype == np.float64 and np.isfinite(y).all()
    else:
        assert y.dtype == np.int64
        assert set(np.unique(y)) == set(range(c))


@pytest.mark.parametrize("name", names.GENERATORS)
def test_same_seed_same_arrays_other_seed_other_arrays(name):
    X1, y1 = generate(name, seed=7)
    X2, y2 = generate(name, seed=7)
    X3, _ = generate(name, seed=8)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(X1, X3)


@pytest.mark.parametrize("name", ["blobs", "moons", "circles", "spirals"])
def test_classes_are_balanced_and_shuffled(name):
    _, y = generate(name, n=1000)
    counts = np.bincount(y)
    assert counts.max() - counts.min() <= 1
    assert len(set(y[:50].tolist())) > 1  # not sorted by class


def test_blobs_noise_is_the_cluster_std_around_centres_in_the_box():
    X, y = GENERATORS["blobs"](stream(0, "data"), 4000, 3, 4, 0.5)
    for k in range(4):
        cluster = X[y == k]
        assert np.all(np.abs(cluster.mean(axis=0)) < 10)
        np.testing.assert_allclose(cluster.std(axis=0), 0.5, rtol=0.1)


def test_circles_outer_radius_one_inner_half():
    X, y = GENERATORS["circles"](stream(0, "data"), 500, 2, 2, 0.0)
    radius = np.linalg.norm(X, axis=1)
    np.testing.assert_allclose(radius[y == 0], 1.0)
    np.testing.assert_allclose(radius[y == 1], 0.5)


def test_moons_are_two_unit_half_circles():
    X, y = GENERATORS["moons"](stream(0, "data"), 500, 2, 2, 0.0)
    np.testing.assert_allclose(np.linalg.norm(X[y == 0], axis=1), 1.0)
    assert np.all(X[y == 0, 1] >= 0)
    np.testing.assert_allclose(np.linalg.norm(X[y == 1] - [1.0, 0.5], axis=1), 1.0)
    assert np.all(X[y == 1, 1] <= 0.5)


def test_spirals_one_arm_per_class():
    n_classes = 4
    X, y = GENERATORS["spirals"](stream(0, "data"), 800, 2, n_classes, 0.0)
    r = np.linalg.norm(X, axis=1)
    theta = np.arctan2(X[:, 0], X[:, 1])
    offset = np.mod(theta - 4.0 * r - 2.0 * np.pi * y / n_classes + np.pi, 2.0 * np.pi) - np.pi
    np.testing.assert_allclose(offset[r > 1e-6], 0.0, atol=1e-9)


def test_xor_labels_are_the_sign_parity_of_the_first_two_features():
    X, y = GENERATORS["xor"](stream(0, "data"), 500, 5, 2, 0.0)
    assert np.all(np.abs(X) <= 1.0)
    np.testing.assert_array_equal(y, (X[:, 0] * X[:, 1] < 0).astype(int))


def test_xor_needs_two_features():
    with pytest.raises(DataError, match="at least 2 features"):
        GENERATORS["xor"](stream(0, "data"), 10, 1, 2, 0.1)


def test_checkerboard_is_a_4x4_board_on_minus2_to_2():
    X, y = GENERATORS["checkerboard"](stream(0, "data"), 4000, 2, 2, 0.0)
    assert np.all((X >= -2) & (X < 2))
    cells = np.floor(X + 2).astype(int)
    assert len({tuple(c) for c in cells}) == 16
    np.testing.assert_array_equal(y, (cells[:, 0] + cells[:, 1]) % 2)


def test_linear_target_is_linear_in_x_without_noise():
    X, y = GENERATORS["linear"](stream(0, "data"), 200, 4, None, 0.0)
    w, residual, *_ = np.linalg.lstsq(X, y, rcond=None)
    assert residual.item() < 1e-18
    assert np.abs(w).max() > 0.1


def test_linear_noise_is_the_residual_std():
    X, y = GENERATORS["linear"](stream(0, "data"), 5000, 2, None, 0.3)
    w, *_ = np.linalg.lstsq(X, y, rcond=None)
    assert abs((y - X @ w).std() - 0.3) < 0.02


def test_sine_is_sum_of_sines_on_minus_pi_to_pi():
    X, y = GENERATORS["sine"](stream(0, "data"), 300, 3, None, 0.0)
    assert np.all(np.abs(X) <= np.pi)
    np.testing.assert_allclose(y, np.sin(X).sum(axis=1))


BUILTIN_SHAPES = {"iris": (150, 4, 3), "wine": (178, 13, 3), "breast_cancer": (569, 30, 2),
                  "digits": (1797, 64, 10)}


def test_every_builtin_is_shipped():
    assert set(BUILTIN_SHAPES) == set(names.BUILTINS)
    assert (DIRECTORY / "SOURCES.md").is_file()


@pytest.mark.parametrize("name", names.BUILTINS)
def test_builtin_shapes_and_classes(name):
    n, d, c = BUILTIN_SHAPES[name]
    X, y, feature_names = load_builtin(name)
    assert X.shape == (n, d) and X.dtype == np.float64
    assert y.shape == (n,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(c))
    assert len(feature_names) == d and all(isinstance(f, str) and f for f in feature_names)
    assert np.isfinite(X).all()


@pytest.mark.parametrize("name", names.BUILTINS)
def test_builtin_files_are_plain_arrays(name):
    with np.load(DIRECTORY / f"{name}.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["X", "feature_names", "y"]
        assert archive["feature_names"].dtype.kind == "U"
