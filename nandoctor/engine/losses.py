"""Losses: value and gradient together, written for speed (fused where the SPEC allows).

`forward(z, a, y) -> float` takes the output layer's pre-activation z and activation a, both
(batch, units), and targets y prepared by `prepare_targets`. `backward()` then returns
(grad, wrt) where wrt is "z" when the gradient already includes the output activation's derivative
(the fused stable pairs) and "a" when the model must still backpropagate through the activation.
Per-sample loss is the mean over output units (cross-entropy: the class log-likelihood); the
reduction then averages or sums over the batch.
"""

from __future__ import annotations

import numpy as np

from nandoctor.config.schema import LossConfig
from nandoctor.engine.threads import BLAS_DTYPES

P_CLIP = 1e-7
FLOORS = {dt: float(np.sqrt(np.finfo(dt).tiny)) for dt in BLAS_DTYPES}


class Loss:
    name = "?"

    def __init__(self, cfg: LossConfig, activation: str):
        self.stable = cfg.stable
        self.sum = cfg.reduction == "sum"
        self.activation = activation

    def scale(self, batch: int, units: int = 1) -> float:
        """Factor turning summed per-element losses into the reduced loss."""
        return 1.0 / units if self.sum else 1.0 / (batch * units)

    @property
    def fused(self) -> bool:
        """True when forward computes the output activation itself (from logits)."""
        return False


class CrossEntropy(Loss):
    """-log p[label]. Stable + softmax: log-softmax from logits, dz = (p - onehot) * scale.
    Textbook (stable: false): p = exp(z)/sum exp(z) with no max shift, -log p[label] unclipped."""

    name = "cross_entropy"

    def __init__(self, cfg: LossConfig, activation: str):
        super().__init__(cfg, activation)
        self.rows = np.arange(0)
        self.ones = self.row_sums = np.empty(0)

    @property
    def fused(self) -> bool:
        return self.activation == "softmax"

    def _pick(self, arr: np.ndarray, y: np.ndarray) -> np.ndarray:
        """arr[row, label] for each row. Labels the output cannot represent are rare, so they are
        found by the IndexError they raise: they pick column 0 and are marked invalid."""
        rows = self.rows
        if len(rows) != len(y):
            rows = self.rows = np.arange(len(y))
        self.valid, self.yy = True, y
        try:
            return arr[rows, y]
        except IndexError:
            self.valid = y < arr.shape[1]
            self.yy = np.where(self.valid, y, 0)
            return arr[rows, self.yy]

    def forward(self, z, a, y):
        self.a, self.k = a, self.scale(z.shape[0])
        if self.fused and self.stable:
            total = self._batch_shift(z, a, y)
            if total is None:
                total = self._row_shift(z, a, y)
        else:
            if self.fused:  # textbook softmax: overflow in exp(z) really happens
                np.exp(z, out=a)
                a /= a.sum(axis=1, keepdims=True)
            p = self._pick(a, y)
            if self.stable:
                p = np.clip(p, P_CLIP, 1 - P_CLIP)
            self.p = p
            total = -float(np.log(p).sum(dtype=z.dtype))
        if self.valid is not True:  # a label the output cannot represent has probability 0
            total += np.inf
        return total * self.k

    def _row_shift(self, z, a, y) -> float:
        """Log-softmax with each row shifted by its max: sum(log sum exp(z - max)) - sum((z - max)[label])."""
        np.subtract(z, np.maximum.reduce(z, axis=1, keepdims=True), out=a)
        shifted = self._pick(a, y)
        np.exp(a, out=a)
        s = np.add.reduce(a, axis=1, keepdims=True)
        np.divide(a, s, out=a)
        return float(np.add.reduce(np.log(s, out=s), axis=None)) - float(np.add.reduce(shifted))

    def _batch_shift(self, z, a, y) -> float | None:
        """The same with one shift for the whole batch, its max M: numpy reduces along a short row
        ~10x slower than over the whole array, and a BLAS product sums the rows. As accurate while
        every row's sum of exp(z - M) stays >= sqrt(tiny), so any probability above that is still a
        normal number; otherwise (a row far below the batch max, or no finite max) None. Two columns
        reduce as fast either way, and the row shift makes fewer calls."""
        if z.shape[1] <= 2 or z.dtype not in BLAS_DTYPES:
            return None
        m = np.maximum.reduce(z, axis=None)
        if not np.isfinite(m):
            return None
        np.subtract(z, m, out=a)
        shifted = self._pick(a, y)
        np.exp(a, out=a)
        s = np.matmul(a, self._vector("ones", z.shape[1], z.dtype, np.ones),
                      out=self._vector("row_sums", z.shape[0], z.dtype))
        if not np.minimum.reduce(s) >= FLOORS[z.dtype]:
            return None
        total = float(np.add.reduce(np.log(s), axis=None)) - float(np.add.reduce(shifted))
        np.multiply(a, np.reciprocal(s, out=s)[:, None], out=a)
        return total

    def _vector(self, name: str, n: int, dtype, make=np.empty) -> np.ndarray:
        """The vector kept as attribute `name`, remade when the batch size or dtype changes."""
        v = getattr(self, name)
        if v.shape[0] != n or v.dtype != dtype:
            v = make(n, dtype)
            setattr(self, name, v)
        return v

    def backward(self, out):
        if self.fused:
            np.multiply(self.a, self.k, out=out)
            out[self.rows, self.yy] -= self.k if self.valid is True else self.k * self.valid
            return out, "z"
        out.fill(0)
        g = -self.k / self.p
        if self.stable:  # the clip has zero gradient outside its range
            g = np.where((self.p > P_CLIP) & (self.p < 1 - P_CLIP), g, 0)
        out[self.rows, self.yy] = g * self.valid
        return out, "a"


