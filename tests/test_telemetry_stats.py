"""Telemetry statistics are right: `tensor_stats` against hand computation, and what a real run records
against a float64 replay of the same steps (same seed -> same init), the steps/epochs/dead_units tables
against the engine, and the preflight's chance level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nandoctor.config import from_mapping
from nandoctor.engine.trainer import Trainer
from nandoctor.telemetry.preflight import PREFLIGHT_ROWS
from nandoctor.telemetry.reader import load_run
from nandoctor.telemetry.stats import tensor_stats
from nandoctor.training import prepare, run_training

COLS = ("mean", "std", "min", "max", "abs_max", "norm", "nonfinite", "saturated", "zero", "ratio")


def as_dict(values: tuple) -> dict:
    assert len(values) == len(COLS)
    return dict(zip(COLS, values, strict=True))


def expected(x, **extra) -> dict:
    """Hand-computed stats in float64 (over the finite entries)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    f = x[np.isfinite(x)]
    return {"mean": f.mean(), "std": f.std(), "min": f.min(), "max": f.max(), "abs_max": np.abs(f).max(),
            "norm": math.sqrt(float(np.sum(f * f))), **extra}


def check(got: dict, want: dict, rtol=1e-12, atol=0.0) -> None:
    for key, value in want.items():
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] is not None, key
            assert got[key] == pytest.approx(value, rel=rtol, abs=atol), key


# ---- tensor_stats on small arrays ----------------------------------------------------------------

def test_plain_statistics_match_numpy_in_float64():
    x = np.random.default_rng(0).normal(0.3, 2.0, size=(7, 5))
    for precise in (True, False):
        got = as_dict(tensor_stats(x, precise=precise, ratio=0.25))
        check(got, expected(x), rtol=1e-9)
        assert got["nonfinite"] == 0.0
        assert got["saturated"] is None and got["zero"] is None  # not asked for
        assert got["ratio"] == 0.25


def test_std_precise_and_not_on_float32():
    x = np.random.default_rng(1).normal(-1.0, 0.5, size=(64, 16)).astype(np.float32)
    ref = x.astype(np.float64).std()
    assert as_dict(tensor_stats(x, precise=True))["std"] == pytest.approx(ref, rel=1e-6)
    assert as_dict(tensor_stats(x, precise=False))["std"] == pytest.approx(ref, rel=1e-4)
    # the two-pass std is what activations need: a mean that dwarfs the spread
    y = (1e4 + np.random.default_rng(2).normal(size=4096)).astype(np.float32)
    assert as_dict(tensor_stats(y, precise=True))["std"] == pytest.approx(y.astype(np.float64).std(), rel=1e-6)


def test_known_values_by_hand():
    x = np.array([[3.0, -4.0], [0.0, 0.0]])
    got = as_dict(tensor_stats(x, zeros=True))
    assert got["mean"] == pytest.approx(-0.25)
    assert got["std"] == pytest.approx(math.sqrt((9 + 16) / 4 - 0.0625))
    assert (got["min"], got["max"], got["abs_max"]) == (-4.0, 3.0, 4.0)
    assert got["norm"] == pytest.approx(5.0)
    assert got["zero"] == pytest.approx(0.5)


def test_zero_fraction():
    x = np.arange(-5, 15, dtype=np.float32)  # one exact zero in 20
    x[[3, 7, 11]] = 0.0  # four in 20
    assert as_dict(tensor_stats(x, zeros=True))["zero"] == pytest.approx(4 / 20)
    assert as_dict(tensor_stats(np.zeros((3, 4), np.float32), zeros=True))["zero"] == 1.0


def test_sigmoid_saturation_below_001_or_above_099():
    a = np.array([[0.001, 0.5, 0.995], [0.02, 0.98, 0.9999], [0.3, 0.005, 0.7]], dtype=np.float32)
    got = as_dict(tensor_stats(a, precise=True, saturation="sigmoid"))
    assert got["saturated"] == pytest.approx(4 / 9)  # 0.001, 0.995, 0.9999, 0.005
    check(got, expected(a), rtol=1e-6)


def test_tanh_saturation_abs_above_099():
    a = np.array([-0.999, -0.98, 0.0, 0.5, 0.995, 1.0, -1.0, 0.98], dtype=np.float64)
    assert as_dict(tensor_stats(a, saturation="tanh"))["saturated"] == pytest.approx(4 / 8)
    assert as_dict(tensor_stats(np.zeros(5), saturation="tanh"))["saturated"] == 0.0


def test_softmax_saturation_is_per_row():
    p = np.array([[0.995, 0.004, 0.001], [0.5, 0.3, 0.2], [0.001, 0.001, 0.998], [0.9, 0.05, 0.05]])
    assert as_dict(tensor_stats(p, saturation="softmax"))["saturated"] == pytest.approx(2 / 4)


