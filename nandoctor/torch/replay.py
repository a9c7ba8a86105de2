"""Re-running a training forward exactly, and leaving no trace of it.

A step that goes non-finite between sampled steps ran without module hooks, so the recorder re-runs
its forward once with them (`Tracer.replay`). To see the same values it needs the RNG state that
forward started from (the same dropout masks), which the model's pre-hook keeps at every forward;
to leave training exactly as it would have been, the RNG and the module buffers (batch-norm running
statistics) are put back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def rng_state(device: torch.device | None) -> tuple:
    """The RNG states a forward draws from (dropout): the CPU generator's, and the model's CUDA device's."""
    cuda = torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None
    return torch.get_rng_state(), cuda, device


def set_rng_state(state: tuple) -> None:
    cpu, cuda, device = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


@contextlib.contextmanager
def restored(model: nn.Module, device: torch.device | None) -> Iterator[None]:
    """The model's buffers and the RNG state (of `device`) after the block as they were before it."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    now = rng_state(device)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        set_rng_state(now)
