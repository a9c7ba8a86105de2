"""high_lr: updates overshoot; the loss oscillates, rises or diverges."""

import math

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Fix, Rule
from nandoctor.diagnose.helpers import config_fix, current_lr, g, round_lr, sane_deep_divergence

RATIO_HIGH = 0.03  # update/weight ratio; healthy SGD/Adam runs sit near 1e-3 to 1e-2
TARGET_RATIO = 3e-3
WEIGHT_GROWTH = 10.0
LAYER_GROWTH = 30.0  # first vs output layer gradient norm at the first step
OSCILLATION_RATIO = 0.05
GRAD_HUGE = 100.0  # global gradient norm at step 1; standard losses at init give O(1)
LR_SANE = 0.1
STALL_RATIO = 0.3


def check(f: Facts):
    ratios = [lf.update_ratio_max for lf in f.layers if math.isfinite(lf.update_ratio_max)]
    medians = [lf.update_ratio for lf in f.layers if math.isfinite(lf.update_ratio)]
    peak = max(ratios, default=math.nan)
    typical = max(medians, default=math.nan)
    growth = max((lf.weight_norm_final / lf.weight_norm_initial for lf in f.layers
                  if lf.weight_norm_initial and math.isfinite(lf.weight_norm_final)), default=math.nan)
    symptoms = []
    if f.diverged:
        symptoms.append(f"training diverged at step {(f.first_nonfinite or {}).get('step')}")
    if f.rising:
        symptoms.append(f"the loss rose from {g(f.initial_loss)} to {g(f.final_loss)}")
    if f.increase_share > 0.45 and not f.learned and peak > OSCILLATION_RATIO:
        symptoms.append(f"the loss rose on {f.increase_share:.0%} of steps (oscillation) without improving")
    elif not f.learned and not f.diverged and peak > STALL_RATIO:
        symptoms.append(f"the run stopped learning after updates {g(peak)} times the size of the weights")
    if f.spikes:
        symptoms.append(f"{f.spikes} loss spikes above 10x the running median")
    big_ratio = peak > RATIO_HIGH
    norms = [lf.grad_norm_initial for lf in f.layers]
    layered = len(norms) >= 3 and norms[-1] > 0 and norms[0] / norms[-1] > LAYER_GROWTH
    if layered and not f.layers[-1].update_ratio_initial > RATIO_HIGH:
        return None  # only the layers fed by exploding gradients overshoot: not the learning rate's fault
    if f.grad_norm_first > GRAD_HUGE and (current_lr(f) or 0) < LR_SANE:
        return None  # a sane rate times a gradient already huge at step 1: the gradient is the problem
    if sane_deep_divergence(f):
        return None  # a usual rate in a deep stack: exploding_gradients says why
    if not (big_ratio and symptoms) and not (f.diverged and growth > WEIGHT_GROWTH):
        return None
    evidence = []
    worst = max((lf for lf in f.layers if math.isfinite(lf.update_ratio_max)), key=lambda lf: lf.update_ratio_max,
                default=None)
    if worst is not None:
        evidence.append(f"update/weight ratio up to {g(peak)} in layer {worst.index} ({worst.path}), median "
                        f"{g(typical)} (healthy ~1e-3)")
    if math.isfinite(growth) and growth > WEIGHT_GROWTH:
        evidence.append(f"weight norms grew {g(growth)}x during training")
    evidence += symptoms
    lr = current_lr(f)
    fixes = []
    if lr is not None:
        measured = typical if math.isfinite(typical) and typical > 0 else peak
        factor = TARGET_RATIO / measured if math.isfinite(measured) and measured > 0 else 0.1
        new = round_lr(lr * min(max(factor, 1e-3), 0.3))
        why = f"brings the update/weight ratio from {g(measured)} to ~{g(TARGET_RATIO)}"
        fixes.append(config_fix(f, f"lower optimizer.lr from {g(lr)} to {g(new)} ({why})", {"optimizer.lr": new},
                                f"lower the optimizer's learning rate from {g(lr)} to {g(new)} ({why})"))
    else:
        fixes.append(Fix("lower the learning rate about 10x", None))
    score = 0.6 + 0.1 * min(math.log10(max(peak / RATIO_HIGH, 1.0)), 2.0) + (0.1 if f.diverged else 0.0)
    return RULE.finding("error" if f.failed or f.rising else "warning", score, evidence, fixes)


RULE = Rule(
    id="high_lr",
    title="Learning rate too high",
    what="Updates that are a large fraction of the weights they change (update/weight ratio >> 1e-3), "
         "with a loss that oscillates, rises or diverges.",
    why="A step much larger than the local curvature allows overshoots the minimum; each overshoot "
        "lands higher up the wall, weights and activations grow, and the run ends in Inf/NaN.",
    fix="Lower optimizer.lr until the update/weight ratio is ~1e-3; warm up the learning rate, or clip "
        "the gradient norm to survive rare large steps.",
    check=check,
    explains=("exploding_gradients", "dead_relu"),
)
