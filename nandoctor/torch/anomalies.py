"""What went wrong in a recorded step, written as events: non-finite values and loss spikes.

Only the run's first non-finite value is located and recorded (meta `first_nonfinite` and a `nonfinite`
event; later ones are its consequences): in the batch shown to the recorder (the data profile counts
non-finite inputs and targets), in the step whose loss or gradients went non-finite (located at module
level by nandoctor.torch.locate, after re-running a forward that ran without module hooks), or, at
close, in parameters the last optimizer step made non-finite. Functions of the recorder: they read its
tracer, layers and step, and write through its writer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nandoctor.torch import locate as loc
from nandoctor.torch.tracer import first_tensor

if TYPE_CHECKING:
    from nandoctor.torch.recorder import Recorder


def observe(rec: Recorder, inputs: Any, targets: Any, k: int, check: bool = True) -> dict | None:
    """Show the batch of step k to the data profile; the data event when it holds the run's first
    non-finite value. `check`: the non-finite check even after the profiled batches."""
    if rec.batch_size is None:
        x = inputs if isinstance(inputs, torch.Tensor | np.ndarray) else None
        if x is not None and x.ndim:
            rec.batch_size = int(x.shape[0])
    bad_x, bad_y, names = rec.profile.observe(inputs, targets, check)
    if not (bad_x or bad_y) or rec.first_nonfinite is not None:
        return None
    return loc.locate_data(bad_x, bad_y, names, inputs, k)


def locate(rec: Recorder, value: float, grads_ok: bool, targets: Any, k: int) -> dict:
    """The first non-finite value of step k, whose loss is `value` and whose gradients are finite or not."""
    tracer = rec.tracer
    replayed = tracer.can_replay()
    if replayed:
        tracer.replay()
    event = loc.locate_forward(tracer.trace, rec.layers, tracer.root_in, k)
    if replayed and event is not None:
        event["detail"] += " [located by re-running the step's forward with module hooks]"
    if event is not None and event["phase"] == "update":
        event["detail"] += rec.layer_stats.update_note(rec.dtype)
        k = max(k - 1, 1)
    if event is None and not math.isfinite(value):
        out = first_tensor(tracer.root_out)
        if out is None and tracer.trace:
            out = tracer.trace[-1].out
        event = loc.locate_loss(out, rec.loss_info, rec.layers, targets)
    if event is None and not grads_ok:
        event = loc.locate_backward(tracer.trace, rec.layers, tracer.gout, rec.world_size > 1)
    if event is None:
        event = loc.unlocated(grads_ok)
    return {"step": k, "epoch": rec.epoch_no, **event}


def check_params(rec: Recorder) -> None:
    """At close, when nothing went non-finite before: parameters the last optimizer step made non-finite."""
    event = loc.locate_params(rec.layers, rec.step_no)
    if event is not None:
        event["detail"] += rec.layer_stats.update_note(rec.dtype)
        rec.nonfinite_steps += 1
        record(rec, {"step": rec.step_no, "epoch": max(1, rec.epoch_no - 1), **event})


def record(rec: Recorder, event: dict) -> None:
    """The run's first non-finite value: into the meta and the events."""
    if rec.world_size > 1:
        event["rank"] = rec.rank
    rec.first_nonfinite = event
    rec.writer.set_meta(first_nonfinite=event)
    rec.writer.event(event["step"], event["epoch"], "nonfinite", event["phase"], event["layer"],
                     event["tensor"], event)


def spiked(rec: Recorder, k: int, loss: float) -> bool:
    """Whether the loss of step k spiked (nandoctor.torch.checks.SpikeCheck); a spike is counted and written."""
    if not rec.spike_check(k, loss):
        return False
    rec.spikes += 1
    rec.writer.event(k, rec.epoch_no, "loss_spike", "loss", None, "loss",
                     {"loss": loss, "running_median": rec.spike_check.median})
    return True
