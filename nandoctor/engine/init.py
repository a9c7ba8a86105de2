"""Weight initialisation schemes, keyed by SPEC name. Draws are float64, then cast to the dtype."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from nandoctor.config.schema import InitSpec

Scheme = Callable[[np.random.Generator, int, int, InitSpec], np.ndarray]


def _uniform(rng, fan_in, fan_out, limit):
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def _normal(rng, fan_in, fan_out, std):
    return rng.standard_normal((fan_in, fan_out)) * std


def _orthogonal(rng, fan_in, fan_out, spec):
    """QR of a Gaussian matrix with the sign fix, so the result is uniform over orthogonal matrices."""
    a = rng.standard_normal((max(fan_in, fan_out), min(fan_in, fan_out)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    q = q if fan_in >= fan_out else q.T
    return spec.gain * q[:fan_in, :fan_out]


INITS: dict[str, Scheme] = {
    "glorot_uniform": lambda r, i, o, s: _uniform(r, i, o, s.gain * math.sqrt(6.0 / (i + o))),
    "glorot_normal": lambda r, i, o, s: _normal(r, i, o, s.gain * math.sqrt(2.0 / (i + o))),
    "he_uniform": lambda r, i, o, s: _uniform(r, i, o, s.gain * math.sqrt(6.0 / i)),
    "he_normal": lambda r, i, o, s: _normal(r, i, o, s.gain * math.sqrt(2.0 / i)),
    "lecun_normal": lambda r, i, o, s: _normal(r, i, o, s.gain * math.sqrt(1.0 / i)),
    "orthogonal": _orthogonal,
    "normal": lambda r, i, o, s: _normal(r, i, o, s.gain * s.std),
    "uniform": lambda r, i, o, s: _uniform(r, i, o, s.gain * s.limit),
    "constant": lambda r, i, o, s: np.full((i, o), s.gain * s.value),
    "zeros": lambda r, i, o, s: np.zeros((i, o)),
}

