"""unstable_loss: the textbook loss on probabilities hits log(0) or exp overflow."""

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Rule
from nandoctor.diagnose.helpers import config_fix, g, loss_spec


def check(f: Facts):
    name, stable, _ = loss_spec(f)
    if stable is not False or name not in ("cross_entropy", "binary_cross_entropy"):
        return None
    what = (f"loss.stable is false: {name} is the textbook formula on probabilities" if f.cfg is not None else
            f"the loss is the textbook {name} on probabilities (log of a softmax/sigmoid output, read from "
            f"the autograd graph)")
    fn = f.first_nonfinite or {}
    fix = config_fix(f, "compute the loss from the logits: loss.stable: true", {"loss.stable": True},
                     "use the fused loss on logits (log-softmax / BCE-with-logits) instead of log(p)")
    if fn.get("phase") == "loss":
        evidence = [f"the loss went non-finite at step {fn.get('step')} (epoch {fn.get('epoch')}) while every "
                    f"forward value was finite: {fn.get('detail')}",
                    what]
        before = f.run.steps["loss"][: max(0, int(fn.get("step", 1)) - 1)]
        finite = before[before == before]
        if finite.size > 1:
            evidence.append(f"until then the loss fell from {g(finite[0])} to {g(finite[-1])}: nothing else was wrong")
        return RULE.finding("error", 0.95, evidence, [fix])
    if f.diverged:
        return RULE.finding("warning", 0.3, [f"{what}, and the run diverged at step {fn.get('step')} "
                                              f"(first non-finite in phase {fn.get('phase')})"], [fix])
    return RULE.finding("info", 0.1, [f"{what}: log(0) or exp overflow can appear once the network "
                                      "becomes confident"], [fix])


RULE = Rule(
    id="unstable_loss",
    title="Numerically unstable loss",
    what="The loss is computed as the textbook formula on probabilities: softmax without the max "
         "shift, then log p; or sigmoid, then log p and log(1 - p).",
    why="Once the network is confident, a probability rounds to exactly 0 or 1 (float32 below ~1e-45, "
        "sigmoid(z) == 1 for z > ~17) and log(0) = -inf; exp of a large logit overflows to inf and "
        "inf/inf = NaN. The loss falls nicely for a while, then turns NaN.",
    fix="Compute the loss from the logits with the log-sum-exp trick (loss.stable: true): "
        "log-softmax for cross-entropy, BCE-with-logits for binary cross-entropy.",
    check=check,
    explains=("exploding_gradients", "high_lr"),
)
