"""Activations: forward beside backward, each writing into caller-owned buffers.

`forward(z, out) -> a` may return `z` itself (linear) to avoid a copy.
`backward(da, z, a, out) -> dz` computes dL/dz = dL/da * a'(z) using whichever of z, a is cheaper.
Shapes: z, a, da, dz are (batch, units).
"""

from __future__ import annotations

import math

import numpy as np

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class Activation:
    name = "?"
    saturating = False  # has flat tails where the derivative vanishes
    can_die = False  # outputs exactly zero on a half-line (dead units possible)

    def __init__(self, alpha: float | None = None):
        self.alpha = alpha

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linear(Activation):
    name = "linear"

    def forward(self, z, out):
        return z

    def backward(self, da, z, a, out):
        return da


class Sigmoid(Activation):
    """a = 1 / (1 + exp(-z)); a' = a (1 - a). The textbook form, so tiny outputs underflow as in torch."""

    name = "sigmoid"
    saturating = True

    def forward(self, z, out):
        np.negative(z, out=out)
        np.exp(out, out=out)
        out += 1
        return np.reciprocal(out, out=out)

    def backward(self, da, z, a, out):
        np.subtract(1, a, out=out)
        out *= a
        out *= da
        return out


class Tanh(Activation):
    """a = tanh(z); a' = 1 - a^2."""

    name = "tanh"
    saturating = True

    def forward(self, z, out):
        return np.tanh(z, out=out)

    def backward(self, da, z, a, out):
        np.multiply(a, a, out=out)
        np.subtract(1, out, out=out)
        out *= da
        return out


class ReLU(Activation):
    """a = max(z, 0); a' = [z > 0]."""

    name = "relu"
    can_die = True

    def forward(self, z, out):
        return np.maximum(z, 0, out=out)

    def backward(self, da, z, a, out):
        return np.multiply(da, z > 0, out=out)


class LeakyReLU(Activation):
    """a = z for z > 0 else alpha z; a' = 1 or alpha."""

    name = "leaky_relu"

    def forward(self, z, out):
        np.multiply(z, self.alpha, out=out)
        np.copyto(out, z, where=z > 0)
        return out

    def backward(self, da, z, a, out):
        np.multiply(da, self.alpha, out=out)
        np.copyto(out, da, where=z > 0)
        return out


class ELU(Activation):
    """a = z for z > 0 else alpha (exp(z) - 1); a' = 1 or a + alpha."""

    name = "elu"

    def forward(self, z, out):
        np.minimum(z, 0, out=out)
        np.expm1(out, out=out)
        out *= self.alpha
        np.copyto(out, z, where=z > 0)
        return out

    def backward(self, da, z, a, out):
        np.add(a, self.alpha, out=out)
        np.copyto(out, 1, where=z > 0)
        out *= da
        return out


class GELU(Activation):
    """Tanh approximation: a = z/2 (1 + t), t = tanh(c (z + 0.044715 z^3));
    a' = (1 + t)/2 + z/2 (1 - t^2) c (1 + 3 * 0.044715 z^2)."""

    name = "gelu"

    @staticmethod
    def _t(z):
        return np.tanh(SQRT_2_OVER_PI * (z + 0.044715 * z * z * z))

    def forward(self, z, out):
        np.multiply(z, 0.5, out=out)
        out *= 1 + self._t(z)
        return out

    def backward(self, da, z, a, out):
        t = self._t(z)
        inner = SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)
        np.copyto(out, 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * inner)
        out *= da
        return out


class Softplus(Activation):
    """a = log(1 + exp(z)) computed as logaddexp(0, z); a' = sigmoid(z)."""

    name = "softplus"

    def forward(self, z, out):
        return np.logaddexp(0, z, out=out)

    def backward(self, da, z, a, out):
        np.negative(z, out=out)
        np.exp(out, out=out)
        out += 1
        np.divide(da, out, out=out)
        return out


class Softmax(Activation):
    """a_i = exp(z_i - max z) / sum_j exp(z_j - max z); dz = a (da - sum(da a))."""

    name = "softmax"
    saturating = True

    def forward(self, z, out):
        np.subtract(z, z.max(axis=1, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= out.sum(axis=1, keepdims=True)
        return out

    def backward(self, da, z, a, out):
        np.multiply(da, a, out=out)
        dot = out.sum(axis=1, keepdims=True)
        np.subtract(da, dot, out=out)
        out *= a
        return out


ACTIVATIONS: dict[str, type[Activation]] = {cls.name: cls for cls in (
    Linear, Sigmoid, Tanh, ReLU, LeakyReLU, ELU, GELU, Softplus, Softmax)}


def make_activation(name: str, alpha: float | None = None) -> Activation:
    return ACTIVATIONS[name](alpha)
