"""Property-based tests: the config loader, the `--set`/patch path syntax, the fix text patcher and the
run-directory reader fed random and corrupted input. The one property everywhere: only
`NandoctorError` (or a subclass) may escape; any other exception is a bug that would reach the user as
a traceback.

Two hypothesis profiles are registered here and applied per test (they do not touch other modules):
  nandoctor-fast  (default, `make test`)         a few dozen examples each, derandomized: same every run
  nandoctor-long  (NANDOCTOR_FUZZ=long, `make fuzz`)  10,000 examples each (NANDOCTOR_FUZZ_EXAMPLES=N), random
Example counts: `pytest tests/test_fuzz.py --hypothesis-show-statistics`.

No input is left out to keep a property passing. Each bug these properties found is also kept as a
deterministic regression test: an `@example` on the property, or a test of its own.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import shutil
import sqlite3
import tempfile
import types
import typing
import uuid
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

from nandoctor import names
from nandoctor.config import Config, dump_config, from_mapping, load_config, paths, to_mapping
from nandoctor.config.schema import DataConfig, LayerConfig
from nandoctor.diagnose import diagnose
from nandoctor.errors import ConfigError, NandoctorError, RunError
from nandoctor.patching import patch_text
from nandoctor.telemetry.reader import load_run
from nandoctor.telemetry.store import DB_NAME
from nandoctor.training import run_training

LONG = os.environ.get("NANDOCTOR_FUZZ") == "long"
_COMMON = {"deadline": None, "database": None, "print_blob": True,
           "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example]}
settings.register_profile("nandoctor-fast", max_examples=50, derandomize=True, **_COMMON)
settings.register_profile("nandoctor-long", max_examples=int(os.environ.get("NANDOCTOR_FUZZ_EXAMPLES", 10_000)),
                          **_COMMON)
FUZZ = settings.get_profile("nandoctor-long" if LONG else "nandoctor-fast")
# the run-store tests copy and corrupt a database per example: fewer in the fast profile
FUZZ_IO = settings(FUZZ, max_examples=FUZZ.max_examples if LONG else 30)

REPO = Path(__file__).resolve().parent.parent
SCRATCH = Path(tempfile.mkdtemp(prefix="nandoctor-fuzz-"))
atexit.register(shutil.rmtree, SCRATCH, True)

def only_nandoctor_errors(fn, *args, **kwargs):
    """fn(*args) or None when it raised a NandoctorError; anything else propagates and fails the test."""
    try:
        return fn(*args, **kwargs)
    except NandoctorError as exc:
        assert exc.render()  # the message renders
        return None


def read_and_diagnose(run_dir: Path) -> None:
    """`nandoctor diagnose run_dir`: reading and then diagnosing raise nothing but NandoctorError."""
    run = only_nandoctor_errors(load_run, run_dir)
    if run is not None:
        only_nandoctor_errors(diagnose, run)


def scratch_file(text: str | bytes, name: str = "cfg.yaml") -> Path:
    folder = SCRATCH / "configs"  # one file, overwritten by each example
    folder.mkdir(exist_ok=True)
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def nan_equal(a: Any, b: Any) -> bool:
    """== where NaN equals NaN (a patched mapping may legitimately hold NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b) and not (isinstance(a, int | float) and isinstance(b, int | float)):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(nan_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ==== 1. the config loader ========================================================================

WORDS = sorted({*names.ACTIVATIONS, *names.INITS, *names.INIT_ALIASES, *names.LOSSES, *names.REDUCTIONS,
                *names.OPTIMIZERS, *names.SCHEDULES, *names.GENERATORS, *names.BUILTINS, *names.TASKS,
                *names.IMPUTES, *names.PREPROCESS, *names.DTYPES, *names.NORMS, *names.CAUSES,
                "auto", "full", "1e-3", "1E5", ".inf", "-.inf", ".nan", "nan", "inf", "yes", "no", "~", "null",
                "0x10", "1_000", "relu ", "Relu", "he-normal", ""})

# keys YAML produces besides strings and integers: `~:` and a lone `?` (None), `1.5:`, `2020-01-01:`
odd_keys = st.none() | st.floats() | st.dates()
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 100)
           | st.floats() | st.floats(-10, 10) | st.text(max_size=12) | st.sampled_from(WORDS))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8) | st.integers() | st.booleans() | odd_keys, inner,
                                      max_size=4),
                    max_leaves=10)
