"""Optimizers, clipping and schedules against their formulas, written out here independently.

Optimizers follow PyTorch's definitions (SPEC section 2): the momentum buffer starts at g, rmsprop's
alpha is 0.9, eps is 1e-8 for all, weight decay is L2 added to the gradient except adamw's decoupled
p <- p (1 - lr wd) applied first. `compute(g, lr, out)` writes the update the caller adds.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nandoctor.config import from_mapping
from nandoctor.engine.optimizers import clip, make_optimizer
from nandoctor.engine.schedules import make_schedule

OPTIMIZERS = ["sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw"]
STEPS = 7


def opt_config(**fields):
    return from_mapping({"data": {"generator": "blobs"}, "model": {"layers": [{"units": 1}]},
                         "optimizer": fields}).optimizer


class Reference:
    """Each optimizer's update rule, one line per formula, state in plain attributes."""

    def __init__(self, name, p, lr, wd, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8):
        self.name, self.p, self.lr, self.wd = name, p.copy(), lr, wd
        self.mu, self.b1, self.b2, self.eps = momentum, beta1, beta2, eps
        self.t, self.buf, self.m, self.v = 0, None, np.zeros_like(p), np.zeros_like(p)

    def step(self, g):
        self.t += 1
        lr, p = self.lr, self.p
        if self.name == "adamw":
            p = p * (1 - lr * self.wd)
        else:
            g = g + self.wd * p
        if self.name == "sgd":
            p = p - lr * g
        elif self.name in ("momentum", "nesterov"):
            self.buf = g.copy() if self.t == 1 else self.mu * self.buf + g
            p = p - lr * (g + self.mu * self.buf if self.name == "nesterov" else self.buf)
        elif self.name == "rmsprop":
            self.v = 0.9 * self.v + 0.1 * g * g
            p = p - lr * g / (np.sqrt(self.v) + self.eps)
        elif self.name == "adagrad":
            self.v = self.v + g * g
            p = p - lr * g / (np.sqrt(self.v) + self.eps)
        else:  # adam, adamw: textbook bias-corrected form
            self.m = self.b1 * self.m + (1 - self.b1) * g
            self.v = self.b2 * self.v + (1 - self.b2) * g * g
            m_hat = self.m / (1 - self.b1**self.t)
            v_hat = self.v / (1 - self.b2**self.t)
            p = p - lr * m_hat / (np.sqrt(v_hat) + self.eps)
        self.p = p
        return p


def run_both(name, wd, lr=0.05, **hyper):
    rng = np.random.default_rng(OPTIMIZERS.index(name) * 10 + int(wd > 0))
    p0 = rng.normal(size=13)
    grads = [rng.normal(size=13) * 10 ** rng.uniform(-2, 1) for _ in range(STEPS)]
    cfg = opt_config(name=name, lr=lr, weight_decay=wd, **hyper)
    params = p0.copy()
    opt = make_optimizer(cfg, params)
    out = np.empty_like(params)
    ref = Reference(name, p0, lr, wd, **hyper)
    for g in grads:
        g_in = g.copy()
        upd = opt.compute(g_in, lr, out)
        np.testing.assert_array_equal(g_in, g)  # the caller's gradient is not modified
        params += upd
        np.testing.assert_allclose(params, ref.step(g), rtol=1e-12, atol=1e-14)
    return p0, params


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_matches_formula_with_defaults(name, wd):
    p0, p = run_both(name, wd)
    assert not np.allclose(p, p0)


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"])
def test_optimizer_reads_its_hyperparameters(name):
    hyper = {"momentum": 0.5} if name in ("momentum", "nesterov") else {}
    if name.startswith("adam"):
        hyper = {"beta1": 0.7, "beta2": 0.95}
    hyper["eps"] = 1e-3
    run_both(name, 0.05, lr=0.2, **hyper)


def test_config_defaults_are_the_spec_defaults():
    cfg = opt_config(name="adagrad")
    assert (cfg.momentum, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay) == (0.9, 0.9, 0.999, 1e-8, 0.0)
    assert cfg.clip_norm is None and cfg.clip_value is None


