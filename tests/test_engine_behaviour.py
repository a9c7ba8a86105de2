"""Whole-run behaviour of the Trainer: determinism, the failures it must reproduce (textbook
cross-entropy, float16 overflow and underflow, a huge learning rate), where it locates them, and the
metrics it reports."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from nandoctor.config import from_mapping
from nandoctor.engine.trainer import Trainer


class Recorder:
    """A minimal observer: every step's info, the parameters after each step, the events."""

    def __init__(self):
        self.steps, self.params, self.events, self.records, self.status = [], [], [], [], None

    def start(self, trainer):
        self.initial = trainer.model.params.copy()

    def wants_stats(self, step):
        return False

    def step(self, trainer, info):
        self.steps.append(info)
        self.params.append(trainer.model.params.copy())

    def epoch(self, trainer, record):
        self.records.append(record)

    def nonfinite(self, trainer, event):
        self.events.append(event)

    def end(self, trainer, status):
        self.status = status


def dataset(X, y, task, n_classes=None, val=0.25):
    k = int(len(X) * (1 - val))
    return types.SimpleNamespace(X_train=X[:k], y_train=y[:k], X_val=X[k:], y_val=y[k:], task=task,
                                 n_classes=n_classes, feature_names=tuple(f"x{j}" for j in range(X.shape[1])),
                                 profile={})


