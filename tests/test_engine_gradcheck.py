"""Centred finite-difference checks of every analytic gradient in the engine, in float64.

Activations are checked on their own (backward against d/dz of sum(forward(z) * r)); losses, batch
norm, dropout and whole networks are checked end to end: the gradient the model leaves in the flat
`MLP.grads` against finite differences of the loss over the flat `MLP.params`.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from nandoctor.config import from_mapping
from nandoctor.engine.activations import ACTIVATIONS, make_activation
from nandoctor.engine.losses import make_loss, prepare_targets
from nandoctor.engine.model import MLP

H = 1e-5  # centred differences in float64: truncation ~H^2, round-off ~1e-16 / H
TOL = 1e-6
DEFAULT_ALPHA = {"leaky_relu": 0.01, "elu": 1.0}


def seed_of(*parts) -> int:
    """A seed derived from the test parameters (str hashes are salted per process; crc32 is not)."""
    return zlib.crc32(repr(parts).encode())


def rel_err(a: np.ndarray, n: np.ndarray) -> float:
    """Relative error of two whole vectors, with a floor so an all-zero pair is not 0/0."""
    a, n = np.ravel(a), np.ravel(n)
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), 1e-12))


# ---- activations -----------------------------------------------------------------------------

def away_from_kink(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Values with |z| >= 0.05, so a relu-type kink is never inside a finite-difference stencil."""
    return rng.choice([-1.0, 1.0], size=shape) * (0.05 + np.abs(rng.normal(0, 1.5, size=shape)))


def activation_numeric(act, z: np.ndarray, r: np.ndarray) -> np.ndarray:
    def f(zz):
        return float((act.forward(zz, np.empty_like(zz)) * r).sum())

    num = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += H
        zm[idx] -= H
        num[idx] = (f(zp) - f(zm)) / (2 * H)
    return num


def activation_analytic(act, z: np.ndarray, r: np.ndarray) -> np.ndarray:
    a = act.forward(z, np.empty_like(z)).copy()  # linear returns z itself
    return act.backward(r.copy(), z.copy(), a, np.empty_like(z)).copy()


ACT_CASES = [(name, DEFAULT_ALPHA.get(name)) for name in ACTIVATIONS] + [("leaky_relu", 0.2), ("elu", 0.5)]


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (16, 4)])
@pytest.mark.parametrize(("name", "alpha"), ACT_CASES)
def test_activation_backward_matches_finite_differences(name, alpha, shape):
    rng = np.random.default_rng(seed_of(name, alpha, shape))
    act = make_activation(name, alpha)
    z = away_from_kink(rng, shape)
    r = rng.normal(size=shape)
    ana = activation_analytic(act, z, r)
    num = activation_numeric(act, z, r)
    assert np.isfinite(ana).all()
    if name != "softmax" or shape[1] > 1:  # a one-unit softmax is constant 1: its gradient is 0
        assert np.abs(num).max() > 1e-3
    assert rel_err(ana, num) < TOL, (name, alpha, shape, rel_err(ana, num))


def test_activation_check_detects_a_wrong_derivative():
    """The check itself must be able to fail: tanh's forward with sigmoid's backward is wrong."""
    rng = np.random.default_rng(0)
    z, r = away_from_kink(rng, (4, 3)), rng.normal(size=(4, 3))
    tanh, sigmoid = make_activation("tanh"), make_activation("sigmoid")
    a = tanh.forward(z, np.empty_like(z))
    wrong = sigmoid.backward(r, z, a, np.empty_like(z))
    assert rel_err(wrong, activation_numeric(tanh, z, r)) > 1e-2


def test_leaky_relu_with_alpha_above_one():
    """The schema allows any alpha >= 0; alpha > 1 has its own branch in forward."""
    rng = np.random.default_rng(1)
    act = make_activation("leaky_relu", 1.5)
    z, r = away_from_kink(rng, (5, 3)), rng.normal(size=(5, 3))
    out = act.forward(z, np.empty_like(z))
    np.testing.assert_allclose(out, np.where(z > 0, z, 1.5 * z))
    assert rel_err(activation_analytic(act, z, r), activation_numeric(act, z, r)) < TOL


# ---- whole-model checks ----------------------------------------------------------------------

def build(layers: list[dict], n_in: int, loss: str | dict = "mse", seed: int = 0):
    """A float64 MLP with random (not initial) parameters, and its loss object."""
    cfg = from_mapping({"seed": seed, "data": {"generator": "blobs"}, "model": {"layers": layers},
                        "loss": loss, "training": {"dtype": "float64"}})
    model = MLP(n_in, cfg.model.layers, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed + 1000)
    model.params[:] = rng.normal(0, 0.6, model.n_params)
    for layer in model.layers:
        if layer.batch_norm:
            layer.gamma[:] = 1 + 0.2 * rng.normal(size=layer.fan_out)
            layer.beta[:] = 0.2 * rng.normal(size=layer.fan_out)
    return cfg, model, make_loss(cfg.loss, cfg.model.layers[-1].activation)


