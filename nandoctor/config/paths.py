"""The SPEC path syntax shared by `--set` and fix patches: `optimizer.lr`, `model.layers.0.init`,
`model.layers.*.activation`, extended with Python slices of list items (`model.layers.0:-1.norm`,
every layer but the output one). Paths apply to the raw mapping before validation, so an override
is checked exactly like a value written in the file.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import yaml

from nandoctor.config import yaml_errors
from nandoctor.errors import ConfigError


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split `PATH=VALUE`; VALUE is read as a YAML scalar (or flow collection)."""
    path, sep, raw = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise ConfigError(f"malformed override '{text}'", hint="write --set PATH=VALUE, e.g. optimizer.lr=0.01")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({yaml_errors.problem(exc)})") from None
    except RecursionError:
        raise ConfigError(f"override '{_short(text)}': value is nested too deeply to read") from None
    if isinstance(value, str):
        value = _float_or_str(value)
    return path, value


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _float_or_str(value: str) -> Any:
    """PyYAML reads `1e-3` as a string (YAML 1.1); users mean a number."""
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) or value.strip().lower() in ("inf", "nan") else value


MAX_PARTS = 300


def split_path(path: str) -> list[str]:
    parts = path.split(".")
    if len(parts) > MAX_PARTS:
        raise ConfigError(f"path of {len(parts)} parts is too deep (at most {MAX_PARTS})")
    if any(p == "" for p in parts):
        raise ConfigError(f"malformed path '{path}'", hint="dotted keys such as model.layers.0.units")
    return parts


def apply(raw: dict, path: str, value: Any) -> dict:
    """A copy of `raw` with `value` written at `path`; missing mappings are created on the way."""
    out = copy.deepcopy(raw)
    _write(out, split_path(path), value, path, [])
    return out


def apply_all(raw: dict, assignments: dict[str, Any] | list[tuple[str, Any]]) -> dict:
    items = assignments.items() if isinstance(assignments, dict) else assignments
    for path, value in items:
        raw = apply(raw, path, value)
    return raw


def _write(node: Any, parts: list[str], value: Any, full: str, seen: list[str]) -> Any:
    """Write into `node` (a dict or list) and return it; a string node is expanded from its shorthand."""
    key, rest = parts[0], parts[1:]
    where = ".".join(seen) or "<top>"
    if isinstance(node, list):
        for i in _items(key, len(node), full, where):
            node[i] = _descend(node[i], rest, value, full, [*seen, str(i)])
        return node
    if not isinstance(node, dict):
        raise ConfigError(f"path '{full}': '{where}' is not a mapping or list", path=where)
    if key == "*":
        raise ConfigError(f"path '{full}': '*' only selects list items", path=where)
    node[key] = _descend(node.get(key), rest, value, full, [*seen, key])
    return node


def _descend(child: Any, rest: list[str], value: Any, full: str, seen: list[str]) -> Any:
    if not rest:
        return value
    if child is None:
        child = {}
    elif isinstance(child, str):
        child = {"name": child}  # `loss: mse` then `loss.stable=false`
    return _write(child, rest, value, full, seen)


def _items(key: str, length: int, full: str, where: str) -> range | list[int]:
    """The list items `key` selects: `*` all of them, `a:b` a slice (Python's; either end may be
    left out or negative), else one index."""
    if key == "*":
        return range(length)
    if ":" not in key:
        return [_index(key, length, full, where)]
    start, _, stop = key.partition(":")
    try:
        picked = range(length)[slice(int(start) if start else None, int(stop) if stop else None)]
    except ValueError:
        raise _not_an_index(full, where, key) from None
    if not picked:
        raise ConfigError(f"path '{full}': slice {key} selects none of the {length} items of '{where}'", path=where)
    return picked


def _not_an_index(full: str, where: str, key: str) -> ConfigError:
    return ConfigError(f"path '{full}': '{where}' is a list, '{key}' is not an index, a slice (a:b) or '*'",
                       path=where)


def _index(key: str, length: int, full: str, where: str) -> int:
    try:
        i = int(key)
    except ValueError:
        raise _not_an_index(full, where, key) from None
    if not -length <= i < length:
        raise ConfigError(f"path '{full}': index {i} out of range, '{where}' has {length} items", path=where)
    return i


def compact(patch: dict[str, Any]) -> dict[str, Any]:
    """The same patch with each run of consecutive list items set to one value written as a slice:
    `model.layers.0.norm` ... `model.layers.11.norm` -> `model.layers.0:12.norm`. For people to read
    and type; patches themselves keep one key per item (the SPEC syntax)."""
    runs: list[list] = []  # [(parts before, parts after) the first index, first, last, value]
    for key, value in patch.items():
        parts = key.split(".")
        at = next((k for k, p in enumerate(parts) if p.isdigit()), None)
        if at is None:
            runs.append([key, None, None, value])
            continue
        i, around = int(parts[at]), (parts[:at], parts[at + 1:])
        last = runs[-1] if runs else None
        if last and last[0] == around and last[3] == value and last[2] == i - 1:
            last[2] = i
        else:
            runs.append([around, i, i, value])
    return {key if first is None else ".".join([*key[0], f"{first}:{end + 1}" if end > first else str(first), *key[1]]):
            value for key, first, end, value in runs}
