"""`every: 1` records weights, biases, gradients and updates without mean and std (`moments=False`):
every other column must be what `tensor_stats` gives for the same tensor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nandoctor.config import from_mapping
from nandoctor.engine.trainer import Trainer
from nandoctor.telemetry.monitor import Monitor
from nandoctor.telemetry.stats import PACK_MAX, stats_many, tensor_stats
from nandoctor.training import prepare


def close(got: tuple, want: tuple, rel: float, abs: float = 0.0) -> bool:
    """Element-wise pytest.approx that lets None match None (older pytest rejects None in a tuple)."""
    return len(got) == len(want) and all(
        g is None if w is None else g == pytest.approx(w, rel=rel, abs=abs) for g, w in zip(got, want, strict=True))


def lean_view(values: tuple) -> tuple:
    """`tensor_stats` as every: 1 records it for parameters and gradients: no mean, no std."""
    return (None, None, *values[2:])


def recording(tmp_path, raw: dict) -> tuple[Trainer, Monitor, list]:
    """A trainer and its started monitor whose statistic rows land in the returned list."""
    cfg, data = prepare(from_mapping(raw), None)
    trainer = Trainer(cfg, data)
    monitor = Monitor(tmp_path, cfg)
    monitor.start(trainer)
    rows: list = []
    monitor.writer.stat_rows = rows.extend
    return trainer, monitor, rows


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_without_moments_every_other_column_is_unchanged(dtype):
    rng = np.random.default_rng(21)
    specs = []
    for size in (1, 17, 700, 4096, 3 * PACK_MAX):  # packed and not
        x = rng.normal(0.0, 2.0, size).astype(dtype)
        x[rng.random(size) < 0.2] = 0.0
        x[0] = -0.0
        specs += [(x, False, True, None, False), (x.reshape(-1, 1), False, False, None, False)]
    got = stats_many(specs)
    for (x, _, zeros, _, _), g in zip(specs, got, strict=True):
        want = tensor_stats(x, zeros=zeros)
        assert g[:2] == (None, None)
        assert g[2:5] == want[2:5] and g[6:] == want[6:]  # min, max, abs_max, counts: exact
        assert g[5] == pytest.approx(want[5], rel=1e-6 if dtype != np.float64 else 1e-12)
        assert close(tensor_stats(x, zeros=zeros, moments=False)[2:], want[2:], rel=1e-6)


def test_a_tensor_with_nan_or_inf_still_gets_the_full_careful_statistics():
    flat = np.arange(12, dtype=np.float32) - 5
    flat[6] = np.nan
    flat[10] = -np.inf
    with np.errstate(all="ignore"):
        assert tensor_stats(flat, zeros=True, moments=False) == tensor_stats(flat, zeros=True)
        assert stats_many([(flat, False, True, None, False)]) == [tensor_stats(flat, zeros=True)]
    big = np.array([3e19, -2e19, 1.0, 2.0] * 1000, np.float32)  # squares overflow float32: the float64 path
    with np.errstate(over="ignore"):
        assert tensor_stats(big, moments=False) == tensor_stats(big)


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.05}, {"name": "momentum", "lr": 0.05}])
def test_every_step_rows_are_tensor_stats_of_the_engine_buffers(tmp_path, optimizer):
    """With batch norm and dropout; momentum builds the update (SGD's is scaled from the gradient's
    statistics)."""
    raw = {"seed": 3, "data": {"generator": "blobs", "n_samples": 120, "n_features": 5},
           "model": {"layers": [{"units": 9, "activation": "tanh", "norm": "batch"},
                                {"units": 7, "activation": "relu", "dropout": 0.2},
                                {"units": 3, "activation": "softmax"}]},
           "loss": "cross_entropy", "optimizer": optimizer, "training": {"epochs": 1, "batch_size": 16},
           "monitor": {"every": 1}}
    trainer, monitor, rows = recording(tmp_path, raw)
    for k in (1, 2):
        rows.clear()
        trainer.train_step(trainer.X[16 * (k - 1):16 * k], trainer.Y[16 * (k - 1):16 * k], 0.05)
        monitor.record_layers(trainer, k)
        got = {(r[1], r[2]): r[3:] for r in rows}
        model = trainer.model
        for i, layer in enumerate(model.layers):
            s = layer.buf
            for tensor, x, zeros in (("weight", layer.W, False), ("bias", layer.b, False),
                                     ("grad_weight", layer.dW, True), ("grad_bias", layer.db, True),
                                     ("grad_output", getattr(s, "dout", None), True)):
                if x is None or (tensor == "grad_output" and x.shape != s.a.shape):
                    assert (i, tensor) not in got
                    continue
                want = lean_view(tensor_stats(x, zeros=zeros))
                assert got[(i, tensor)][:5] == want[:5] and got[(i, tensor)][6:] == want[6:], (i, tensor)
                assert got[(i, tensor)][5] == pytest.approx(want[5], rel=1e-6), (i, tensor)
            u = trainer.update[model.slices[i]["W"]]
            want = tensor_stats(u)
            update = got[(i, "update")]
            assert update[:2] == (None, None)
            assert update[2:6] == pytest.approx(want[2:6], rel=1e-6)
            assert update[9] is not None and math.isfinite(update[9])  # the ratio
            # the forward buffers keep every column
            act = got[(i, "activation")]
            assert act[0] is not None and act[1] is not None
            saturation = layer.act.name if layer.act.saturating else None
            want = tensor_stats(s.a, precise=True, zeros=True, saturation=saturation)
            assert close(act, want, rel=1e-5, abs=1e-7)
    monitor.writer.close()


def test_every_other_stride_keeps_every_column(tmp_path):
    raw = {"seed": 0, "data": {"generator": "moons", "n_samples": 64},
           "model": {"layers": [{"units": 4, "activation": "relu"}, {"units": 2, "activation": "softmax"}]},
           "training": {"epochs": 1, "batch_size": 16}, "monitor": {"every": 2}}
    trainer, monitor, rows = recording(tmp_path, raw)
    trainer.train_step(trainer.X[:16], trainer.Y[:16], 0.1)
    monitor.record_layers(trainer, 2)
    for r in rows:
        assert r[3] is not None and r[4] is not None, r[:3]  # mean and std
    monitor.writer.close()