unknown_keys = st.sampled_from(["zzz", "lrr", "unit", "layer", "Name", "data ", 0, 1, True, None, 1.5,
                                datetime.date(2020, 1, 1)])


def value_for(tp: Any, meta: typing.Mapping) -> st.SearchStrategy:
    """Values of the right type (mostly in range), for one schema field."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([st.none() if a is type(None) else value_for(a, meta) for a in typing.get_args(tp)])
    if origin is Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is tuple:
        return st.lists(field_value(typing.get_args(tp)[0], {}), max_size=4)
    if dataclasses.is_dataclass(tp):
        return section(tp)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(0, 64) | st.integers(-2, 3)
    if tp is float:
        return st.floats(-2, 2) | st.sampled_from([0.0, 1e-3, 0.1, 0.5, 0.99, 1.0, 10.0]) | st.floats(allow_nan=False)
    if tp is str:
        return st.text(max_size=10) | st.sampled_from(WORDS)
    raise AssertionError(f"unexpected schema type {tp!r}")


def field_value(tp: Any, meta: typing.Mapping) -> st.SearchStrategy:
    """Three in four of the right type, one in four anything at all."""
    right = value_for(tp, meta)
    return st.one_of(right, right, right, junk)


@st.composite
def section(draw, cls: type) -> Any:
    """A mapping built from `cls`'s own keys (a random subset, random values), sometimes an extra key,
    sometimes the shorthand string; layers get `units` almost always."""
    hints = typing.get_type_hints(cls)
    shorthand = getattr(cls, "SHORTHAND", None)
    if shorthand and draw(st.integers(0, 4)) == 0:
        return draw(value_for(hints[shorthand], {}) | st.sampled_from(WORDS))
    out: dict = {}
    for f in dataclasses.fields(cls):
        wanted = draw(st.integers(0, 9)) < (9 if f.metadata.get("required") else 5)
        if cls is Config and f.name in ("data", "model"):
            wanted = draw(st.integers(0, 9)) < 9
        if not wanted:
            continue
        if cls is Config and f.name == "data":
            out["data"] = draw(data_section())
        elif cls is Config and f.name == "model":
            out["model"] = draw(model_section())
        else:
            out[f.name] = draw(field_value(hints[f.name], f.metadata))
    if draw(st.integers(0, 9)) == 0:
        out[draw(unknown_keys)] = draw(junk)
    return out


@st.composite
def data_section(draw) -> Any:
    """Mostly exactly one source, so that validation goes past the source check."""
    rest = draw(section(DataConfig))
    if not isinstance(rest, dict) or draw(st.integers(0, 4)) == 0:
        return rest
    for key in ("generator", "builtin", "csv", "npz"):
        rest.pop(key, None)
    source = draw(st.sampled_from(["generator"] * 4 + ["builtin", "csv", "npz"]))
    value = {"generator": st.sampled_from(names.GENERATORS), "builtin": st.sampled_from(names.BUILTINS),
             "csv": st.just("data.csv"), "npz": st.just("data.npz")}[source]
    return {source: draw(value), **rest}


@st.composite
def model_section(draw) -> Any:
    model = draw(section(type(Config().model)))
    if isinstance(model, dict) and draw(st.integers(0, 4)) > 0:
        model["layers"] = draw(st.lists(field_value(LayerConfig, {}), min_size=1, max_size=4))
    return model


configs = section(Config)


@FUZZ
@given(configs)
def test_from_mapping_on_random_schema_mappings(raw):
    before = copy.deepcopy(raw)
    cfg = only_nandoctor_errors(from_mapping, raw, file="fuzz.yaml")
    assert nan_equal(raw, before)  # validation never mutates its input
    if cfg is not None:
        assert isinstance(cfg, Config)
        # a resolved config dumps to YAML and loads back to an equal object
        assert from_mapping(yaml.safe_load(dump_config(cfg)), file="again.yaml") == cfg
        assert from_mapping(to_mapping(cfg)) == cfg


@FUZZ
@given(junk)
def test_from_mapping_on_anything(raw):
    if isinstance(raw, dict):
        only_nandoctor_errors(from_mapping, raw)
    else:
        with pytest.raises(ConfigError):
            from_mapping(raw)


def _config_texts() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted((REPO / "configs").glob("*.yaml"))]
    texts += [p.read_text(encoding="utf-8") for p in sorted((REPO / "nandoctor" / "templates").glob("*.yaml"))]
    return [t for t in texts if t.strip()] or ["data: {generator: moons}\nmodel: {layers: [{units: 2}]}\n"]


CONFIG_TEXTS = _config_texts()
# YAML nested up to 3,000 deep (Python's recursion limit is 1,000): flow mappings, block lists, flow lists.
# PyYAML's scanner is quadratic in the depth of a flow list (~0.5 s at 1,000), and it stops with a
# RecursionError near 600, so flow lists go to 800 only; the fast profile tries two depths of each.
DEPTHS = st.integers(1, 3000) if LONG else st.sampled_from([3, 1500])
LIST_DEPTHS = st.integers(1, 800) if LONG else st.sampled_from([3, 800])
deep_yaml = (DEPTHS.map(lambda n: "{a: " * n + "1" + "}" * n) | DEPTHS.map(lambda n: "- " * n + "1")
             | LIST_DEPTHS.map(lambda n: "[" * n + "1" + "]" * n))


def mostly(plain: st.SearchStrategy, rare: st.SearchStrategy, odds: int = 7) -> st.SearchStrategy:
    """`plain` `odds` times out of odds + 1, else `rare` (one_of picks its branches uniformly)."""
    return st.one_of(*[plain] * odds, rare)


YAML_NOISE = st.text(alphabet=":-[]{},#&*!|>'\"%@`?~ \n\t\\0123456789.eE+abcxyz_\u00e9\u2603\x00\x85\ufeff",
                     max_size=12)


@st.composite
def corrupted_text(draw) -> str:
    """A real config (from configs/) with 1-4 random edits: cut, insert noise, replace a character,
    duplicate/swap/drop a line, re-indent, truncate."""
    text = draw(st.sampled_from(CONFIG_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["cut", "insert", "replace", "dup", "swap", "drop", "indent", "truncate"]))
        n = len(text)
        i = draw(st.integers(0, max(n - 1, 0)))
        lines = text.splitlines(keepends=True) or [""]
        k = draw(st.integers(0, len(lines) - 1))
        if op == "cut":
            text = text[:i] + text[i + draw(st.integers(1, 20)):]
        elif op == "insert":
            text = text[:i] + draw(YAML_NOISE) + text[i:]
        elif op == "replace" and n:
            text = text[:i] + draw(st.sampled_from(list(":-[]{},#&*!|> \n\t'\"0"))) + text[i + 1:]
        elif op == "dup":
            lines.insert(k, lines[k])
            text = "".join(lines)
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[j] = lines[j], lines[k]
            text = "".join(lines)
        elif op == "drop":
            del lines[k]
            text = "".join(lines)
        elif op == "indent":
            lines[k] = draw(st.sampled_from(["", " ", "  ", "\t", "    "])) + lines[k].lstrip(" ")
            text = "".join(lines)
        elif op == "truncate":
            text = text[:i]
    return text


@FUZZ
@given(corrupted_text())
def test_load_config_on_corrupted_yaml(text):
    path = scratch_file(text)
    note(repr(text))
    cfg = only_nandoctor_errors(load_config, path)
    assert cfg is None or isinstance(cfg, Config)


@FUZZ
@given(mostly(st.text(max_size=200) | st.binary(max_size=200).map(bytes), deep_yaml.map(lambda t: f"model:\n  {t}\n")))
@example("model:\n  " + "- " * 3000 + "1\n")  # regression: RecursionError (d9f044e)
@example("~: 1\n")  # regression: TypeError for a null key at the top level (323581c)
def test_load_config_on_random_text_and_bytes(text):
    path = scratch_file(text)
    only_nandoctor_errors(load_config, path)


@FUZZ
@given(configs, st.lists(mostly(st.text(max_size=30), deep_yaml.map(lambda t: f"name={t}")), max_size=3))
def test_load_config_from_yaml_of_random_mappings_with_random_overrides(raw, overrides):
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except yaml.YAMLError:
        return
    path = scratch_file(text)
    try:
        load_config(path, overrides)
    except NandoctorError as exc:  # every error, an override's included, names the config file
        assert exc.file == str(path), exc.render()


# ==== 2. the --set / patch path syntax ============================================================

KEY = st.sampled_from(["optimizer", "lr", "model", "layers", "units", "init", "name", "data", "a", "b", "0", "1",
                       "-1", "2", "*", "", " ", "x y", "1_0", "99999999999999999999"])
PATH = (st.lists(KEY, min_size=1, max_size=6).map(".".join) | st.text(max_size=20)
        | st.integers(250, 700).map(lambda n: ".".join(["a"] * n)))  # paths are limited to 300 parts


@FUZZ
@given(mostly(st.text(max_size=60) | st.text(max_size=30).map(lambda t: f"name={t}"),
              deep_yaml.map(lambda t: f"a.b={t}")))
@example("0=\x1b")  # regression: AttributeError (ReaderError has no .problem; found by the long profile, 323581c)
@example("a.b=" + "{a: " * 3000 + "1" + "}" * 3000)  # regression: RecursionError (found with deep_yaml)
def test_parse_assignment_on_random_text(text):
    out = only_nandoctor_errors(paths.parse_assignment, text)
    if out is not None:
        path, _ = out
        assert path and path == path.strip() and "=" not in path


plain_keys = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
set_values = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
              | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zl", "Zp"]),
                        max_size=12))


@FUZZ
@given(st.lists(plain_keys | st.sampled_from(["0", "1", "*"]), min_size=1, max_size=5).map(".".join), set_values)
def test_parse_assignment_round_trips_a_yaml_scalar(path, value):
    # only the line break and the document-end marker go: str.strip() would also eat a trailing U+00A0
    dumped = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).removesuffix("\n")
    dumped = dumped.removesuffix("\n...")
    got_path, got = paths.parse_assignment(f"{path}={dumped}")
    assert got_path == path
    if isinstance(value, str) and not isinstance(got, str):
        # documented: a string that reads as a number (`1e-3`) is a number
        assert isinstance(got, float)
        assert got == float(value) or (math.isnan(got) and value.strip().lower() == "nan")
    elif isinstance(value, str) and value.strip() == "":
        assert got in (value, None)
    else:
        assert nan_equal(got, value) or (got == value), (value, dumped, got)


def lookup(node: Any, parts: list[str]) -> Any:
    for p in parts:
        node = node[int(p)] if isinstance(node, list) else node[p]
    return node


structures = st.recursive(
    scalars | st.sampled_from(["relu", "he_normal"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEY | plain_keys, inner, max_size=4),
    max_leaves=12)


@FUZZ
@given(st.dictionaries(KEY | plain_keys, structures, max_size=5), PATH, structures)
def test_apply_on_random_structures_and_paths(raw, path, value):
    before = copy.deepcopy(raw)
    out = only_nandoctor_errors(paths.apply, raw, path, value)
    assert nan_equal(raw, before)  # apply never mutates its input
    if out is not None and "*" not in path.split("."):
        got = lookup(out, paths.split_path(path))
        assert got is value or nan_equal(got, value)


def test_a_300_part_path_works():
    """Paths are limited to 300 parts (deeper ones are a ConfigError); up to that, long paths work."""
    key, value = paths.parse_assignment(".".join(["a"] * 300) + "=1")
    assert lookup(paths.apply({}, key, value), ["a"] * 300) == 1


# ==== 3. the fix text patcher ======================================================================

FIX_PATHS = ["optimizer.lr", "optimizer.name", "optimizer.clip_norm", "optimizer.weight_decay", "loss.reduction",
             "loss.stable", "loss.name", "data.preprocess", "data.impute", "training.dtype", "training.batch_size",
             "training.epochs", "model.init", "model.layers.*.init", "model.layers.*.activation",
             "model.layers.0.activation", "model.layers.0.init", "model.layers.-1.activation", "model.layers.1.norm",
             "schedule.name", "monitor.every", "seed", "name", "new_section.key"]
patch_values = (st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
                | st.sampled_from(WORDS) | st.text(alphabet="ab :#'\"{}[],-\n\\", max_size=8))


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str) and k and "." not in k and k.strip() == k and k != "*":
                out += _leaf_paths(v, f"{prefix}{k}.") or [f"{prefix}{k}"]
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _leaf_paths(v, f"{prefix}{i}.") or [f"{prefix}{i}"]
    return out


@st.composite
def texts_and_patches(draw) -> tuple[str, dict]:
    """A real config text (comments, flow style) or a random config dumped in a random style, and a
    patch of 1-3 entries on real fix paths or on leaves that exist in the text."""
    if draw(st.booleans()):
        text = draw(st.sampled_from(CONFIG_TEXTS))
    else:
        raw = draw(st.dictionaries(plain_keys, structures, min_size=1, max_size=5) | configs.filter(
            lambda r: isinstance(r, dict) and r))
        style = draw(st.sampled_from([False, True, None]))
        try:
            text = yaml.safe_dump(raw, default_flow_style=style, sort_keys=draw(st.booleans()), allow_unicode=True)
        except yaml.YAMLError:
            text = "a: 1\n"
        if draw(st.booleans()):
            text = "# a leading comment\n\n" + text
    raw = yaml.safe_load(text)
    candidates = FIX_PATHS + _leaf_paths(raw)
    keys = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
    return text, {k: draw(patch_values) for k in keys}


@FUZZ
@given(texts_and_patches())
def test_patch_text_output_parses_to_exactly_the_patched_mapping(case):
    text, patch = case
    raw = yaml.safe_load(text) or {}
    try:
        target = paths.apply_all(raw, patch)
    except ConfigError:
        with pytest.raises(NandoctorError):
            patch_text(text, patch)
        return
    out, kept = patch_text(text, patch)
    note(out)
    assert nan_equal(yaml.safe_load(out), target)
    if kept:  # the edit kept every comment line of the user's file
        out_lines = out.splitlines()
        assert all(ln in out_lines for ln in text.splitlines() if ln.lstrip().startswith("#"))


# ==== 4. the run-directory reader ====================================================================

TABLES = ["meta", "layers", "steps", "layer_stats", "epochs", "dead_units", "events"]
PAGE = 4096  # SQLite's default page size, which the run store uses
META_KEYS = ["schema_version", "status", "pid", "heartbeat", "started", "ended", "engine", "name", "dtype",
             "total_steps", "steps_per_epoch", "batch_size", "epochs", "every", "dense_steps", "stride", "n_params",
             "task", "steps", "data_profile", "preflight", "first_nonfinite"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["running", "completed", "diverged", "interrupted", "float16", "regression", "classification"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["step", "layer", "layers", "phase", "tensor", "features", "target", "nonfinite", "mean",
                         "std", "task", "n_classes", "class_counts", "initial_loss", "chance_loss", "x"]), inner,
        max_size=4),
    max_leaves=8)
CELLS = {"steps": ["step", "epoch", "loss", "lr", "grad_norm", "status"],
         "layer_stats": ["step", "layer", "tensor", "mean", "std", "abs_max", "norm", "zero", "ratio"],
         "epochs": ["epoch", "train_loss", "val_loss", "train_metric", "val_metric"],
         "dead_units": ["epoch", "layer", "dead", "units"],
         "events": ["step", "epoch", "kind", "phase", "layer", "tensor", "detail"],
         "layers": ["layer", "name", "fan_in", "fan_out", "params", "activation", "init", "init_std", "norm",
                    "dropout"]}
# JSON nested past Python's recursion limit (what json.loads cannot read), as the text of a meta value or cell
deep_json = st.builds(lambda n, lists: "[" * n + "]" * n if lists else '{"x": ' * n + "0" + "}" * n,
                      st.integers(1, 5000), st.booleans())
cell_values = (st.none() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=6) | st.binary(max_size=4)
               | deep_json)

SMALL_RUN = {"seed": 0, "data": {"generator": "moons", "n_samples": 200},
             "model": {"layers": [{"units": 8, "activation": "relu", "norm": "batch", "dropout": 0.1},
                                  {"units": 2, "activation": "softmax"}]},
             "optimizer": {"name": "sgd", "lr": 0.1}, "training": {"epochs": 3}, "monitor": {"every": 1}}


def _base_runs() -> dict[str, Path]:
    root = SCRATCH / "base-runs"
    runs = {}
    for kind, lr in (("completed", 0.1), ("diverged", 1e6)):
        raw = {**SMALL_RUN, "optimizer": {"name": "sgd", "lr": lr}}
        _, run_dir, _ = run_training(from_mapping(raw), None, root / kind)
        runs[kind] = run_dir
    return runs


_BASES: dict[str, Path] = {}


def base_run(kind: str) -> Path:
    if not _BASES:
        _BASES.update(_base_runs())
    return _BASES[kind]


def copy_run(kind: str) -> Path:
    dest = SCRATCH / "runs" / uuid.uuid4().hex
    shutil.copytree(base_run(kind), dest)
    return dest


def _sql(db: Path, *statements: tuple[str, tuple]) -> None:
    con = sqlite3.connect(db)
    try:
        for sql, args in statements:
            # a NOT NULL or key SQLite itself refuses, or a store an earlier edit already broke
            with contextlib.suppress(sqlite3.Error):
                con.execute(sql, args)
        with contextlib.suppress(sqlite3.Error):
            con.commit()
    finally:
        con.close()


@st.composite
def structural_damage(draw, db: Path) -> list[str]:
    """Truncation (anywhere), dropped tables, deleted rows and meta keys, a missing config, a garbage WAL:
    the reader must either read what is left or refuse it with a RunError."""
    done = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "drop", "delete_rows", "delete_meta", "no_config", "garbage_wal"]))
        if op == "truncate":  # anywhere: at a page boundary, or inside a page (cells read back as NULL)
            size = db.stat().st_size
            cut = draw(st.integers(0, size // PAGE).map(lambda p: p * PAGE) | st.integers(0, size))
            os.truncate(db, cut)
            done.append(f"truncate to {cut} of {size}")
        elif op == "drop":
            table = draw(st.sampled_from(TABLES))
            _sql(db, (f"DROP TABLE IF EXISTS {table}", ()))
            done.append(f"drop {table}")
        elif op == "delete_rows":
            table = draw(st.sampled_from(TABLES))
            keep = draw(st.integers(0, 5))
            _sql(db, (f"DELETE FROM {table} WHERE rowid NOT IN (SELECT rowid FROM {table} LIMIT ?)", (keep,)))
            done.append(f"delete rows of {table} keeping {keep}")
        elif op == "delete_meta":
            key = draw(st.sampled_from(META_KEYS))
            _sql(db, ("DELETE FROM meta WHERE key = ?", (key,)))
            done.append(f"delete meta {key}")
        elif op == "no_config":
            (db.parent / "config.yaml").unlink(missing_ok=True)
            done.append("delete config.yaml")
        else:
            (db.parent / f"{DB_NAME}-wal").write_bytes(draw(st.binary(min_size=0, max_size=4096)))
            done.append("garbage WAL")
    return done


@FUZZ_IO
@given(st.sampled_from(["completed", "diverged"]), st.data())
def test_load_run_survives_structural_damage(kind, data):
    run_dir = copy_run(kind)
    try:
        note(data.draw(structural_damage(run_dir / DB_NAME)))
        run = only_nandoctor_errors(load_run, run_dir)
        if run is not None:
            assert run.status in ("completed", "diverged", "interrupted", "running")
            only_nandoctor_errors(diagnose, run)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@FUZZ_IO
@given(st.sampled_from(["completed", "diverged"]),
       st.lists(st.tuples(st.sampled_from(META_KEYS), json_values.map(json.dumps) | deep_json), min_size=1, max_size=4),
       st.booleans())
@example("completed", [("data_profile", "1.5")], False)  # regression: AttributeError in the diagnoser (f0923d7)
@example("completed", [("pid", str(2**70))], True)  # regression: OverflowError from os.kill in reader._status
@example("completed", [("preflight", "[" * 5000 + "]" * 5000)], False)  # regression: RecursionError in json.loads
def test_load_run_and_diagnose_survive_random_meta_values(kind, replacements, running):
    """Meta values replaced with random (or too deeply nested) JSON: the reader reads them or refuses, and
    whatever it reads diagnoses or is refused; nothing crashes."""
    run_dir = copy_run(kind)
    try:
        statements = [("UPDATE meta SET value = ? WHERE key = ?", (v, k)) for k, v in replacements]
        if running:  # the state a kill -9 leaves: then pid and heartbeat are read
            statements.append(("UPDATE meta SET value = '\"running\"' WHERE key = 'status'", ()))
        note(statements)
        _sql(run_dir / DB_NAME, *statements)
        run = only_nandoctor_errors(load_run, run_dir)
        if run is not None:
            assert isinstance(run.meta, dict)
            only_nandoctor_errors(diagnose, run)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@FUZZ_IO
@given(st.sampled_from(["completed", "diverged"]), st.lists(st.text(max_size=12), min_size=1, max_size=3),
       st.sampled_from(META_KEYS))
def test_load_run_refuses_meta_that_is_not_json(kind, values, key):
    run_dir = copy_run(kind)
    try:
        bad = [v for v in values if not _is_json(v)]
        if bad:
            _sql(run_dir / DB_NAME, ("UPDATE meta SET value = ? WHERE key = ?", (bad[0], key)))
        run = only_nandoctor_errors(load_run, run_dir)
        assert (run is None) == bool(bad)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# ---- the reader on damaged cells and bytes (each with its regression example) ----------------------

@st.composite
def byte_flips(draw, size: int) -> list[tuple[int, int]]:
    return draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=30))


def _flip(db: Path, flips: list[tuple[int, int]]) -> None:
    data = bytearray(db.read_bytes())
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    db.write_bytes(bytes(data))


def test_load_run_survives_a_cut_anywhere():
    """Every 61st byte offset of the diverged run's store (about 6 % of the cuts crashed the reader before
    f0923d7)."""
    size = (base_run("diverged") / DB_NAME).stat().st_size
    run_dir = copy_run("diverged")
    try:
        for cut in range(0, size, 61):
            shutil.copy(base_run("diverged") / DB_NAME, run_dir / DB_NAME)
            os.truncate(run_dir / DB_NAME, cut)
            read_and_diagnose(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@FUZZ_IO
@given(st.sampled_from(["completed", "diverged"]), st.data())
@example("completed", None)  # regression: 0xC8 over the 'A' of 'CREATE TABLE meta' (f0923d7)
def test_load_run_survives_flipped_bytes(kind, data):
    run_dir = copy_run(kind)
    db = run_dir / DB_NAME
    try:
        if data is None:  # one flipped byte in the schema text: SQLite's error message is not UTF-8
            at = db.read_bytes().find(b"CREATE TABLE meta")
            _flip(db, [(at + 3, 0xC8)])
        else:
            flips = data.draw(byte_flips(db.stat().st_size))
            note(flips)
            _flip(db, flips)
        read_and_diagnose(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@FUZZ_IO
@given(st.sampled_from(["completed", "diverged"]),
       st.lists(st.tuples(st.sampled_from(sorted(CELLS)), st.integers(0, 9), cell_values), min_size=1, max_size=4),
       st.integers(0, 10**6))
@example("completed", [("steps", 0, "x")], 0)  # regression: text in steps.loss (ValueError before f0923d7)
@example("completed", [("layers", 2, 0)], 0)  # regression: fan_in 0 (ZeroDivisionError in bad_init, d9f044e)
@example("completed", [("layer_stats", 1, 0.5)], 0)  # regression: a fractional layer index (IndexError, d9f044e)
@example("diverged", [("events", 6, "[" * 5000 + "]" * 5000)], 0)  # regression: RecursionError in an event's detail
def test_load_run_survives_wrongly_typed_cells(kind, cells, seed):
    run_dir = copy_run(kind)
    try:
        statements = []
        for table, pick, value in cells:
            column = CELLS[table][pick % len(CELLS[table])] if table != "steps" or pick else "loss"
            statements.append((f"UPDATE {table} SET {column} = ? WHERE rowid IN "
                               f"(SELECT rowid FROM {table} ORDER BY rowid LIMIT 1 OFFSET ?)", (value, seed % 5)))
        note(statements)
        _sql(run_dir / DB_NAME, *statements)
        read_and_diagnose(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.parametrize("damage", ["UPDATE layer_stats SET layer = 0.5 WHERE rowid = 1",  # a float index
                                    "UPDATE layers SET fan_in = 0 WHERE layer = 0"])  # rules divide by fan_in
def test_load_run_and_diagnose_survive_a_damaged_layer_row(damage):
    run_dir = copy_run("completed")
    try:
        _sql(run_dir / DB_NAME, (damage, ()))
        read_and_diagnose(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# ---- regression tests: the config loader ----------------------------------------------------------

@pytest.mark.parametrize("key", [None, 1.5, datetime.date(2020, 1, 1)])
def test_from_mapping_with_a_null_key_at_top_level(key):
    with pytest.raises(ConfigError) as info:
        from_mapping({key: 1, "data": {"generator": "moons"}, "model": {"layers": [{"units": 2}]}})
    assert "unknown key" in info.value.message


def printable_one_line(message: str) -> bool:
    return "\n" not in message and all(c.isprintable() for c in message)


@FUZZ
@given(mostly(corrupted_text() | st.text(max_size=80), deep_yaml.map(lambda t: f"model:\n  {t}\n")))
@example("name: a\x1bb\n")  # regression: two lines, and a raw ESC sent to the terminal
@example('data: {generator: moons}\nmodel: {layers: [{units: 2}]}\n"optimizer\\n": {}\n')
def test_every_config_error_is_one_printable_line(text):
    try:
        load_config(scratch_file(text))
    except NandoctorError as exc:
        assert printable_one_line(exc.render()), exc.render()


def test_apply_a_600_part_path():
    only_nandoctor_errors(paths.apply, {}, ".".join(["a"] * 600), 1)


def test_runs_are_real_and_loadable():
    """The damaged copies start from real, readable runs (otherwise every property above is vacuous)."""
    for kind in ("completed", "diverged"):
        run = load_run(base_run(kind))
        assert run.status == kind and len(run.steps["step"]) > 0
        diagnose(run)
    with pytest.raises(RunError):
        load_run(SCRATCH / "no-such-run")
