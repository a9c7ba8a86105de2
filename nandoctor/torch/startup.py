"""Opening a recorded run: its arguments checked, its directory, the meta known before the first step, a
close at interpreter exit for a script that forgets it, and what step 1 teaches, written once.

Step 1's forward ran with every module hook (the tracer's calibration): it shows which activation
module or elementwise function follows each layer, and its output's autograd nodes bound the loss's
graph, from which the loss is read (the user's hints override it). With the batch size, the dtype the
model trains in and the compute dtype, the layers table and the meta are rewritten, and the preflight
is recorded: the initial loss against chance, and each layer's activation scale and saturation.
"""

from __future__ import annotations

import atexit
import math
import os
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nandoctor.telemetry.preflight import chance_loss
from nandoctor.telemetry.store import DB_NAME
from nandoctor.torch.lossgraph import infer_loss

if TYPE_CHECKING:
    from nandoctor.torch.recorder import Recorder

LOSS_NAMES = ("cross_entropy", "binary_cross_entropy", "mse", "mae", "huber", "nll")
LOW_PRECISION = ("float16", "bfloat16")


def check_arguments(every: int | str, loss: str | None, grad_norm: str, reduction: str | None) -> None:
    if every != "auto" and (not isinstance(every, int) or every < 1):
        raise ValueError(f"every must be 'auto' or a positive int, not {every!r}")
    if loss is not None and loss not in LOSS_NAMES:
        raise ValueError(f"loss must be one of {', '.join(LOSS_NAMES)}, not {loss!r}")
    if grad_norm not in ("sampled", "every"):
        raise ValueError(f"grad_norm must be 'sampled' or 'every', not {grad_norm!r}")
    if reduction is not None and reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")


def prepare_dir(path: Path, overwrite: bool) -> None:
    """An empty run directory: an earlier run's telemetry in it is an error, or removed with `overwrite`."""
    db = path / DB_NAME
    if db.exists():
        if not overwrite:
            raise FileExistsError(f"{path} already holds a recorded run ({DB_NAME}); choose another "
                                  f"directory or pass overwrite=True")
        for suffix in ("", "-wal", "-shm"):
            (path / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)


def start_meta(rec: Recorder, name: str | None, overhead: float | None, grad_norm: str) -> dict:
    """The meta of a run that starts: what the recorder was given and knows before step 1."""
    meta = dict(status="running", pid=os.getpid(), started=time.time(), engine="torch",
                torch_version=torch.__version__, name=name or rec.root_dir.name, dtype=rec.dtype,
                every=rec.every, dense_steps=rec.sampler.dense, stride=rec.sampler.stride,
                overhead_budget=overhead, grad_norm=grad_norm,
                n_params=sum(p.numel() for p in rec.model.parameters()), first_nonfinite=None,
                rank=rec.rank, world_size=rec.world_size, model_class=type(rec.model).__name__,
                model_summary=str(rec.model)[:20000])
    if rec.total_steps:
        meta["total_steps"] = int(rec.total_steps)
    return meta


def register_atexit(rec: Recorder):
    """Close a recorder the script forgot to close when the interpreter exits: the run then counts as
    interrupted (or diverged), unless it reached the total_steps it announced."""
    ref = weakref.ref(rec)

    def finish() -> None:
        r = ref()
        if r is None or r.closed:
            return
        done = r.total_steps is not None and r.step_no >= r.total_steps
        r.close("diverged" if r.nonfinite_steps else ("completed" if done else "interrupted"))

    atexit.register(finish)
    return finish


def calibrate(rec: Recorder, loss: Any, value: float, targets: Any) -> None:
    """After the first rec.step's checks: `loss` its loss tensor, `value` its value, `targets` its batch's."""
    tracer = rec.tracer
    last = tracer.last_layer()
    tracer.settle()
    rec.loss_info = infer_loss(loss, tracer.out_fns)
    for key in ("loss", "stable", "reduction"):
        hint = rec.hints[key]
        if hint is not None:
            rec.loss_info["name" if key == "loss" else key] = hint
            rec.loss_info["source"] = "hint"
    if last is not None and rec.loss_info.get("output_activation") and \
            rec.layers[last].activation in (None, "linear"):
        # the loss applies the output activation itself (cross-entropy on logits): record it as the
        # NumPy engine does, where the output layer is softmax and the loss is fused
        rec.layers[last].activation = rec.loss_info["output_activation"]
        rec.layers[last].activation_source = "loss"
    if rec.batch_size is None:
        x = tracer.root_in
        if isinstance(x, torch.Tensor) and x.ndim:
            rec.batch_size = int(x.shape[0])
    if rec.layers:  # the model may have been cast (.half()) after the recorder was made
        rec.dtype = str(rec.layers[0].weight.dtype).replace("torch.", "")
        rec.grads.full = rec.grads.full or rec.dtype in LOW_PRECISION
    out = tracer.trace[0].out if tracer.trace else None
    compute = str(out.dtype).replace("torch.", "") if isinstance(out, torch.Tensor) else rec.dtype
    rec.writer.layers([info.row() for info in rec.layers])
    output_activation = rec.loss_info.get("output_activation") or (
        rec.layers[last].activation if last is not None else None)
    rec.writer.set_meta(dtype=rec.dtype, loss=rec.loss_info, output_activation=output_activation,
                        batch_size=rec.batch_size, compute_dtype=compute, task=rec.profile.task(), layer_modules=[
                            {"layer": i.index, "module": i.name, "type": type(i.module).__name__,
                             "activation_source": i.activation_source} for i in rec.layers])
    _preflight(rec, value, targets, last)


def _preflight(rec: Recorder, value: float, targets: Any, last: int | None) -> None:
    rows = []
    pending = rec.tracer.pending
    for info in rec.layers:
        i = info.index
        pre = pending.get((i, "pre_activation"))
        act = pending.get((i, "activation")) or pre
        if pre is None:
            continue
        rows.append({"layer": i, "pre_activation_std": pre[1], "activation_std": act[1],
                     "activation_abs_max": act[4], "saturated": act[7], "zero": act[8],
                     "nonfinite": act[6]})
    name = rec.loss_info.get("name")
    units = rec.layers[last].fan_out if last is not None else None
    n_classes = rec.profile.n_classes(units)
    chance = None
    if name == "cross_entropy" and n_classes:
        chance = chance_loss(name, n_classes, np.zeros(0))
    elif name == "binary_cross_entropy":
        chance = chance_loss(name, 2, np.zeros(0))
    elif name == "mse" and isinstance(targets, torch.Tensor) and targets.is_floating_point():
        chance = chance_loss("mse", None, targets.detach().to("cpu", torch.float64).reshape(
            targets.shape[0], -1).numpy())
    rec.writer.set_meta(preflight={"rows": rec.batch_size, "initial_loss": value if math.isfinite(value)
                                   else None, "chance_loss": chance, "layers": rows, "source": "step 1"})
