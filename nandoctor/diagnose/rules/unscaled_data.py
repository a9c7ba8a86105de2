"""unscaled_data: inputs on large or very unequal scales."""

import math

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Rule
from nandoctor.diagnose.helpers import config_fix, g, pct

ABS_MAX = 50.0  # standardized data rarely exceeds |x| ~ 6; min-max data stays within 1
STD_MAX = 10.0
STD_RATIO = 1000.0
EXTREME = 20.0  # so far out of scale that it is an error even when the run still learned something
PRE_STD = 10.0  # first-layer pre-activation std at init; ~1 for a well-scaled input and init


def check(f: Facts):
    big = f.input_abs_max > ABS_MAX or f.input_std_max > STD_MAX
    unequal = f.input_std_ratio > STD_RATIO and f.input_std_max > 3
    if not (big or unequal):
        return None
    first = f.layers[0] if f.layers else None
    evidence = [f"inputs reach the network unscaled: largest |x| {g(f.input_abs_max)}, feature std up to "
                f"{g(f.input_std_max)}, ratio of largest to smallest std {g(f.input_std_ratio)} "
                f"(standardized: |x| < ~5, std 1)"]
    harm = 0.0
    if first is not None and f.input_std_max > 0:
        if first.pre_std_initial > PRE_STD:
            evidence.append(f"layer 0 ({first.path}) pre-activation std {g(first.pre_std_initial)} at step 0 "
                            f"(healthy ~1)")
            harm += 0.15
        if first.saturated_early > 0.3:
            evidence.append(f"{pct(first.saturated_early)} of layer 0 {first.activation} units saturated at step 0")
            harm += 0.1
    fn = f.first_nonfinite or {}
    if fn.get("phase") == "forward" and fn.get("layer") == 0:
        evidence.append(f"the first non-finite value was born in layer 0 at step {fn.get('step')}: {fn.get('detail')}")
        harm += 0.1
    if f.failed:
        harm += 0.1
    scale = max(f.input_abs_max / ABS_MAX if big else 0, f.input_std_ratio / STD_RATIO if unequal else 0, 1.0)
    score = min(0.55 + 0.1 * min(math.log10(scale), 2.0) + min(harm, 0.2), 0.95)
    fix = config_fix(f, "standardize the inputs (statistics of the training split): data.preprocess: standardize",
                     {"data.preprocess": "standardize"}, "standardize the inputs: (x - mean) / std per feature")
    extreme = f.input_abs_max > EXTREME * ABS_MAX or (unequal and f.input_std_ratio > EXTREME * STD_RATIO)
    severity = "error" if f.failed or extreme else "warning"
    return RULE.finding(severity, score, evidence, [fix])


RULE = Rule(
    id="unscaled_data",
    title="Input features on large or unequal scales",
    what="Input features whose magnitude is far from ~1, or whose scales differ by orders of magnitude.",
    why="The first layer's pre-activations scale with the inputs: large inputs saturate sigmoid/tanh "
        "units, blow up ReLU activations and gradients, and make one learning rate wrong for every "
        "feature at once.",
    fix="Standardize the features (data.preprocess: standardize) or scale them to [0, 1] "
        "(data.preprocess: minmax), with statistics from the training split.",
    check=check,
    explains=("saturating_activation", "exploding_gradients", "vanishing_gradients", "high_lr", "dead_relu",
              "bad_init"),
)
