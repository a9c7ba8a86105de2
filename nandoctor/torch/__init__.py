"""Diagnose real PyTorch training: a recorder that writes the NumPy engine's run directory.

    from nandoctor.torch import Recorder

    with Recorder(model, "runs/exp1") as rec:
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            rec.step(loss, optimizer, inputs=x, targets=y)   # after backward, before optimizer.step()
            optimizer.step()
    # then: nandoctor diagnose runs/exp1

`Recorder` needs PyTorch (`pip install nandoctor[torch]`) and imports it on first use;
`nandoctor.torch.ddp` (reading the ranks of a distributed run) does not, so `nandoctor diagnose`
works without PyTorch installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Recorder", "merge_ranks"]

if TYPE_CHECKING:
    from nandoctor.torch.ddp import merge_ranks
    from nandoctor.torch.recorder import Recorder


def __getattr__(name: str):
    if name == "Recorder":
        try:
            from nandoctor.torch.recorder import Recorder
        except ModuleNotFoundError as exc:
            if exc.name == "torch":
                raise ImportError("nandoctor.torch.Recorder needs PyTorch: pip install 'nandoctor[torch]'") from None
            raise
        return Recorder
    if name == "merge_ranks":
        from nandoctor.torch.ddp import merge_ranks

        return merge_ranks
    raise AttributeError(f"module 'nandoctor.torch' has no attribute {name!r}")
