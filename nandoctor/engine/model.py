"""The MLP: layers over one flat parameter buffer and one flat gradient buffer.

Flat storage makes the optimizer, the global gradient norm and the finiteness checks a single
vectorised call each, whatever the depth; every layer's W, b (and batch-norm gamma, beta) are views.
"""

from __future__ import annotations

import numpy as np

from nandoctor.config.schema import LayerConfig
from nandoctor.engine.activations import make_activation
from nandoctor.engine.init import INITS
from nandoctor.engine.layer import Dense
from nandoctor.seeding import stream

EVAL_CHUNK = 4096


class MLP:
    def __init__(self, n_in: int, layers: tuple[LayerConfig, ...], *, dtype="float32", seed: int = 0):
        self.dtype = np.dtype(dtype)
        dropout_rng = stream(seed, "dropout")
        self.layers: list[Dense] = []
        fan_in = n_in
        for i, cfg in enumerate(layers):
            act = make_activation(cfg.activation, cfg.alpha)
            self.layers.append(Dense(i, fan_in, cfg.units, act, batch_norm=cfg.norm == "batch",
                                     dropout=cfg.dropout, dtype=self.dtype, rng=dropout_rng,
                                     feeds_next=i < len(layers) - 1))
            fan_in = cfg.units
        self.slices: list[dict[str, slice]] = []
        total = 0
        for layer in self.layers:
            spans = {}
            for name, shape in layer.param_shapes():
                size = int(np.prod(shape))
                spans[name] = slice(total, total + size)
                total += size
            self.slices.append(spans)
        self.params = np.zeros(total, self.dtype)
        self.grads = np.zeros(total, self.dtype)
        for layer, spans in zip(self.layers, self.slices, strict=True):
            layer.bind(self.params, self.grads, spans)
        self._init(layers, seed)

    def __repr__(self) -> str:
        return f"MLP({', '.join(map(repr, self.layers))})"

    def _init(self, cfgs: tuple[LayerConfig, ...], seed: int) -> None:
        for i, (layer, cfg) in enumerate(zip(self.layers, cfgs, strict=True)):
            w = INITS[cfg.init.name](stream(seed, f"init.{i}"), layer.fan_in, layer.fan_out, cfg.init)
            layer.W[...] = w
            layer.b[...] = cfg.bias_init
            if layer.batch_norm:
                layer.gamma[...] = 1
                layer.beta[...] = 0

    @property
    def n_params(self) -> int:
        return self.params.size

    def forward(self, x: np.ndarray, train: bool, fused_output: bool = False) -> np.ndarray:
        """x: (batch, n_in) in the model dtype -> output activation (batch, units).
        With fused_output the last activation is left for the loss to compute from the logits."""
        last, xa = self.layers[-1], None
        for layer in self.layers:
            x = layer.forward(x, train, fused_output and layer is last, xa)
            xa = layer.buf.out_aug
        return x

    def backward(self, grad: np.ndarray, wrt: str) -> None:
        """Backpropagate dL/d(output): wrt "z" when the loss already folded in the last activation."""
        last = self.layers[-1]
        dx = last.backward(None, dz=grad) if wrt == "z" else last.backward(grad)
        for layer in reversed(self.layers[:-1]):
            dx = layer.backward(dx)

    def infer(self, x: np.ndarray, alive: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Eval mode (running batch-norm statistics, no dropout) in chunks to bound memory:
        (output pre-activation, output activation). `alive`, one bool array per layer, collects
        which units were non-zero for at least one sample."""
        zs, outs = [], []
        for i in range(0, len(x), EVAL_CHUNK):
            outs.append(self.forward(x[i:i + EVAL_CHUNK], train=False).copy())
            zs.append(self.layers[-1].buf.z.copy())
            if alive is not None:
                for layer, seen in zip(self.layers, alive, strict=True):
                    seen |= (layer.buf.a != 0).any(axis=0)
        if not outs:
            empty = np.empty((0, self.layers[-1].fan_out), self.dtype)
            return empty, empty
        return np.concatenate(zs), np.concatenate(outs)