class BinaryCrossEntropy(Loss):
    """-(y log p + (1 - y) log(1 - p)), mean over units. Stable + sigmoid: from logits,
    max(z, 0) - z y + log(1 + exp(-|z|)), dz = (sigmoid(z) - y) * scale. Textbook: the formula on
    p = 1/(1 + exp(-z)) and its chain rule, so p == 1 gives log(0) and 0 * inf."""

    name = "binary_cross_entropy"

    @property
    def fused(self) -> bool:
        return self.activation == "sigmoid" and self.stable

    def forward(self, z, a, y):
        self.y, self.a = y, a
        self.k = self.scale(*z.shape)
        if self.fused:
            per = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
            np.negative(z, out=a)
            np.exp(a, out=a)
            a += 1
            np.reciprocal(a, out=a)
            return float(per.sum(dtype=z.dtype) * z.dtype.type(self.k))
        p = np.clip(a, P_CLIP, 1 - P_CLIP) if self.stable else a
        self.p = p
        per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        return float(per.sum(dtype=z.dtype) * z.dtype.type(self.k))

    def backward(self, out):
        if self.fused:
            np.subtract(self.a, self.y, out=out)
            out *= self.k
            return out, "z"
        p, y = self.p, self.y
        g = -(y / p - (1 - y) / (1 - p)) * self.k
        if self.stable:
            g = np.where((self.a > P_CLIP) & (self.a < 1 - P_CLIP), g, 0)
        np.copyto(out, g)
        return out, "a"


class ElementwiseLoss(Loss):
    """Losses of the difference d = a - y: the per-element value and derivative."""

    def forward(self, z, a, y):
        self.k = self.scale(*a.shape)
        self.d = np.subtract(a, y, out=self._buf(a))
        return float(self.value(self.d).sum(dtype=a.dtype) * a.dtype.type(self.k))

    def _buf(self, a):
        buf = getattr(self, "_d", None)
        if buf is None or buf.shape != a.shape or buf.dtype != a.dtype:
            buf = self._d = np.empty_like(a)
        return buf

    def backward(self, out):
        self.derivative(self.d, out)
        out *= self.k
        return out, "a"


class MSE(ElementwiseLoss):
    """d^2; derivative 2 d."""

    name = "mse"

    def value(self, d):
        return d * d

    def derivative(self, d, out):
        np.multiply(d, 2, out=out)


class MAE(ElementwiseLoss):
    """|d|; derivative sign(d)."""

    name = "mae"

    def value(self, d):
        return np.abs(d)

    def derivative(self, d, out):
        np.sign(d, out=out)


class Huber(ElementwiseLoss):
    """delta 1: d^2/2 where |d| <= 1, else |d| - 1/2; derivative clip(d, -1, 1)."""

    name = "huber"

    def value(self, d):
        ad = np.abs(d)
        return np.where(ad <= 1, 0.5 * d * d, ad - 0.5)

    def derivative(self, d, out):
        np.clip(d, -1, 1, out=out)


LOSSES: dict[str, type[Loss]] = {cls.name: cls for cls in (CrossEntropy, BinaryCrossEntropy, MSE, MAE, Huber)}


def make_loss(cfg: LossConfig, output_activation: str) -> Loss:
    return LOSSES[cfg.name](cfg, output_activation)


def prepare_targets(y: np.ndarray, loss: str, task: str, units: int, dtype) -> np.ndarray:
    """Targets in the form the loss reads: int labels for cross-entropy; otherwise a float
    (n, units)-compatible array (one-hot when a classification output has several units)."""
    if loss == "cross_entropy":
        if task != "classification":
            y = np.asarray(y, dtype=np.float64)
            return np.rint(y if y.ndim == 1 else y[:, 0]).astype(np.int64)
        return np.asarray(y, dtype=np.int64)
    if task == "classification":
        y = np.asarray(y, dtype=np.int64)
        if units > 1:
            onehot = np.zeros((len(y), units), dtype=dtype)
            inside = y < units
            onehot[np.arange(len(y))[inside], y[inside]] = 1
            return onehot
        return y.reshape(-1, 1).astype(dtype)
    y = np.asarray(y, dtype=dtype)
    return y.reshape(-1, 1) if y.ndim == 1 else y
