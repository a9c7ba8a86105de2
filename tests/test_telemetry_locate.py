"""Purpose-built failures are located where they are born (phase, layer, tensor), and the run directory
says so consistently: meta `first_nonfinite`, the events table (kind 'nonfinite') and the steps table
(first row with status 'nonfinite'), also after thousands of healthy steps."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from nandoctor.config import from_mapping
from nandoctor.telemetry.reader import load_run
from nandoctor.telemetry.store import DB_NAME
from nandoctor.training import run_training

RELU8 = {"units": 8, "activation": "relu"}


def train(tmp_path, raw: dict):
    result, run_dir, _ = run_training(from_mapping(raw), None, tmp_path / "run")
    return result, load_run(run_dir)


def located(result, run) -> dict:
    """The first non-finite event, checked for consistency across meta, events, steps and the result."""
    fn = run.first_nonfinite
    assert fn is not None, "nothing was located"
    assert fn == result.first_nonfinite
    assert set(fn) >= {"step", "epoch", "phase", "layer", "tensor", "role", "detail"}
    events = [e for e in run.events if e["kind"] == "nonfinite"]
    assert len(events) == 1  # only the first one
    ev = events[0]
    assert (ev["step"], ev["epoch"], ev["phase"], ev["layer"], ev["tensor"]) == \
           (fn["step"], fn["epoch"], fn["phase"], fn["layer"], fn["tensor"])
    assert ev["detail"] == fn
    assert run.status == result.status == "diverged"

    db = sqlite3.connect(f"file:{run.path / DB_NAME}?mode=ro", uri=True)
    try:
        bad = db.execute("SELECT step, epoch, status FROM steps WHERE status != 'ok' ORDER BY step LIMIT 1").fetchone()
        n_ok_before = db.execute("SELECT COUNT(*) FROM steps WHERE step < ? AND status = 'ok'",
                                 (bad[0],)).fetchone()[0]
    finally:
        db.close()
    assert bad is not None and bad[2] == "nonfinite"
    assert n_ok_before == bad[0] - 1  # every step before it was healthy
    if fn["phase"] != "data":
        assert (fn["step"], fn["epoch"]) == (bad[0], bad[1])  # the first non-finite row of the steps table
        assert fn["step"] in run.stat_steps  # anomalies are always recorded in full
        assert fn["step"] == result.steps == run.steps["step"][-1]  # stop_on_nonfinite
    return fn


@pytest.mark.parametrize(("case", "layer"), [("unscaled_inputs", 0), ("huge_init_gain", 1)])
def test_forward_overflow_of_a_pre_activation(tmp_path, case, layer):
    layers = [dict(RELU8), dict(RELU8), {"units": 3, "activation": "softmax"}]
    data = {"generator": "blobs", "n_samples": 200}
    if case == "unscaled_inputs":
        data["scale"] = 1e30
    else:
        layers[1]["init"] = {"name": "glorot_uniform", "gain": 1e36}
    raw = {"seed": 0, "data": data, "model": {"layers": layers}, "optimizer": {"name": "sgd", "lr": 0.1},
           "training": {"epochs": 2, "dtype": "float32"}}
    result, run = train(tmp_path, raw)
    fn = located(result, run)
    assert (fn["phase"], fn["layer"], fn["tensor"], fn["role"]) == ("forward", layer, "pre_activation", "producer")
    assert "float32" in fn["detail"]
    assert fn["step"] >= 1
    # the recorded pre-activation of that layer at that step is (partly) non-finite, the layers before are not
    row = list(run.stat_steps).index(fn["step"])
    assert run.stat("pre_activation", "nonfinite")[row, layer] > 0
    assert np.all(run.stat("pre_activation", "nonfinite")[row, :layer] == 0)


def bce_config(seed: int, lr: float, noise: float, epochs: int) -> dict:
    return {"seed": seed, "data": {"generator": "blobs", "n_classes": 2, "n_samples": 200, "noise": noise},
            "model": {"layers": [dict(RELU8), {"units": 1, "activation": "sigmoid"}]},
            "loss": {"name": "binary_cross_entropy", "stable": False}, "optimizer": {"name": "adam", "lr": lr},
            "training": {"epochs": epochs}}


def assert_log0(run, fn) -> None:
    assert (fn["phase"], fn["layer"], fn["tensor"]) == ("loss", 1, "loss")
    assert "binary_cross_entropy" in fn["detail"] and "log(0)" in fn["detail"]
    # the evidence is in the store: at that step a sigmoid output was exactly 0 or 1 (in float32)
    row = list(run.stat_steps).index(fn["step"])
    lo, hi = run.stat("activation", "min")[row, 1], run.stat("activation", "max")[row, 1]
    assert lo == 0.0 or hi == 1.0
    assert run.stat("activation", "nonfinite")[row, 1] == 0  # the outputs themselves are finite


def test_log0_in_a_textbook_binary_cross_entropy(tmp_path):
    result, run = train(tmp_path, bce_config(seed=1, lr=0.01, noise=1.0, epochs=200))
    fn = located(result, run)
    assert_log0(run, fn)


def test_exp_overflow_in_a_textbook_softmax(tmp_path):
    raw = {"seed": 0, "data": {"generator": "blobs", "n_samples": 200, "scale": 20},  # raw, well separated
           "model": {"layers": [dict(RELU8), {"units": 3, "activation": "softmax"}]},
           "loss": {"name": "cross_entropy", "stable": False}, "optimizer": {"name": "sgd", "lr": 0.1},
           "training": {"epochs": 20}}
    result, run = train(tmp_path, raw)
    fn = located(result, run)
    assert (fn["phase"], fn["layer"], fn["tensor"], fn["role"]) == ("loss", 1, "loss", "producer")
    assert "exp" in fn["detail"]
    row = list(run.stat_steps).index(fn["step"])
    # logits beyond ln(float32 max) = 88.7 where exp overflows; the logits themselves are finite
    assert run.stat("pre_activation", "abs_max")[row, 1] > math.log(np.finfo(np.float32).max)
    assert run.stat("pre_activation", "nonfinite")[row, 1] == 0
    # the stable formula on the same config trains through
    raw["loss"]["stable"] = True
    (tmp_path / "stable").mkdir()
    ok, _, _ = run_training(from_mapping(raw), None, tmp_path / "stable" / "run")
    assert ok.status == "completed" and ok.first_nonfinite is None


def test_float16_overflow_in_an_mse_loss(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = 300.0 + 20.0 * X @ np.array([1.0, -0.5, 0.3])  # squared error ~ 300^2 = 9e4 > float16 max 65504
    np.savez(tmp_path / "big.npz", X=X, y=y)
    raw = {"seed": 0, "data": {"npz": str(tmp_path / "big.npz"), "task": "regression"},
           "model": {"layers": [dict(RELU8), {"units": 1}]}, "loss": "mse",
           "optimizer": {"name": "sgd", "lr": 0.01}, "training": {"epochs": 2, "dtype": "float16"}}
    result, run = train(tmp_path, raw)
    fn = located(result, run)
    assert (fn["phase"], fn["layer"], fn["tensor"]) == ("loss", 1, "loss")
    assert fn["step"] == 1
    assert "float16" in fn["detail"]
    row = list(run.stat_steps).index(1)
    assert run.stat("activation", "abs_max")[row, 1] < 65504  # the outputs fit; the squared error does not


def test_nan_in_the_input_data_is_step_0_phase_data(tmp_path):
    raw = {"seed": 0, "data": {"generator": "moons", "n_samples": 300, "missing": 0.05},
           "model": {"layers": [dict(RELU8), {"units": 2, "activation": "softmax"}]},
           "optimizer": {"name": "sgd", "lr": 0.1}, "training": {"epochs": 2}}
    result, run = train(tmp_path, raw)
    fn = located(result, run)
    assert (fn["step"], fn["epoch"], fn["phase"], fn["tensor"], fn["layer"]) == (0, 0, "data", "input", None)
    assert "non-finite input" in fn["detail"]
    assert run.events[0]["kind"] == "nonfinite" and run.events[0]["step"] == 0
    # the NaN then reaches the loss of the first step, which is where training stops
    assert result.steps == 1 and not run.steps["ok"][0]


def test_a_huge_learning_rate_overflows_at_step_2(tmp_path):
    raw = {"seed": 0, "data": {"generator": "moons", "n_samples": 200},
           "model": {"layers": [dict(RELU8), {"units": 2, "activation": "softmax"}]},
           "optimizer": {"name": "sgd", "lr": 1e38}, "training": {"epochs": 2}}
    result, run = train(tmp_path, raw)
    fn = located(result, run)
    assert fn["phase"] in ("update", "forward")
    assert fn["step"] == 2 and fn["epoch"] == 1
    assert fn["layer"] in (0, 1)
    assert run.steps["ok"][0] and not run.steps["ok"][1]
    # step 1's update is recorded, and it is enormous
    assert run.stat_steps[0] == 1
    assert run.stat("update", "norm")[0].max() > 1e30


def test_located_at_the_exact_step_after_thousands_of_healthy_steps(tmp_path):
    # Adam keeps growing the logits of separable data until a float32 sigmoid rounds to exactly 1 or 0
    result, run = train(tmp_path, bce_config(seed=0, lr=0.003, noise=1.0, epochs=1200))
    fn = located(result, run)
    assert fn["step"] > 2000
    assert run.steps["ok"][:fn["step"] - 1].all() and not run.steps["ok"][fn["step"] - 1]
    assert len(run.steps["step"]) == fn["step"]
    assert fn["epoch"] == math.ceil(fn["step"] / run.meta["steps_per_epoch"])
    assert run.meta["stride"] > 1 and fn["step"] % run.meta["stride"] != 0  # recorded only as an anomaly
    assert_log0(run, fn)