def test_nonfinite_entries_are_counted_and_the_rest_is_over_the_finite_entries():
    x = np.array([[1.0, np.nan, -2.0, 0.0], [np.inf, 4.0, -np.inf, 0.5]], dtype=np.float32)
    for precise in (True, False):
        with np.errstate(all="ignore"):
            got = as_dict(tensor_stats(x, precise=precise, zeros=True))
        assert got["nonfinite"] == pytest.approx(3 / 8)
        finite = [1.0, -2.0, 0.0, 4.0, 0.5]
        want = expected(finite)
        del want["norm"]
        check(got, want, rtol=1e-9)
        assert got["zero"] == pytest.approx(1 / 5)  # over the finite entries
        assert got["norm"] == math.inf  # the norm of a tensor holding NaN/Inf is not finite


def test_all_nonfinite():
    got = as_dict(tensor_stats(np.full((2, 3), np.nan, np.float32), precise=True, zeros=True))
    assert got["nonfinite"] == 1.0
    assert got["norm"] == math.inf
    assert got["mean"] is None and got["std"] is None and got["abs_max"] is None


def test_empty_tensor():
    assert tensor_stats(np.empty((0, 4), np.float32)) == (None,) * 10


def test_saturation_is_over_the_finite_entries_too():
    a = np.array([0.999, 0.5, np.nan, np.nan], dtype=np.float32)
    got = as_dict(tensor_stats(a, precise=True, zeros=True, saturation="sigmoid"))
    assert got["nonfinite"] == 0.5
    assert got["saturated"] == pytest.approx(1 / 2)  # one of the two finite outputs


def test_float16_whose_squares_overflow_float16_gives_the_right_norm():
    x = np.array([300.0, -300.0, 1000.0, 60000.0, 2.0], dtype=np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(1000.0) * np.float16(1000.0))  # the premise
    got = as_dict(tensor_stats(x, precise=False))
    ref = x.astype(np.float64)
    assert got["nonfinite"] == 0.0
    assert got["norm"] == pytest.approx(np.linalg.norm(ref), rel=1e-6)
    assert got["mean"] == pytest.approx(ref.mean(), rel=1e-6)
    assert got["std"] == pytest.approx(ref.std(), rel=1e-5)
    assert got["abs_max"] == 60000.0


def test_float32_whose_squares_overflow_float32_stays_finite():
    x = np.array([1e20, -3e20, 2e20], dtype=np.float32)
    with np.errstate(over="ignore"):
        got = as_dict(tensor_stats(x))
    assert got["nonfinite"] == 0.0
    assert got["norm"] == pytest.approx(np.linalg.norm(x.astype(np.float64)), rel=1e-6)
    assert got["std"] == pytest.approx(x.astype(np.float64).std(), rel=1e-5)


# ---- a real run against a float64 replay -----------------------------------------------------------

def replay_config(dtype: str, **training) -> dict:
    return {"seed": 7, "data": {"generator": "blobs", "n_samples": 200, "n_features": 3, "noise": 1.5},
            "model": {"layers": [{"units": 6, "activation": "tanh"}, {"units": 3, "activation": "softmax"}]},
            "loss": "cross_entropy", "optimizer": {"name": "sgd", "lr": 0.05},
            "training": {"epochs": 1, "batch_size": 16, "shuffle": False, "max_steps": 2, "dtype": dtype,
                         **training},
            "monitor": {"every": 1}}


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_step(x, y, W, b, lr):
    """Forward, loss, backward and SGD update of tanh -> softmax/cross-entropy, all float64."""
    lin0 = x @ W[0] + b[0]
    h = np.tanh(lin0)
    z = h @ W[1] + b[1]
    p = softmax(z)
    n = len(x)
    loss = float(np.mean(-np.log(p[np.arange(n), y])))
    dz = p.copy()
    dz[np.arange(n), y] -= 1
    dz /= n
    dW1, db1 = h.T @ dz, dz.sum(axis=0)
    dh = dz @ W[1].T
    dlin0 = dh * (1 - h * h)
    dW0, db0 = x.T @ dlin0, dlin0.sum(axis=0)
    gnorm = math.sqrt(sum(float(np.sum(g * g)) for g in (dW0, db0, dW1, db1)))
    newW = [W[0] - lr * dW0, W[1] - lr * dW1]
    newb = [b[0] - lr * db0, b[1] - lr * db1]
    layers = [{"lin": lin0, "a": h, "dW": dW0, "db": db0, "dout": dh},
              {"lin": z, "a": p, "dW": dW1, "db": db1, "dout": None}]
    return loss, gnorm, newW, newb, layers


