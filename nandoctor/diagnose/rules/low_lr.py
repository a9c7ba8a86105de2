"""low_lr: updates negligible against the weights; the loss barely moves."""

import math

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Fix, Rule
from nandoctor.diagnose.helpers import config_fix, current_lr, g, round_lr

RATIO_LOW = 1e-4
RATIO_ONCE_LARGE = 1e-2
GRAD_ZERO = 1e-12
TARGET_RATIO = 1e-3


def check(f: Facts):
    if f.diverged or f.learned:
        return None
    medians = [lf.update_ratio for lf in f.layers if math.isfinite(lf.update_ratio)]
    if not medians:
        return None
    typical = max(medians)
    peak = max((lf.update_ratio_max for lf in f.layers if math.isfinite(lf.update_ratio_max)), default=0.0)
    if typical >= RATIO_LOW or peak > RATIO_ONCE_LARGE:
        return None  # steps were not small (or once were large: a high rate that then stopped learning)
    out = f.layers[-1]
    if not (out.grad_norm > GRAD_ZERO) or any(lf.dead > 0.5 for lf in f.hidden if lf.dead == lf.dead):
        return None  # zero gradients (dead units, a zero-gradient output) are not fixed by a larger rate
    evidence = [f"update/weight ratio at most {g(typical)} in every layer (healthy ~1e-3): steps are too small "
                f"to move the weights",
                f"the loss went from {g(f.initial_loss)} to {g(f.final_loss)} in {f.steps} steps"]
    if math.isfinite(f.chance_loss):
        evidence.append(f"chance level is {g(f.chance_loss)}")
    lr = current_lr(f)
    fixes = []
    if lr is not None:
        new = round_lr(lr * min(TARGET_RATIO / max(typical, 1e-12), 1000.0))
        fixes.append(config_fix(f, f"raise optimizer.lr from {g(lr)} to {g(new)}", {"optimizer.lr": new},
                                f"raise the optimizer's learning rate from {g(lr)} to {g(new)}"))
    else:
        fixes.append(Fix("raise the learning rate about 10x", None))
    score = 0.7 + 0.1 * min(math.log10(RATIO_LOW / max(typical, 1e-12)), 2.0)
    return RULE.finding("error", score, evidence, fixes)


RULE = Rule(
    id="low_lr",
    title="Learning rate too low",
    what="Updates so small against the weights (update/weight ratio << 1e-3) that the loss barely moves.",
    why="Training is not broken, it is just not going anywhere: at this rate it needs orders of "
        "magnitude more steps than it was given.",
    fix="Raise optimizer.lr until the update/weight ratio is ~1e-3, or use an adaptive optimizer (adam).",
    check=check,
)
