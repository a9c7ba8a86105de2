"""Optimizers over the flat parameter vector, following PyTorch's definitions.

Contract: `compute(g, lr, out)` writes the update to apply into `out` (same shape as the parameters)
from the gradient g, and may advance the optimizer state; the caller checks the update and then
adds it. Keeping the update separate is what lets telemetry report the applied update and lets the
trainer stop before a non-finite update touches the weights. State has the parameters' dtype.
Weight decay is L2 added to the gradient (`adamw`: decoupled, p <- p (1 - lr wd)).
"""

from __future__ import annotations

import math

import numpy as np

from nandoctor.config.schema import OptimizerConfig

CHUNK = 32768  # elements per chunk of a fused update: three float32 chunks stay in a 1 MB L2


class Optimizer:
    name = "?"

    def __init__(self, cfg: OptimizerConfig, params: np.ndarray):
        self.cfg, self.params, self.t = cfg, params, 0
        self.tmp = np.empty_like(params)

    def compute(self, g: np.ndarray, lr: float, out: np.ndarray) -> np.ndarray:
        self.t += 1
        wd = self.cfg.weight_decay
        if wd and self.name != "adamw":
            g = np.add(g, self.params * g.dtype.type(wd), out=self.tmp)
        return self._step(g, lr, out)

    def max_step(self, lr: float, gnorm: float) -> float:
        """An upper bound on max |update| known without reading the update (nan: none known)."""
        return math.nan

    def apply(self, params: np.ndarray, g: np.ndarray, lr: float) -> bool:
        """Add the step's update to params directly, never writing it out, where the optimizer can
        (True); False leaves the caller to `compute` the update and add it."""
        return False

    def state(self) -> dict[str, np.ndarray]:
        """Named state arrays (for telemetry and snapshots)."""
        return {k: v for k, v in vars(self).items()
                if isinstance(v, np.ndarray) and k not in ("params", "tmp", "chunk")}


def _scaled(g: np.ndarray, acc: np.ndarray, eps: float, lr: float, out: np.ndarray) -> np.ndarray:
    """out = -lr g / (sqrt(acc) + eps): the step of the optimizers that divide by a running g^2."""
    np.sqrt(acc, out=out)
    out += eps
    np.divide(g, out, out=out)
    out *= -lr
    return out


class SGD(Optimizer):
    """u = -lr g."""

    name = "sgd"

    def __init__(self, cfg, params):
        super().__init__(cfg, params)
        self.chunk = np.empty(min(CHUNK, params.size), params.dtype)

    def _step(self, g, lr, out):
        return np.multiply(g, -lr, out=out)

    def max_step(self, lr, gnorm):
        """|lr g_i| <= |lr| |g|, which spares the trainer a pass over the update."""
        return math.nan if self.cfg.weight_decay else abs(lr) * gnorm

    def apply(self, params, g, lr):
        """params += -lr g, chunk by chunk through a cache-sized buffer: the values `compute` gives,
        without the update's round trip through memory (the largest cost of a wide net's step
        outside its matrix products)."""
        if self.cfg.weight_decay:
            return False
        self.t += 1
        tmp, n = self.chunk, CHUNK
        if params.size <= n:
            np.add(params, np.multiply(g, -lr, out=tmp), out=params)
            return True
        for i in range(0, params.size, n):
            p = params[i:i + n]
            t = tmp[:p.size]
            np.multiply(g[i:i + n], -lr, out=t)
            np.add(p, t, out=p)
        return True


class Momentum(Optimizer):
    """buf = mu buf + g (buf = g at the first step); u = -lr buf (nesterov: -lr (g + mu buf))."""

    name = "momentum"
    nesterov = False

    def __init__(self, cfg, params):
        super().__init__(cfg, params)
        self.buf = np.zeros_like(params)

    def _step(self, g, lr, out):
        mu = self.cfg.momentum
        if self.t == 1:
            self.buf[...] = g
        else:
            self.buf *= mu
            self.buf += g
        if self.nesterov:
            np.multiply(self.buf, mu, out=out)
            out += g
            out *= -lr
            return out
        return np.multiply(self.buf, -lr, out=out)


class Nesterov(Momentum):
    name = "nesterov"
    nesterov = True


class RMSprop(Optimizer):
    """v = alpha v + (1 - alpha) g^2 with alpha 0.9; u = -lr g / (sqrt(v) + eps)."""

    name = "rmsprop"
    alpha = 0.9

    def __init__(self, cfg, params):
        super().__init__(cfg, params)
        self.v = np.zeros_like(params)

    def _step(self, g, lr, out):
        self.v *= self.alpha
        np.multiply(g, g, out=out)
        out *= 1 - self.alpha
        self.v += out
        return _scaled(g, self.v, self.cfg.eps, lr, out)


class Adagrad(Optimizer):
    """s = s + g^2; u = -lr g / (sqrt(s) + eps)."""

    name = "adagrad"

    def __init__(self, cfg, params):
        super().__init__(cfg, params)
        self.s = np.zeros_like(params)

    def _step(self, g, lr, out):
        np.multiply(g, g, out=out)
        self.s += out
        return _scaled(g, self.s, self.cfg.eps, lr, out)


class Adam(Optimizer):
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    u = -(lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)  (PyTorch's operation order)."""

    name = "adam"

    def __init__(self, cfg, params):
        super().__init__(cfg, params)
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)

    def _step(self, g, lr, out):
        b1, b2, t = self.cfg.beta1, self.cfg.beta2, self.t
        self.m *= b1
        np.multiply(g, 1 - b1, out=out)
        self.m += out
        self.v *= b2
        np.multiply(g, g, out=out)
        out *= 1 - b2
        self.v += out
        np.sqrt(self.v, out=out)
        out /= math.sqrt(1 - b2**t)
        out += self.cfg.eps
        np.divide(self.m, out, out=out)
        out *= -lr / (1 - b1**t)
        return out


class AdamW(Adam):
    """Adam plus decoupled decay: the applied update is the decay -lr wd p plus Adam's step."""

    name = "adamw"

    def _step(self, g, lr, out):
        wd = self.cfg.weight_decay
        decay = self.params * (-lr * wd) if wd else None
        if decay is not None:  # torch decays first, then steps from the decayed weights
            decayed = self.params + decay
            super()._step(g, lr, out)
            out += decayed
            out -= self.params
            return out
        return super()._step(g, lr, out)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (
    SGD, Momentum, Nesterov, RMSprop, Adagrad, Adam, AdamW)}


def make_optimizer(cfg: OptimizerConfig, params: np.ndarray) -> Optimizer:
    return OPTIMIZERS[cfg.name](cfg, params)


def clip(g: np.ndarray, cfg: OptimizerConfig, norm: float) -> float:
    """Clip in place: by value first, then the global L2 norm (coef max/(norm + 1e-6), as torch).
    Returns the norm after clipping."""
    if cfg.clip_value is not None:
        np.clip(g, -cfg.clip_value, cfg.clip_value, out=g)
        wide = g.astype(np.float32) if g.dtype == np.float16 else g  # a float16 dot overflows at 65504
        norm = math.sqrt(float(np.dot(wide, wide)))
    if cfg.clip_norm is not None and norm > cfg.clip_norm:
        coef = cfg.clip_norm / (norm + 1e-6)
        g *= g.dtype.type(coef)
        norm *= coef
    return norm
