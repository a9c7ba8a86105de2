"""How many BLAS threads a model's matrix products get.

Splitting a small GEMM across threads costs more in synchronisation than it saves, and when another
process holds a core the waiting threads make it far worse: measured on 2 cores with one busy, a
64-128-128-10 step (batch 64) took 0.25 ms on one thread and up to 48 ms on two. Models whose step
is below SMALL_STEP_FLOPS therefore run their products on one thread; larger ones keep the BLAS
default, where the second core pays off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits

SMALL_STEP_FLOPS = 50e6


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
