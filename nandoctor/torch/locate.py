"""Where the first non-finite value of a PyTorch step was born, at module level.

The recorder keeps references (no copies) to every hooked module's input and output of the step's
forward and to each layer's output gradient, and drops them at the end of `rec.step`. When the
step's cheap checks fire (the loss, the global gradient norm), this scan runs once over them in
execution order: the model input, then forward module by module, the loss, then backward from the
output down, then the parameter gradients. The first non-finite tensor whose inputs were finite is
the producer; the magnitudes of those inputs explain it (overflow past the dtype's max, log(0),
0 * inf). Nothing is re-run: PyTorch's anomaly mode names the backward function that produced a
NaN at 2.5-3x the cost of every step; this names the module, the pass and the step for the price of
keeping references.

Event dict (what `first_nonfinite` holds, as the NumPy engine's `locate`):
    {phase: data|forward|loss|backward|update, layer, tensor, role: producer|propagator,
     detail, count, size, module: module path}
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from nandoctor.torch.modules import LayerInfo

KINDS = ("layer", "norm", "activation")
TENSOR = {"layer": "pre_activation", "norm": "normalized", "activation": "activation"}


class Entry(NamedTuple):
    """One hooked module call of the forward: its owner layer, kind, module path, input and output."""

    layer: int
    kind: int  # index into KINDS
    name: str
    x: Any
    out: Any


def n_bad(t: Any) -> int:
    if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0
    return int(t.numel() - torch.isfinite(t.detach()).sum())


def absmax(t: Any) -> float:
    """Largest finite magnitude (0.0 for an empty or all-non-finite tensor)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
        return 0.0
    t = t.detach()
    t = t[torch.isfinite(t)]
    return float(t.abs().max()) if t.numel() else 0.0


def limit(dtype: torch.dtype) -> str:
    try:
        return f"{str(dtype).replace('torch.', '')} max {torch.finfo(dtype).max:.4g}"
    except TypeError:
        return str(dtype)


def _event(phase, layer, tensor, detail, bad, size, role="producer", module=None) -> dict:
    return {"phase": phase, "layer": layer, "tensor": tensor, "role": role, "detail": detail, "count": bad,
            "size": size, "module": module}


def _size(t: Any) -> int:
    return int(t.numel()) if isinstance(t, torch.Tensor) else 0


def locate_data(bad_x: int, bad_y: int, names: list[str], inputs: Any, step: int) -> dict:
    """Non-finite inputs (`bad_x`, in the features `names`) or targets (`bad_y`) in the batch shown to the
    recorder, as the data profile counted them."""
    parts = []
    if bad_x:
        shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        parts.append(f"{bad_x} non-finite input values in the batch of step {step} (features: {shown})")
    if bad_y:
        parts.append(f"{bad_y} non-finite targets in the batch of step {step}")
    return _event("data", None, "input" if bad_x else "target", "; ".join(parts), bad_x + bad_y, _size(inputs))