@pytest.mark.parametrize(("dtype", "rtol"), [("float32", 2e-4), ("float64", 1e-9)])
def test_recorded_statistics_match_a_float64_replay(tmp_path, dtype, rtol):
    cfg = from_mapping(replay_config(dtype))
    result, run_dir, recorded = run_training(cfg, None, tmp_path / "run")
    assert result.status == "completed" and result.steps == 2
    run = load_run(run_dir)
    assert list(run.stat_steps) == [1, 2]
    assert run.stat("weight", "norm").shape == (2, 2)

    cfg2, data = prepare(recorded, None)
    trainer = Trainer(cfg2, data)  # same seed, so the same initial weights
    W = [layer.W.astype(np.float64) for layer in trainer.model.layers]
    b = [layer.b.astype(np.float64) for layer in trainer.model.layers]
    X, labels = trainer.X.astype(np.float64), np.asarray(data.y_train)
    lr, bs = 0.05, 16
    for k in (1, 2):
        rows = slice((k - 1) * bs, k * bs)  # shuffle: false
        loss, gnorm, W, b, hand = hand_step(X[rows], labels[rows], W, b, lr)
        # the engine replay of the same step: its buffers are what the monitor read
        W_before = [layer.W.astype(np.float64) for layer in trainer.model.layers]
        e_loss, e_gnorm, failed = trainer.train_step(trainer.X[rows], trainer.Y[rows], lr)
        assert failed is None
        assert e_loss == pytest.approx(loss, rel=rtol)
        assert e_gnorm == pytest.approx(gnorm, rel=rtol)

        i_step = k - 1
        assert run.steps["step"][i_step] == k and run.steps["epoch"][i_step] == 1
        assert run.steps["loss"][i_step] == pytest.approx(loss, rel=rtol)
        assert run.steps["loss"][i_step] == e_loss  # exactly the engine's value
        assert run.steps["grad_norm"][i_step] == pytest.approx(gnorm, rel=rtol)
        assert run.steps["lr"][i_step] == lr
        assert run.steps["ok"][i_step]

        for i, h in enumerate(hand):
            layer = trainer.model.layers[i]

            def rec(tensor, column, i=i, k=k):
                return run.stat(tensor, column)[k - 1, i]

            tol = {"rel": rtol, "abs": 1e-6 if dtype == "float32" else 1e-12}
            # weights after the step, gradient, update = -lr * gradient and its ratio to the weights
            w_norm, g_norm = np.linalg.norm(W[i]), np.linalg.norm(h["dW"])
            assert rec("weight", "norm") == pytest.approx(w_norm, rel=rtol)
            assert rec("weight", "abs_max") == pytest.approx(np.abs(W[i]).max(), rel=rtol)
            assert math.isnan(rec("weight", "mean"))  # every: 1 leaves out what nothing reads (README)
            assert rec("bias", "norm") == pytest.approx(np.linalg.norm(b[i]), **tol)
            assert rec("grad_weight", "norm") == pytest.approx(g_norm, rel=rtol)
            assert rec("grad_weight", "abs_max") == pytest.approx(np.abs(h["dW"]).max(), rel=rtol)
            assert rec("grad_bias", "norm") == pytest.approx(np.linalg.norm(h["db"]), rel=rtol)
            assert rec("grad_weight", "zero") == pytest.approx(np.mean(h["dW"] == 0))
            assert rec("update", "norm") == pytest.approx(lr * g_norm, rel=rtol)
            # |update| / |W|: before and after the update agree to ~0.2 % here (the exact definition is
            # test_update_ratio_is_relative_to_the_weights_before_the_update)
            assert rec("update", "ratio") == pytest.approx(lr * g_norm / w_norm, rel=1e-2)
            # forward buffers: pre-activation and activation
            assert rec("pre_activation", "abs_max") == pytest.approx(np.abs(h["lin"]).max(), rel=rtol)
            assert rec("pre_activation", "mean") == pytest.approx(h["lin"].mean(), **tol)
            assert rec("pre_activation", "std") == pytest.approx(h["lin"].std(), rel=rtol)
            assert rec("activation", "mean") == pytest.approx(h["a"].mean(), **tol)
            assert rec("activation", "std") == pytest.approx(h["a"].std(), rel=rtol)
            assert rec("activation", "zero") == pytest.approx(np.mean(h["a"] == 0))
            if i == 0:
                assert rec("activation", "saturated") == pytest.approx(np.mean(np.abs(h["a"]) > 0.99))
                assert rec("grad_output", "norm") == pytest.approx(np.linalg.norm(h["dout"]), rel=rtol)
            for tensor in ("weight", "grad_weight", "activation", "pre_activation"):
                assert rec(tensor, "nonfinite") == 0.0

            # and bit-for-bit the engine's own buffers, read back
            assert rec("pre_activation", "abs_max") == pytest.approx(np.abs(layer.buf.lin).max(), rel=1e-12)
            assert rec("grad_weight", "norm") == pytest.approx(np.linalg.norm(layer.dW.astype(np.float64)),
                                                               rel=1e-6)
            delta = layer.W.astype(np.float64) - W_before[i]
            u = trainer.update[trainer.model.slices[i]["W"]].astype(np.float64)
            assert rec("update", "norm") == pytest.approx(np.linalg.norm(u), rel=1e-6)
            assert np.linalg.norm(delta) == pytest.approx(np.linalg.norm(u), rel=1e-3)
            assert rec("weight", "norm") == pytest.approx(np.linalg.norm(layer.W.astype(np.float64)), rel=1e-6)


