"""PyTorch training scripts with a known fault, each next to the YAML config that has the same fault.

Both read the same data (nandoctor's data pipeline for the config) and, by default, the torch model
starts from the NumPy engine's initial weights and visits the batches in the engine's order, so the
two runs follow the same trajectory up to float rounding and differ only in the framework and in
how they were recorded: the diagnoser must name the same top cause for both. Each torch script is
an ordinary PyTorch loop plus the recorder's few lines.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nandoctor.config import from_mapping, load_config
from nandoctor.data import load_dataset
from nandoctor.engine.model import MLP
from nandoctor.seeding import stream
from nandoctor.torch import Recorder

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


# ---- losses as users write them ----------------------------------------------------------------------

def cross_entropy(out, y):
    return F.cross_entropy(out, y)


def textbook_bce(p, y):
    """The log(0) bug: the textbook formula on sigmoid probabilities."""
    y = y.reshape(p.shape).to(p.dtype)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def mse(out, y):
    return F.mse_loss(out, y.reshape(out.shape).to(out.dtype))


# ---- models --------------------------------------------------------------------------------------------

def mlp(sizes: list[int], hidden: type[nn.Module], out_act: type[nn.Module] | None = None,
        init: str | None = None) -> nn.Sequential:
    mods: list[nn.Module] = []
    for k, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b)
        if init == "he_normal":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        elif init == "glorot_uniform":
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        mods.append(lin)
        if k < len(sizes) - 2:
            mods.append(hidden())
    if out_act is not None:
        mods.append(out_act())
    return nn.Sequential(*mods)


@dataclass
class Script:
    """One PyTorch training script and the YAML config it is equivalent to."""

    name: str
    config: dict | str  # a mapping, or a file under configs/
    expect: tuple[str, ...]  # acceptable top causes (empty: healthy)
    model: Callable[[int, int], nn.Module]  # (n_features, n_outputs) -> model
    loss: Callable = cross_entropy
    optimizer: Callable = lambda params, lr: torch.optim.SGD(params, lr=lr)
    lr: float = 0.1
    epochs: int = 10
    batch_size: int = 32
    dtype: torch.dtype = torch.float32
    pass_batches: bool = True  # rec.step(..., inputs=x, targets=y)
    engine_start: bool = True  # the engine's initial weights and batch order (else torch's init, torch's shuffle)
    rec_kwargs: dict = field(default_factory=dict)

    def raw_config(self) -> dict:
        if isinstance(self.config, dict):
            return self.config
        import yaml

        return yaml.safe_load((CONFIGS / self.config).read_text())

    def cfg(self):
        if isinstance(self.config, dict):
            return from_mapping(self.config, default_name=self.name)
        return load_config(CONFIGS / self.config)


def run_torch(script: Script, run_dir: Path, seed: int = 0, **rec_kwargs) -> Path:
    """Train the script's model on the config's data with the recorder; returns the run directory."""
    cfg = script.cfg()
    data = load_dataset(cfg.data, cfg.seed, base_dir=CONFIGS)
    torch.manual_seed(seed)
    X = torch.tensor(data.X_train).to(script.dtype)
    Xv = torch.tensor(data.X_val).to(script.dtype)
    classification = data.task == "classification"
    if classification:
        y, yv = torch.tensor(data.y_train), torch.tensor(data.y_val)
        outputs = data.n_classes if script.loss is cross_entropy else 1
    else:
        y, yv = torch.tensor(data.y_train).to(script.dtype), torch.tensor(data.y_val).to(script.dtype)
        outputs = y.shape[1] if y.ndim > 1 else 1
    model = script.model(X.shape[1], outputs).to(script.dtype)
    if script.engine_start:
        copy_engine_init(model, cfg, X.shape[1])
    opt = script.optimizer(model.parameters(), script.lr)
    gen = torch.Generator().manual_seed(seed)
    shuffle = stream(cfg.seed, "shuffle")
    kwargs = {"feature_names": list(data.feature_names), **script.rec_kwargs, **rec_kwargs}
    with Recorder(model, run_dir, strict=True, **kwargs) as rec:
        for _epoch in range(script.epochs):
            order = torch.from_numpy(shuffle.permutation(len(X))) if script.engine_start else \
                torch.randperm(len(X), generator=gen)
            diverged = False
            model.train()
            for start in range(0, len(X), script.batch_size):
                idx = order[start:start + script.batch_size]
                xb, yb = X[idx], y[idx]
                opt.zero_grad()
                loss = script.loss(model(xb), yb)
                loss.backward()
                if script.pass_batches:
                    rec.step(loss, opt, inputs=xb, targets=yb)
                else:
                    rec.step(loss, opt)
                opt.step()
                if not math.isfinite(loss.item()):
                    diverged = True
                    break
            model.eval()
            with torch.no_grad():
                out = model(Xv)
                val_loss = float(script.loss(out, yv)) if len(Xv) else None
                if classification and len(Xv):
                    pred = out.argmax(1) if out.shape[1] > 1 else (out[:, 0] > 0.5).long()
                    val_metric = float((pred == yv).float().mean())
                elif len(Xv):
                    yy, oo = yv.reshape(out.shape).double(), out.double()
                    val_metric = float(1 - ((oo - yy) ** 2).sum() / ((yy - yy.mean(0)) ** 2).sum())
                else:
                    val_metric = None
            rec.epoch(val_loss=val_loss if val_loss is not None and math.isfinite(val_loss) else None,
                      val_metric=val_metric)
            if diverged:
                break
    return Path(run_dir)


def copy_engine_init(model: nn.Module, cfg, n_in: int) -> None:
    """Give the torch model the NumPy engine's initial weights for the config (W is (in, out) there)."""
    engine = MLP(n_in, cfg.model.layers, dtype="float64", seed=cfg.seed)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == len(engine.layers), "the torch model must mirror the config's layers"
    with torch.no_grad():
        for lin, layer in zip(linears, engine.layers, strict=True):
            lin.weight.copy_(torch.from_numpy(layer.W.T.copy()))
            lin.bias.copy_(torch.from_numpy(layer.b.copy()))


