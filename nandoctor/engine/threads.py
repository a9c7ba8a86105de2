"""How many BLAS threads a model's matrix products get.

Splitting a small GEMM across threads costs more in synchronisation than it saves, and when another
process holds a core the waiting threads make it far worse: measured on 2 cores with one busy, a
64-128-128-10 step (batch 64) took 0.25 ms on one thread and up to 48 ms on two; on a quiet machine
it takes 163 us on one thread against 194 us on two. From about 0.1 GFLOP per step the second thread
pays: a 784-256-256-10 step (batch 128, 0.2 GFLOP) takes 1.37 ms on two threads against 1.67 ms on
one (quiet machine, best of six interleaved blocks). Models below SMALL_STEP_FLOPS therefore run
their products on one thread; larger ones keep the BLAS default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
from threadpoolctl import threadpool_limits

SMALL_STEP_FLOPS = 50e6
BLAS_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what BLAS multiplies; float16 has numpy's own loops


def step_flops(fan: list[tuple[int, int]], batch: int) -> float:
    """Forward, dW and dx products of one training step (~6 flops per weight per sample)."""
    return 6.0 * batch * sum(i * o for i, o in fan)


@contextlib.contextmanager
def blas_threads_for(fan: list[tuple[int, int]], batch: int) -> Iterator[None]:
    if step_flops(fan, batch) < SMALL_STEP_FLOPS:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    else:
        yield