def reseed_dropout(model: MLP) -> None:
    """The same dropout mask on every forward: each dropout layer gets a freshly seeded generator."""
    for layer in model.layers:
        if layer.dropout:
            layer.rng = np.random.default_rng(1234 + layer.index)


def loss_value(model: MLP, loss, x: np.ndarray, y: np.ndarray) -> float:
    reseed_dropout(model)
    model.forward(x, train=True, fused_output=loss.fused)
    out = model.layers[-1].buf
    return loss.forward(out.z, out.a, y)


def analytic_grad(model: MLP, loss, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    loss_value(model, loss, x, y)
    grad, wrt = loss.backward(np.empty((len(x), model.layers[-1].fan_out)))
    model.backward(grad, wrt)
    return model.grads.copy()


def numeric_grad(model: MLP, loss, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = model.params
    num = np.zeros_like(p)
    for i in range(p.size):
        old = p[i]
        p[i] = old + H
        up = loss_value(model, loss, x, y)
        p[i] = old - H
        down = loss_value(model, loss, x, y)
        p[i] = old
        num[i] = (up - down) / (2 * H)
    return num


def check_model(model: MLP, loss, x: np.ndarray, y: np.ndarray) -> float:
    ana = analytic_grad(model, loss, x, y)
    num = numeric_grad(model, loss, x, y)
    assert np.isfinite(ana).all() and np.isfinite(num).all()
    assert np.abs(num).max() > 1e-4, "degenerate check: the loss does not depend on the parameters"
    return rel_err(ana, num)


def targets(loss_name: str, out_act: str, units: int, model: MLP, x: np.ndarray, rng) -> np.ndarray:
    """Targets for the loss; for mae/huber placed away from the kinks of |d| and of huber at |d| = 1."""
    batch = len(x)
    if loss_name == "cross_entropy":
        return prepare_targets(rng.integers(0, units, batch), loss_name, "classification", units, np.float64)
    if loss_name == "binary_cross_entropy":
        return rng.integers(0, 2, (batch, units)).astype(np.float64)
    a = model.forward(x, train=True).copy()
    sign = rng.choice([-1.0, 1.0], size=a.shape)
    if loss_name == "mae":
        gap = rng.uniform(0.2, 1.0, a.shape)
    elif loss_name == "huber":  # both branches: quadratic (|d| < 1) and linear (|d| > 1)
        gap = np.where(rng.random(a.shape) < 0.5, rng.uniform(0.1, 0.7, a.shape), rng.uniform(1.3, 2.5, a.shape))
    else:
        gap = rng.normal(0, 1, a.shape)
    return a + sign * gap


NATURAL = {"cross_entropy": ("softmax", 3), "binary_cross_entropy": ("sigmoid", 1), "mse": ("linear", 2),
           "mae": ("linear", 2), "huber": ("linear", 2)}


@pytest.mark.parametrize(("n_in", "hidden", "batch"), [(3, 4, 1), (4, 6, 7)])
@pytest.mark.parametrize("stable", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss_name", list(NATURAL))
def test_loss_gradient_with_natural_output(loss_name, reduction, stable, n_in, hidden, batch):
    out_act, units = NATURAL[loss_name]
    seed = seed_of(loss_name, reduction, stable, batch)
    _, model, loss = build([{"units": hidden, "activation": "tanh"}, {"units": units, "activation": out_act}],
                           n_in, {"name": loss_name, "reduction": reduction, "stable": stable}, seed)
    if loss_name == "cross_entropy":
        assert loss.fused  # stable or textbook, softmax + cross-entropy is computed from the logits
    if loss_name == "binary_cross_entropy":
        assert loss.fused == stable
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, n_in))
    y = targets(loss_name, out_act, units, model, x, rng)
    assert check_model(model, loss, x, y) < TOL


NON_FUSED = [
    ("cross_entropy", "sigmoid", 3, True),  # probabilities read from a sigmoid output, clipped
    ("cross_entropy", "sigmoid", 3, False),  # ... and unclipped
    ("binary_cross_entropy", "sigmoid", 3, False),  # textbook BCE, several units (mean over units)
    ("binary_cross_entropy", "softmax", 3, True),
    ("mse", "sigmoid", 3, True),
    ("mse", "softmax", 4, True),
    ("huber", "tanh", 2, True),
    ("mae", "softplus", 2, False),
]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("loss_name", "out_act", "units", "stable"), NON_FUSED)
def test_loss_gradient_through_the_output_activation(loss_name, out_act, units, stable, reduction):
    seed = seed_of(loss_name, out_act, stable, reduction)
    _, model, loss = build([{"units": 5, "activation": "relu"}, {"units": units, "activation": out_act}],
                           3, {"name": loss_name, "reduction": reduction, "stable": stable}, seed)
    assert not loss.fused
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, 3))
    y = targets(loss_name, out_act, units, model, x, rng)
    assert check_model(model, loss, x, y) < TOL


