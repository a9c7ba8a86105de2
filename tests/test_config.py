"""Config loading (SPEC section 2): every class of user error names the file, the config path and a
hint, and the CLI turns it into one message and exit 2; resolved defaults; the round trip through
`dump_config`; the `--set` path syntax."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import yaml
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.config import Config, dump_config, from_mapping, load_config, paths, to_mapping
from nandoctor.errors import ConfigError, NandoctorError

ENV = {"COLUMNS": "100", "NO_COLOR": "1"}

BASE = {
    "data": {"generator": "moons", "n_samples": 200},
    "model": {"layers": [{"units": 8, "activation": "relu"}, {"units": 2, "activation": "softmax"}]},
    "training": {"epochs": 2},
}

DELETE = object()


def raw_with(*changes) -> dict:
    """A deep copy of BASE with (key path tuple, value) changes; value DELETE removes the key."""
    raw = copy.deepcopy(BASE)
    for keys, value in changes:
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return raw


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def squash(text: str) -> str:
    """Drop all whitespace, so that assertions do not depend on where the terminal wrapped a line."""
    return "".join(text.split())


def assert_cli_error(result, *fragments: str) -> str:
    """Exit 2, nothing on stdout, a single `error:` message on stderr holding every fragment."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit | type(None)), result.exception
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    err = squash(result.stderr)
    assert result.stderr.startswith("error: ")
    assert err.count("error:") == 1
    assert "\x1b[" not in result.stderr  # NO_COLOR / not a terminal: no escape codes
    for fragment in fragments:
        assert squash(fragment) in err, (fragment, result.stderr)
    return result.stderr


def error_of(raw, file="cfg.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_mapping(raw, file=file)
    return info.value


# ---- file-level errors ---------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert "not found" in info.value.message
    assert_cli_error(cli("train", path), str(path), "not found")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="directory") as info:
        load_config(tmp_path)
    assert info.value.file == str(tmp_path)
    assert_cli_error(cli("train", tmp_path), str(tmp_path), "directory")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert info.value.message == "config file is empty"
    assert_cli_error(cli("train", path), str(path), "empty")


