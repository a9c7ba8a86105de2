"""nan_in_data: NaN or Inf in what the network is fed."""

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Rule
from nandoctor.diagnose.helpers import config_fix


def check(f: Facts):
    feats = f.run.profile.get("features") or []
    bad = [(x["name"], x["nonfinite"]) for x in feats if x.get("nonfinite")]
    target_bad = int((f.run.profile.get("target") or {}).get("nonfinite") or 0)
    fn = f.first_nonfinite or {}
    data_event = fn.get("phase") == "data" and "non-finite" in str(fn.get("detail", ""))
    if not (f.input_nonfinite or target_bad or data_event):
        return None
    evidence = []
    if f.input_nonfinite:
        names = ", ".join(f"{n} ({k})" for n, k in bad[:6]) + (" ..." if len(bad) > 6 else "")
        evidence.append(f"{f.input_nonfinite} non-finite input values reach the network, in {len(bad)} of "
                        f"{len(feats)} features: {names}")
    if target_bad:
        evidence.append(f"{target_bad} non-finite target values")
    if data_event:
        evidence.append(f"step {fn.get('step')}, phase data: {fn.get('detail')}")
    loss_ok = f.run.steps["ok"]
    if loss_ok.size and not loss_ok.all():
        first = int(f.run.steps["step"][~loss_ok][0])
        evidence.append(f"the loss is non-finite from step {first}: one NaN input makes its whole batch NaN")
    fixes = [config_fix(f, "impute missing values with the training-split mean: data.impute: mean",
                        {"data.impute": "mean"}, "replace NaN/Inf in the inputs before training (the column mean)"),
             config_fix(f, "or drop incomplete rows: data.impute: drop", {"data.impute": "drop"},
                        "or drop rows holding NaN/Inf")]
    return RULE.finding("error", 1.0, evidence, fixes)


RULE = Rule(
    id="nan_in_data",
    title="Non-finite values in the data",
    what="NaN or Inf among the input features or targets that reach the network.",
    why="Any arithmetic with NaN gives NaN: the first batch holding one produces a NaN loss, NaN "
        "gradients, and NaN weights after the update; training cannot recover.",
    fix="Impute missing values (data.impute: mean | median) or drop incomplete rows (data.impute: drop); "
        "find where the NaN come from (empty CSV cells, division by zero in feature engineering).",
    check=check,
    explains=("unscaled_data", "bad_init", "saturating_activation", "dead_relu", "high_lr", "low_lr",
              "sum_reduction", "unstable_loss", "output_mismatch", "low_precision", "exploding_gradients",
              "vanishing_gradients"),
)
