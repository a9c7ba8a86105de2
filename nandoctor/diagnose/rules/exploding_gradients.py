"""exploding_gradients: gradients grow layer over layer or step over step."""

import math

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Rule
from nandoctor.diagnose.helpers import config_fix, g, sane_deep_divergence

GROWTH = 100.0  # late vs early global gradient norm
GRAD_HUGE = 100.0  # the same line high_lr defers at
LAYER_GROWTH = 30.0  # first vs output layer gradient norm (the same line high_lr defers at)


def check(f: Facts):
    evidence = []
    fn = f.first_nonfinite or {}
    if fn.get("phase") in ("backward", "update"):
        evidence.append(f"the first non-finite value appeared in the {fn['phase']} pass at step {fn.get('step')}, "
                        f"layer {fn.get('layer')} ({fn.get('tensor')}): {fn.get('detail')}")
    if f.grad_growth > GROWTH:
        evidence.append(f"the global gradient norm grew {g(f.grad_growth)}x from the first to the last quarter "
                        f"of training")
    specific = 0.0
    for label, norms in (("at the first step", [lf.grad_norm_initial for lf in f.layers]),
                         ("during training", [lf.grad_norm for lf in f.layers])):
        if len(norms) >= 3 and all(math.isfinite(x) and x > 0 for x in norms) and norms[0] / norms[-1] > LAYER_GROWTH:
            evidence.append(f"gradients grow toward the input {label}: |dW| {g(norms[0])} in layer 0 vs "
                            f"{g(norms[-1])} in the output layer ({g(norms[0] / norms[-1])}x over {len(norms)} layers)")
            specific = 0.3
            break
    if f.grad_norm_first > GRAD_HUGE and not specific:
        evidence.append(f"the gradient norm is already {g(f.grad_norm_first)} at step 1 (standard losses at "
                        f"initialisation give O(1))")
        specific = 0.3
    if sane_deep_divergence(f) and not specific:
        evidence.append(f"a {len(f.layers)}-layer network diverged at a learning rate inside the usual range "
                        f"({f.cfg.optimizer.name} lr {g(f.cfg.optimizer.lr)}): the gradients, not the rate, blew up")
        specific = 0.3
    if not evidence and not f.diverged:
        return None
    if not evidence:
        evidence.append(f"training diverged at step {fn.get('step')} (phase {fn.get('phase')})")
    fix = config_fix(f, "clip the global gradient norm: optimizer.clip_norm: 1.0", {"optimizer.clip_norm": 1.0},
                     "clip the gradient norm (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))")
    failed = f.failed or f.diverged
    return RULE.finding("error" if failed else "warning", (0.45 if failed else 0.25) + specific, evidence, [fix])


RULE = Rule(
    id="exploding_gradients",
    title="Exploding gradients",
    what="Gradient norms that grow from layer to layer toward the input, or from step to step, until "
         "they overflow, with no more specific cause.",
    why="Backpropagation multiplies by every layer's weights and derivatives: factors above 1 compound "
        "exponentially with depth and time, so one step can throw the weights anywhere.",
    fix="Clip the global gradient norm (optimizer.clip_norm), lower the learning rate, use a "
        "scale-preserving init, or add batch norm.",
    check=check,
)