def test_adamw_decay_is_decoupled_and_adam_decay_is_not():
    """With a zero gradient adam (L2) still moves by its normalised step, adamw only by the decay."""
    p0 = np.array([1.0, -2.0, 3.0])
    moved = {}
    for name in ("adam", "adamw"):
        params = p0.copy()
        opt = make_optimizer(opt_config(name=name, lr=0.1, weight_decay=0.5), params)
        params += opt.compute(np.zeros(3), 0.1, np.empty(3))
        moved[name] = params
    np.testing.assert_allclose(moved["adamw"], p0 * (1 - 0.1 * 0.5), rtol=1e-12)
    np.testing.assert_allclose(moved["adam"], p0 - 0.1 * np.sign(p0), rtol=1e-6)


def test_momentum_buffer_starts_at_the_gradient():
    params = np.zeros(2)
    opt = make_optimizer(opt_config(name="momentum", lr=1.0), params)
    upd = opt.compute(np.array([1.0, -3.0]), 1.0, np.empty(2))
    np.testing.assert_array_equal(upd, [-1.0, 3.0])  # not (1 - 0.9) g, not 0.9 * 0 + g with dampening


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sgd_apply_adds_exactly_the_computed_update(dtype):
    """SGD's chunked in-place step equals computing the update and adding it, bit for bit, across
    several chunks and a ragged last one; with weight decay it declines and leaves the weights."""
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(100_003).astype(dtype)
    g = rng.standard_normal(p0.size).astype(dtype)
    params = p0.copy()
    opt = make_optimizer(opt_config(name="sgd", lr=0.1), params)
    assert opt.apply(params, g, 0.1)
    np.testing.assert_array_equal(params, p0 + opt.compute(g, 0.1, np.empty_like(p0)))
    decayed = make_optimizer(opt_config(name="sgd", lr=0.1, weight_decay=0.5), params)
    assert not decayed.apply(params, g, 0.1)


# ---- clipping --------------------------------------------------------------------------------

def test_clip_value():
    g = np.array([3.0, -0.5, -7.0, 0.1])
    norm = clip(g, opt_config(clip_value=1.0), float(np.linalg.norm(g)))
    np.testing.assert_array_equal(g, [1.0, -0.5, -1.0, 0.1])
    assert norm == pytest.approx(np.linalg.norm([1.0, -0.5, -1.0, 0.1]), rel=1e-12)


def test_clip_norm_scales_by_max_over_norm_plus_eps():
    g = np.array([3.0, 4.0])
    norm = clip(g, opt_config(clip_norm=1.0), 5.0)
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(g, [3 * coef, 4 * coef], rtol=1e-14)
    assert norm == pytest.approx(5 * coef, rel=1e-12)


def test_clip_norm_leaves_a_small_gradient_alone():
    g = np.array([0.3, 0.4])
    assert clip(g, opt_config(clip_norm=1.0), 0.5) == pytest.approx(0.5)
    np.testing.assert_array_equal(g, [0.3, 0.4])


def test_clip_value_applies_before_clip_norm():
    g = np.array([10.0, 0.0, -10.0, 2.0])
    norm = clip(g, opt_config(clip_value=2.0, clip_norm=1.0), float(np.linalg.norm(g)))
    clipped = np.array([2.0, 0.0, -2.0, 2.0])  # norm sqrt(12), not the raw norm sqrt(204)
    n = float(np.linalg.norm(clipped))
    np.testing.assert_allclose(g, clipped / (n + 1e-6), rtol=1e-12)
    assert norm == pytest.approx(n / (n + 1e-6), rel=1e-12)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_clip_value_then_norm_in_float16_does_not_zero_the_gradient():
    g = np.full(1000, 50.0, np.float16)  # after clip_value 10: sum of squares 1e5 > float16 max 65504
    clip(g, opt_config(clip_value=10.0, clip_norm=1.0), math.inf)
    expected = 10.0 / math.sqrt(1000 * 100.0)
    np.testing.assert_allclose(g.astype(np.float64), expected, rtol=2e-3)


# ---- schedules -------------------------------------------------------------------------------

def schedule(base=0.1, epochs=10, total=100, **fields):
    cfg = from_mapping({"data": {"generator": "blobs"}, "model": {"layers": [{"units": 1}]},
                        "schedule": fields}).schedule
    return make_schedule(cfg, base, epochs, total)


