"""Read YAML into validated `Config` objects: typed fields, bounds, did-you-mean, resolved defaults.

Every problem becomes a `ConfigError` naming the file and the config path (`model.layers[1].units`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from nandoctor import names
from nandoctor.config import paths, yaml_errors
from nandoctor.config.schema import Config, DataConfig, InitSpec, OptimizerConfig
from nandoctor.errors import ConfigError, did_you_mean

GENERATOR_NOISE = {"spirals": 0.2, "checkerboard": 0.0, "blobs": 1.0}
DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3}
INIT_DEFAULTS = {"normal": ("std", 0.05), "uniform": ("limit", 0.05), "constant": ("value", 0.0)}
SCHEDULE_DEFAULTS = {"step": {"gamma": 0.1}, "exponential": {"gamma": 0.95}}


def load_config(file: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override (`--set`), validate and resolve a config file."""
    path = Path(file)
    raw = read_yaml(path)
    for text in overrides or ():
        try:
            key, value = paths.parse_assignment(text)
            raw = paths.apply(raw, key, value)
        except ConfigError as exc:
            raise ConfigError(exc.message, file=str(path), path=exc.path, hint=exc.hint) from None
    return from_mapping(raw, file=str(path), default_name=path.stem)


def read_yaml(path: Path) -> dict:
    """Safe-load a YAML mapping; every failure names the file (and line/column for syntax errors)."""
    if not path.exists():
        raise ConfigError("config file not found", file=str(path))
    if path.is_dir():
        raise ConfigError("expected a config file, got a directory", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config ({exc})", file=str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_errors.describe(exc, text), file=str(path)) from None
    except RecursionError:
        raise ConfigError("YAML is nested too deeply to read", file=str(path)) from None
    if raw is None:
        raise ConfigError("config file is empty", file=str(path),
                          hint="a config needs at least a data: and a model: section; `nandoctor init` writes one")
    if not isinstance(raw, dict):
        raise ConfigError(f"top level must be a mapping of sections, got {type(raw).__name__}", file=str(path))
    return raw


def from_mapping(raw: dict, *, file: str | None = None, default_name: str = "config") -> Config:
    try:
        cfg = _parse(Config, raw, [])
        return resolve(cfg, default_name)
    except ConfigError as exc:
        raise ConfigError(exc.message, file=file, path=exc.path, hint=exc.hint) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_mapping(cfg), sort_keys=False, default_flow_style=None)


