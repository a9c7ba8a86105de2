"""CSV and NPZ loading through `load_dataset`: good files, and bad files that must name what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from nandoctor.config.load import from_mapping
from nandoctor.data import load_dataset
from nandoctor.data.files import load_csv, load_npz
from nandoctor.errors import DataError


def data_cfg(**data):
    return from_mapping({"data": {"validation_split": 0, **data}, "model": {"layers": [{"units": 1}]}}).data


def write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path, **data):
    return load_dataset(data_cfg(**data), seed=0, base_dir=tmp_path, file="cfg.yaml")


# ---- CSV -------------------------------------------------------------------------------------

def test_csv_with_header_target_last_by_default(tmp_path):
    write(tmp_path, "a,b,label\n1,2,0\n3,4,1\n5,6,0\n")
    ds = load(tmp_path, csv="d.csv")
    np.testing.assert_array_equal(ds.X_train, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(ds.y_train, [0, 1, 0])
    assert ds.feature_names == ("a", "b")
    assert ds.task == "classification" and ds.n_classes == 2


def test_csv_without_header(tmp_path):
    write(tmp_path, "1,2,0\n3,4,1\n")
    X, y, feature_names = load_csv(tmp_path / "d.csv", None, None)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [0, 1])
    assert feature_names == ("x0", "x1")


def test_csv_target_by_name_and_by_index(tmp_path):
    write(tmp_path, "label,a,b\n0,1,2\n1,3,4\n")
    by_name = load(tmp_path, csv="d.csv", target="label")
    by_index = load(tmp_path, csv="d.csv", target=0)
    for ds in (by_name, by_index):
        np.testing.assert_array_equal(ds.X_train, [[1, 2], [3, 4]])
        np.testing.assert_array_equal(ds.y_train, [0, 1])
        assert ds.feature_names == ("a", "b")


def test_csv_path_is_relative_to_the_config_directory(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write(tmp_path / "data", "1,0\n2,1\n")
    monkeypatch.chdir("/")
    assert load(tmp_path, csv="data/d.csv").X_train.shape == (2, 1)


def test_csv_missing_values_are_nan_not_errors(tmp_path):
    write(tmp_path, "a,b,y\n1,,0\nnan,2,1\ninf,NaN,0\n")
    ds = load(tmp_path, csv="d.csv")
    assert np.isnan(ds.X_train[0, 1]) and np.isnan(ds.X_train[1, 0]) and np.isinf(ds.X_train[2, 0])
    assert ds.profile["nonfinite_inputs"]["train"] == 4


def test_csv_labels_are_remapped_in_sorted_order(tmp_path):
    write(tmp_path, "x,y\n1,10\n2,-3\n3,7\n4,10\n")
    ds = load(tmp_path, csv="d.csv")
    np.testing.assert_array_equal(ds.y_train, [2, 0, 1, 2])
    assert ds.profile["classes"] == [-3, 7, 10]


def test_csv_text_class_labels_without_header_keep_the_first_row(tmp_path):
    write(tmp_path, "1,2,setosa\n3,4,virginica\n5,6,setosa\n")
    ds = load(tmp_path, csv="d.csv")
    assert ds.X_train.shape == (3, 2)
    assert ds.profile["classes"] == ["setosa", "virginica"]
    np.testing.assert_array_equal(ds.y_train, [0, 1, 0])


def test_csv_task_inference(tmp_path):
    write(tmp_path, "x,y\n" + "".join(f"{i},{i * 0.5}\n" for i in range(30)))
    ds = load(tmp_path, csv="d.csv")
    assert ds.task == "regression" and ds.n_classes is None
    assert ds.y_train.shape == (30, 1) and ds.y_train.dtype == np.float64
    write(tmp_path, "x,y\n" + "".join(f"{i},{i}\n" for i in range(25)), "many.csv")
    assert load(tmp_path, csv="many.csv").task == "regression"  # integers, but more than 20 values
    assert load(tmp_path, csv="many.csv", task="classification").n_classes == 25


def test_csv_rows_without_a_class_label_are_dropped_and_counted(tmp_path):
    write(tmp_path, "x,y\n1,0\n2,\n3,1\n4,nan\n")
    ds = load(tmp_path, csv="d.csv")
    np.testing.assert_array_equal(ds.X_train[:, 0], [1, 3])
    assert ds.profile["dropped_target_rows"] == 2


def test_csv_text_cell_names_row_and_column(tmp_path):
    write(tmp_path, "a,b,y\n1,2,0\n3,oops,1\n")
    with pytest.raises(DataError) as err:
        load(tmp_path, csv="d.csv")
    message = str(err.value)
    assert "row 3" in message and "'b'" in message and "oops" in message
    assert err.value.file == "cfg.yaml" and err.value.path == "data.csv"


def test_csv_semicolon_file_gets_a_separator_hint(tmp_path):
    write(tmp_path, "1;2;0\n3;4;1\n")
    with pytest.raises(DataError, match="';'"):
        load(tmp_path, csv="d.csv")


def test_csv_regression_target_must_be_numeric(tmp_path):
    write(tmp_path, "a,y\n1,2.5\n2,high\n")
    with pytest.raises(DataError, match=r"row 3, column 'y'"):
        load(tmp_path, csv="d.csv", task="regression")


def test_csv_ragged_row_is_named(tmp_path):
    write(tmp_path, "a,b,y\n1,2,0\n3,4\n5,6,1\n")
    with pytest.raises(DataError, match=r"row 3 has 2 columns, expected 3"):
        load(tmp_path, csv="d.csv")


def test_csv_unknown_target_column_suggests_the_closest(tmp_path):
    write(tmp_path, "a,b,label\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError) as err:
        load(tmp_path, csv="d.csv", target="lable")
    assert err.value.path == "data.target" and "label" in err.value.hint


def test_csv_target_index_out_of_range(tmp_path):
    write(tmp_path, "1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match="out of range"):
        load(tmp_path, csv="d.csv", target=3)


@pytest.mark.parametrize("text", ["", "\n\n", "a,b,y\n"])
def test_csv_without_data_rows(tmp_path, text):
    write(tmp_path, text)
    with pytest.raises(DataError, match=r"empty|no data rows"):
        load(tmp_path, csv="d.csv")


def test_csv_single_class(tmp_path):
    write(tmp_path, "a,y\n1,1\n2,1\n3,1\n")
    with pytest.raises(DataError, match="only one class"):
        load(tmp_path, csv="d.csv")


def test_missing_csv_names_the_file(tmp_path):
    with pytest.raises(DataError) as err:
        load(tmp_path, csv="nope.csv")
    assert "nope.csv" in str(err.value) and err.value.path == "data.csv"


# ---- NPZ -------------------------------------------------------------------------------------

def test_npz_classification_and_regression(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.savez(tmp_path / "c.npz", X=X, y=np.array([5, 9, 5, 9, 9, 5]))
    ds = load(tmp_path, npz="c.npz")
    assert ds.task == "classification" and ds.X_train.dtype == np.float64
    np.testing.assert_array_equal(ds.y_train, [0, 1, 0, 1, 1, 0])
    np.savez(tmp_path / "r.npz", X=X, y=np.linspace(0, 1, 12).reshape(6, 2))
    ds = load(tmp_path, npz="r.npz")
    assert ds.task == "regression" and ds.y_train.shape == (6, 2)


def test_npz_classification_needs_one_label_per_row(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.eye(3), y=np.eye(3))
    with pytest.raises(DataError, match="one label per row"):
        load(tmp_path, npz="d.npz", task="classification")


def test_npz_feature_names_are_used(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.eye(3), y=np.array([0, 1, 0]), feature_names=np.array(["p", "q", "r"]))
    assert load(tmp_path, npz="d.npz").feature_names == ("p", "q", "r")


@pytest.mark.parametrize(("arrays", "message"), [
    ({"y": np.zeros(3)}, "no array named 'X'"),
    ({"X": np.zeros((3, 2))}, "no array named 'y'"),
    ({"X": np.array([[1, None]], dtype=object), "y": np.zeros(1)}, "Python objects"),
    ({"X": np.zeros(3), "y": np.zeros(3)}, "must be 2-D"),
    ({"X": np.zeros((3, 2)), "y": np.zeros(4)}, "3 rows but y has 4"),
    ({"X": np.zeros((0, 2)), "y": np.zeros(0)}, "no data rows"),
])
def test_npz_bad_files(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_npz(tmp_path / "d.npz", file="cfg.yaml")
    assert err.value.file == "cfg.yaml" and err.value.path == "data.npz"


def test_npz_that_is_not_an_archive(tmp_path):
    write(tmp_path, "1,2,3\n", "d.npz")
    with pytest.raises(DataError, match="cannot read"):
        load(tmp_path, npz="d.npz")
    np.save(tmp_path / "single.npy", np.zeros((2, 2)))
    with pytest.raises(DataError, match="single array"):
        load(tmp_path, npz="single.npy")


def test_missing_npz_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"gone\.npz"):
        load(tmp_path, npz="gone.npz")