def test_constant():
    s = schedule(name="constant")
    assert {s.lr(step, step // 10) for step in range(1, 101)} == {0.1}


@pytest.mark.parametrize(("epochs", "size"), [(10, 3), (9, 3), (2, 1), (1, 1), (30, 10)])
def test_step_defaults(epochs, size):
    s = schedule(name="step", epochs=epochs, total=epochs * 4)
    for epoch in range(epochs):
        assert s.lr(epoch * 4 + 1, epoch) == pytest.approx(0.1 * 0.1 ** (epoch // size), rel=1e-12)


def test_step_explicit():
    s = schedule(name="step", gamma=0.5, step_size=2, epochs=10)
    assert [s.lr(1, e) for e in range(6)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025], rel=1e-12)


def test_exponential():
    s = schedule(name="exponential", epochs=20)
    for epoch in range(20):
        assert s.lr(epoch * 5 + 3, epoch) == pytest.approx(0.1 * 0.95**epoch, rel=1e-12)
    assert schedule(name="exponential", gamma=0.5).lr(1, 3) == pytest.approx(0.1 / 8, rel=1e-12)


@pytest.mark.parametrize("min_lr", [0.0, 0.01])
def test_cosine_per_step(min_lr):
    total = 50
    s = schedule(name="cosine", min_lr=min_lr, total=total, epochs=5)
    lrs = [s.lr(step, (step - 1) // 10) for step in range(1, total + 1)]
    expected = [min_lr + (0.1 - min_lr) * 0.5 * (1 + math.cos(math.pi * (k - 1) / total)) for k in range(1, total + 1)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lrs[0] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(lrs))  # changes every step, not every epoch
    assert lrs[-1] == pytest.approx(min_lr, abs=1e-3)


def cosine_after_warmup(step, w, total, base=0.1, floor=0.0):
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * (step - 1 - w) / (total - w)))


@pytest.mark.parametrize(("total", "warmup"), [(200, 10), (100, 5), (40, 2)])
def test_warmup_cosine_default_warmup_is_five_percent(total, warmup):
    s = schedule(name="warmup_cosine", total=total)
    lrs = [s.lr(step, 0) for step in range(1, total + 1)]
    for k in range(1, warmup + 1):
        assert lrs[k - 1] == pytest.approx(0.1 * k / warmup, rel=1e-12)
    for k in range(warmup + 1, total + 1):
        assert lrs[k - 1] == pytest.approx(cosine_after_warmup(k, warmup, total), rel=1e-12, abs=1e-15)
    assert max(lrs) == pytest.approx(0.1)


def test_warmup_cosine_explicit():
    s = schedule(name="warmup_cosine", warmup=4, min_lr=0.02, total=20)
    assert [s.lr(k, 0) for k in range(1, 5)] == pytest.approx([0.025, 0.05, 0.075, 0.1], rel=1e-12)
    for k in range(5, 21):
        assert s.lr(k, 0) == pytest.approx(cosine_after_warmup(k, 4, 20, floor=0.02), rel=1e-12)


def test_reduce_on_plateau():
    s = schedule(name="reduce_on_plateau")
    lrs = []
    losses = [1.0, 0.9, 0.8] + [0.85] * 5 + [0.85] + [0.7] + [0.75] * 6 + [0.75] * 6
    for epoch, loss in enumerate(losses):
        lrs.append(s.lr(epoch * 10 + 1, epoch))
        s.end_epoch(loss)
    # best 0.8 at epoch 2; epochs 3..7 are 5 bad epochs (patience), epoch 8 the 6th: halve from epoch 9 on
    assert lrs[:9] == [0.1] * 9
    assert lrs[9] == pytest.approx(0.05)
    # epoch 9 improves (0.7); 6 bad epochs 10..15 -> 0.025 from epoch 16; 6 more -> 0.0125 after epoch 21
    assert lrs[10:17] == pytest.approx([0.05] * 6 + [0.025])
    assert s.lr(1000, 22) == pytest.approx(0.0125)


def test_reduce_on_plateau_explicit_factor_and_patience():
    s = schedule(name="reduce_on_plateau", factor=0.1, patience=0)
    s.end_epoch(1.0)
    assert s.lr(1, 1) == pytest.approx(0.1)
    s.end_epoch(1.0)  # one bad epoch > patience 0
    assert s.lr(1, 2) == pytest.approx(0.01)
    s.end_epoch(0.5)
    assert s.lr(1, 3) == pytest.approx(0.01)