@pytest.mark.parametrize("every", [1, 2])
def test_update_ratio_is_relative_to_the_weights_before_the_update(tmp_path, every):
    """every 1: step 2 reuses the norms recorded after step 1; every 2: the trainer measures them."""
    cfg = from_mapping({**replay_config("float64"), "monitor": {"every": every}})
    _, run_dir, recorded = run_training(cfg, None, tmp_path / "run")
    run = load_run(run_dir)
    recorded_steps = list(run.stat_steps)
    assert recorded_steps == ([1, 2] if every == 1 else [2])
    cfg2, data = prepare(recorded, None)
    trainer = Trainer(cfg2, data)
    W = [layer.W.astype(np.float64) for layer in trainer.model.layers]
    b = [layer.b.astype(np.float64) for layer in trainer.model.layers]
    y = np.asarray(data.y_train)
    for k in (1, 2):
        rows = slice(16 * (k - 1), 16 * k)
        _, _, W_next, b, hand = hand_step(trainer.X[rows], y[rows], W, b, 0.05)
        for i in range(2):
            want = 0.05 * np.linalg.norm(hand[i]["dW"]) / np.linalg.norm(W[i])
            if k in recorded_steps:
                assert run.stat("update", "ratio")[recorded_steps.index(k), i] == pytest.approx(want, rel=1e-9)
            after = 0.05 * np.linalg.norm(hand[i]["dW"]) / np.linalg.norm(W_next[i])
            assert want != pytest.approx(after, rel=1e-9)  # so the check tells before from after
        W = W_next
    # an update 1e38 times the gradient is not "as large as the weights"
    raw = {"seed": 0, "data": {"generator": "moons", "n_samples": 200},
           "model": {"layers": [{"units": 8, "activation": "relu"}, {"units": 2, "activation": "softmax"}]},
           "optimizer": {"name": "sgd", "lr": 1e38}, "training": {"epochs": 2}, "monitor": {"every": 1}}
    _, run_dir, _ = run_training(from_mapping(raw), None, tmp_path / "huge")
    assert load_run(run_dir).stat("update", "ratio")[0].max() > 1e6


