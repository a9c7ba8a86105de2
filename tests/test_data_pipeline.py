"""Corruption, split, impute, preprocess and the profile, alone and through `load_dataset`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nandoctor.config.load import from_mapping
from nandoctor.data import Dataset, load_dataset, prepare
from nandoctor.data.corrupt import corrupt
from nandoctor.errors import DataError


def data_cfg(**data):
    return from_mapping({"data": data, "model": {"layers": [{"units": 1}]}}).data


def clean(n=200, d=3, seed=1):
    """Features in [1, 2), so a factor applied to an entry shows in its ratio to the original."""
    rng = np.random.default_rng(seed)
    return 1.0 + rng.random((n, d)), rng.integers(0, 4, n)


# ---- corruption ------------------------------------------------------------------------------

def test_scale_feature_scales_and_offset_in_spec_order():
    X, y = clean()
    cfg = data_cfg(generator="blobs", n_features=3, scale=2.0, feature_scales=[1.0, 10.0, 0.5], offset=-3.0)
    Xc, yc = corrupt(X, y, cfg, seed=0, n_classes=4)
    np.testing.assert_allclose(Xc, X * 2.0 * np.array([1.0, 10.0, 0.5]) - 3.0)
    np.testing.assert_array_equal(yc, y)


def test_feature_scales_must_match_the_number_of_features():
    X, y = clean(d=3)
    with pytest.raises(DataError) as err:
        corrupt(X, y, data_cfg(generator="moons", feature_scales=[1.0, 2.0]), seed=0, n_classes=4, file="c.yaml")
    assert err.value.path == "data.feature_scales" and err.value.file == "c.yaml"


def test_outliers_multiply_that_fraction_of_rows_by_100():
    X, y = clean(n=200)
    Xc, _ = corrupt(X, y, data_cfg(generator="moons", outliers=0.1), seed=0, n_classes=4)
    ratio = Xc / X
    blown = np.all(np.isclose(ratio, 100.0), axis=1)
    assert blown.sum() == 20
    np.testing.assert_array_equal(Xc[~blown], X[~blown])


def test_missing_replaces_that_fraction_of_entries_with_nan():
    X, y = clean(n=200, d=3)
    Xc, _ = corrupt(X, y, data_cfg(generator="moons", missing=0.25), seed=0, n_classes=4)
    assert np.isnan(Xc).sum() == 150
    assert np.isnan(Xc).any(axis=0).all()  # spread over the columns, not one block
    np.testing.assert_array_equal(Xc[~np.isnan(Xc)], X[~np.isnan(Xc)])


def test_label_noise_redraws_about_that_fraction_of_labels():
    X, y = clean(n=4000)
    _, yc = corrupt(X, y, data_cfg(generator="moons", label_noise=0.4), seed=0, n_classes=4)
    changed = np.mean(yc != y)
    assert 0.4 * 0.75 - 0.03 < changed < 0.4 * 0.75 + 0.03  # a redraw keeps the label 1 time in 4
    assert set(np.unique(yc)) <= {0, 1, 2, 3}


def test_label_noise_leaves_regression_targets_alone():
    X, _ = clean()
    y = np.linspace(0, 1, len(X)).reshape(-1, 1)
    _, yc = corrupt(X, y, data_cfg(generator="linear", label_noise=0.5), seed=0, n_classes=None)
    np.testing.assert_array_equal(yc, y)


def test_corruption_does_not_touch_its_inputs_and_kinds_draw_independently():
    X, y = clean()
    X0, y0 = X.copy(), y.copy()
    only_missing, _ = corrupt(X, y, data_cfg(generator="moons", missing=0.1), seed=0, n_classes=4)
    both, _ = corrupt(X, y, data_cfg(generator="moons", missing=0.1, outliers=0.2, label_noise=0.3),
                      seed=0, n_classes=4)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(np.isnan(only_missing), np.isnan(both))


# ---- split, impute, preprocess ---------------------------------------------------------------

def test_split_is_a_shuffled_partition():
    X = np.arange(100.0).reshape(-1, 1)
    Xt, yt, Xv, yv = prepare.split(X, X[:, 0], 0.2, np.random.default_rng(0))
    assert len(Xt) == 80 and len(Xv) == 20
    assert sorted(np.concatenate([Xt, Xv])[:, 0]) == list(range(100))
    assert not np.array_equal(Xt[:, 0], np.arange(80.0))
    np.testing.assert_array_equal(Xt[:, 0], yt)
    np.testing.assert_array_equal(Xv[:, 0], yv)


def test_validation_split_zero_keeps_the_order(tmp_path):
    (tmp_path / "d.csv").write_text("".join(f"{i},{i % 2}\n" for i in range(10)))
    ds = load_dataset(data_cfg(csv="d.csv", validation_split=0), seed=0, base_dir=tmp_path)
    np.testing.assert_array_equal(ds.X_train[:, 0], np.arange(10))
    assert ds.X_val.shape == (0, 1) and ds.y_val.shape == (0,)


TRAIN = np.array([[1.0, 10.0], [np.nan, 20.0], [3.0, np.inf], [8.0, 30.0]])
VAL = np.array([[np.nan, 5.0], [2.0, -np.inf]])
Y_TRAIN, Y_VAL = np.arange(4), np.arange(2)


@pytest.mark.parametrize(("method", "fill"), [("mean", [4.0, 20.0]), ("median", [3.0, 20.0])])
def test_impute_fills_with_training_statistics(method, fill):
    Xt, yt, Xv, yv, dropped = prepare.impute(TRAIN, Y_TRAIN, VAL, Y_VAL, method)
    np.testing.assert_array_equal(Xt, [[1, 10], [fill[0], 20], [3, fill[1]], [8, 30]])
    np.testing.assert_array_equal(Xv, [[fill[0], 5], [2, fill[1]]])
    assert dropped == 0 and len(yt) == 4 and len(yv) == 2


def test_impute_drop_removes_incomplete_rows_from_both_splits():
    Xt, yt, Xv, yv, dropped = prepare.impute(TRAIN, Y_TRAIN, VAL, Y_VAL, "drop")
    np.testing.assert_array_equal(Xt, TRAIN[[0, 3]])
    np.testing.assert_array_equal(yt, [0, 3])
    assert Xv.shape == (0, 2) and len(yv) == 0 and dropped == 4


def test_impute_drop_without_validation_rows():
    Xt, yt, Xv, yv, dropped = prepare.impute(TRAIN, Y_TRAIN, VAL[:0], Y_VAL[:0], "drop")
    assert len(Xt) == len(yt) == 2 and Xv.shape == (0, 2) and yv.shape == (0,) and dropped == 2


def test_impute_drop_also_drops_nonfinite_regression_targets():
    y = np.array([[0.0], [1.0], [2.0], [np.nan]])
    Xt, yt, *_ = prepare.impute(np.ones((4, 2)), y, np.ones((0, 2)), y[:0], "drop")
    np.testing.assert_array_equal(yt, [[0.0], [1.0], [2.0]])
    assert Xt.shape == (3, 2)


def test_impute_drop_of_every_training_row_is_an_error():
    with pytest.raises(DataError, match="every training row"):
        prepare.impute(TRAIN[1:3], Y_TRAIN[1:3], VAL, Y_VAL, "drop")


def test_impute_none_keeps_nonfinite_values():
    Xt, *_ = prepare.impute(TRAIN, Y_TRAIN, VAL, Y_VAL, "none")
    assert np.isnan(Xt[1, 0]) and np.isinf(Xt[2, 1])


def test_standardize_is_fitted_on_the_training_split_only():
    rng = np.random.default_rng(0)
    Xt, Xv = rng.normal(5.0, 3.0, (500, 2)), rng.normal(50.0, 1.0, (100, 2))
    Zt, Zv = prepare.preprocess(Xt, Xv, "standardize")
    np.testing.assert_allclose(Zt.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Zt.std(axis=0), 1.0)
    np.testing.assert_allclose(Zv, (Xv - Xt.mean(axis=0)) / Xt.std(axis=0))
    assert np.all(Zv.mean(axis=0) > 5)


def test_minmax_is_fitted_on_the_training_split_only():
    Xt, Xv = np.array([[0.0, 5.0], [4.0, 5.0], [2.0, 5.0]]), np.array([[8.0, 6.0]])
    Zt, Zv = prepare.preprocess(Xt, Xv, "minmax")
    np.testing.assert_array_equal(Zt, [[0, 0], [1, 0], [0.5, 0]])  # constant column: divided by 1
    np.testing.assert_array_equal(Zv, [[2, 1]])


def test_preprocess_keeps_nan_as_nan_without_poisoning_the_column():
    Zt, Zv = prepare.preprocess(TRAIN, VAL, "standardize")
    assert np.isnan(Zt[1, 0]) and np.isnan(Zv[0, 0]) and np.isinf(Zt[2, 1])
    finite = Zt[np.isfinite(Zt[:, 0]), 0]
    np.testing.assert_allclose([finite.mean(), finite.std()], [0.0, 1.0], atol=1e-12)


# ---- load_dataset and the profile ------------------------------------------------------------

def test_load_dataset_is_deterministic_per_seed():
    cfg = data_cfg(generator="moons", missing=0.05, outliers=0.05)
    a, b, c = load_dataset(cfg, 3), load_dataset(cfg, 3), load_dataset(cfg, 4)
    assert isinstance(a, Dataset)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.X_train, c.X_train, equal_nan=True)


def test_corruption_happens_before_the_split():
    ds = load_dataset(data_cfg(generator="blobs", n_samples=500, missing=0.1), seed=0)
    nonfinite = ds.profile["nonfinite_inputs"]
    assert nonfinite["train"] + nonfinite["val"] == 100 and nonfinite["val"] > 0


def test_profile_raw_shows_the_scale_that_preprocessing_removed():
    ds = load_dataset(data_cfg(builtin="iris", scale=1000.0, preprocess="standardize"), seed=0)
    raw, seen = ds.profile["raw"], ds.profile["features"]
    assert all(f["std"] > 100 for f in raw)
    assert all(abs(f["std"] - 1.0) < 1e-9 and abs(f["mean"]) < 1e-9 for f in seen)
    assert all(f["abs_max"] == max(abs(f["min"]), abs(f["max"])) for f in seen)
    assert [f["name"] for f in seen] == list(ds.feature_names)


def test_profile_counts_and_json():
    ds = load_dataset(data_cfg(builtin="wine", missing=0.1, preprocess="minmax"), seed=0)
    profile = json.loads(json.dumps(ds.profile, allow_nan=False))
    assert profile["n_train"] == len(ds.X_train) and profile["n_val"] == len(ds.X_val)
    assert profile["n_features"] == ds.n_features == 13 and profile["n_classes"] == 3
    assert sum(profile["target"]["class_counts"]) == len(ds.y_train)
    assert sum(profile["target"]["val_class_counts"]) == len(ds.y_val)
    assert sum(f["nonfinite"] for f in profile["features"]) == profile["nonfinite_inputs"]["train"]
    assert profile["nonfinite_inputs"]["train"] == np.isnan(ds.X_train).sum() > 0


def test_profile_of_an_all_nan_column_is_null(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n,1,0\n,2,1\n,3,0\n")
    ds = load_dataset(data_cfg(csv="d.csv", validation_split=0, preprocess="standardize"), seed=0,
                      base_dir=tmp_path)
    first = ds.profile["features"][0]
    assert first["mean"] is None and first["abs_max"] is None and first["nonfinite"] == 3
    assert ds.profile["features"][1]["mean"] == pytest.approx(0.0)


def test_profile_of_a_regression_target():
    ds = load_dataset(data_cfg(generator="sine", n_features=2), seed=0)
    target = ds.profile["target"]
    assert ds.task == "regression" and ds.y_train.shape == (len(ds.X_train), 1)
    assert target["mean"] == pytest.approx(ds.y_train.mean()) and target["nonfinite"] == 0
    assert target["min"] == pytest.approx(ds.y_train.min()) and ds.profile["classes"] is None