def regression_npz(path: Path, n: int = 600, offset: float = 500.0, seed: int = 0) -> Path:
    """Standardized features, targets around `offset` (house prices, say): fine in float32, but a
    squared error of ~offset^2 is past float16's 65504."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = offset + 50.0 * (X @ rng.standard_normal(4)) + rng.standard_normal(n)
    np.savez(path, X=X, y=y)
    return path


def scripts(tmp: Path) -> dict[str, Script]:
    npz = regression_npz(tmp / "prices.npz")
    adam = lambda params, lr: torch.optim.Adam(params, lr=lr)  # noqa: E731
    return {
        "unscaled_inputs": Script(
            "unscaled_inputs", "sick-unscaled-wine.yaml", ("unscaled_data",),
            lambda d, c: mlp([d, 32, c], nn.Tanh, init="glorot_uniform"), lr=0.05, epochs=30),
        "high_lr": Script(
            "high_lr", "sick-high-lr.yaml", ("high_lr",),
            lambda d, c: mlp([d, 64, 64, c], nn.ReLU, init="he_normal"), lr=20.0, epochs=20),
        "float16_overflow": Script(
            "float16_overflow",
            {"seed": 2, "data": {"npz": str(npz), "task": "regression"},
             "model": {"init": "he_normal", "layers": [{"units": 32, "activation": "relu"},
                                                       {"units": 1, "activation": "linear"}]},
             "loss": "mse", "optimizer": {"name": "adam", "lr": 0.01},
             "training": {"epochs": 5, "batch_size": 32, "dtype": "float16"}},
            ("low_precision",), lambda d, c: mlp([d, 32, c], nn.ReLU, init="he_normal"), loss=mse,
            optimizer=adam, lr=0.01, epochs=5, dtype=torch.float16),
        "textbook_log0": Script(
            "textbook_log0", "real-sigmoid-log0.yaml", ("unstable_loss",),
            lambda d, c: mlp([d, 16, 1], nn.ReLU, out_act=nn.Sigmoid, init="he_normal"), loss=textbook_bce,
            optimizer=adam, lr=0.01, epochs=200),
        "nan_in_data": Script(
            "nan_in_data", "real-missing-values.yaml", ("nan_in_data",),
            lambda d, c: mlp([d, 32, c], nn.ReLU, init="he_normal"), optimizer=adam, lr=0.001, epochs=10),
        "deep_sigmoid": Script(
            "deep_sigmoid",
            {"seed": 3, "data": {"generator": "moons", "preprocess": "standardize"},
             "model": {"init": "glorot_uniform",
                       "layers": [*({"units": 32, "activation": "sigmoid"} for _ in range(6)),
                                  {"units": 2, "activation": "softmax"}]},
             "optimizer": {"name": "sgd", "lr": 0.1}, "training": {"epochs": 20, "batch_size": 32}},
            ("saturating_activation", "vanishing_gradients"),
            lambda d, c: mlp([d, *[32] * 6, c], nn.Sigmoid, init="glorot_uniform"), lr=0.1, epochs=20),
        "healthy": Script(
            "healthy", "healthy-iris-tanh.yaml", (),
            lambda d, c: mlp([d, 16, c], nn.Tanh, init="glorot_uniform"),
            optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9), lr=0.05, epochs=40,
            batch_size=16),
    }