def test_steps_table_has_one_row_per_step_with_the_engine_loss_and_epochs_match(tmp_path):
    raw = replay_config("float32", epochs=4, max_steps=None, shuffle=True)
    raw["monitor"] = {"every": "auto"}
    result, run_dir, recorded = run_training(from_mapping(raw), None, tmp_path / "run")
    run = load_run(run_dir)

    class Losses:
        def __init__(self):
            self.infos = []

        def start(self, trainer): ...
        def epoch(self, trainer, record): ...
        def nonfinite(self, trainer, event): ...
        def end(self, trainer, status): ...

        def step(self, trainer, info):
            self.infos.append(info)

    cfg2, data = prepare(recorded, None)
    obs = Losses()
    again = Trainer(cfg2, data, obs).run()
    per_epoch = math.ceil(len(data.X_train) / 16)
    assert result.steps == again.steps == 4 * per_epoch
    assert list(run.steps["step"]) == list(range(1, result.steps + 1))
    assert list(run.steps["epoch"]) == [1 + (k - 1) // per_epoch for k in range(1, result.steps + 1)]
    assert list(run.steps["loss"]) == [info.loss for info in obs.infos]
    assert list(run.steps["grad_norm"]) == pytest.approx([info.grad_norm for info in obs.infos], rel=1e-12)
    assert run.steps["ok"].all()
    # epochs rows are TrainResult.epochs, and train_loss is the mean of the epoch's step losses
    assert run.epochs == result.epochs == again.epochs
    for e in run.epochs:
        in_epoch = run.steps["loss"][run.steps["epoch"] == e["epoch"]]
        assert e["train_loss"] == pytest.approx(float(np.mean(in_epoch.astype(np.float32))), rel=1e-6)


# ---- dead units ---------------------------------------------------------------------------------

def dead_config(bias0: float, **opt) -> dict:
    return {"seed": 1, "data": {"generator": "moons", "n_samples": 240},
            "model": {"init": "he_normal",
                      "layers": [{"units": 12, "activation": "relu", "bias_init": bias0},
                                 {"units": 10, "activation": "relu"}, {"units": 2, "activation": "softmax"}]},
            "optimizer": {"name": "sgd", "lr": 0.1, **opt}, "training": {"epochs": 3}, "monitor": {"every": 1}}


class Spy:
    """Wraps the Monitor to keep a handle on the trainer (for a hand check of its final weights)."""

    def __init__(self, monitor):
        self.monitor = monitor

    def __getattr__(self, name):
        return getattr(self.monitor, name)

    def start(self, trainer):
        self.trainer = trainer
        self.monitor.start(trainer)


def hand_dead(trainer) -> list[tuple[int, int, int]]:
    """ReLU units that are zero for every training row, from the final weights in float64."""
    a = trainer.X.astype(np.float64)
    out = []
    for layer in trainer.model.layers[:-1]:
        a = np.maximum(a @ layer.W.astype(np.float64) + layer.b.astype(np.float64), 0)
        out.append((layer.index, int(np.sum(~(a > 0).any(axis=0))), layer.fan_out))
    return out


def test_relu_layer_with_bias_minus_100_is_entirely_dead(tmp_path):
    spies = []
    _, run_dir, _ = run_training(from_mapping(dead_config(-100.0)), None, tmp_path / "run",
                                      observer_factory=lambda m: spies.append(Spy(m)) or spies[-1])
    run = load_run(run_dir)
    assert sorted(run.dead_units) == [1, 2, 3]
    for epoch in (1, 2, 3):
        rows = run.dead_units[epoch]
        assert rows[0] == (0, 12, 12)  # 100 % dead
        assert rows[1] == (1, 10, 10)  # fed only zeros (and its bias stays at 0): dead as well
        assert len(rows) == 2  # hidden layers only
    assert run.dead_units[3] == hand_dead(spies[0].trainer)
    # the activation statistics agree: every recorded step has all-zero activations in layer 0
    assert np.all(run.stat("activation", "zero")[:, 0] == 1.0)


def test_dead_unit_counts_match_a_hand_check_on_the_final_weights(tmp_path):
    spies = []
    raw = dead_config(-0.6, momentum=0.9)
    raw["optimizer"]["name"] = "momentum"
    raw["optimizer"]["lr"] = 0.5
    result, run_dir, _ = run_training(from_mapping(raw), None, tmp_path / "run",
                                      observer_factory=lambda m: spies.append(Spy(m)) or spies[-1])
    run = load_run(run_dir)
    last = max(run.dead_units)
    assert last == len(result.epochs)
    assert run.dead_units[last] == hand_dead(spies[0].trainer)
    counts = [d for _, d, _ in run.dead_units[last]]
    assert any(d > 0 for d in counts)  # the check is not vacuous


# ---- preflight ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("loss", "data", "out"), [
    ("cross_entropy", {"generator": "blobs", "n_classes": 3}, {"units": 3, "activation": "softmax"}),
    ("cross_entropy", {"generator": "spirals", "n_classes": 5}, {"units": 5, "activation": "softmax"}),
    ("binary_cross_entropy", {"generator": "moons"}, {"units": 1, "activation": "sigmoid"}),
    ("mse", {"generator": "linear", "n_features": 3}, {"units": 1}),
    ("mse", {"generator": "sine"}, {"units": 1}),
])
def test_preflight_chance_level(tmp_path, loss, data, out):
    raw = {"seed": 2, "data": {**data, "n_samples": 300},
           "model": {"layers": [{"units": 8, "activation": "tanh"}, out]}, "loss": loss,
           "training": {"epochs": 1, "max_steps": 1}}
    _, run_dir, recorded = run_training(from_mapping(raw), None, tmp_path / "run")
    run = load_run(run_dir)
    chance = run.preflight["chance_loss"]
    if loss == "cross_entropy":
        assert chance == pytest.approx(math.log(data["n_classes"]), rel=1e-12)
    elif loss == "binary_cross_entropy":
        assert chance == pytest.approx(math.log(2), rel=1e-12)
    else:
        _, ds = prepare(recorded, None)
        y = np.asarray(ds.y_train, dtype=np.float64)
        assert chance == pytest.approx(float(np.var(y)), rel=1e-5)  # of the training targets
        assert chance > 0


