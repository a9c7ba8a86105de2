"""low_precision: float16 overflow above 65504 or updates rounded away."""

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Rule
from nandoctor.diagnose.helpers import config_fix, g

F16_MAX = 65504.0
F16_EPS = 2.0**-11  # half the spacing at 1.0: smaller relative updates round away


def check(f: Facts):
    if "float16" not in (str(f.run.meta.get("dtype")), str(f.run.meta.get("compute_dtype"))):
        return None
    fn = f.first_nonfinite or {}
    detail = str(fn.get("detail", ""))
    evidence, score = [], 0.0
    if fn and ("float16" in detail or "overflow" in detail):
        evidence.append(f"first non-finite value at step {fn.get('step')}, phase {fn.get('phase')}, layer "
                        f"{fn.get('layer')}, {fn.get('tensor')}: {detail}")
        score = 0.93
    big = [lf for lf in f.layers if lf.pre_abs_max > F16_MAX / 8]
    if big:
        evidence.append("pre-activations near the float16 limit of 65504: " +
                        ", ".join(f"layer {lf.index} |z| max {g(lf.pre_abs_max)}" for lf in big))
        score = max(score, 0.85 if f.diverged else 0.4)
    tiny = [lf for lf in f.layers if lf.update_ratio < F16_EPS]
    if not f.learned and tiny:
        evidence.append("updates smaller than float16 can represent next to the weights (relative spacing "
                        f"{F16_EPS:.2g}): " + ", ".join(f"layer {lf.index} update/weight {g(lf.update_ratio)}"
                                                      for lf in tiny))
        score = max(score, 0.8)
    if not evidence:
        return None
    if f.diverged and score < 0.9:
        evidence.append("training in float16 diverged; float32 has 10^34 times the range")
        score = max(score, 0.7)
    fix = config_fix(f, "train in float32: training.dtype: float32", {"training.dtype": "float32"},
                     "train in float32, or use mixed precision with loss scaling")
    return RULE.finding("error" if f.failed else "warning", score, evidence, [fix])


RULE = Rule(
    id="low_precision",
    title="float16 overflow or underflow",
    what="Training in pure float16: values beyond 65504 become Inf, and updates smaller than ~1/2048 "
         "of a weight round away to nothing.",
    why="Without loss scaling and float32 master weights, a float16 network overflows on moderately "
        "large activations or losses, and small learning-rate steps are silently lost, so training "
        "diverges or stalls where float32 would be fine.",
    fix="Train in float32 (training.dtype: float32); if half precision is required, keep float32 "
        "master weights and scale the loss.",
    check=check,
    explains=("exploding_gradients", "unstable_loss", "high_lr", "vanishing_gradients", "low_lr"),
)
