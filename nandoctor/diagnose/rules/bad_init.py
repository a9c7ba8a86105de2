"""bad_init: initial weight scale wrong for the fan-in and activation, or symmetric."""

import math

from nandoctor.diagnose.facts import Facts, LayerFacts
from nandoctor.diagnose.finding import Rule
from nandoctor.diagnose.helpers import RELU_LIKE, config_fix, g, listing, matching_init

TOO_LARGE = 4.0  # x the std that keeps activations at unit scale
TOO_SMALL = 0.2
PER_LAYER_GROWTH = 1.8  # geometric-mean growth of the activation std per hidden layer at init: each
#                        layer nearly doubling the signal is the init's fault; milder growth that only
#                        compounds over many layers is left to exploding_gradients


def expected_std(lf: LayerFacts) -> float:
    """He for ReLU-like units (sqrt(2/fan_in)), LeCun otherwise (sqrt(1/fan_in))."""
    return math.sqrt((2.0 if lf.activation in RELU_LIKE else 1.0) / lf.fan_in)


def accepted_range(lf: LayerFacts) -> tuple[float, float]:
    """The stds the standard schemes give this layer (Glorot, LeCun, He): anything between them is a
    reasonable choice; only a scale well outside all of them is a bad init."""
    stds = (math.sqrt(2.0 / (lf.fan_in + lf.fan_out)), math.sqrt(1.0 / lf.fan_in), math.sqrt(2.0 / lf.fan_in))
    return min(stds), max(stds)


def check(f: Facts):
    evidence, off = [], []
    for lf in f.layers:
        if not math.isfinite(lf.init_std):
            continue
        want = expected_std(lf)
        q = lf.init_std / want
        lo, hi = accepted_range(lf)
        if lf.init_std == 0 or lf.init in ("constant", "zeros"):
            if lf.fan_out > 1:
                evidence.append(f"layer {lf.index} ({lf.path}) starts with all weights equal ({lf.init}): its "
                                f"{lf.fan_out} units compute the same thing and get the same update forever")
                off.append(lf)
        elif lf.init_std > TOO_LARGE * hi or (lf.init_std < TOO_SMALL * lo and len(f.layers) > 2):
            evidence.append(f"layer {lf.index} ({lf.path}) initial weight std {g(lf.init_std)} is {g(q)}x the "
                            f"{g(want)} that suits fan-in {lf.fan_in} and {lf.activation}")
            off.append(lf)
    hidden = [lf for lf in f.layers if lf.hidden and math.isfinite(lf.act_std_initial)]
    harm = 0.0
    if len(hidden) >= 2:
        first, last = hidden[0].act_std_initial, hidden[-1].act_std_initial
        drift = None
        dead = any(lf.zero > 0.9 for lf in hidden)  # zeros from dead ReLUs are dead_relu's, not a scale
        if (last < 1e-3 * max(first, 1e-30) or last < 1e-4) and not dead:
            drift = "shrink"
        elif last > 10 * max(first, 1e-30) and (last / first) ** (1 / (len(hidden) - 1)) > PER_LAYER_GROWTH:
            drift = "grow"
        if drift:
            evidence.append(f"at step 0 activations {drift} from std {g(first)} in layer {hidden[0].index} to "
                            f"{g(last)} in layer {hidden[-1].index}: the init scale compounds over depth")
            harm += 0.15
            if not off:  # each layer only a little off, but it compounds: flag the off-scale layers
                off = [lf for lf in f.layers if math.isfinite(lf.init_std) and
                       abs(math.log(max(lf.init_std, 1e-30) / expected_std(lf))) > math.log(1.25)]
    if not off:
        return None
    sat = [lf for lf in off if lf.saturated_early > 0.5]
    if sat:
        evidence.append("saturated at step 0: " + ", ".join(f"layer {lf.index} {lf.saturated_early:.0%}" for lf in sat))
        harm += 0.1
    if f.failed:
        harm += 0.1
    patch = {f"{lf.path}.init": matching_init(lf.activation) for lf in off}
    fix = config_fix(f, listing("initialise for the activation", patch), patch,
                     "use He init for ReLU layers and Glorot/LeCun for tanh/sigmoid")
    severity = "error" if f.failed else ("warning" if harm else "info")
    return RULE.finding(severity, 0.55 + harm + (0.1 if len(off) > 1 else 0), evidence, [fix])


RULE = Rule(
    id="bad_init",
    title="Bad weight initialisation",
    what="Initial weights whose scale does not fit the layer's fan-in and activation (too large or too "
         "small), or that are all equal (constant, zeros).",
    why="Each layer multiplies the activation scale by about std(W) * sqrt(fan_in): a little off per "
        "layer compounds with depth, so signals and gradients vanish or explode before training starts; "
        "equal weights never break symmetry.",
    fix="He init (he_normal) for ReLU-like layers, Glorot (glorot_uniform) or LeCun for tanh/sigmoid; "
        "never constant weights.",
    check=check,
    explains=("saturating_activation", "vanishing_gradients", "exploding_gradients", "dead_relu"),
)