def test_sum_reduction_gradient_is_batch_times_mean():
    """Same data, same parameters: the summed loss's gradient is exactly batch x the mean's."""
    grads = {}
    for reduction in ("mean", "sum"):
        _, model, loss = build([{"units": 4, "activation": "tanh"}, {"units": 3, "activation": "softmax"}], 3,
                               {"name": "cross_entropy", "reduction": reduction}, seed=5)
        rng = np.random.default_rng(5)
        x, y = rng.normal(size=(9, 3)), rng.integers(0, 3, 9)
        grads[reduction] = analytic_grad(model, loss, x, y)
    np.testing.assert_allclose(grads["sum"], 9 * grads["mean"], rtol=1e-12)


@pytest.mark.parametrize("batch", [2, 8, 17])
def test_batch_norm_train_mode(batch):
    _, model, loss = build([{"units": 5, "activation": "relu", "norm": "batch"},
                            {"units": 4, "activation": "tanh", "norm": "batch"},
                            {"units": 2, "activation": "linear"}], 3, "mse", seed=batch)
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, 3))
    y = targets("mse", "linear", 2, model, x, rng)
    assert check_model(model, loss, x, y) < TOL
    layer = model.layers[0]  # train mode normalises with the batch's own statistics
    np.testing.assert_allclose(layer.buf.xhat.mean(axis=0), 0, atol=1e-12)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_with_a_fixed_mask(p):
    _, model, loss = build([{"units": 8, "activation": "elu", "dropout": p},
                            {"units": 6, "activation": "gelu", "dropout": p},
                            {"units": 3, "activation": "softmax"}], 4, "cross_entropy", seed=7)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(10, 4))
    y = rng.integers(0, 3, 10)
    loss_value(model, loss, x, y)
    for layer in model.layers[:2]:  # the mask really drops units and rescales the kept ones
        mask = layer.buf.mask
        assert set(np.unique(mask)) == {0.0, 1 / (1 - p)}
    assert check_model(model, loss, x, y) < TOL


def test_dropout_is_identity_in_eval_mode():
    _, model, _ = build([{"units": 8, "activation": "tanh", "dropout": 0.5}, {"units": 2}], 3, seed=3)
    x = np.random.default_rng(3).normal(size=(5, 3))
    out = model.forward(x, train=False).copy()
    layer = model.layers[0]
    np.testing.assert_allclose(out, np.tanh(x @ layer.W + layer.b) @ model.layers[1].W + model.layers[1].b,
                               rtol=1e-12)


@pytest.mark.parametrize(("n_in", "batch"), [(2, 3), (5, 12)])
def test_deep_mlp_with_mixed_activations(n_in, batch):
    layers = [{"units": 6, "activation": "tanh"},
              {"units": 5, "activation": "gelu", "norm": "batch"},
              {"units": 5, "activation": "leaky_relu", "alpha": 0.1, "dropout": 0.3},
              {"units": 4, "activation": "elu"},
              {"units": 4, "activation": "softplus"},
              {"units": 4, "activation": "sigmoid"},
              {"units": 3, "activation": "softmax"}]
    _, model, loss = build(layers, n_in, "cross_entropy", seed=n_in)
    rng = np.random.default_rng(n_in)
    x = rng.normal(size=(batch, n_in))
    y = rng.integers(0, 3, batch)
    assert check_model(model, loss, x, y) < TOL


def test_gradient_check_detects_a_wrong_gradient():
    """Sanity of the harness: corrupting one analytic entry is caught."""
    _, model, loss = build([{"units": 4, "activation": "tanh"}, {"units": 2}], 3, "mse", seed=11)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(5, 3))
    y = rng.normal(size=(5, 2))
    ana = analytic_grad(model, loss, x, y)
    num = numeric_grad(model, loss, x, y)
    assert rel_err(ana, num) < TOL
    ana[3] += 0.01 * np.abs(ana).max() + 1e-3
    assert rel_err(ana, num) > TOL