def locate_forward(trace: list[Entry], layers: list[LayerInfo], model_input: Any, step: int) -> dict | None:
    """The first non-finite value of the forward pass, or None when every hooked tensor is finite."""
    bad = n_bad(model_input)
    if bad:
        return _event("data", None, "input", f"{bad} non-finite input values (of {_size(model_input)}) in the "
                      f"batch of step {step} reach the model", bad, _size(model_input))
    seen_params: set[int] = set()
    for n, e in enumerate(trace):
        kind = KINDS[e.kind]
        info = layers[e.layer] if e.layer is not None and e.layer < len(layers) else None
        where = f"layer {e.layer} ({e.name})"
        if kind == "layer" and info is not None and e.layer not in seen_params:
            seen_params.add(e.layer)
            pbad = n_bad(info.weight) + n_bad(info.bias)
            if pbad:
                return _event("update", e.layer, "weight", f"parameters of {where} went non-finite in the optimizer "
                              f"step of step {step - 1} (found at the forward of step {step}): {pbad} of "
                              f"{_size(info.weight) + _size(info.bias)} values, largest finite |W| "
                              f"{absmax(info.weight):.3g} ({limit(info.weight.dtype)})", pbad,
                              _size(info.weight) + _size(info.bias), module=e.name)
        xbad = n_bad(e.x)
        if xbad:
            if n == 0:
                return _event("data", None, "input", f"{xbad} non-finite input values reach the first module "
                              f"{e.name} at step {step}", xbad, _size(e.x))
            before = trace[n - 1].name
            return _event("forward", e.layer, "input", f"non-finite input to {where} although every module output "
                          f"before it was finite: an operation in forward() between {before} and {e.name} produced "
                          f"it (|output| max of {before} {absmax(trace[n - 1].out):.3g}, largest finite |x| "
                          f"{absmax(e.x):.3g}, {limit(e.x.dtype)})", xbad, _size(e.x), module=e.name)
        obad = n_bad(e.out)
        if not obad:
            continue
        dt = limit(e.out.dtype)
        if kind == "layer" and info is not None:
            detail = (f"pre-activation overflow in {where}: |W| max {absmax(info.weight):.3g}, |x| max "
                      f"{absmax(e.x):.3g}, |b| max {absmax(info.bias):.3g}, largest finite |value| "
                      f"{absmax(e.out):.3g} ({dt})")
        elif kind == "activation":
            act = info.activation if info is not None else e.name
            detail = (f"{act} produced non-finite output in {where} from finite input: |z| max "
                      f"{absmax(e.x):.3g} ({dt})")
        else:
            detail = (f"{info.norm if info else ''} norm {e.name} produced non-finite output from finite input: "
                      f"|x| max {absmax(e.x):.3g}, input std {_std(e.x):.3g} ({dt})")
        return _event("forward", e.layer, TENSOR[kind], detail, obad, _size(e.out), module=e.name)
    return None


def _std(t: Any) -> float:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() < 2:
        return float("nan")
    t = t.detach().float()
    t = t[torch.isfinite(t)]
    return float(t.std()) if t.numel() > 1 else float("nan")


def locate_loss(output: Any, loss_info: dict, layers: list[LayerInfo], targets: Any) -> dict:
    """The loss went non-finite although every forward value was finite."""
    last = len(layers) - 1 if layers else None
    out = output if isinstance(output, torch.Tensor) else None
    tbad = n_bad(targets)
    if tbad:
        return _event("data", None, "target", f"{tbad} non-finite target values in the batch: the loss is "
                      f"non-finite", tbad, _size(targets))
    name, stable = loss_info.get("name") or "unknown", loss_info.get("stable")
    dt = limit(out.dtype) if out is not None else ""
    parts = [f"the loss is non-finite from finite model outputs: max |output| {absmax(out):.3g} ({dt})"]
    if out is not None and out.is_floating_point() and out.numel():
        o = out.detach()
        lo, hi = float(o[torch.isfinite(o)].min()), float(o[torch.isfinite(o)].max())
        if lo >= 0.0 and hi <= 1.0:
            zeros, ones = int((o == 0).sum()), int((o == 1).sum())
            if zeros or ones:
                parts.append(f"the output is a probability and {zeros} entries are exactly 0, {ones} exactly 1: "
                             f"log(0) = -inf")
    if stable is False:
        graph = ", ".join(dict.fromkeys(n.replace("Backward0", "").replace("Backward1", "")
                                        for n in loss_info.get("graph", [])[:12]))
        parts.insert(0, f"textbook {name} on probabilities (autograd graph of the loss: {graph}); exp overflows "
                        f"above 88.72 in float32 (11.09 in float16), and a probability of exactly 0 or 1 gives "
                        f"log(0)")
    return _event("loss", last, "loss", "; ".join(parts), 1, 1)


