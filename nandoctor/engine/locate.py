"""Find where the first non-finite value of a step was born, from the buffers the step left behind.

The cheap per-step checks (loss, global norms) only say *that* something went non-finite; this scan
runs once, on the failing step, in execution order: forward layer by layer, the loss, backward from
the output down, then the update. The first non-finite tensor whose inputs were finite is the
producer; the magnitudes of those inputs explain it (overflow, log(0), 0 * inf).
"""

from __future__ import annotations

import numpy as np

from nandoctor.engine.model import MLP


def absmax(x: np.ndarray | None) -> float:
    """Largest finite magnitude (0.0 for an empty or all-non-finite array)."""
    if x is None or x.size == 0:
        return 0.0
    finite = x[np.isfinite(x)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def n_bad(x: np.ndarray | None) -> int:
    return 0 if x is None else int(x.size - np.count_nonzero(np.isfinite(x)))


def _event(phase, layer, tensor, detail, bad, size, role="producer"):
    return {"phase": phase, "layer": layer, "tensor": tensor, "role": role, "detail": detail,
            "count": bad, "size": size}


def _limit(dtype) -> str:
    return f"{np.finfo(dtype).max:.4g}"


def locate(model: MLP, loss_name: str, stable: bool, phase_hint: str,
           update: np.ndarray | None = None) -> dict:
    """The producer of the step's first non-finite value; `phase_hint` says which check fired."""
    lim = _limit(model.dtype)
    for layer in model.layers:
        s, i = layer.buf, layer.index
        if n_bad(s.x):
            role = "producer" if i == 0 else "propagator"
            return _event("forward", i, "input", f"non-finite input to layer {i}", n_bad(s.x), s.x.size, role)
        if n_bad(layer.W) or n_bad(layer.b):
            return _event("forward", i, "weight", f"parameters of layer {i} are non-finite",
                          n_bad(layer.W) + n_bad(layer.b), layer.W.size + layer.b.size, "propagator")
        tensors = [("pre_activation", s.lin)]
        if layer.batch_norm:
            tensors.append(("batch_norm", s.z))
        if not (i == len(model.layers) - 1 and phase_hint == "loss"):
            tensors += [("activation", s.a), ("output", s.out)]
        for name, arr in tensors:
            bad = n_bad(arr)
            if bad:
                detail = (f"{name.replace('_', '-')} overflow in layer {i}: |W| max {absmax(layer.W):.3g}, "
                          f"|x| max {absmax(s.x):.3g}, |b| max {absmax(layer.b):.3g}, "
                          f"largest finite |value| {absmax(arr):.3g} ({model.dtype} max {lim})")
                if name == "activation":
                    detail = (f"{layer.act.name} produced non-finite output in layer {i} from finite input: "
                              f"|z| max {absmax(s.z):.3g} ({model.dtype} max {lim})")
                return _event("forward", i, name, detail, bad, arr.size)
    last = model.layers[-1]
    if phase_hint == "loss":
        z = last.buf.z
        zmax = absmax(z)
        if loss_name in ("cross_entropy", "binary_cross_entropy") and not stable:
            detail = (f"textbook {loss_name} on probabilities: max |logit| {zmax:.3g}; "
                      f"exp overflows above {np.log(np.finfo(model.dtype).max):.4g}, "
                      f"and a probability of exactly 0 or 1 gives log(0)")
        else:
            detail = f"loss is non-finite from finite outputs: max |output| {absmax(last.buf.a):.3g}, " \
                      f"max |logit| {zmax:.3g} ({model.dtype} max {lim})"
        return _event("loss", len(model.layers) - 1, "loss", detail, 1, 1)
    for layer in reversed(model.layers):
        s, i = layer.buf, layer.index
        for name, arr in (("grad_output", getattr(s, "dout", None)), ("grad_pre_activation", s.dz_used),
                          ("grad_weight", layer.dW), ("grad_bias", layer.db)):
            bad = n_bad(arr)
            if bad:
                detail = (f"{name.replace('_', ' ')} of layer {i} non-finite: |dz| max {absmax(s.dz_used):.3g}, "
                          f"|x| max {absmax(s.x):.3g}, |W| max {absmax(layer.W):.3g} ({model.dtype} max {lim})")
                return _event("backward", i, name, detail, bad, arr.size)
    if update is not None:
        for layer, spans in zip(model.layers, model.slices, strict=True):
            u, p = update[spans["W"]], model.params[spans["W"]]
            if n_bad(u) or n_bad(p):
                tensor, arr = ("update", u) if n_bad(u) else ("weight", p)
                detail = (f"{tensor} of layer {layer.index} non-finite: |grad| max {absmax(layer.dW):.3g}, "
                          f"|W| max {absmax(p):.3g}, |update| max {absmax(u):.3g} ({model.dtype} max {lim})")
                return _event("update", layer.index, tensor, detail, n_bad(arr), arr.size)
        for layer, spans in zip(model.layers, model.slices, strict=True):
            for key, sl in spans.items():
                if n_bad(update[sl]) or n_bad(model.params[sl]) or n_bad(model.params[sl] + update[sl]):
                    return _event("update", layer.index, key, f"parameter {key} of layer {layer.index} "
                                  f"went non-finite", n_bad(model.params[sl]), sl.stop - sl.start)
    return _event(phase_hint, None, None, "non-finite value (not found in the step's buffers)", 0, 0)
