"""Turn one rule test case (a mapping from tests/rule_cases.yaml) into a real run directory.

The run is WRITTEN with the production store (`RunWriter`) plus a `config.yaml` made from a small
base config and the case's SPEC-path overrides, so a test reads it back through `load_run` ->
`build_facts` -> rules exactly as `nandoctor diagnose` does. The case schema is documented at the
top of rule_cases.yaml; every key is optional and the defaults describe a healthy run.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nandoctor.config import dump_config, from_mapping
from nandoctor.config.paths import apply_all
from nandoctor.engine.init import INITS
from nandoctor.telemetry.store import CONFIG_NAME, STAT_COLUMNS, RunWriter

CASES_FILE = Path(__file__).with_name("rule_cases.yaml")

SATURATING = ("sigmoid", "tanh", "softmax")
RELU_LIKE = ("relu", "leaky_relu", "elu", "gelu", "softplus")
# case stat key -> (tensor, column) as the monitor records them and facts.py reads them
STATS = {"update_ratio": ("update", "ratio"), "grad_norm": ("grad_weight", "norm"),
         "weight_norm": ("weight", "norm"), "saturated": ("activation", "saturated"),
         "zero": ("activation", "zero"), "pre_abs_max": ("pre_activation", "abs_max")}
EXPECT_KEYS = {"name", "fires", "quiet", "top", "explained", "healthy", "xfail"}
RUN_KEYS = {"config", "layers", "data", "steps", "epochs", "loss", "grad", "every", "stats", "preflight", "dead",
            "metric", "first_nonfinite", "spikes", "meta"}


class _Loader(yaml.SafeLoader):
    """Safe loader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_cases(path: Path = CASES_FILE) -> list[dict]:
    cases = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    for case in cases:
        unknown = set(case) - EXPECT_KEYS - RUN_KEYS
        if unknown:
            raise ValueError(f"case {case.get('name')!r}: unknown keys {sorted(unknown)}")
    return cases


# ---- value generators ---------------------------------------------------------------------------

def ramp(spec: Any, n: int) -> np.ndarray:
    """n values from a scalar, a list (used as is, padded with its last value) or {start, end}
    (geometric when both ends are positive, else linear)."""
    if spec is None:
        return np.full(n, np.nan)
    if isinstance(spec, dict):
        a, b = float(spec["start"]), float(spec["end"])
        t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)
        return a * (b / a) ** t if a > 0 and b > 0 else a + (b - a) * t
    if isinstance(spec, list):
        vals = [np.nan if v is None else float(v) for v in spec[:n]]
        return np.array(vals + [vals[-1]] * (n - len(vals)), dtype=float)
    return np.full(n, float(spec))


def per_layer(spec: Any, n_samples: int, defaults: list[Any]) -> np.ndarray:
    """(n_samples, n_layers): a list gives one spec per layer (null: not recorded), anything else
    applies to every layer; no spec falls back to the per-layer defaults."""
    if spec is None:
        cols = defaults
    elif isinstance(spec, list):
        cols = spec + [None] * (len(defaults) - len(spec))
    else:
        cols = [spec] * len(defaults)
    return np.stack([ramp(c, n_samples) for c in cols], axis=1) if cols else np.zeros((n_samples, 0))


def loss_curve(spec: Any, steps: int) -> np.ndarray:
    """{start, end, wiggle, nan_from} or an explicit list; wiggle alternates x(1 +- wiggle)."""
    spec = {"start": 0.69, "end": 0.05} if spec is None else spec
    if isinstance(spec, list):
        return ramp(spec, len(spec))
    loss = ramp({"start": spec.get("start", 0.69), "end": spec.get("end", 0.05)}, steps)
    wiggle = float(spec.get("wiggle", 0.0))
    if wiggle:
        loss = loss * (1 + wiggle * np.where(np.arange(steps) % 2 == 0, -1.0, 1.0))
    nan_from = spec.get("nan_from")
    if nan_from is not None:  # stop_on_nonfinite: the run ends at the first non-finite step
        loss = loss[:nan_from]
        loss[nan_from - 1:] = np.nan
    return loss


# ---- the pieces of a run ------------------------------------------------------------------------

def parse_layer(spec: str | dict) -> dict:
    """"relu 16 [init]" or {act, units, init (a name or a SPEC init mapping), init_std}."""
    if isinstance(spec, str):
        parts = spec.split()
        spec = {"act": parts[0], "units": int(parts[1]), **({"init": parts[2]} if len(parts) > 2 else {})}
    return {"act": spec["act"], "units": int(spec["units"]), "init": spec.get("init"),
            "init_std": spec.get("init_std")}


