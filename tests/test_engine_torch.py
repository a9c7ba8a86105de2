"""The engine against PyTorch in float64: forward, loss, every parameter gradient, optimizer steps.

Our W is (fan_in, fan_out), torch's nn.Linear weight is (fan_out, fan_in): weight = W.T.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from nandoctor.config import from_mapping  # noqa: E402
from nandoctor.engine.losses import make_loss, prepare_targets  # noqa: E402
from nandoctor.engine.model import MLP  # noqa: E402
from nandoctor.engine.optimizers import clip, make_optimizer  # noqa: E402

RTOL = 1e-10
HIDDEN = ["linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softplus"]
TORCH_ACT = {"linear": torch.nn.Identity, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh,
             "relu": torch.nn.ReLU, "leaky_relu": lambda: torch.nn.LeakyReLU(0.01), "elu": lambda: torch.nn.ELU(1.0),
             "gelu": lambda: torch.nn.GELU(approximate="tanh"), "softplus": torch.nn.Softplus}


def setup(layers: list[dict], n_in: int, loss="cross_entropy", optimizer=None, seed: int = 0):
    cfg = from_mapping({"seed": seed, "data": {"generator": "blobs"}, "model": {"init": "he_normal", "bias_init": 0.1,
                        "layers": layers}, "loss": loss, "optimizer": optimizer or {"name": "sgd", "lr": 0.1},
                        "training": {"dtype": "float64"}})
    model = MLP(n_in, cfg.model.layers, dtype="float64", seed=seed)
    return cfg, model, make_loss(cfg.loss, cfg.model.layers[-1].activation)


def torch_copy(model: MLP) -> tuple[torch.nn.Sequential, list[tuple[str, torch.Tensor]]]:
    """A torch Sequential with our current weights, and (our name, torch tensor) pairs in flat order."""
    mods, pairs = [], []
    for layer in model.layers:
        lin = torch.nn.Linear(layer.fan_in, layer.fan_out, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(layer.W.T.copy()))
            lin.bias.copy_(torch.from_numpy(layer.b.copy()))
        mods.append(lin)
        pairs += [("W", lin.weight), ("b", lin.bias)]
        if layer.batch_norm:
            bn = torch.nn.BatchNorm1d(layer.fan_out, eps=1e-5, momentum=0.1, dtype=torch.float64)
            with torch.no_grad():
                bn.weight.copy_(torch.from_numpy(layer.gamma.copy()))
                bn.bias.copy_(torch.from_numpy(layer.beta.copy()))
            mods.append(bn)
            pairs += [("gamma", bn.weight), ("beta", bn.bias)]
        name = layer.act.name
        if name == "softmax":
            mods.append(torch.nn.Softmax(dim=1))
        elif name == "leaky_relu":
            mods.append(torch.nn.LeakyReLU(layer.act.alpha))
        elif name == "elu":
            mods.append(torch.nn.ELU(layer.act.alpha))
        else:
            mods.append(TORCH_ACT[name]())
    return torch.nn.Sequential(*mods), pairs


def flat_torch(pairs, attr: str = "data") -> np.ndarray:
    """Torch tensors (weights transposed back to our layout) as one flat vector in our order."""
    out = []
    for name, t in pairs:
        v = getattr(t, attr).detach().numpy()
        out.append((v.T if name == "W" else v).ravel())
    return np.concatenate(out)


def ours_step(model: MLP, loss, x, y) -> float:
    model.forward(x, train=True, fused_output=loss.fused)
    out = model.layers[-1].buf
    value = loss.forward(out.z, out.a, y)
    grad, wrt = loss.backward(np.empty((len(x), model.layers[-1].fan_out)))
    model.backward(grad, wrt)
    return value


def assert_close(ours, theirs, scale=None):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    scale = np.abs(theirs).max() if scale is None else scale
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=RTOL * scale)


def assert_grads_match(model: MLP, pairs):
    ref = flat_torch(pairs, "grad")
    assert np.abs(ref).max() > 1e-6
    assert_close(model.grads, ref)  # per entry, relative, with a floor at 1e-10 of the largest gradient


# ---- forward, loss, gradients ------------------------------------------------------------------

@pytest.mark.parametrize("act", HIDDEN)
def test_mlp_forward_loss_and_gradients(act):
    layers = [{"units": 7, "activation": act}, {"units": 6, "activation": act}, {"units": 4, "activation": "softmax"}]
    _, model, loss = setup(layers, 5, seed=HIDDEN.index(act))
    rng = np.random.default_rng(HIDDEN.index(act))
    x, y = rng.normal(size=(16, 5)), rng.integers(0, 4, 16)
    net, pairs = torch_copy(model)

    out = model.forward(x, train=True).copy()
    expected = net(torch.from_numpy(x))
    assert_close(out, expected.detach().numpy())

    value = ours_step(model, loss, x, y)
    tloss = F.cross_entropy(net[:-1](torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=RTOL)
    assert_grads_match(model, pairs)


@pytest.mark.parametrize(("n_in", "act"), [(3, "linear"), (13, "relu")])
def test_first_layer_bias_folded_or_not(n_in, act):
    """The bias rides in the product ([x 1] [W; b]) except in a first layer whose input is much wider
    than its output; both paths, and a linear hidden layer whose output is its pre-activation, match torch."""
    layers = [{"units": 4, "activation": act}, {"units": 5, "activation": "linear"},
              {"units": 3, "activation": "softmax"}]
    _, model, loss = setup(layers, n_in, seed=n_in)
    rng = np.random.default_rng(n_in)
    x, y = rng.normal(size=(12, n_in)), rng.integers(0, 3, 12)
    net, pairs = torch_copy(model)
    value = ours_step(model, loss, x, y)
    assert (model.layers[0].buf.x_aug is None) == (n_in > 8)
    tloss = F.cross_entropy(net[:-1](torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=RTOL)
    assert_grads_match(model, pairs)


def test_mlp_with_batch_norm():
    layers = [{"units": 8, "activation": "relu", "norm": "batch"}, {"units": 6, "activation": "tanh", "norm": "batch"},
              {"units": 3, "activation": "softmax"}]
    _, model, loss = setup(layers, 4, seed=3)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 4)) * 2 + 1, rng.integers(0, 3, 20)
    net, pairs = torch_copy(model)
    net.train()
    value = ours_step(model, loss, x, y)
    logits = net[:-1](torch.from_numpy(x))
    assert_close(model.layers[-1].buf.z, logits.detach().numpy())
    tloss = F.cross_entropy(logits, torch.from_numpy(y))
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=RTOL)
    # the bias before batch norm has a (near) zero gradient: compare on the scale of all gradients
    assert_close(model.grads, flat_torch(pairs, "grad"), scale=np.abs(flat_torch(pairs, "grad")).max())
    for layer, bn in zip(model.layers[:2], [net[1], net[4]], strict=True):
        assert_close(layer.running_mean, bn.running_mean.numpy())
        assert_close(layer.running_var, bn.running_var.numpy())
    net.eval()  # eval mode reads the running statistics
    assert_close(model.forward(x, train=False), net(torch.from_numpy(x)).detach().numpy())


def torch_loss(name: str, t_out: torch.Tensor, t_y: torch.Tensor, reduction: str, units: int) -> torch.Tensor:
    """SPEC: per-sample loss is the mean over output units, then mean or sum over the batch."""
    fn = {"cross_entropy": F.cross_entropy, "binary_cross_entropy": F.binary_cross_entropy_with_logits,
          "mse": F.mse_loss, "mae": F.l1_loss, "huber": lambda a, b, reduction: F.huber_loss(a, b, reduction=reduction,
                                                                                               delta=1.0)}[name]
    value = fn(t_out, t_y, reduction=reduction)
    return value / units if reduction == "sum" and name != "cross_entropy" else value


LOSS_CASES = [("cross_entropy", "softmax", 3, "classification"),
              ("binary_cross_entropy", "sigmoid", 1, "classification"),
              ("binary_cross_entropy", "sigmoid", 3, "multilabel"),
              ("mse", "linear", 2, "regression"), ("mae", "linear", 2, "regression"),
              ("huber", "linear", 2, "regression")]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("name", "out_act", "units", "task"), LOSS_CASES)
def test_losses(name, out_act, units, task, reduction):
    layers = [{"units": 6, "activation": "tanh"}, {"units": units, "activation": out_act}]
    _, model, loss = setup(layers, 3, {"name": name, "reduction": reduction}, seed=units)
    rng = np.random.default_rng(units + 10)
    x = rng.normal(size=(12, 3))
    if task == "classification":
        labels = rng.integers(0, max(units, 2), 12)
        y = prepare_targets(labels, name, task, units, np.float64)
    elif task == "multilabel":
        y = rng.integers(0, 2, (12, units)).astype(np.float64)
    else:  # regression targets spread so that huber sees both of its branches
        y = rng.normal(0, 2.0, (12, units))
    net, pairs = torch_copy(model)
    value = ours_step(model, loss, x, y)
    logits = net[:-1](torch.from_numpy(x)) if out_act != "linear" else net(torch.from_numpy(x))
    t_y = torch.from_numpy(y)
    tloss = torch_loss(name, logits, t_y, reduction, units)
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=RTOL)
    assert_grads_match(model, pairs)


# ---- optimizers ---------------------------------------------------------------------------------

def torch_optimizer(name: str, params, lr: float, wd: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=name == "nesterov", weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-8, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=1e-8, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, eps=1e-8, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, eps=1e-8, weight_decay=wd)


OPT_CASES = [(name, wd) for name in ("sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw")
             for wd in (0.0, 0.05)]


@pytest.mark.parametrize(("name", "wd"), OPT_CASES)
def test_twenty_optimizer_steps(name, wd):
    lr = 0.05 if name in ("sgd", "momentum", "nesterov", "adagrad") else 0.01
    layers = [{"units": 8, "activation": "tanh"}, {"units": 6, "activation": "relu"},
              {"units": 3, "activation": "softmax"}]
    cfg, model, loss = setup(layers, 4, optimizer={"name": name, "lr": lr, "weight_decay": wd}, seed=17)
    rng = np.random.default_rng(17)
    batches = [(rng.normal(size=(10, 4)), rng.integers(0, 3, 10)) for _ in range(20)]
    net, pairs = torch_copy(model)
    topt = torch_optimizer(name, [t for _, t in pairs], lr, wd)
    opt = make_optimizer(cfg.optimizer, model.params)
    update = np.empty_like(model.params)
    start = model.params.copy()
    for x, y in batches:
        value = ours_step(model, loss, x, y)
        model.params += opt.compute(model.grads, lr, update)
        topt.zero_grad()
        tloss = F.cross_entropy(net[:-1](torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        assert value == pytest.approx(tloss.item(), rel=1e-9)
    assert_close(model.params, flat_torch(pairs))
    assert np.abs(model.params - start).max() > 1e-3


@pytest.mark.parametrize(("clip_value", "clip_norm"), [(None, 0.5), (0.05, 0.2)])
def test_clipping_matches_torch(clip_value, clip_norm):
    layers = [{"units": 5, "activation": "tanh"}, {"units": 3, "activation": "softmax"}]
    opt_cfg = {"name": "momentum", "lr": 0.1, "clip_norm": clip_norm, "clip_value": clip_value}
    cfg, model, loss = setup(layers, 4, optimizer=opt_cfg, seed=4)
    rng = np.random.default_rng(4)
    net, pairs = torch_copy(model)
    tparams = [t for _, t in pairs]
    topt = torch.optim.SGD(tparams, lr=0.1, momentum=0.9)
    opt = make_optimizer(cfg.optimizer, model.params)
    update = np.empty_like(model.params)
    for _ in range(5):
        x, y = rng.normal(size=(8, 4)) * 3, rng.integers(0, 3, 8)
        ours_step(model, loss, x, y)
        norm = clip(model.grads, cfg.optimizer, float(np.linalg.norm(model.grads)))
        model.params += opt.compute(model.grads, 0.1, update)
        topt.zero_grad()
        F.cross_entropy(net[:-1](torch.from_numpy(x)), torch.from_numpy(y)).backward()
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(tparams, clip_value)
        tnorm = torch.nn.utils.clip_grad_norm_(tparams, clip_norm).item()
        assert tnorm > clip_norm  # the norm clip is active (below it torch and we may differ by 1e-6 / norm)
        assert norm == pytest.approx(clip_norm * tnorm / (tnorm + 1e-6), rel=1e-10)
        topt.step()
    assert_close(model.params, flat_torch(pairs))
