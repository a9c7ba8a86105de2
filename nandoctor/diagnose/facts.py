"""Facts: the measurements every rule reads, derived once from a recorded run.

Rules stay small and pure by reading these named numbers instead of re-walking telemetry. Every
fact is computed from what the run store holds, so runs written by other frameworks work as long
as they recorded the same tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from nandoctor.config import Config
from nandoctor.telemetry.reader import Run

STALL_PROGRESS = 0.1  # a run that cut less than 10 % off its starting loss barely moved
LEARNED_SHARE = 0.4  # share of the way from chance accuracy to 1 that counts as learning
LEARNED_R2 = 0.5
LOSS_ABOVE_CHANCE = 1.2


def _nanmedian(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def _nanmax(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.max(x)) if x.size else math.nan


def _first_finite(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x[0]) if x.size else math.nan


def _last_finite(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x[-1]) if x.size else math.nan


@dataclass
class LayerFacts:
    index: int
    path: str  # model.layers.i
    activation: str
    fan_in: int
    fan_out: int
    init: str | None
    init_std: float
    hidden: bool
    saturated: float  # median share of saturated outputs over sampled steps (NaN: not a saturating unit)
    saturated_early: float  # the same at the untrained network (preflight)
    act_std_initial: float  # activation std at the preflight
    zero: float  # median share of exactly-zero outputs
    dead: float  # share of units dead on the training set at the last epoch
    grad_norm: float  # median L2 norm of dL/dW over sampled steps
    grad_norm_initial: float
    update_ratio: float  # median |update| / |W|
    update_ratio_max: float
    update_ratio_initial: float  # at the first sampled step, before training changed anything
    pre_abs_max: float  # largest |pre-activation| seen
    pre_std_initial: float
    weight_norm_initial: float
    weight_norm_final: float


@dataclass
class Facts:
    run: Run
    cfg: Config | None
    status: str
    first_nonfinite: dict | None
    diverged: bool
    steps: int
    initial_loss: float
    chance_loss: float
    final_loss: float
    best_loss: float
    progress: float  # (reference - final) / reference, reference = max(initial, chance)
    stalled: bool  # the loss barely moved (less than 10 % off its start)
    failed: bool  # diverged, or did not learn
    learned: bool  # clearly better than chance (see _learned)
    rising: bool  # loss at the end clearly above its start
    increase_share: float  # share of steps whose loss rose
    spikes: int
    final_metric: float
    chance_metric: float
    task: str | None
    n_classes: int | None
    layers: list[LayerFacts] = field(default_factory=list)
    input_abs_max: float = math.nan
    input_std_max: float = math.nan
    input_std_ratio: float = math.nan
    input_nonfinite: int = 0
    grad_growth: float = math.nan  # late / early median global gradient norm
    grad_norm_first: float = math.nan  # global gradient norm at step 1

    @property
    def hidden(self) -> list[LayerFacts]:
        return [lf for lf in self.layers if lf.hidden]


def build_facts(run: Run) -> Facts:
    cfg = run.config
    loss = run.steps["loss"]
    pre = run.preflight
    initial = pre.get("initial_loss")
    initial = _first_finite(loss) if initial is None else float(initial)
    chance = pre.get("chance_loss")
    chance = math.nan if chance is None else float(chance)
    finite = loss[np.isfinite(loss)]
    tail = finite[-max(1, len(finite) // 10):] if finite.size else finite
    final = float(np.median(tail)) if tail.size else math.nan
    reference = np.nanmax([initial, chance]) if not (math.isnan(initial) and math.isnan(chance)) else math.nan
    progress = (reference - final) / reference if reference and math.isfinite(reference) and math.isfinite(final) \
        else math.nan
    fn = run.first_nonfinite
    diverged = run.status == "diverged" or (fn is not None and not run.steps["ok"].all())
    task, n_classes = run.profile.get("task"), run.profile.get("n_classes")
    metric, chance_metric = _metrics(run, task)
    per_sample = final / _sum_batch(run) if math.isfinite(final) else final
    learned = _learned(task, metric, chance_metric, per_sample, chance, progress)
    stalled = not diverged and math.isfinite(progress) and progress < STALL_PROGRESS
    inc = np.diff(finite)
    facts = Facts(
        run=run, cfg=cfg, status=run.status, first_nonfinite=fn, diverged=diverged, steps=len(loss),
        initial_loss=initial, chance_loss=chance, final_loss=final,
        best_loss=float(finite.min()) if finite.size else math.nan, progress=progress,
        stalled=stalled, failed=diverged or not learned, learned=learned,
        rising=math.isfinite(final) and math.isfinite(initial) and final > 1.5 * initial,
        increase_share=float(np.mean(inc > 0)) if inc.size else math.nan,
        spikes=sum(1 for e in run.events if e["kind"] == "loss_spike"),
        final_metric=metric, chance_metric=chance_metric, task=task, n_classes=n_classes)
    facts.layers = _layer_facts(run)
    _input_facts(facts, run.profile)
    g = run.steps["grad_norm"]
    g = g[np.isfinite(g)]
    if g.size:
        facts.grad_norm_first = float(g[0])
    if g.size >= 8:
        q = max(1, g.size // 4)
        early = float(np.median(g[:q]))
        facts.grad_growth = float(np.median(g[-q:])) / early if early > 0 else math.nan
    return facts


def _learned(task: str | None, metric: float, chance_metric: float, loss: float, chance_loss: float,
             progress: float) -> bool:
    """Clearly better than knowing nothing. Healthy development-corpus runs end at least 56 % of the
    way from chance accuracy to 1 (R^2 >= 0.81); runs that did not learn end near chance, so the line
    sits at 40 % (R^2 0.5). A loss that ends above the chance level is never learning."""
    if math.isfinite(chance_loss) and math.isfinite(loss) and loss > LOSS_ABOVE_CHANCE * chance_loss:
        return False
    if task == "classification" and math.isfinite(metric) and math.isfinite(chance_metric) and chance_metric < 1:
        return (metric - chance_metric) / (1 - chance_metric) >= LEARNED_SHARE
    if task == "regression" and math.isfinite(metric):
        return metric >= LEARNED_R2
    if math.isfinite(chance_loss) and math.isfinite(loss):
        return loss < 0.8 * chance_loss
    return math.isfinite(progress) and progress >= STALL_PROGRESS


def _sum_batch(run: Run) -> float:
    """Batch size when the loss is summed over the batch (to compare it with a per-sample chance level)."""
    cfg = run.config
    if cfg is not None and cfg.loss.reduction == "sum":
        return float(run.meta.get("batch_size") or 1)
    return 1.0


def _metrics(run: Run, task: str | None) -> tuple[float, float]:
    metric = math.nan
    for e in reversed(run.epochs):
        value = e["val_metric"] if e["val_metric"] is not None else e["train_metric"]
        if value is not None:
            metric = float(value)
            break
    chance = math.nan
    counts = (run.profile.get("target") or {}).get("class_counts")
    if task == "classification" and counts and sum(counts):
        chance = max(counts) / sum(counts)
    return metric, chance


def _layer_facts(run: Run) -> list[LayerFacts]:
    pre_layers = {p["layer"]: p for p in run.preflight.get("layers", [])}
    last_dead = run.dead_units[max(run.dead_units)] if run.dead_units else []
    dead = {layer: d / u for layer, d, u in last_dead if u}
    out = []
    n = run.n_layers
    for i, info in enumerate(run.layers):
        p = pre_layers.get(i, {})
        init_std = math.nan if info["init_std"] is None else float(info["init_std"])
        sat = run.stat("activation", "saturated")[:, i]
        gn = run.stat("grad_weight", "norm")[:, i]
        ratio = run.stat("update", "ratio")[:, i]
        wn = run.stat("weight", "norm")[:, i]
        out.append(LayerFacts(
            index=i, path=info.get("name") or f"model.layers.{i}", activation=info["activation"], fan_in=info["fan_in"],
            fan_out=info["fan_out"], init=info["init"], init_std=init_std, hidden=i < n - 1,
            saturated=_nanmedian(sat),
            saturated_early=math.nan if p.get("saturated") is None else p["saturated"],
            act_std_initial=math.nan if p.get("activation_std") is None else p["activation_std"],
            zero=_nanmedian(run.stat("activation", "zero")[:, i]), dead=dead.get(i, math.nan),
            grad_norm=_nanmedian(gn), grad_norm_initial=_first_finite(gn),
            update_ratio=_nanmedian(ratio), update_ratio_max=_nanmax(ratio), update_ratio_initial=_first_finite(ratio),
            pre_abs_max=_nanmax(run.stat("pre_activation", "abs_max")[:, i]),
            pre_std_initial=math.nan if p.get("pre_activation_std") is None else p["pre_activation_std"],
            weight_norm_initial=_first_finite(wn), weight_norm_final=_last_finite(wn)))
    return out


def _input_facts(facts: Facts, profile: dict) -> None:
    feats = profile.get("features") or []
    stds = [f["std"] for f in feats if f.get("std") is not None]
    maxes = [f["abs_max"] for f in feats if f.get("abs_max") is not None]
    if maxes:
        facts.input_abs_max = float(max(maxes))
    live = [s for s in stds if s > 0]
    if live:
        facts.input_std_max = float(max(live))
        facts.input_std_ratio = float(max(live) / min(live))
    nf = profile.get("nonfinite_inputs") or {}
    facts.input_nonfinite = int(nf.get("train", 0)) + int(nf.get("val", 0))
