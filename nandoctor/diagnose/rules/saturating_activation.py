"""saturating_activation: sigmoid/tanh units pinned at their limits."""

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Rule
from nandoctor.diagnose.helpers import config_fix, g, hidden_activation_patch, listing, pct

SATURATED = 0.5  # share of a layer's outputs within 1 % of the limits
GRAD_SHRINK = 5e-2  # first-layer vs last-layer gradient norm in a deep sigmoid/tanh stack
PARTLY = 0.1  # a tanh layer must be partly saturated for its vanishing gradient to count here (a sigmoid's
#              slope is at most 1/4 anywhere, so a sigmoid stack always squashes the backward signal)


def check(f: Facts):
    squashing = [lf for lf in f.hidden if lf.activation in ("sigmoid", "tanh")]
    if not squashing:
        return None
    pinned = [lf for lf in squashing if max(lf.saturated, lf.saturated_early, key=_num) > SATURATED]
    evidence = [f"layer {lf.index} ({lf.path}, {lf.activation}): {pct(lf.saturated)} of outputs saturated "
                f"during training, {pct(lf.saturated_early)} at step 0 (healthy < ~10 %)" for lf in pinned]
    out = f.layers[-1]
    shrink = [lf for lf in squashing if out.grad_norm > 0 and lf.grad_norm / out.grad_norm < GRAD_SHRINK
              and (lf.activation == "sigmoid" or max(lf.saturated, lf.saturated_early, key=_num) > PARTLY)]
    if shrink and len(squashing) >= 2:
        evidence.append("gradients vanish through the squashing stack: " + ", ".join(
            f"layer {lf.index} |dW| {g(lf.grad_norm)}" for lf in shrink) + f" vs output layer {g(out.grad_norm)}")
    if not pinned and not (shrink and len(squashing) >= 2 and f.failed):
        return None
    if f.failed:
        evidence.append(f"the loss went from {g(f.initial_loss)} to {g(f.final_loss)}"
                        + (f" and diverged at step {(f.first_nonfinite or {}).get('step')}" if f.diverged else ""))
    patch = hidden_activation_patch(f.layers, "relu")
    fix = config_fix(f, listing("use ReLU with He init in the hidden layers", patch), patch,
                     "use ReLU (with He init) in the hidden layers")
    score = 0.6 + 0.2 * max([_num(lf.saturated) for lf in pinned] or [0.0]) + (0.1 if f.failed else 0.0)
    return RULE.finding("error" if f.failed else "warning", score, evidence, [fix])


def _num(x: float) -> float:
    return x if x == x else 0.0


RULE = Rule(
    id="saturating_activation",
    title="Saturating sigmoid/tanh units",
    what="Hidden sigmoid or tanh units whose outputs sit within 1 % of their limits for most inputs.",
    why="In the flat tails the derivative is below 0.01 (sigmoid's is at most 0.25 anywhere), so the "
        "gradient reaching earlier layers is multiplied by tiny factors layer after layer and learning "
        "stops; large pre-activations (unscaled inputs, large init) push units there.",
    fix="Use ReLU-family activations with He init in hidden layers, keep pre-activations near unit "
        "scale (standardized inputs, Glorot init for tanh), or add batch norm.",
    check=check,
    explains=("vanishing_gradients",),
)
