"""sum_reduction: loss summed over the batch, so the step size grows with the batch."""

import math

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Fix, Rule
from nandoctor.diagnose.helpers import config_fix, current_lr, g, loss_spec


def check(f: Facts):
    if loss_spec(f)[2] != "sum":
        return None
    batch = int(f.run.meta.get("batch_size") or 1)
    if batch <= 1:
        return None
    ratio = max((lf.update_ratio_max for lf in f.layers if lf.update_ratio_max == lf.update_ratio_max),
                default=float("nan"))
    lr = current_lr(f)
    effective = f" (effective lr {g(lr * batch)})" if lr is not None else ""
    evidence = [f"loss.reduction is sum over batches of {batch}: gradients, and so every update, are {batch}x "
                f"what the mean gives at the same learning rate{effective}"]
    if ratio == ratio:
        evidence.append(f"largest update/weight ratio {g(ratio)} (healthy ~1e-3)")
    if f.diverged:
        evidence.append(f"training diverged at step {(f.first_nonfinite or {}).get('step')}")
    if f.failed:  # the step is `batch` times too large: the larger the batch, the surer the cause
        return RULE.finding("error", min(0.7 + 0.1 * math.log10(batch) + 0.1, 0.99), evidence, [_fix(f)])
    return RULE.finding("info", 0.2, evidence, [_fix(f)])


def _fix(f: Facts) -> Fix:
    return config_fix(f, "average the loss over the batch: loss.reduction: mean", {"loss.reduction": "mean"},
                      "average the loss over the batch (reduction='mean'), or divide the learning rate by the "
                      "batch size")


RULE = Rule(
    id="sum_reduction",
    title="Loss summed over the batch",
    what="The loss (and its gradient) is the sum over the batch instead of the mean.",
    why="The gradient then grows with the batch size: a learning rate that suits the mean is batch-size "
        "times too large, so updates overshoot and training oscillates or diverges; changing the batch "
        "size silently changes the step.",
    fix="Average over the batch (loss.reduction: mean), or divide the learning rate by the batch size.",
    check=check,
    explains=("high_lr", "exploding_gradients", "dead_relu"),
)
