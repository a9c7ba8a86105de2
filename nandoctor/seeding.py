"""Every random draw derives from the config's seed through a named stream.

Separate streams (data, split, init, shuffle, dropout ...) mean that changing one part of a config,
say dropout, does not change the data or the initial weights.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))
