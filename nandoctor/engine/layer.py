"""One config layer: z = x W + b, optional batch norm on z, a = activation(z), optional dropout on a.

Parameters are views into the model's flat buffers, so the optimizer and the telemetry see them as
one array while the layer sees (fan_in, fan_out) matrices. Every intermediate lives in a buffer
set per batch size and stays readable after the step (x, lin, z, a, out, dout, dz), which is what
telemetry reads instead of recomputing.

The bias rides in the matrix products: b directly follows W in the flat buffer, so [W; b] is one
(fan_in + 1, fan_out) view, and each layer writes its output into a buffer with a trailing column
of ones. Then lin = [x 1] [W; b] and [dW; db] = [x 1]^T dlin are one GEMM each, with no separate
bias add or bias-gradient reduction. The first layer must copy its input to get the ones column,
which it does only when that is cheaper.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from nandoctor.engine.activations import Activation
from nandoctor.engine.threads import BLAS_DTYPES

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
MAX_BUFFER_SETS = 4
# The first layer folds its bias only when copying its input (batch x fan_in) costs less than the
# bias add and reduction it saves (two passes over batch x fan_out); measured on 784-256 it does not.
COPY_RATIO = 2
# np.dot on 2-D operands is the BLAS product np.matmul makes, with ~0.7 us less dispatch a call: it
# matters for a product this small (a 2-16-16-2 step makes 8). Larger ones keep matmul, which hands
# OpenBLAS a transposed operand faster (784x128 @ 128x256: 224 us vs 297 us). float16 has no BLAS.
DOT_MAX = 1 << 16  # multiply-adds


class Dense:
    def __init__(self, index: int, fan_in: int, fan_out: int, activation: Activation, *,
                 batch_norm: bool, dropout: float, dtype, rng: np.random.Generator, feeds_next: bool = False):
        self.index, self.fan_in, self.fan_out = index, fan_in, fan_out
        self.act, self.batch_norm, self.dropout = activation, batch_norm, dropout
        self.feeds_next = feeds_next  # another layer reads the output: give it the ones column
        self.dtype, self.rng = np.dtype(dtype), rng
        self.running_mean = np.zeros(fan_out, dtype) if batch_norm else None
        self.running_var = np.ones(fan_out, dtype) if batch_norm else None
        self._sets: dict[tuple[int, bool], SimpleNamespace] = {}
        self.buf: SimpleNamespace | None = None

    def __repr__(self) -> str:
        extra = (", batch_norm" if self.batch_norm else "") + (f", dropout={self.dropout}" if self.dropout else "")
        return f"Dense({self.fan_in}->{self.fan_out}, {self.act.name}{extra})"

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        shapes = [("W", (self.fan_in, self.fan_out)), ("b", (self.fan_out,))]
        if self.batch_norm:
            shapes += [("gamma", (self.fan_out,)), ("beta", (self.fan_out,))]
        return shapes

    def bind(self, params: np.ndarray, grads: np.ndarray, spans: dict[str, slice]) -> None:
        """Take views of this layer's parameters and gradients in the model's flat buffers."""
        shapes = dict(self.param_shapes())
        p = {k: params[s].reshape(shapes[k]) for k, s in spans.items()}
        g = {k: grads[s].reshape(shapes[k]) for k, s in spans.items()}
        self.W, self.b, self.gamma, self.beta = (p.get(k) for k in ("W", "b", "gamma", "beta"))
        self.dW, self.db, self.dgamma, self.dbeta = (g.get(k) for k in ("W", "b", "gamma", "beta"))
        assert spans["W"].stop == spans["b"].start, "the bias must follow W in the flat buffer"
        wb = slice(spans["W"].start, spans["b"].stop)
        self.Wb = params[wb].reshape(self.fan_in + 1, self.fan_out)
        self.dWb = grads[wb].reshape(self.fan_in + 1, self.fan_out)

    def _buffers(self, batch: int, train: bool) -> SimpleNamespace:
        key = (batch, train)
        s = self._sets.get(key)
        if s is None:
            if len(self._sets) >= MAX_BUFFER_SETS:
                self._sets.clear()
            s = self._sets[key] = self._new_buffers(batch, train)
        return s

    def _new_buffers(self, batch: int, train: bool) -> SimpleNamespace:
        shape, dt = (batch, self.fan_out), self.dtype
        s = SimpleNamespace(lin=np.empty(shape, dt), xa=None, out_aug=None)
        s.z = np.empty(shape, dt) if self.batch_norm else s.lin
        s.a = s.z if self.act.name == "linear" else np.empty(shape, dt)  # linear returns z itself
        s.drop = self.dropout > 0 and train
        s.out = np.empty(shape, dt) if s.drop else s.a
        s.mask = np.empty(shape, dt) if s.drop else None
        if self.feeds_next:  # whichever arrays alias the output become a view of the next input
            s.out_aug = _with_ones(batch, self.fan_out, dt)
            out, view = s.out, s.out_aug[:, :self.fan_out]
            for name in ("lin", "z", "a", "out"):
                if getattr(s, name) is out:
                    setattr(s, name, view)
        small = dt in BLAS_DTYPES and batch * (self.fan_in + 1) * self.fan_out <= DOT_MAX
        s.product = np.dot if small and s.lin.flags.c_contiguous else np.matmul  # np.dot wants a C array out
        if train:
            s.dz = np.empty(shape, dt)
            s.da = np.empty(shape, dt) if s.drop else None
            s.dlin = np.empty(shape, dt) if self.batch_norm else s.dz
            s.dx = np.empty((batch, self.fan_in), dt) if self.index > 0 else None
        return s

    def forward(self, x: np.ndarray, train: bool, skip_activation: bool = False,
                xa: np.ndarray | None = None) -> np.ndarray:
        """x: (batch, fan_in) -> out: (batch, fan_out). xa: x with the ones column, as the previous
        layer left it (the first layer builds its own). With skip_activation the loss fills `a`."""
        s = self.buf = self._buffers(x.shape[0], train)
        s.x = x
        if xa is None and self.fan_in > COPY_RATIO * self.fan_out:
            # a first layer with a wide input: copying x costs more than adding b and summing db
            s.product(x, self.W, out=s.lin)
            np.add(s.lin, self.b, out=s.lin)
        else:
            if xa is None:  # the first layer: copy the input next to a column of ones
                if s.xa is None:
                    s.xa = _with_ones(x.shape[0], self.fan_in, self.dtype)
                xa = s.xa
                xa[:, :-1] = x
            s.product(xa, self.Wb, out=s.lin)
        s.x_aug = xa
        if self.batch_norm:
            self._bn_forward(s, train)
        if skip_activation:
            return s.a
        self.act.forward(s.z, s.a)
        if s.drop:
            self._dropout_forward(s)
        return s.out

    def _dropout_forward(self, s: SimpleNamespace) -> None:
        """Inverted dropout: keep with probability 1 - p and scale by 1/(1 - p), so eval is identity."""
        keep = 1.0 - self.dropout
        if self.dtype == np.float16:
            s.mask[...] = self.rng.random(s.mask.shape, dtype=np.float32) < keep
        else:
            self.rng.random(out=s.mask, dtype=self.dtype)
            np.less(s.mask, keep, out=s.mask)
        s.mask *= self.dtype.type(1.0 / keep)
        np.multiply(s.a, s.mask, out=s.out)

    def _bn_forward(self, s: SimpleNamespace, train: bool) -> None:
        if train:
            mu = s.lin.mean(axis=0)
            var = s.lin.var(axis=0)
            n = s.lin.shape[0]
            m = BN_MOMENTUM
            self.running_mean *= 1 - m
            self.running_mean += m * mu
            self.running_var *= 1 - m
            self.running_var += m * var * (n / max(n - 1, 1))
        else:
            mu, var = self.running_mean, self.running_var
        s.inv_std = 1.0 / np.sqrt(var + BN_EPS)
        s.xhat = (s.lin - mu) * s.inv_std
        np.multiply(s.xhat, self.gamma, out=s.z)
        s.z += self.beta

    def backward(self, dout: np.ndarray | None, dz: np.ndarray | None = None) -> np.ndarray | None:
        """dout: dL/d(out) (batch, fan_out); or dz given directly by a fused loss.
        Fills [dW; db] = [x 1]^T dlin (or dW = x^T dlin, db = sum dlin), returns dx = dlin W^T
        (None for the first layer)."""
        s = self.buf
        s.dout = dout
        if dz is None:
            da = np.multiply(dout, s.mask, out=s.da) if s.drop else dout
            dz = self.act.backward(da, s.z, s.a, s.dz)
        s.dz_used = dz
        dlin = self._bn_backward(s, dz) if self.batch_norm else dz
        if s.x_aug is None:
            s.product(s.x.T, dlin, out=self.dW)
            np.add.reduce(dlin, axis=0, out=self.db)
        else:
            s.product(s.x_aug.T, dlin, out=self.dWb)
        if s.dx is None:
            return None
        return s.product(dlin, self.W.T, out=s.dx)

    def _bn_backward(self, s: SimpleNamespace, dz: np.ndarray) -> np.ndarray:
        """dlin = inv_std / n (n dxhat - sum dxhat - xhat sum(dxhat xhat)), dxhat = dz gamma."""
        n = dz.shape[0]
        np.sum(dz, axis=0, out=self.dbeta)
        np.sum(dz * s.xhat, axis=0, out=self.dgamma)
        dxhat = dz * self.gamma
        t = n * dxhat - dxhat.sum(axis=0) - s.xhat * (dxhat * s.xhat).sum(axis=0)
        np.multiply(t, s.inv_std / n, out=s.dlin)
        return s.dlin


def _with_ones(batch: int, cols: int, dtype) -> np.ndarray:
    """A (batch, cols + 1) buffer whose last column is 1 (the bias input)."""
    buf = np.empty((batch, cols + 1), dtype)
    buf[:, cols] = 1
    return buf