def blobs(seed=0, n=300, sep=4.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = np.array([[-sep, 0.0], [sep, 0.0], [0.0, sep]])[y] + rng.normal(size=(n, 2))
    return dataset(X, y, "classification", 3)


def binary(seed=0, n=240):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    return dataset(X, y, "classification", 2)


def regression(seed=0, n=200, d=3, offset=0.0, noise=0.1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X @ rng.normal(size=(d, 1)) + offset + noise * rng.normal(size=(n, 1))
    return dataset(X, y, "regression")


def config(layers, loss="cross_entropy", optimizer=None, seed=0, init="glorot_uniform", bias_init=0.0, **training):
    return from_mapping({"seed": seed, "data": {"generator": "blobs"},
                         "model": {"init": init, "bias_init": bias_init, "layers": layers}, "loss": loss,
                         "optimizer": optimizer or {"name": "sgd", "lr": 0.1},
                         "training": {"epochs": 3, "batch_size": 32, **training}})


def run(cfg, data):
    rec = Recorder()
    trainer = Trainer(cfg, data, rec)
    return trainer, trainer.run(), rec


# ---- determinism -------------------------------------------------------------------------------

DETERMINISM_LAYERS = [{"units": 16, "activation": "relu", "norm": "batch", "dropout": 0.2},
                      {"units": 8, "activation": "tanh", "dropout": 0.1}, {"units": 3, "activation": "softmax"}]


def test_same_seed_gives_bit_identical_runs_and_another_seed_does_not():
    data = blobs()
    losses = {}
    finals = {}
    for key, seed in (("a", 3), ("b", 3), ("c", 4)):
        cfg = config(DETERMINISM_LAYERS, optimizer={"name": "adam", "lr": 0.01}, seed=seed, epochs=4)
        trainer, result, rec = run(cfg, data)
        assert result.status == "completed"
        assert len(rec.steps) == result.steps == 4 * math.ceil(225 / 32)
        losses[key] = [info.loss for info in rec.steps]
        finals[key] = trainer.model.params.copy()
    assert losses["a"] == losses["b"]  # exact float equality, every step
    assert np.array_equal(finals["a"], finals["b"])
    assert losses["a"] != losses["c"]
    assert not np.array_equal(finals["a"], finals["c"])


# ---- textbook cross-entropy ----------------------------------------------------------------------

def textbook_config(stable):
    return config([{"units": 16, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
                  {"name": "cross_entropy", "stable": stable}, {"name": "sgd", "lr": 1.0}, epochs=100)


def test_textbook_cross_entropy_goes_non_finite_where_the_stable_one_does_not():
    data = blobs(sep=10.0)  # well separated: the network becomes confident, logits grow
    _, bad, rec = run(textbook_config(False), data)
    assert bad.status == "diverged"
    assert bad.first_nonfinite is not None
    assert bad.first_nonfinite["phase"] in ("loss", "forward")
    assert bad.first_nonfinite["step"] >= 1
    assert rec.events and rec.events[0] == bad.first_nonfinite
    assert not math.isfinite(rec.steps[-1].loss)

    _, good, rec = run(textbook_config(True), data)
    assert good.status == "completed"
    assert good.first_nonfinite is None
    assert all(math.isfinite(info.loss) for info in rec.steps)
    assert good.epochs[-1]["train_metric"] == 1.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("far", [0.0, 150.0, 1e4])
def test_stable_cross_entropy_equals_float64_log_softmax_with_one_or_per_row_shifts(dtype, far):
    """The stable loss shifts the whole batch by its max and falls back to per-row maxima when a
    row sits so far below that its probabilities would underflow; both must give log-softmax."""
    from nandoctor.config.schema import LossConfig
    from nandoctor.engine.losses import CrossEntropy

    rng = np.random.default_rng(3)
    z = rng.standard_normal((16, 5)) * 4
    z[3] -= far  # one row far below the others
    y = rng.integers(0, 5, 16)
    z = z.astype(dtype)
    loss = CrossEntropy(LossConfig(name="cross_entropy"), "softmax")
    a = np.empty_like(z)
    value = loss.forward(z, a, y)

    wide = z.astype(np.float64)
    logp = wide - wide.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    tol = 1e-6 if dtype == "float32" else 1e-13
    assert value == pytest.approx(-logp[np.arange(16), y].mean(), rel=tol)
    np.testing.assert_allclose(a, np.exp(logp), rtol=tol * 10, atol=1e-30)
    grad, wrt = loss.backward(np.empty_like(z))
    expect = np.exp(logp)
    expect[np.arange(16), y] -= 1
    np.testing.assert_allclose(grad, expect / 16, rtol=tol * 10, atol=tol / 16)
    assert wrt == "z"


# ---- float16 -----------------------------------------------------------------------------------

def test_float16_mse_overflows_where_float32_completes():
    data = regression(offset=300.0)  # squared errors near 300^2 = 9e4 > float16 max 65504
    layers = [{"units": 8, "activation": "tanh"}, {"units": 1}]
    opt = {"name": "adam", "lr": 0.01}
    _, half, _ = run(config(layers, "mse", opt, dtype="float16"), data)
    assert half.status == "diverged"
    assert half.first_nonfinite is not None and half.first_nonfinite["step"] >= 1

    _, single, rec = run(config(layers, "mse", opt, dtype="float32"), data)
    assert single.status == "completed" and single.first_nonfinite is None
    assert rec.steps[0].loss > float(np.finfo(np.float16).max)  # the value itself is beyond float16
    assert all(math.isfinite(info.loss) for info in rec.steps)


def test_tiny_update_is_lost_in_float16_but_not_in_float32():
    """lr * grad ~ 1e-5 against weights of 1.0, where the float16 spacing is 2^-10 ~ 1e-3."""
    data = regression()
    layers = [{"units": 1, "init": {"name": "constant", "value": 1.0}}]
    moved = {}
    for dtype in ("float16", "float32"):
        cfg = config(layers, "mse", {"name": "sgd", "lr": 1e-5}, bias_init=1.0, dtype=dtype, max_steps=3)
        trainer = Trainer(cfg, data)
        start = trainer.model.params.copy()
        assert (start == 1).all()
        result = trainer.run()
        assert result.status == "completed" and result.steps == 3
        assert np.abs(trainer.update.astype(np.float64)).max() > 0  # a non-zero update was computed ...
        moved[dtype] = not np.array_equal(trainer.model.params, start)
    assert moved == {"float16": False, "float32": True}  # ... and vanished only in float16


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.01}])
def test_update_is_exactly_what_the_step_added(optimizer):
    """trainer.update (computed on demand after SGD's fused step) is the update the weights got."""
    data = blobs()
    trainer = Trainer(config([{"units": 16, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
                             optimizer=optimizer, dtype="float32"), data)
    x, y = trainer.X[:32], trainer.Y[:32]
    for _ in range(3):
        before = trainer.model.params.copy()
        assert trainer.train_step(x, y, 0.1)[2] is None
        np.testing.assert_array_equal(trainer.model.params, before + trainer.update)
        assert np.abs(trainer.update).max() > 0


# ---- metrics -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("loss", "out"), [("cross_entropy", {"units": 3, "activation": "softmax"}),
                                           ("binary_cross_entropy", {"units": 1, "activation": "sigmoid"})])
def test_classification_metric_is_accuracy(loss, out):
    data = blobs() if loss == "cross_entropy" else binary()
    trainer, result, _ = run(config([{"units": 8, "activation": "tanh"}, out], loss, epochs=4), data)
    assert result.status == "completed"
    for rec in result.epochs:
        assert 0.0 <= rec["train_metric"] <= 1.0 and 0.0 <= rec["val_metric"] <= 1.0
    a = trainer.model.forward(data.X_val.astype(np.float32), train=False).astype(np.float64)
    pred = a.argmax(axis=1) if a.shape[1] > 1 else (a[:, 0] > 0.5).astype(np.int64)
    assert result.epochs[-1]["val_metric"] == pytest.approx(np.mean(pred == data.y_val))
    assert result.epochs[-1]["val_metric"] > 0.8


def test_regression_metric_is_r2_and_a_linear_problem_fits():
    data = regression()
    trainer, result, _ = run(config([{"units": 1}], "mse", {"name": "sgd", "lr": 0.05}, epochs=30), data)
    assert result.status == "completed"
    a = trainer.model.forward(data.X_val.astype(np.float32), train=False).astype(np.float64)
    y = data.y_val
    r2 = 1 - ((a - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert result.epochs[-1]["val_metric"] == pytest.approx(r2, rel=1e-4)
    assert result.epochs[-1]["train_metric"] > 0.9 and result.epochs[-1]["val_metric"] > 0.9
    first = result.epochs[0]["val_metric"]
    assert first < result.epochs[-1]["val_metric"]


# ---- a huge learning rate ----------------------------------------------------------------------

HUGE_LAYERS = [{"units": 16, "activation": "relu"}, {"units": 8, "activation": "relu"}, {"units": 1}]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_huge_learning_rate_is_located_before_the_weights_are_touched(dtype):
    cfg = config(HUGE_LAYERS, "mse", {"name": "sgd", "lr": 1e30}, dtype=dtype)
    trainer, result, rec = run(cfg, regression())
    assert result.status == "diverged"
    event = result.first_nonfinite
    assert event is not None and event["phase"] in ("forward", "backward", "update")
    assert isinstance(event["layer"], int) and 0 <= event["layer"] < len(HUGE_LAYERS)
    assert rec.steps[-1].status == "nonfinite" and rec.steps[-1].step == event["step"]
    assert all(info.status == "ok" for info in rec.steps[:-1])
    before = rec.params[-2] if len(rec.params) > 1 else rec.initial  # the weights the failing step started from
    assert np.isfinite(trainer.model.params).all()
    assert np.array_equal(trainer.model.params, before)


def test_update_that_overflows_the_weights_is_not_applied():
    """Finite weights, finite update, but weights + update > float16 max: the step must stop first."""
    data = dataset(np.ones((8, 1)), np.full((8, 1), 40100.0), "regression")
    layers = [{"units": 1, "init": "zeros"}]
    cfg = config(layers, "mse", {"name": "sgd", "lr": 200.0}, bias_init=40000.0, dtype="float16", shuffle=False)
    trainer, result, rec = run(cfg, data)
    assert math.isfinite(rec.steps[0].loss)  # d = -100: the loss itself is finite
    assert result.first_nonfinite is not None and result.first_nonfinite["phase"] == "update"
    assert np.isfinite(trainer.model.params).all()
    np.testing.assert_array_equal(trainer.model.params, rec.initial)


def test_regression_without_a_validation_split():
    """SPEC: `validation_split: 0` keeps every row for training; the validation arrays are then empty."""
    full = regression(n=64)
    data = dataset(np.concatenate([full.X_train, full.X_val]), np.concatenate([full.y_train, full.y_val]),
                   "regression", val=0.0)
    assert data.X_val.shape == (0, 3) and data.y_val.shape == (0, 1)
    result = Trainer(config([{"units": 1}], "mse", epochs=2), data).run()
    assert result.status == "completed"
    assert math.isnan(result.epochs[-1]["val_loss"]) and math.isfinite(result.epochs[-1]["train_loss"])