def preflight_run(tmp_path):
    raw = replay_config("float32")
    _, run_dir, recorded = run_training(from_mapping(raw), None, tmp_path / "run")
    run = load_run(run_dir)
    cfg2, data = prepare(recorded, None)
    trainer = Trainer(cfg2, data)
    rows = min(PREFLIGHT_ROWS, len(trainer.X))
    x = trainer.X[:rows].astype(np.float64)
    W = [layer.W.astype(np.float64) for layer in trainer.model.layers]
    b = [layer.b.astype(np.float64) for layer in trainer.model.layers]
    lin0 = x @ W[0] + b[0]
    h = np.tanh(lin0)
    z = h @ W[1] + b[1]
    return run, rows, np.asarray(data.y_train)[:rows], lin0, h, z


def test_preflight_initial_loss_and_hidden_layer_statistics(tmp_path):
    run, rows, y, lin0, h, z = preflight_run(tmp_path)
    pre = run.preflight
    assert pre["rows"] == rows
    p = softmax(z)
    assert pre["initial_loss"] == pytest.approx(float(np.mean(-np.log(p[np.arange(rows), y]))), rel=1e-5)
    layer0 = pre["layers"][0]
    assert layer0["pre_activation_std"] == pytest.approx(lin0.std(), rel=1e-5)
    assert layer0["activation_std"] == pytest.approx(h.std(), rel=1e-5)
    assert layer0["activation_abs_max"] == pytest.approx(np.abs(h).max(), rel=1e-5)
    assert layer0["saturated"] == pytest.approx(np.mean(np.abs(h) > 0.99))
    assert layer0["nonfinite"] == 0.0
    assert pre["layers"][1]["pre_activation_std"] == pytest.approx(z.std(), rel=1e-5)


def test_preflight_output_layer_statistics_of_a_fused_softmax(tmp_path):
    run, _, _, _, _, z = preflight_run(tmp_path)
    p = softmax(z)
    out = run.preflight["layers"][1]
    assert out["activation_std"] == pytest.approx(p.std(), rel=1e-5)
    assert out["activation_abs_max"] == pytest.approx(p.max(), rel=1e-5)
    assert out["zero"] == pytest.approx(np.mean(p == 0))
    assert out["saturated"] == pytest.approx(np.mean(p.max(axis=1) > 0.99))


# ---- the failing step ------------------------------------------------------------------------------

def test_a_step_that_stopped_before_backward_records_no_gradient_statistics(tmp_path):
    raw = {"seed": 0, "data": {"generator": "blobs", "n_samples": 200, "scale": 20},
           "model": {"layers": [{"units": 8, "activation": "relu"}, {"units": 3, "activation": "softmax"}]},
           "loss": {"name": "cross_entropy", "stable": False}, "optimizer": {"name": "sgd", "lr": 0.1},
           "training": {"epochs": 2}, "monitor": {"every": 1}}
    _, run_dir, _ = run_training(from_mapping(raw), None, tmp_path / "run")
    run = load_run(run_dir)
    fn = run.first_nonfinite
    assert fn["phase"] == "loss" and fn["step"] == 1 and math.isnan(run.steps["grad_norm"][0])
    row = list(run.stat_steps).index(fn["step"])
    # the forward of the failing step is real and recorded ...
    assert np.isfinite(run.stat("pre_activation", "abs_max")[row]).all()
    # ... but no gradient exists for it: it must not be reported as an all-zero gradient
    for tensor in ("grad_weight", "grad_bias", "update"):
        assert np.isnan(run.stat(tensor, "norm")[row]).all(), tensor


# ---- the fast path against the original implementation --------------------------------------------

def original_tensor_stats(x, *, precise=False, zeros=False, saturation=None, ratio=None):
    """`tensor_stats` as first written (two-pass float64 std, numpy sums): the reference for the fast one."""
    from nandoctor.telemetry.stats import saturated_fraction

    flat = x.reshape(-1)
    n = flat.size
    if n == 0:
        return (None,) * 10
    if flat.dtype == np.float16:
        flat = flat.astype(np.float32)
    s2 = float(np.dot(flat, flat))
    s1 = float(flat.sum(dtype=np.float64)) if precise else float(flat.sum())
    nonfinite = 0.0
    if not (math.isfinite(s2) and math.isfinite(s1)):
        finite = np.isfinite(flat)
        good = np.count_nonzero(finite)
        nonfinite = (n - good) / n
        if good < n:
            flat = flat[finite]
            if not good:
                return (None, None, None, None, None, math.inf, 1.0, None, None, None)
        wide = flat.astype(np.float64)
        s1, s2 = float(wide.sum()), float(np.dot(wide, wide))
        n = flat.size
    mn, mx = float(flat.min()), float(flat.max())
    mean = s1 / n
    std = float(flat.std(dtype=np.float64)) if precise else math.sqrt(max(s2 / n - mean * mean, 0.0))
    norm = math.sqrt(s2) if not nonfinite else math.inf
    zero = 1.0 - np.count_nonzero(flat) / n if zeros else None
    sat = None
    if saturation:
        sat_in = x
        if nonfinite:
            sat_in = x[np.isfinite(x).all(axis=1)] if saturation == "softmax" and x.ndim == 2 else flat
        sat = saturated_fraction(sat_in, saturation)
    return (mean, std, mn, mx, max(-mn, mx), norm, nonfinite, sat, zero, ratio)


