"""dead_relu: ReLU units that output zero for every input."""

import math

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Rule
from nandoctor.diagnose.helpers import config_fix, listing, pct

DEAD = 0.5  # share of a layer's units dead on the whole training set


def check(f: Facts):
    relus = [lf for lf in f.hidden if lf.activation == "relu"]
    dead = [lf for lf in relus if (math.isfinite(lf.dead) and lf.dead > DEAD) or lf.zero > 0.97]
    if not dead:
        return None
    evidence = [f"layer {lf.index} ({lf.path}): {pct(lf.dead)} of {lf.fan_out} units output 0 for every "
                f"training sample, {pct(lf.zero)} of all outputs are exactly 0" for lf in dead]
    patch = {}
    for lf in dead:
        patch[f"{lf.path}.activation"] = "leaky_relu"
        patch[f"{lf.path}.init"] = "he_normal"
    cfg = f.cfg
    if cfg is not None:
        for lf in dead:
            bias = cfg.model.layers[lf.index].bias_init
            if bias is not None and bias < 0:
                evidence.append(f"layer {lf.index} starts with negative biases ({bias}): units begin switched off")
                patch[f"{lf.path}.bias_init"] = 0.0
    worst = max(_num(lf.dead) for lf in dead)
    fix = config_fix(f, listing("keep a gradient for negative inputs", patch),
                     patch, "use LeakyReLU, He init and zero biases in the dead layers")
    return RULE.finding("error" if f.failed else "warning", 0.55 + 0.3 * worst + (0.1 if f.failed else 0.0),
                        evidence, [fix])


def _num(x: float) -> float:
    return x if math.isfinite(x) else 0.0


RULE = Rule(
    id="dead_relu",
    title="Dead ReLU units",
    what="ReLU units whose pre-activation is negative for every training sample, so they output 0.",
    why="A dead unit has zero gradient, so nothing can revive it; a large update (high learning rate) "
        "or negative biases kill units, and a layer of dead units blocks every gradient below it.",
    fix="Use LeakyReLU/ELU, He init with zero biases, and a learning rate that does not throw "
        "pre-activations far negative.",
    check=check,
    explains=("vanishing_gradients",),
)