def test_empty_file_hint_names_a_real_command(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    hint = info.value.hint or ""
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert "nandoctor init" not in hint or "init" in commands


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    path = write(tmp_path, "data:\n  generator: moons\n   noise: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    exc = info.value
    assert exc.file == str(path)
    assert "YAML syntax error" in exc.message
    assert "line 3" in exc.message and "column 9" in exc.message
    assert_cli_error(cli("train", path), str(path), "line 3, column 9")


def test_yaml_unclosed_flow_mapping(tmp_path):
    path = write(tmp_path, "data: {generator: moons\nmodel: [\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+, column \d+"):
        load_config(path)


def test_yaml_is_read_with_a_safe_loader(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f'x: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert not marker.exists()
    assert_cli_error(cli("train", path), str(path))
    assert not marker.exists()


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(path)
    assert info.value.file == str(path)
    assert_cli_error(cli("train", path), str(path))


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_top_level_not_a_mapping(tmp_path, text, kind):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert "top level must be a mapping" in info.value.message
    assert kind in info.value.message
    assert_cli_error(cli("train", path), str(path), "mapping")


# ---- field-level errors: (changes, config path, message fragments, hint fragment or None) ----------

NAN, INF = float("nan"), float("inf")

CASES = {
    "unknown top key": ([(("trainin",), {"epochs": 1})], "trainin", ["unknown key 'trainin'"],
                        "did you mean 'training'"),
    "unknown top key far": ([(("zzz",), 1)], "zzz", ["unknown key 'zzz'"], "valid keys:"),
    "unknown nested key": ([(("optimizer",), {"lrr": 0.1})], "optimizer.lrr", ["unknown key 'lrr'"],
                           "did you mean 'lr'"),
    "unknown layer key": ([(("model", "layers", 1, "activaton"), "relu")], "model.layers[1].activaton",
                          ["unknown key 'activaton'"], "did you mean 'activation'"),
    "units str": ([(("model", "layers", 0, "units"), "ten")], "model.layers[0].units",
                  ["expected an integer", "'ten'"], None),
    "units float": ([(("model", "layers", 0, "units"), 2.5)], "model.layers[0].units",
                    ["expected an integer", "2.5"], None),
    "units bool": ([(("model", "layers", 0, "units"), True)], "model.layers[0].units", ["expected an integer"], None),
    "units missing": ([(("model", "layers", 0, "units"), DELETE)], "model.layers[0].units",
                      ["missing required key 'units'"], None),
    "shuffle int": ([(("training", "shuffle"), 3)], "training.shuffle", ["expected true or false", "3"], None),
    "lr list": ([(("optimizer",), {"lr": [1]})], "optimizer.lr", ["expected a number", "list"], None),
    "lr word": ([(("optimizer",), {"lr": "fast"})], "optimizer.lr", ["expected a number", "'fast'"], None),
    "lr bool": ([(("optimizer",), {"lr": True})], "optimizer.lr", ["expected a number"], None),
    "name int": ([(("name",), 3)], "name", ["expected a string"], None),
    "layers mapping": ([(("model", "layers"), {"units": 3})], "model.layers", ["expected a list"], None),
    "layers null": ([(("model", "layers"), None)], "model.layers", ["expected a list"], None),
    "layers empty": ([(("model", "layers"), [])], "model.layers", ["at least one layer"], None),
    "layer scalar": ([(("model", "layers", 0), 3)], "model.layers[0]", ["expected a mapping"], None),
    "section scalar": ([(("training",), 5)], "training", ["expected a mapping"], None),
    "lr zero": ([(("optimizer",), {"lr": 0})], "optimizer.lr", ["out of range", "> 0"], None),
    "lr negative": ([(("optimizer",), {"lr": -0.1})], "optimizer.lr", ["-0.1", "out of range", "> 0"], None),
    "units zero": ([(("model", "layers", 0, "units"), 0)], "model.layers[0].units", ["out of range", ">= 1"], None),
    "validation_split 1": ([(("data", "validation_split"), 1.0)], "data.validation_split",
                           ["1.0", "out of range", "< 1"], None),
    "validation_split negative": ([(("data", "validation_split"), -0.1)], "data.validation_split",
                                  ["-0.1", "out of range", ">= 0"], None),
    "batch_size zero": ([(("training", "batch_size"), 0)], "training.batch_size", ["out of range", ">= 1"], None),
    "batch_size word": ([(("training", "batch_size"), "fulll")], "training.batch_size", ["'fulll'"],
                        "did you mean 'full'"),
    "dropout 1": ([(("model", "layers", 0, "dropout"), 1.0)], "model.layers[0].dropout", ["out of range", "< 1"], None),
    "epochs zero": ([(("training", "epochs"), 0)], "training.epochs", ["out of range"], None),
    "seed negative": ([(("seed",), -1)], "seed", ["out of range"], None),
    "label_noise > 1": ([(("data", "label_noise"), 1.5)], "data.label_noise", ["out of range", "<= 1"], None),
    "std negative": ([(("model", "init"), {"name": "normal", "std": -1})], "model.init.std", ["out of range"], None),
    "activation": ([(("model", "layers", 1, "activation"), "softmx")], "model.layers[1].activation",
                   ["unknown activation 'softmx'"], "did you mean 'softmax'"),
    "activation int": ([(("model", "layers", 0, "activation"), 3)], "model.layers[0].activation",
                       ["expected one of", "relu"], None),
    "init shorthand": ([(("model", "init"), "he_normall")], "model.init", ["'he_normall'"], "did you mean 'he_normal'"),
    "layer init mapping": ([(("model", "layers", 0, "init"), {"name": "glorot_unifrom"})], "model.layers[0].init",
                           ["'glorot_unifrom'"], "did you mean 'glorot_uniform'"),
    "layer init int": ([(("model", "layers", 0, "init"), 3)], "model.layers[0].init", ["expected a mapping"], None),
    "loss shorthand": ([(("loss",), "cross_entropyy")], "loss", ["'cross_entropyy'"], "did you mean 'cross_entropy'"),
    "loss reduction": ([(("loss",), {"name": "mse", "reduction": "summ"})], "loss.reduction", ["'summ'"],
                       "did you mean 'sum'"),
    "optimizer": ([(("optimizer",), {"name": "adamm"})], "optimizer", ["'adamm'"], "did you mean 'adam'"),
    "optimizer far": ([(("optimizer",), {"name": "zzz"})], "optimizer", ["'zzz'"], "choose one of sgd"),
    "schedule": ([(("schedule",), {"name": "cosin"})], "schedule", ["'cosin'"], "did you mean 'cosine'"),
    "generator": ([(("data", "generator"), "moonz")], "data.generator", ["unknown generator 'moonz'"],
                  "did you mean 'moons'"),
    "builtin": ([(("data", "generator"), DELETE), (("data", "builtin"), "breast_cancr")], "data.builtin",
                ["unknown builtin 'breast_cancr'"], "did you mean 'breast_cancer'"),
    "dtype": ([(("training", "dtype"), "float31")], "training.dtype", ["'float31'"], "did you mean"),
    "expect cause": ([(("expect",), {"causes": ["high_lrr"]})], "expect.causes[0]", ["'high_lrr'"],
                     "did you mean 'high_lr'"),
    "two sources": ([(("data", "builtin"), "iris")], "data", ["exactly one data source", "generator, builtin"], None),
    "no source": ([(("data",), {"noise": 0.1})], "data", ["exactly one data source", "got none"], None),
    "no data section": ([(("data",), DELETE)], "data", ["exactly one data source"], None),
    "softmax hidden": ([(("model", "layers", 0, "activation"), "softmax")], "model.layers[0].activation",
                       ["softmax is only allowed on the output layer"], "relu"),
    "lr nan": ([(("optimizer",), {"lr": NAN})], "optimizer.lr", ["non-finite"], None),
    "scale inf": ([(("data", "scale"), INF)], "data.scale", ["non-finite"], None),
    "offset -inf": ([(("data", "offset"), -INF)], "data.offset", ["non-finite"], None),
    "lr nan string": ([(("optimizer",), {"lr": "nan"})], "optimizer.lr", ["non-finite"], None),
    "feature_scales inf": ([(("data", "feature_scales"), [1.0, INF])], "data.feature_scales[1]", ["non-finite"], None),
    "init std nan": ([(("model", "init"), {"name": "normal", "std": NAN})], "model.init.std", ["non-finite"], None),
    "n_features on moons": ([(("data", "n_features"), 3)], "data.n_features", ["n_features must be 2"], None),
    "n_classes on moons": ([(("data", "n_classes"), 4)], "data.n_classes", ["n_classes must be 2"], None),
    "task mismatch": ([(("data", "task"), "regression")], "data.task", ["classification"], None),
}


@pytest.mark.parametrize(("changes", "path", "fragments", "hint"), list(CASES.values()), ids=list(CASES))
def test_config_error(changes, path, fragments, hint):
    exc = error_of(raw_with(*changes))
    assert isinstance(exc, NandoctorError)
    assert exc.file == "cfg.yaml"
    assert exc.path is not None and exc.path.startswith(path), (exc.path, path)
    for fragment in fragments:
        assert fragment in exc.message, (fragment, exc.message)
    if hint is not None:
        assert exc.hint is not None and hint in exc.hint, (hint, exc.hint)
    rendered = exc.render()
    assert rendered.startswith(f"cfg.yaml: {exc.path}: ")
    assert exc.message in rendered and (exc.hint is None or exc.hint in rendered)


def test_exact_paths_for_the_spec_examples():
    """The SPEC's own example path format, with list items in brackets."""
    assert error_of(raw_with((("model", "layers", 1, "activation"), "rellu"))).path == "model.layers[1].activation"
    assert error_of(raw_with((("optimizer",), {"lrr": 1}))).path == "optimizer.lrr"
    assert error_of(raw_with((("data", "validation_split"), 1.0))).path == "data.validation_split"


@pytest.mark.parametrize("case", ["unknown nested key", "units str", "lr zero", "activation", "two sources",
                                  "softmax hidden", "lr nan", "scale inf", "dropout 1", "builtin"])
def test_config_error_through_the_cli(tmp_path, case):
    changes, path, fragments, hint = CASES[case]
    cfg = write(tmp_path, yaml.safe_dump(raw_with(*changes)))
    err = assert_cli_error(cli("train", cfg, "--out", tmp_path / "run"), str(cfg), path, *fragments)
    if hint:
        assert squash(hint) in squash(err)
    assert not (tmp_path / "run").exists()


def test_nan_and_inf_written_in_yaml(tmp_path):
    cfg = write(tmp_path, "data: {generator: moons, scale: .inf}\nmodel: {layers: [{units: 2}]}\n")
    with pytest.raises(ConfigError, match="non-finite") as info:
        load_config(cfg)
    assert (info.value.file, info.value.path) == (str(cfg), "data.scale")
    cfg = write(tmp_path, "data: {generator: moons}\nmodel: {layers: [{units: 2}]}\noptimizer: {lr: .nan}\n")
    assert_cli_error(cli("train", cfg), str(cfg), "optimizer.lr", "non-finite")


def test_huge_integer_in_a_float_field_is_a_config_error():
    exc = error_of(raw_with((("optimizer",), {"lr": 10**400})))
    assert exc.path == "optimizer.lr"


# ---- accepted spellings and resolved defaults --------------------------------------------------

def test_exponent_without_dot_is_a_number(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; the config means 0.001."""
    cfg = write(tmp_path, "data: {generator: moons}\nmodel: {layers: [{units: 2}]}\n"
                          "optimizer: {name: adam, lr: 1e-3}\n")
    assert yaml.safe_load(cfg.read_text())["optimizer"]["lr"] == "1e-3"
    lr = load_config(cfg).optimizer.lr
    assert lr == 0.001 and isinstance(lr, float)
    assert load_config(cfg).optimizer.name == "adam"


def test_exponent_string_that_is_not_a_number_stays_an_error():
    exc = error_of(raw_with((("optimizer",), {"lr": "1e-3x"})))
    assert exc.path == "optimizer.lr" and "expected a number" in exc.message


@pytest.mark.parametrize(("alias", "name"), [("xavier_uniform", "glorot_uniform"), ("xavier_normal", "glorot_normal"),
                                             ("kaiming_normal", "he_normal"), ("kaiming_uniform", "he_uniform")])
def test_init_aliases(alias, name):
    cfg = from_mapping(raw_with((("model", "init"), alias), (("model", "layers", 0, "init"), {"name": alias})))
    assert cfg.model.init.name == name
    assert cfg.model.layers[0].init.name == name
    assert cfg.model.layers[1].init.name == name


def test_init_shorthand_equals_mapping():
    short = from_mapping(raw_with((("model", "init"), "he_normal")))
    long = from_mapping(raw_with((("model", "init"), {"name": "he_normal"})))
    assert short == long
    assert short.model.init.name == "he_normal" and short.model.init.gain == 1.0


def test_init_mapping_with_parameters_and_defaults():
    cfg = from_mapping(raw_with((("model", "init"), {"name": "normal", "std": 1.0}),
                                (("model", "layers", 1, "init"), "normal")))
    assert cfg.model.init.std == 1.0
    assert cfg.model.layers[0].init.name == "normal" and cfg.model.layers[0].init.std == 1.0  # inherited
    assert cfg.model.layers[1].init.std == 0.05  # its own `normal`: the SPEC default std
    cfg = from_mapping(raw_with((("model", "init"), {"name": "uniform", "gain": 2})))
    assert cfg.model.init.limit == 0.05 and cfg.model.init.gain == 2.0
    cfg = from_mapping(raw_with((("model", "init"), "constant")))
    assert cfg.model.init.value == 0.0


def test_per_layer_init_and_bias_override():
    cfg = from_mapping(raw_with((("model", "init"), "he_uniform"), (("model", "bias_init"), 0.5),
                                (("model", "layers", 1, "init"), "zeros"), (("model", "layers", 1, "bias_init"), -1)))
    assert [layer.init.name for layer in cfg.model.layers] == ["he_uniform", "zeros"]
    assert [layer.bias_init for layer in cfg.model.layers] == [0.5, -1.0]


def test_loss_shorthand_equals_mapping():
    short = from_mapping(raw_with((("loss",), "mse")))
    long = from_mapping(raw_with((("loss",), {"name": "mse"})))
    assert short == long
    assert (short.loss.name, short.loss.stable, short.loss.reduction) == ("mse", True, "mean")
    cfg = from_mapping(raw_with((("loss",), {"name": "cross_entropy", "stable": False, "reduction": "sum"})))
    assert (cfg.loss.name, cfg.loss.stable, cfg.loss.reduction) == ("cross_entropy", False, "sum")
    assert from_mapping(raw_with()).loss.name == "cross_entropy"


def test_batch_size_full():
    cfg = from_mapping(raw_with((("training", "batch_size"), "full")))
    assert cfg.training.batch_size == "full"
    assert from_mapping(raw_with()).training.batch_size == 32


@pytest.mark.parametrize(("generator", "noise", "n_classes", "n_features", "task"), [
    ("moons", 0.1, 2, 2, "classification"),
    ("circles", 0.1, 2, 2, "classification"),
    ("xor", 0.1, 2, 2, "classification"),
    ("spirals", 0.2, 3, 2, "classification"),
    ("checkerboard", 0.0, 2, 2, "classification"),
    ("blobs", 1.0, 3, 2, "classification"),
    ("linear", 0.1, None, 1, "regression"),
    ("sine", 0.1, None, 1, "regression"),
])
def test_generator_defaults(generator, noise, n_classes, n_features, task):
    data = from_mapping({"data": {"generator": generator}, "model": {"layers": [{"units": 1}]}}).data
    assert data.noise == noise
    assert data.n_classes == n_classes
    assert data.n_features == n_features
    assert data.task == task
    assert data.n_samples == 1000
    assert data.validation_split == 0.2


def test_explicit_generator_values_win():
    data = from_mapping({"data": {"generator": "blobs", "noise": 0.0, "n_classes": 5, "n_features": 7,
                                  "n_samples": 50}, "model": {"layers": [{"units": 5}]}}).data
    assert (data.noise, data.n_classes, data.n_features, data.n_samples) == (0.0, 5, 7, 50)


def test_other_defaults():
    cfg = from_mapping(raw_with((("model", "layers", 0, "activation"), "leaky_relu"),
                                (("model", "layers"), [{"units": 4, "activation": "leaky_relu"},
                                                       {"units": 4, "activation": "elu"},
                                                       {"units": 4, "activation": "elu", "alpha": 0.3},
                                                       {"units": 2, "activation": "softmax"}])))
    assert [layer.alpha for layer in cfg.model.layers] == [0.01, 1.0, 0.3, None]
    assert cfg.name == "config"
    assert cfg.seed == 0
    assert cfg.model.init.name == "glorot_uniform"
    assert (cfg.optimizer.name, cfg.optimizer.momentum, cfg.optimizer.beta1, cfg.optimizer.beta2,
            cfg.optimizer.eps) == ("sgd", 0.9, 0.9, 0.999, 1e-8)
    assert cfg.schedule.name == "constant"
    assert (cfg.training.epochs, cfg.training.shuffle, cfg.training.dtype, cfg.training.stop_on_nonfinite) == (
        2, True, "float32", True)
    assert cfg.expect.healthy is True and cfg.expect.causes == ()


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.01), ("momentum", 0.01), ("adam", 1e-3), ("adamw", 1e-3)])
def test_lr_default_depends_on_the_optimizer(optimizer, lr):
    cfg = from_mapping(raw_with((("optimizer",), optimizer)))
    assert cfg.optimizer.name == optimizer
    assert cfg.optimizer.lr == lr
    assert from_mapping(raw_with((("optimizer",), {"name": optimizer, "lr": 0.5}))).optimizer.lr == 0.5


def test_schedule_defaults():
    assert from_mapping(raw_with((("schedule",), "step"))).schedule.gamma == 0.1
    assert from_mapping(raw_with((("schedule",), {"name": "exponential"}))).schedule.gamma == 0.95
    cosine = from_mapping(raw_with((("schedule",), "cosine"))).schedule
    assert cosine.min_lr == 0.0
    plateau = from_mapping(raw_with((("schedule",), "reduce_on_plateau"))).schedule
    assert (plateau.factor, plateau.patience) == (0.5, 5)


def test_name_defaults_to_the_file_stem(tmp_path):
    cfg = write(tmp_path, yaml.safe_dump(BASE), name="moons-relu.yaml")
    assert load_config(cfg).name == "moons-relu"
    cfg = write(tmp_path, yaml.safe_dump({**BASE, "name": "explicit"}), name="other.yaml")
    assert load_config(cfg).name == "explicit"


def test_config_is_frozen():
    cfg = from_mapping(raw_with())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


# ---- resolved-config round trip --------------------------------------------------------------

ROUND_TRIP = {
    "generator": raw_with(),
    "blobs": {"name": "b", "seed": 7, "data": {"generator": "blobs", "n_classes": 4, "n_features": 5, "noise": 0.5,
                                               "scale": 100.0, "feature_scales": [1, 10, 100, 1, 1], "offset": -3,
                                               "outliers": 0.01, "missing": 0.05, "label_noise": 0.1,
                                               "impute": "median", "preprocess": "standardize"},
              "model": {"init": {"name": "normal", "gain": 2.0},
                        "layers": [{"units": 16, "activation": "leaky_relu", "norm": "batch", "dropout": 0.2},
                                   {"units": 8, "activation": "elu", "init": "kaiming_normal", "bias_init": 0.1},
                                   {"units": 4, "activation": "softmax", "init": {"name": "uniform", "limit": 0.3}}]},
              "loss": {"name": "cross_entropy", "stable": False, "reduction": "sum"},
              "optimizer": {"name": "adamw", "weight_decay": 0.01, "clip_norm": 1.0, "clip_value": 5},
              "schedule": {"name": "warmup_cosine", "warmup": 10, "min_lr": 1e-5},
              "training": {"epochs": 3, "batch_size": "full", "dtype": "float64", "shuffle": False},
              "monitor": {"every": 3}, "expect": {"healthy": False, "causes": ["high_lr", "bad_init"]}},
    "builtin": {"data": {"builtin": "iris", "validation_split": 0},
                "model": {"layers": [{"units": 8, "activation": "tanh", "init": "orthogonal"},
                                     {"units": 3, "activation": "softmax"}]},
                "optimizer": "rmsprop", "schedule": "step"},
    "regression": {"data": {"generator": "sine", "n_features": 3},
                   "model": {"init": "constant", "layers": [{"units": 8, "activation": "gelu"}, {"units": 1}]},
                   "loss": "huber", "optimizer": {"name": "nesterov", "lr": 1e-3, "momentum": 0.5},
                   "schedule": {"name": "reduce_on_plateau", "factor": 0.1, "patience": 2}},
    "exponential": {"data": {"generator": "spirals"}, "model": {"layers": [{"units": 3, "activation": "softmax"}]},
                    "optimizer": {"name": "adagrad"}, "schedule": "exponential", "training": {"batch_size": 7}},
    "csv": {"data": {"csv": "d.csv", "target": "label"}, "model": {"layers": [{"units": 1, "activation": "sigmoid"}]},
            "loss": "binary_cross_entropy"},
}


@pytest.mark.parametrize("raw", list(ROUND_TRIP.values()), ids=list(ROUND_TRIP))
def test_round_trip(raw):
    cfg = from_mapping(raw, default_name="rt")
    text = dump_config(cfg)
    again = from_mapping(yaml.safe_load(text))
    assert again == cfg
    assert dump_config(again) == text
    assert isinstance(cfg, Config)
    # resolved: no layer is left without an init or bias, the lr is set, the name is filled
    assert all(layer.init is not None and layer.bias_init is not None for layer in cfg.model.layers)
    assert cfg.optimizer.lr is not None and cfg.name is not None


def test_round_trip_keeps_resolved_values():
    cfg = from_mapping(ROUND_TRIP["blobs"])
    assert cfg.model.layers[0].init == cfg.model.init
    assert cfg.model.init.std == 0.05 and cfg.model.init.gain == 2.0
    assert cfg.model.layers[1].init.name == "he_normal"
    assert cfg.model.layers[1].alpha == 1.0 and cfg.model.layers[0].alpha == 0.01
    assert cfg.data.feature_scales == (1.0, 10.0, 100.0, 1.0, 1.0)
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.clip_value == 5.0
    assert cfg.expect.causes == ("high_lr", "bad_init")
    mapping = to_mapping(cfg)
    assert mapping["data"]["feature_scales"] == [1.0, 10.0, 100.0, 1.0, 1.0]
    assert "SHORTHAND" not in mapping["loss"] and "SHORTHAND" not in mapping["model"]["init"]
    assert yaml.safe_load(dump_config(cfg))["training"]["batch_size"] == "full"


# ---- --set: the SPEC path syntax ----------------------------------------------------------------

@pytest.fixture
def cfg_file(tmp_path):
    raw = raw_with((("loss",), "cross_entropy"), (("optimizer",), {"name": "sgd", "lr": 0.1}))
    raw["model"]["layers"].insert(0, {"units": 16, "activation": "tanh", "init": {"name": "normal", "std": 1.0}})
    return write(tmp_path, yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize(("text", "path", "value"), [
    ("a.b=1", "a.b", 1),
    ("optimizer.lr=1e-3", "optimizer.lr", 0.001),
    ("optimizer.lr=0.5", "optimizer.lr", 0.5),
    ("training.shuffle=false", "training.shuffle", False),
    ("training.batch_size=full", "training.batch_size", "full"),
    ("model.layers.0.activation=relu", "model.layers.0.activation", "relu"),
    ("name=a=b", "name", "a=b"),
    (" seed = 3 ", "seed", 3),
    ("data.feature_scales=[1, 2]", "data.feature_scales", [1, 2]),
    ("optimizer.clip_norm=null", "optimizer.clip_norm", None),
])
def test_parse_assignment(text, path, value):
    got_path, got = paths.parse_assignment(text)
    assert got_path == path
    assert got == value and type(got) is type(value)


def test_apply_does_not_mutate_its_input():
    raw = raw_with()
    before = copy.deepcopy(raw)
    out = paths.apply(raw, "model.layers.*.units", 5)
    assert raw == before
    assert [layer["units"] for layer in out["model"]["layers"]] == [5, 5]


@pytest.mark.parametrize(("selector", "picked"), [
    ("0:-1", [0, 1, 2]), (":2", [0, 1]), ("2:", [2, 3]), ("-2:", [2, 3]), ("1:3", [1, 2]), ("0:99", [0, 1, 2, 3]),
    ("*", [0, 1, 2, 3]), ("-1", [3]),
])
def test_a_slice_of_list_items_selects_what_python_would(selector, picked):
    raw = {"model": {"layers": [{"units": 4} for _ in range(4)]}}
    out = paths.apply(raw, f"model.layers.{selector}.norm", "batch")
    assert [i for i, layer in enumerate(out["model"]["layers"]) if layer.get("norm") == "batch"] == picked


@pytest.mark.parametrize(("patch", "shown"), [
    ({f"model.layers.{i}.norm": "batch" for i in range(12)}, {"model.layers.0:12.norm": "batch"}),
    ({"model.layers.0.init": "he_normal", "model.layers.1.init": "he_normal", "model.layers.3.init": "he_normal",
      "model.layers.4.init": "glorot_uniform", "optimizer.lr": 0.01},
     {"model.layers.0:2.init": "he_normal", "model.layers.3.init": "he_normal",
      "model.layers.4.init": "glorot_uniform", "optimizer.lr": 0.01}),
    ({"model.layers.2.activation": "relu", "model.layers.2.init": "he_normal", "model.layers.3.activation": "relu"},
     {"model.layers.2.activation": "relu", "model.layers.2.init": "he_normal", "model.layers.3.activation": "relu"}),
])
def test_compact_writes_runs_of_items_as_one_slice_that_applies_the_same(patch, shown):
    assert paths.compact(patch) == shown
    raw = {"model": {"layers": [{"units": 4} for _ in range(12)]}, "optimizer": {"lr": 1.0}}
    assert paths.apply_all(raw, paths.compact(patch)) == paths.apply_all(raw, patch)


def test_set_scalars(cfg_file):
    cfg = load_config(cfg_file, ["optimizer.lr=1e-3", "training.shuffle=false", "seed=9", "name=exp"])
    assert cfg.optimizer.lr == 0.001 and isinstance(cfg.optimizer.lr, float)
    assert cfg.training.shuffle is False
    assert cfg.seed == 9 and cfg.name == "exp"


def test_set_later_override_wins(cfg_file):
    assert load_config(cfg_file, ["optimizer.lr=0.2", "optimizer.lr=0.3"]).optimizer.lr == 0.3


def test_set_list_item(cfg_file):
    cfg = load_config(cfg_file, ["model.layers.1.activation=sigmoid", "model.layers.0.units=3"])
    assert [(layer.units, layer.activation) for layer in cfg.model.layers] == [
        (3, "tanh"), (8, "sigmoid"), (2, "softmax")]


def test_set_star_changes_every_layer(cfg_file):
    before = load_config(cfg_file)
    assert [layer.init.name for layer in before.model.layers] == ["normal", "glorot_uniform", "glorot_uniform"]
    cfg = load_config(cfg_file, ["model.layers.*.init=he_normal"])
    assert [layer.init.name for layer in cfg.model.layers] == ["he_normal"] * 3
    assert cfg.model.init.name == "glorot_uniform"


def test_set_star_on_a_nested_key(cfg_file):
    cfg = load_config(cfg_file, ["model.layers.*.dropout=0.1"])
    assert [layer.dropout for layer in cfg.model.layers] == [0.1] * 3


def test_set_into_a_shorthand_string(cfg_file):
    assert yaml.safe_load(cfg_file.read_text())["loss"] == "cross_entropy"
    cfg = load_config(cfg_file, ["loss.stable=false"])
    assert (cfg.loss.name, cfg.loss.stable) == ("cross_entropy", False)


def test_set_into_a_shorthand_init_keeps_its_name(tmp_path):
    cfg_path = write(tmp_path, yaml.safe_dump(raw_with((("model", "init"), "normal"))))
    cfg = load_config(cfg_path, ["model.init.std=0.5"])
    assert (cfg.model.init.name, cfg.model.init.std) == ("normal", 0.5)


def test_set_creates_missing_sections(cfg_file):
    assert "schedule" not in yaml.safe_load(cfg_file.read_text())
    cfg = load_config(cfg_file, ["schedule.name=cosine", "expect.healthy=false"])
    assert cfg.schedule.name == "cosine"
    assert cfg.expect.healthy is False


def test_set_value_is_validated_like_the_file(cfg_file):
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, ["optimizer.lr=-1"])
    assert (info.value.file, info.value.path) == (str(cfg_file), "optimizer.lr")
    assert "out of range" in info.value.message
    with pytest.raises(ConfigError, match="non-finite"):
        load_config(cfg_file, ["optimizer.lr=nan"])
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, ["model.layers.1.activation=rellu"])
    assert info.value.path == "model.layers[1].activation" and "did you mean 'relu'" in info.value.hint
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, ["optimizer.lrr=0.1"])
    assert info.value.path == "optimizer.lrr" and "did you mean 'lr'" in info.value.hint


BAD_OVERRIDES = {
    "no equals": ("foo", ["malformed override 'foo'"], "PATH=VALUE", None),
    "no path": ("=1", ["malformed override '=1'"], "PATH=VALUE", None),
    "index out of range": ("model.layers.9.units=3", ["index 9 out of range", "3 items"], None, "model.layers"),
    "not an index": ("model.layers.x.units=3", ["'x' is not an index, a slice (a:b) or '*'"], None, "model.layers"),
    "empty key": ("model..units=3", ["malformed path 'model..units'"], "model.layers.0.units", None),
    "star on a mapping": ("model.*.units=3", ["'*' only selects list items"], None, "model"),
    "bad yaml value": ("optimizer.lr=[1", ["not valid YAML"], None, None),
}


@pytest.mark.parametrize(("text", "fragments", "hint", "path"), list(BAD_OVERRIDES.values()), ids=list(BAD_OVERRIDES))
def test_malformed_override(cfg_file, text, fragments, hint, path):
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, [text])
    exc = info.value
    for fragment in fragments:
        assert fragment in exc.message, (fragment, exc.message)
    if hint:
        assert exc.hint and hint in exc.hint
    assert exc.path == path
    if path is not None:
        assert exc.file == str(cfg_file)
    result = cli("train", cfg_file, "--set", text, "--out", cfg_file.parent / "run")
    assert_cli_error(result, *fragments)
    assert not (cfg_file.parent / "run").exists()


def test_override_list_is_not_applied_to_the_file(cfg_file):
    text = cfg_file.read_text()
    load_config(cfg_file, ["optimizer.lr=0.7"])
    assert cfg_file.read_text() == text
    assert load_config(cfg_file).optimizer.lr == 0.1


def test_seed_and_epochs_flags_are_validated(cfg_file):
    assert_cli_error(cli("train", cfg_file, "--epochs", "0"), "training.epochs", "out of range")
    assert_cli_error(cli("train", cfg_file, "--seed", "-1"), "seed", "out of range")


def test_nonfinite_sentinels_are_not_silently_numbers():
    assert math.isnan(paths.parse_assignment("x=nan")[1])
    assert paths.parse_assignment("x=.inf")[1] == INF
