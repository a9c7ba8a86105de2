"""What loss the user computed, read once from the autograd graph between the loss and the model output.

PyTorch records every operation of the loss: `F.cross_entropy` leaves NllLossBackward0 over
LogSoftmaxBackward0 (stable, from logits) with its reduction saved on the node, while a textbook
`-torch.log(torch.exp(z) / torch.exp(z).sum(1))` leaves LogBackward0, DivBackward0 and ExpBackward0.
The result uses the NumPy engine's vocabulary (SPEC section 2) so the diagnoser's loss rules apply:

    {"name": cross_entropy | binary_cross_entropy | mse | mae | huber | nll | unknown,
     "stable": bool | None, "reduction": mean | sum | none | None,
     "output_activation": the output activation as the loss sees it (softmax for cross-entropy on
                          logits, sigmoid for BCE-with-logits) or None when the model's own applies,
     "source": "autograd", "graph": [node names, loss first]}
"""

from __future__ import annotations

from typing import Any

import torch

MAX_NODES = 200
REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}
FUSED = {  # node -> (name, stable, output activation the loss applies itself)
    "BinaryCrossEntropyWithLogitsBackward0": ("binary_cross_entropy", True, "sigmoid"),
    "BinaryCrossEntropyBackward0": ("binary_cross_entropy", True, None),  # torch clamps log at -100
    "MseLossBackward0": ("mse", True, None),
    "L1LossBackward0": ("mae", True, None),
    "HuberLossBackward0": ("huber", True, None),
    "SmoothL1LossBackward0": ("huber", True, None),
}
FULL_REDUCE = {"MeanBackward0": "mean", "SumBackward0": "sum"}
PASS_THROUGH = ("NegBackward0", "MulBackward0", "DivBackward0", "AddBackward0", "SubBackward0", "CloneBackward0",
                "ToCopyBackward0", "ViewBackward0", "SqueezeBackward0", "ExpandBackward0", "UnsqueezeBackward0")


def walk(loss_fn: Any, stop: set[int]) -> list[Any]:
    """Nodes reachable from the loss's grad_fn, breadth first, not going past the model output's nodes."""
    seen, order, queue = set(), [], [loss_fn]
    while queue and len(order) < MAX_NODES:
        node = queue.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        if id(node) in stop:
            continue
        queue.extend(child for child, _ in getattr(node, "next_functions", ()))
    return order


def output_fns(out: Any, found: set[int]) -> set[int]:
    """Ids of the grad_fn nodes of the model output's tensors (`out` may nest them in lists, tuples, dicts):
    where the walk from the loss stops."""
    if isinstance(out, torch.Tensor):
        if out.grad_fn is not None:
            found.add(id(out.grad_fn))
    elif isinstance(out, list | tuple):
        for o in out:
            output_fns(o, found)
    elif isinstance(out, dict):
        for o in out.values():
            output_fns(o, found)
    return found


def infer_loss(loss: Any, output_fns: set[int]) -> dict:
    """Classify the loss tensor's graph; `output_fns` are ids of the model outputs' grad_fn nodes."""
    fn = getattr(loss, "grad_fn", None)
    result = {"name": "unknown", "stable": None, "reduction": None, "output_activation": None,
              "source": "autograd", "graph": []}
    if fn is None:
        return result
    nodes = walk(fn, output_fns)
    inside = [n for n in nodes if id(n) not in output_fns]  # the loss's own operations
    names = [type(n).__name__ for n in inside]
    result["graph"] = names[:40]
    reduction = _outer_reduction(inside)
    for node in inside:
        kind = type(node).__name__
        if kind == "NllLossBackward0":
            saved = REDUCTIONS.get(getattr(node, "_saved_reduction", None))
            logsm = "LogSoftmaxBackward0" in names
            textbook = "LogBackward0" in names and not logsm
            result.update(name="cross_entropy" if (logsm or textbook) else "nll", stable=not textbook,
                          reduction=saved if saved != "none" else (reduction or "none"),
                          output_activation="softmax" if (logsm or textbook) else None)
            return result
        if kind in FUSED:
            name, stable, act = FUSED[kind]
            saved = REDUCTIONS.get(getattr(node, "_saved_reduction", None))
            result.update(name=name, stable=stable, reduction=saved if saved != "none" else (reduction or "none"),
                          output_activation=act)
            return result
    if "LogBackward0" in names:  # a hand-written log-likelihood on probabilities
        binary = "SigmoidBackward0" in names or "RsubBackward1" in names
        clamped = any(n.startswith("Clamp") for n in names)
        made_probs = "SoftmaxBackward0" in names or "ExpBackward0" in names or "SigmoidBackward0" in names
        result.update(name="binary_cross_entropy" if binary else "cross_entropy", stable=clamped,
                      reduction=reduction, output_activation=("sigmoid" if binary else "softmax") if made_probs
                      else None)
        return result
    if "SubBackward0" in names and ("PowBackward0" in names or "MulBackward0" in names):  # ((y - t) ** 2)
        result.update(name="mse", stable=True, reduction=reduction)
    return result


def _outer_reduction(nodes: list[Any]) -> str | None:
    """The first full reduction (mean() or sum() over everything) seen from the loss down."""
    for node in nodes:
        kind = type(node).__name__
        if kind in FULL_REDUCE:
            return FULL_REDUCE[kind]
        if kind not in PASS_THROUGH:
            return None
    return None