def data_profile(data: dict) -> dict:
    """The data profile (shape: nandoctor/data/profile.py) of standardized features unless told otherwise."""
    feats = data.get("features", 2)
    feats = [{} for _ in range(feats)] if isinstance(feats, int) else feats
    regression = "target" in data
    counts = None if regression else list(data.get("classes", [400, 400]))
    n_train = sum(counts) if counts else 800
    features, raw = [], []
    for j, f in enumerate(feats):
        std, mean = float(f.get("std", 1.0)), float(f.get("mean", 0.0))
        amax = float(f.get("abs_max", abs(mean) + 3 * std))
        col = {"name": f"x{j}", "mean": mean, "std": std, "min": -amax, "max": amax}
        features.append({**col, "abs_max": amax, "nonfinite": int(f.get("nonfinite", 0))})
        raw.append({**col, "nonfinite": int(f.get("raw_nonfinite", f.get("nonfinite", 0)))})
    if regression:
        target = {"mean": 0.0, "std": 1.0, "min": -2.0, "max": 2.0, "nonfinite": 0, "val_nonfinite": 0,
                  **data["target"]}
    else:
        target = {"class_counts": counts, "val_class_counts": [c // 4 for c in counts]}
    return {"n_train": n_train, "n_val": n_train // 4, "n_features": len(feats),
            "task": "regression" if regression else "classification",
            "n_classes": None if regression else len(counts), "classes": None if regression else
            list(range(len(counts))), "feature_names": [f["name"] for f in features], "dropped_target_rows": 0,
            "dropped_incomplete_rows": 0, "features": features, "raw": raw,
            "nonfinite_inputs": {"train": sum(f["nonfinite"] for f in features), "val": 0}, "target": target}


def base_config(case: dict, profile: dict, layers: list[dict]) -> dict:
    """A small valid config whose model matches the recorded layers, then the case's overrides."""
    f = profile["n_features"]
    data = ({"generator": "linear", "n_features": f} if profile["task"] == "regression" else
            {"generator": "blobs", "n_features": f, "n_classes": profile["n_classes"]})
    raw = {"name": "case", "seed": 0, "data": data,
           "model": {"layers": [{"units": ly["units"], "activation": ly["act"],
                                 "init": ly["init"] or ("he_normal" if ly["act"] in RELU_LIKE else "glorot_uniform")}
                                for ly in layers]},
           "loss": "mse" if profile["task"] == "regression" else "cross_entropy",
           "optimizer": {"name": "sgd", "lr": 0.1},
           "training": {"epochs": int(case.get("epochs", 5)), "batch_size": 32}}
    return apply_all(raw, case.get("config") or {})


def init_std(cfg, i: int, fan_in: int, fan_out: int) -> float:
    """The std of a real draw of the layer's init scheme, as the monitor records it."""
    spec = cfg.model.layers[i].init or cfg.model.init
    return float(INITS[spec.name](np.random.default_rng(i), fan_in, fan_out, spec).std())


def default_layers(profile: dict) -> list[str]:
    out = "linear 1" if profile["task"] == "regression" else f"softmax {profile['n_classes']}"
    return ["relu 16", "relu 16", out]


def chance_loss(cfg, profile: dict) -> float | None:
    if cfg.loss.name == "cross_entropy" and profile["n_classes"]:
        return math.log(profile["n_classes"])
    if cfg.loss.name == "binary_cross_entropy":
        return math.log(2)
    if cfg.loss.name == "mse" and profile["task"] == "regression":
        return float(profile["target"]["std"]) ** 2
    return None


# ---- the run directory --------------------------------------------------------------------------

def build_run(case: dict, run_dir: Path) -> Path:
    """Write the case as a run directory and return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    profile = data_profile(case.get("data") or {})
    layers = [parse_layer(s) for s in case.get("layers") or default_layers(profile)]
    raw = base_config(case, profile, layers)
    cfg = from_mapping(raw, default_name="case")
    (run_dir / CONFIG_NAME).write_text(dump_config(cfg), encoding="utf-8")

    planned = int(case.get("steps", 200))
    epochs = cfg.training.epochs
    per_epoch = math.ceil(planned / epochs)
    loss = loss_curve(case.get("loss"), planned)
    n = len(loss)
    ok = np.isfinite(loss)
    status = "completed" if ok.all() else "diverged"
    fn = None
    if case.get("first_nonfinite") is not None or not ok.all():
        first = int(np.argmin(ok)) + 1 if not ok.all() else n
        fn = {"step": first, "epoch": (first - 1) // per_epoch + 1, "phase": "loss", "layer": len(layers) - 1,
              "tensor": "loss", "role": "producer", "detail": "loss is non-finite from finite outputs",
              **(case.get("first_nonfinite") or {})}

    w = RunWriter(run_dir)
    meta = {"status": status, "engine": "rule-case", "name": case["name"], "dtype": cfg.training.dtype,
            "total_steps": planned, "steps_per_epoch": per_epoch, "batch_size": cfg.training.batch_size,
            "epochs": epochs, "task": profile["task"], "data_profile": profile, "first_nonfinite": fn,
            **(case.get("meta") or {})}
    w.set_meta(**meta)
    rows, fan_in = [], profile["n_features"]
    for i, ly in enumerate(layers):
        std = ly["init_std"] if ly["init_std"] is not None else init_std(cfg, i, fan_in, ly["units"])
        lc = cfg.model.layers[i]
        rows.append({"layer": i, "name": f"model.layers.{i}", "fan_in": fan_in, "fan_out": ly["units"],
                     "params": (fan_in + 1) * ly["units"], "activation": ly["act"],
                     "init": (lc.init or cfg.model.init).name, "init_std": std, "norm": lc.norm,
                     "dropout": lc.dropout})
        fan_in = ly["units"]
    w.layers(rows)
    w.set_meta(preflight=_preflight(case.get("preflight") or {}, layers, loss, cfg, profile))
    if fn is not None:
        w.event(fn["step"], fn["epoch"], "nonfinite", fn["phase"], fn["layer"], fn["tensor"], fn)

    grad = ramp(case.get("grad", 1.0), planned)[:n]
    lr = cfg.optimizer.lr
    for k in range(1, n + 1):
        w.step(k, (k - 1) // per_epoch + 1, loss[k - 1], lr, grad[k - 1], "ok" if ok[k - 1] else "nonfinite")
    for s in case.get("spikes") or ():
        w.event(s, (s - 1) // per_epoch + 1, "loss_spike", "loss", None, "loss",
                {"loss": float(loss[s - 1]), "running_median": float(np.median(loss[:s]))})
    _write_stats(w, case, layers, n)
    _write_epochs(w, case, layers, loss, per_epoch, profile)
    w.close()
    return run_dir


def _preflight(spec: dict, layers: list[dict], loss: np.ndarray, cfg, profile: dict) -> dict:
    n = len(layers)

    def col(key: str, default) -> list:
        v = spec.get(key)
        return [default(i) for i in range(n)] if v is None else list(v) + [None] * (n - len(v))

    act_std = col("activation_std", lambda i: 0.6 if i < n - 1 else 0.3)
    pre_std = col("pre_std", lambda i: 1.0)
    sat = col("saturated", lambda i: 0.01 if layers[i]["act"] in SATURATING else None)
    initial = spec.get("initial_loss", float(loss[0]) if math.isfinite(loss[0]) else None)
    return {"rows": 256, "initial_loss": initial, "chance_loss": spec.get("chance_loss", chance_loss(cfg, profile)),
            "layers": [{"layer": i, "pre_activation_std": pre_std[i], "activation_std": act_std[i],
                        "activation_abs_max": None, "saturated": sat[i], "zero": 0.0, "nonfinite": 0.0}
                       for i in range(n)]}


def _write_stats(w: RunWriter, case: dict, layers: list[dict], n: int) -> None:
    every = int(case.get("every", 10))
    sampled = sorted({1, n, *range(every, n + 1, every)})
    m = len(sampled)
    acts = [ly["act"] for ly in layers]
    defaults = {
        "update_ratio": [1e-3] * len(layers),
        "grad_norm": [0.1] * len(layers),
        "weight_norm": [{"start": 3.0, "end": 3.3}] * len(layers),
        "saturated": [0.02 if a in SATURATING else None for a in acts],
        "zero": [0.4 if a == "relu" else 0.0 for a in acts],
        "pre_abs_max": [4.0] * len(layers),
    }
    spec = case.get("stats") or {}
    unknown = set(spec) - set(STATS)
    if unknown:
        raise ValueError(f"case {case['name']!r}: unknown stats {sorted(unknown)}")
    values = {key: per_layer(spec.get(key), m, defaults[key]) for key in STATS}
    for r, step in enumerate(sampled):
        for i in range(len(layers)):
            rows: dict[str, list] = {}
            for key, (tensor, column) in STATS.items():
                row = rows.setdefault(tensor, [None] * len(STAT_COLUMNS))
                v = values[key][r, i]
                row[STAT_COLUMNS.index(column)] = None if math.isnan(v) else float(v)
            for tensor, row in rows.items():
                w.stats(step, i, tensor, tuple(row))


def _write_epochs(w: RunWriter, case: dict, layers: list[dict], loss: np.ndarray, per_epoch: int,
                  profile: dict) -> None:
    n_epochs = math.ceil(len(loss) / per_epoch)
    counts = (profile["target"] or {}).get("class_counts")
    chance = max(counts) / sum(counts) if counts else 0.0
    final = case.get("metric", 0.95 if counts else 0.9)
    dead = case.get("dead") or []
    hidden = layers[:-1]
    for e in range(1, n_epochs + 1):
        chunk = loss[(e - 1) * per_epoch: e * per_epoch]
        finite = bool(np.isfinite(chunk).all())
        metric = None if final is None or not finite else chance + (final - chance) * e / n_epochs
        record = {"epoch": e, "train_loss": float(chunk.mean()), "val_loss": float(chunk.mean()) * 1.05,
                  "train_metric": metric, "val_metric": metric}
        units = [(i, round(float(dead[i] if i < len(dead) else 0.0) * ly["units"]), ly["units"])
                 for i, ly in enumerate(hidden)]
        w.epoch(record, units)
