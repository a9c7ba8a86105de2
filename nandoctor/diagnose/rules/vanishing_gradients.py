"""vanishing_gradients: gradients shrink toward the input layers."""

import math

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Rule
from nandoctor.diagnose.helpers import config_fix, g, listing

SHRINK = 5e-3  # first-layer vs output-layer gradient norm


def check(f: Facts):
    if len(f.layers) < 3 or f.diverged:
        return None
    out = f.layers[-1].grad_norm
    if not (math.isfinite(out) and out > 0):
        return None
    low = [lf for lf in f.hidden if math.isfinite(lf.grad_norm) and lf.grad_norm / out < SHRINK]
    if not low:
        return None
    evidence = ["gradients shrink toward the input: " + ", ".join(
        f"layer {lf.index} |dW| {g(lf.grad_norm)}" for lf in low) + f" vs output layer {g(out)}"]
    if not f.learned:
        evidence.append(f"the run did not learn: loss {g(f.initial_loss)} -> {g(f.final_loss)}")
    patch = {f"{lf.path}.norm": "batch" for lf in f.hidden}
    fix = config_fix(f, listing("normalise the hidden layers", patch), patch,
                     "add batch norm to the hidden layers, or use ReLU with He init")
    worst = min(lf.grad_norm / out for lf in low)
    strength = min(math.log10(SHRINK / max(worst, 1e-30)), 3.0) / 3.0  # 0 at 1e-3, 1 at 1e-6 and below
    return RULE.finding("error" if f.failed else "warning", (0.5 + 0.25 * strength) if f.failed else 0.25,
                        evidence, [fix])


RULE = Rule(
    id="vanishing_gradients",
    title="Vanishing gradients",
    what="Gradient norms that shrink from the output layer toward the input, with no more specific cause.",
    why="Each layer multiplies the backward signal by its weights and derivatives; factors below 1 "
        "compound with depth, so the first layers stop learning while the last ones fit noise.",
    fix="Normalise activations (batch norm), use ReLU-family activations with He init, or make the "
        "network shallower.",
    check=check,
)