def random_tensor(rng, dtype):
    shape = [(1,), (17,), (5, 3), (64, 33), (3, 700)][rng.integers(5)]
    x = rng.normal(rng.choice([0.0, 1.0, -50.0]), rng.choice([1e-3, 1.0, 30.0]), shape)
    x[rng.random(shape) < 0.2] = 0.0
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_fast_path_agrees_with_the_original_on_finite_tensors(dtype):
    rng = np.random.default_rng(11)
    rtol = {np.float16: 1e-5, np.float32: 1e-5, np.float64: 1e-11}[dtype]
    for _ in range(200):
        x = random_tensor(rng, dtype)
        for kw in ({}, {"precise": True, "zeros": True}, {"zeros": True, "saturation": "tanh", "ratio": 0.5}):
            got, want = tensor_stats(x, **kw), original_tensor_stats(x, **kw)
            assert got[2:4] == want[2:4] and got[6:] == want[6:]  # min, max, counts: exact
            scale = float(np.abs(x.astype(np.float64)).max())
            assert got[0] == pytest.approx(want[0], rel=rtol, abs=rtol * scale)  # mean
            assert got[1] == pytest.approx(want[1], rel=rtol, abs=rtol * scale)  # std
            assert got[5] == pytest.approx(want[5], rel=rtol)  # norm


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_tensors_with_nan_or_inf_give_exactly_the_original_statistics(dtype):
    rng = np.random.default_rng(12)
    for k in range(200):
        x = random_tensor(rng, dtype)
        bad = rng.random(x.shape) < [0.0, 0.01, 0.5, 1.0][k % 4]
        bad.reshape(-1)[-1] = True  # at least one non-finite entry (the first one: the fast path's shift)
        bad.reshape(-1)[0] |= k % 2 == 0
        x[bad] = rng.choice([np.nan, np.inf, -np.inf], size=int(bad.sum()))
        for kw in ({}, {"precise": True, "zeros": True, "saturation": "sigmoid"}):
            with np.errstate(all="ignore"):
                got, want = tensor_stats(x, **kw), original_tensor_stats(x, **kw)
            assert got == want