def to_mapping(obj: Any) -> Any:
    """Plain dicts/lists for YAML or JSON (tuples become lists, shorthand constants dropped)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_mapping(v) for v in obj]
    return obj


# ---- generic typed parsing -------------------------------------------------------------------

def _fmt(path: list) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top>"


def _parse(cls: type, raw: Any, path: list) -> Any:
    shorthand = getattr(cls, "SHORTHAND", None)
    if isinstance(raw, str) and shorthand:
        raw = {shorthand: raw}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping, got {_describe(raw)}", path=_fmt(path))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown key '{key}'", path=_fmt([*path, key]),
                              hint=did_you_mean(str(key), fields) or f"valid keys: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], [*path, name], f.metadata)
        elif f.metadata.get("required"):
            raise ConfigError(f"missing required key '{name}'", path=_fmt([*path, name]))
    return cls(**values)


def _coerce(value: Any, tp: Any, path: list, meta: typing.Mapping) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, opt, path, meta)
            except ConfigError as exc:
                errors.append(exc)
        # the most informative error is the one from the option that matched the value's kind
        best = next((e for e in errors if "expected" not in e.message), errors[0])
        raise best
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value in names.INIT_ALIASES and names.INIT_ALIASES[value] in choices:
            return names.INIT_ALIASES[value]
        if not isinstance(value, str):
            raise ConfigError(f"expected one of {', '.join(map(str, choices))}, got {_describe(value)}",
                              path=_fmt(path))
        kind = _kind(path)
        raise ConfigError(f"unknown {kind} '{value}'", path=_fmt(path),
                          hint=did_you_mean(value, choices) or f"choose one of {', '.join(choices)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {_describe(value)}", path=_fmt(path))
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, [*path, i], {}) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _parse(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {_describe(value)}", path=_fmt(path))
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"expected an integer, got {_describe(value)}", path=_fmt(path))
        return _check_bounds(value, path, meta)
    if tp is float:
        if isinstance(value, str):
            value = paths._float_or_str(value)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"expected a number, got {_describe(value)}", path=_fmt(path))
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError("number is too large to be a float", path=_fmt(path)) from None
        if not math.isfinite(value):
            raise ConfigError(f"non-finite number {value} is not allowed", path=_fmt(path))
        return _check_bounds(value, path, meta)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {_describe(value)}", path=_fmt(path))
        return value
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in the schema, not user input


def _kind(path: list) -> str:
    """What a name denotes, for messages: `optimizer.name` -> optimizer, `expect.causes[0]` -> cause."""
    names = [p for p in path if isinstance(p, str)]
    kind = names[-2] if names[-1] == "name" and len(names) > 1 else names[-1]
    return {"causes": "cause"}.get(kind, kind)


def _check_bounds(value: float, path: list, meta: typing.Mapping) -> float:
    tests = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
             "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}
    for key, bound in meta.get("bounds", {}).items():
        ok, sign = tests[key]
        if not ok(value, bound):
            raise ConfigError(f"{value} is out of range: must be {sign} {bound}", path=_fmt(path))
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict | list):
        return f"a {type(value).__name__}"
    return f"{type(value).__name__} {value!r}"


# ---- cross-field checks and resolved defaults ---------------------------------------------------

def resolve(cfg: Config, default_name: str) -> Config:
    """Check what single fields cannot, and fill defaults that depend on other fields."""
    data = _resolve_data(cfg.data)
    model = cfg.model
    if not model.layers:
        raise ConfigError("the model needs at least one layer (the output layer)", path="model.layers")
    layers = []
    for i, layer in enumerate(model.layers):
        if layer.activation == "softmax" and i != len(model.layers) - 1:
            raise ConfigError("softmax is only allowed on the output layer",
                              path=f"model.layers[{i}].activation", hint="use relu or tanh for hidden layers")
        alpha = layer.alpha
        if alpha is None and layer.activation in ("leaky_relu", "elu"):
            alpha = 0.01 if layer.activation == "leaky_relu" else 1.0
        layers.append(dataclasses.replace(
            layer, alpha=alpha, init=_resolve_init(layer.init or model.init),
            bias_init=model.bias_init if layer.bias_init is None else layer.bias_init))
    model = dataclasses.replace(model, init=_resolve_init(model.init), layers=tuple(layers))
    opt: OptimizerConfig = cfg.optimizer
    if opt.lr is None:
        opt = dataclasses.replace(opt, lr=DEFAULT_LR.get(opt.name, 0.01))
    sched = cfg.schedule
    for key, val in SCHEDULE_DEFAULTS.get(sched.name, {}).items():
        if getattr(sched, key) is None:
            sched = dataclasses.replace(sched, **{key: val})
    return dataclasses.replace(cfg, name=cfg.name or default_name, data=data, model=model,
                               optimizer=opt, schedule=sched)


def _resolve_init(spec: InitSpec) -> InitSpec:
    key_default = INIT_DEFAULTS.get(spec.name)
    if key_default and getattr(spec, key_default[0]) is None:
        return dataclasses.replace(spec, **{key_default[0]: key_default[1]})
    return spec


def _resolve_data(data: DataConfig) -> DataConfig:
    sources = [k for k in ("generator", "builtin", "csv", "npz") if getattr(data, k) is not None]
    if len(sources) != 1:
        got = ", ".join(sources) if sources else "none"
        raise ConfigError(f"exactly one data source is needed (generator, builtin, csv or npz); got {got}",
                          path="data")
    updates: dict[str, Any] = {}
    if data.generator:
        g = data.generator
        updates["n_samples"] = data.n_samples or 1000
        updates["noise"] = GENERATOR_NOISE.get(g, 0.1) if data.noise is None else data.noise
        if g in ("blobs", "xor", "linear", "sine"):
            updates["n_features"] = data.n_features or (1 if g in ("linear", "sine") else 2)
        elif data.n_features not in (None, 2):
            raise ConfigError(f"generator '{g}' is two-dimensional; n_features must be 2",
                              path="data.n_features")
        else:
            updates["n_features"] = 2
        if g in ("blobs", "spirals"):
            updates["n_classes"] = data.n_classes or 3
        elif data.n_classes not in (None, 2) and g not in names.REGRESSION_GENERATORS:
            raise ConfigError(f"generator '{g}' has two classes; n_classes must be 2", path="data.n_classes")
        if g in names.REGRESSION_GENERATORS:
            updates["n_classes"] = None
        else:
            updates["n_classes"] = updates.get("n_classes", 2)
        inferred = "regression" if g in names.REGRESSION_GENERATORS else "classification"
        if data.task not in (None, inferred):
            raise ConfigError(f"generator '{g}' makes a {inferred} task", path="data.task")
        updates["task"] = inferred
    elif data.builtin:
        if data.task not in (None, "classification"):
            raise ConfigError(f"built-in '{data.builtin}' is a classification data set", path="data.task")
        updates["task"] = "classification"
    if data.feature_scales is not None and any(not math.isfinite(s) for s in data.feature_scales):
        raise ConfigError("feature_scales must be finite", path="data.feature_scales")
    return dataclasses.replace(data, **updates)