def locate_backward(trace: list[Entry], layers: list[LayerInfo], grad_out: dict[int, Any],
                    distributed: bool) -> dict | None:
    """The first non-finite gradient, in backward order: output gradients of the layers from the
    output down (the tensor hooks' dL/d(layer output)), then the parameter gradients."""
    order: list[Entry] = []
    seen: set[int] = set()
    for e in reversed(trace):  # the last call of each layer is the first one backward reaches
        if e.kind == 0 and e.layer not in seen:
            seen.add(e.layer)
            order.append(e)
    for n, e in enumerate(order):
        g = grad_out.get(e.layer)
        bad = n_bad(g)
        if not bad:
            continue
        info = layers[e.layer]
        if n == 0:
            return _event("backward", e.layer, "grad_output", f"the gradient of the finite loss w.r.t. the model "
                          f"output ({e.name}) is non-finite: the loss's backward produced it (largest finite "
                          f"|grad| {absmax(g):.3g}, |output| max {absmax(e.out):.3g}, {limit(g.dtype)})",
                          bad, _size(g), module=e.name)
        down = order[n - 1]
        dinfo = layers[down.layer]
        return _event("backward", e.layer, "grad_output",
                      f"gradient w.r.t. the output of layer {e.layer} ({e.name}) is non-finite while that of layer "
                      f"{down.layer} ({down.name}) is finite: produced in the backward from {down.name} to "
                      f"{e.name} ({down.name}'s weights, {e.name}'s {info.activation or 'linear'} activation, or an "
                      f"operation in forward() between them, e.g. sqrt or log at 0 inside torch.where): |grad| max "
                      f"{absmax(grad_out.get(down.layer)):.3g}, |W| max {absmax(dinfo.weight):.3g}, |z| max "
                      f"{absmax(e.out):.3g} ({limit(g.dtype)})",
                      bad, _size(g), module=e.name)
    for n, e in enumerate(order):
        info = layers[e.layer]
        for tensor, p in (("grad_weight", info.weight), ("grad_bias", info.bias)):
            g = getattr(p, "grad", None) if p is not None else None
            bad = n_bad(g)
            if not bad:
                continue
            gz = grad_out.get(e.layer)
            if gz is None and not distributed:  # output-gradient hooks ran only at sampled steps
                where = "the loss's backward" if n == 0 else \
                    f"the backward from {order[n - 1].name} to {e.name} (whose parameter gradients are finite)"
                return _event("backward", e.layer, tensor, f"{tensor.replace('_', ' ')} of layer {e.layer} "
                              f"({e.name}) is the first non-finite gradient, from the output down: produced in "
                              f"{where}, or in {e.name}'s x^T dz (|x| max {absmax(e.x):.3g}, |W| max "
                              f"{absmax(info.weight):.3g}, largest finite |grad| {absmax(g):.3g}, "
                              f"{limit(g.dtype)})", bad, _size(g), module=e.name)
            if distributed:
                return _event("backward", e.layer, tensor, f"{tensor.replace('_', ' ')} of layer {e.layer} "
                              f"({e.name}) is non-finite after the gradient all-reduce although this rank's "
                              f"gradients w.r.t. every layer output were finite: another rank sent it, or x^T dz "
                              f"overflowed (|dz| max {absmax(gz):.3g}, |x| max {absmax(e.x):.3g}, "
                              f"{limit(g.dtype)})", bad, _size(g), role="propagator", module=e.name)
            return _event("backward", e.layer, tensor, f"{tensor.replace('_', ' ')} of layer {e.layer} ({e.name}) "
                          f"non-finite from finite inputs and output gradients: |dz| max {absmax(gz):.3g}, |x| max "
                          f"{absmax(e.x):.3g}, |W| max {absmax(info.weight):.3g} ({limit(g.dtype)})",
                          bad, _size(g), module=e.name)
    for info in layers:  # layers that never ran in the traced forward (or no trace at all)
        for tensor, p in (("grad_weight", info.weight), ("grad_bias", info.bias)):
            bad = n_bad(getattr(p, "grad", None) if p is not None else None)
            if bad:
                return _event("backward", info.index, tensor, f"{tensor.replace('_', ' ')} of layer {info.index} "
                              f"({info.name}) is non-finite", bad, _size(p.grad),
                              role="propagator" if distributed else "producer", module=info.name)
    return None


def unlocated(grads_ok: bool) -> dict:
    """A step's loss or gradients went non-finite and no hooked tensor shows where."""
    return _event("backward" if not grads_ok else "loss", None, None,
                  "non-finite value (not found in the hooked modules' tensors)", 0, 0)


def locate_params(layers: list[LayerInfo], step: int) -> dict | None:
    """Parameters that an optimizer step made non-finite (checked when nothing else explains it)."""
    for info in layers:
        bad = n_bad(info.weight) + n_bad(info.bias)
        if bad:
            return _event("update", info.index, "weight", f"parameters of layer {info.index} ({info.name}) went "
                          f"non-finite in the optimizer step of step {step} (largest finite |W| "
                          f"{absmax(info.weight):.3g}, {limit(info.weight.dtype)})", bad,
                          _size(info.weight) + _size(info.bias), module=info.name)
    return None
