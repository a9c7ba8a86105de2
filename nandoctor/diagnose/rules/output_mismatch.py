"""output_mismatch: output activation, loss and targets that do not fit together."""

from nandoctor.diagnose.facts import Facts
from nandoctor.diagnose.finding import Fix, Rule
from nandoctor.diagnose.helpers import config_fix, listing, loss_spec

STRUCTURAL = 0.9


def _problems(f: Facts) -> list[tuple[str, dict, float]]:
    """(evidence, patch, weight) for every mismatch found."""
    out = f.layers[-1] if f.layers else None
    loss = loss_spec(f)[0]
    if out is None or loss not in ("cross_entropy", "binary_cross_entropy", "mse", "mae", "huber"):
        return []
    last = f"model.layers.{out.index}"
    act, units, n_classes = out.activation, out.fan_out, f.n_classes
    found = []
    if f.task == "classification" and n_classes:
        if loss == "cross_entropy" and units < n_classes:
            found.append((f"{n_classes} classes but the output layer has {units} units: labels "
                          f"{units}..{n_classes - 1} are out of range", {f"{last}.units": n_classes}, 1.0))
        if loss == "cross_entropy" and act != "softmax":
            found.append((f"cross_entropy reads the {act} output as probabilities (expects softmax)",
                          {f"{last}.activation": "softmax"}, 0.9))
        if loss == "binary_cross_entropy" and act != "sigmoid":
            found.append((f"binary_cross_entropy reads the {act} output as probabilities (expects sigmoid)",
                          {f"{last}.activation": "sigmoid"}, 0.9))
        if loss == "binary_cross_entropy" and n_classes > 2 and units == 1:
            found.append((f"binary_cross_entropy with one output unit on {n_classes} classes",
                          {"loss.name": "cross_entropy", f"{last}.activation": "softmax",
                           f"{last}.units": n_classes}, 1.0))
        if loss in ("mse", "mae", "huber") and n_classes > 2 and act in ("sigmoid", "softmax"):
            found.append((f"{act} output with {loss} on {n_classes} classes: the gradient vanishes when the "
                          f"output saturates and the loss does not model class probabilities",
                          {"loss.name": "cross_entropy", f"{last}.activation": "softmax"}, 0.5))
        if loss in ("mse", "mae", "huber") and units > 1 and units != n_classes:
            found.append((f"{units} output units for {n_classes} one-hot classes",
                          {f"{last}.units": n_classes}, 0.9))
    if f.task == "regression":
        if loss in ("cross_entropy", "binary_cross_entropy"):
            found.append((f"{loss} on a regression target", {"loss.name": "mse", f"{last}.activation": "linear"}, 1.0))
        elif act in ("sigmoid", "softmax", "tanh", "relu"):
            target = f.run.profile.get("target") or {}
            lo, hi = target.get("min"), target.get("max")
            limits = {"sigmoid": (0, 1), "softmax": (0, 1), "tanh": (-1, 1), "relu": (0, float("inf"))}[act]
            if lo is not None and (lo < limits[0] or hi > limits[1]):
                found.append((f"{act} output can only produce [{limits[0]}, {limits[1]}] but the targets span "
                              f"[{lo:.3g}, {hi:.3g}]", {f"{last}.activation": "linear"}, 0.9))
    return found


def check(f: Facts):
    found = _problems(f)
    if not found:
        return None
    evidence = [e for e, _, _ in found]
    patch: dict = {}
    for _, p, _ in found:
        patch.update(p)
    summary = listing("make output and loss agree", patch)
    weight = max(w for _, _, w in found)
    fixes = [config_fix(f, summary, patch)] if f.cfg else [Fix(summary, None)]
    structural = weight >= STRUCTURAL  # the loss reads something that is not a probability, or labels overflow
    severity = "error" if f.failed or structural else "warning"
    return RULE.finding(severity, 0.6 + 0.3 * weight if f.failed or structural else 0.4 * weight, evidence, fixes)


RULE = Rule(
    id="output_mismatch",
    title="Output activation, loss and targets do not fit",
    what="An output layer, loss and target encoding that disagree: cross-entropy on a non-softmax output, "
         "BCE without a sigmoid, a sigmoid/softmax output trained with MSE on many classes, fewer output "
         "units than classes, a bounded output for an unbounded regression target.",
    why="The loss then reads something that is not a probability (log of a negative or zero), labels "
        "index units that do not exist, or gradients vanish where the output saturates: training stalls "
        "or produces NaN although every part looks right on its own.",
    fix="Pair softmax with cross_entropy (one unit per class), sigmoid with binary_cross_entropy, and a "
        "linear output with mse for regression.",
    check=check,
    explains=("unstable_loss", "vanishing_gradients", "saturating_activation"),
)