def test_float32_overflowing_squares_take_the_original_float64_path():
    x = np.array([[3e19, -2e19], [1e19, 5e19]], dtype=np.float32)
    with np.errstate(over="ignore"):
        for precise in (False, True):
            assert tensor_stats(x, precise=precise) == original_tensor_stats(x, precise=precise)


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize(("mean", "spread"), [(1e4, 1.0), (-3e5, 0.5), (1e3, 1e-2), (0.5, 0.1)])
def test_shifted_std_of_activations_with_a_mean_far_above_their_spread(dtype, rtol, mean, spread):
    """The one-pass variance around the first entry (or the mean) against a float64 two-pass std."""
    rng = np.random.default_rng(3)
    x = (mean + spread * rng.standard_normal((128, 256))).astype(dtype)
    ref = x.astype(np.float64)
    got = as_dict(tensor_stats(x, precise=True))
    assert got["std"] == pytest.approx(ref.std(), rel=rtol)
    assert got["mean"] == pytest.approx(ref.mean(), rel=rtol)
    assert got["norm"] == pytest.approx(np.linalg.norm(ref), rel=rtol)
    # the plain one-pass formula of the weights would fail here (a sanity check of the test itself)
    if dtype == np.float32 and abs(mean) > 1e3 * spread:
        assert as_dict(tensor_stats(x))["std"] != pytest.approx(ref.std(), rel=1e-2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shifted_std_when_the_first_entry_is_an_outlier(dtype):
    rng = np.random.default_rng(4)
    x = (1e3 + rng.standard_normal(4096)).astype(dtype)
    x[0] = 1e7  # the shift is far from the mean: the variance is redone around the mean
    ref = x.astype(np.float64)
    got = as_dict(tensor_stats(x, precise=True, zeros=True))
    tol = 1e-6 if dtype == np.float32 else 1e-12
    check(got, {**expected(ref), "zero": 0.0}, rtol=tol)
    const = np.full((3, 5), 7.25, dtype)
    assert as_dict(tensor_stats(const, precise=True))["std"] == 0.0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_strided_views_are_read_in_place_with_the_statistics_of_a_copy(dtype):
    """The engine's outputs are (batch, units) views of a buffer with a trailing column of ones."""
    rng = np.random.default_rng(5)
    aug = np.ones((64, 41), dtype)
    aug[:, :40] = rng.normal(2.0, 0.5, (64, 40))
    aug[::3, :40] = 0.0
    view = aug[:, :40]
    assert not view.flags.c_contiguous
    for kw in ({}, {"precise": True, "zeros": True, "saturation": "sigmoid"}):
        got, want = tensor_stats(view, **kw), original_tensor_stats(np.ascontiguousarray(view), **kw)
        assert got[2:4] == want[2:4] and got[6:] == want[6:]
        assert got[:2] + got[4:6] == pytest.approx(want[:2] + want[4:6], rel=1e-5 if dtype != np.float64 else 1e-12)
    cube = rng.normal(size=(4, 5, 6)).astype(dtype)
    assert tensor_stats(cube, precise=True) == pytest.approx(tensor_stats(cube.reshape(20, 6), precise=True))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_stats_many_packs_small_tensors_and_agrees_with_tensor_stats(dtype):
    from nandoctor.telemetry.stats import PACK_MAX, stats_many

    rng = np.random.default_rng(6)
    specs = []
    for k in range(60):
        x = random_tensor(rng, dtype)
        if k % 5 == 0:
            x = np.ones((3, PACK_MAX + 1), dtype) * x.reshape(-1)[0]  # one too big to pack
        if k % 7 == 0:
            x.reshape(-1)[k % x.size] = [np.nan, np.inf][k % 2]  # redone by tensor_stats, exactly
        specs.append((x, k % 2 == 0, k % 3 == 0, ["tanh", None, "softmax"][k % 3], True))
    specs.append((np.empty((0, 3), dtype), True, True, None, True))
    with np.errstate(all="ignore"):
        got = stats_many(specs)
        want = [original_tensor_stats(x, precise=p, zeros=z, saturation=s) for x, p, z, s, _ in specs]
    assert got.pop() == (None,) * 10
    for (x, *_), g, w in zip(specs, got, want, strict=False):
        if not np.isfinite(x).all():
            assert g == w
            continue
        assert g[2:4] == w[2:4] and g[6:] == w[6:]
        scale = float(np.abs(x.astype(np.float64)).max()) if x.size else 0.0
        tol = 1e-11 if dtype == np.float64 else 1e-5
        for j in (0, 4, 5):
            assert g[j] == pytest.approx(w[j], rel=tol, abs=tol * scale), j
        if x.size <= PACK_MAX:  # packed: a float64 two-pass std, closer to the truth than the one-pass formula
            assert g[1] == pytest.approx(float(x.astype(np.float64).std()), rel=tol, abs=tol * scale)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_fused_sgd_update_is_recorded_from_the_gradient_as_if_it_were_built(tmp_path, dtype):
    """SGD never writes its update out; telemetry scales the gradient's statistics by -lr. They must be
    the statistics of the update the step really added (built afterwards from `trainer.update`)."""
    from nandoctor.telemetry.monitor import Monitor

    cfg = from_mapping({**replay_config(dtype), "monitor": {"every": 1}})
    cfg, data = prepare(cfg, None)
    trainer = Trainer(cfg, data)
    monitor = Monitor(tmp_path, cfg)
    monitor.start(trainer)
    rows = []
    monitor.writer.stat_rows = rows.extend  # what would go to the store
    trainer.train_step(trainer.X[:16], trainer.Y[:16], 0.05)
    assert trainer.update_scale == -0.05  # the fused path ran: nothing built yet
    monitor.record_layers(trainer, 1)
    recorded = {r[1]: r[3:] for r in rows if r[2] == "update"}
    assert sorted(recorded) == [0, 1]
    for i, layer in enumerate(trainer.model.layers):
        built = tensor_stats(trainer.update[trainer.model.slices[i]["W"]].reshape(layer.W.shape))
        rel = 1e-6 if dtype == "float32" else 1e-12
        assert recorded[i][:2] == (None, None)  # every: 1 leaves out the mean and std
        for column, (got, want) in enumerate(zip(recorded[i][2:6], built[2:6], strict=True), 2):
            assert got == pytest.approx(want, rel=rel), column
        assert recorded[i][2] <= recorded[i][3] and recorded[i][4] == max(-recorded[i][2], recorded[i][3])
