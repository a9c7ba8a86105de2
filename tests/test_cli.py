"""The command line as users and CI scripts see it (SPEC sections 1, 4 and 4b): exit codes, the JSON
shapes, the run directory, and errors that are one message instead of a traceback."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os

import pytest
import yaml
from typer.testing import CliRunner

from nandoctor import __version__
from nandoctor.cli import app
from nandoctor.config import load_config
from nandoctor.names import CAUSES

ENV = {"COLUMNS": "100", "NO_COLOR": "1"}

TINY = {
    "seed": 0,
    "data": {"generator": "moons", "n_samples": 200},
    "model": {"layers": [{"units": 8, "activation": "relu"}, {"units": 2, "activation": "softmax"}]},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "training": {"epochs": 2, "batch_size": 32},
}
N_TRAIN = 160  # 200 samples, validation_split 0.2
DIVERGING = {**TINY, "optimizer": {"name": "sgd", "lr": 1.0e6}}
EPOCH_KEYS = {"epoch", "train_loss", "val_loss", "train_metric", "val_metric"}
NONFINITE_KEYS = {"step", "epoch", "phase", "layer", "tensor", "detail"}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def squash(text: str) -> str:
    """Drop all whitespace, so that assertions do not depend on where the terminal wrapped a line."""
    return "".join(text.split())


def assert_error(result, *fragments: str) -> None:
    """Exit 2 with one `error:` message on stderr naming every fragment, and no traceback anywhere."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit | type(None)), result.exception
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert squash(fragment) in squash(result.stderr), (fragment, result.stderr)


def write_config(directory, raw, name="tiny.yaml"):
    path = directory / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def train_json(config, out, *extra):
    result = cli("train", config, "--out", out, "--json", *extra)
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """One tiny healthy run shared by the tests below: (train result, run dir, parsed JSON)."""
    root = tmp_path_factory.mktemp("healthy")
    config = write_config(root, TINY)
    run = root / "run"
    result = train_json(config, run)
    return result, run, json.loads(result.stdout)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """One diverging run (sgd lr 1e6), trained without --strict."""
    root = tmp_path_factory.mktemp("diverged")
    config = write_config(root, DIVERGING, name="div.yaml")
    run = root / "run"
    result = train_json(config, run)
    return result, run, json.loads(result.stdout), config


# ---- version, help, explain ----------------------------------------------------------------------

def test_version():
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"nandoctor {__version__}"
    assert __version__ == importlib.metadata.version("nandoctor")


def test_help_lists_the_commands():
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("train", "diagnose", "explain"):
        assert command in result.stdout
    assert "Traceback" not in result.stdout


def test_unknown_option_is_exit_2(tmp_path):
    result = cli("train", write_config(tmp_path, TINY), "--bogus")
    assert result.exit_code == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert "--bogus" in result.stderr


def test_explain_lists_every_cause():
    result = cli("explain")
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert sorted(listed) == sorted(CAUSES)
    assert len(CAUSES) == 13


def test_explain_high_lr_has_what_why_fix():
    result = cli("explain", "high_lr")
    assert result.exit_code == 0
    text = result.stdout
    assert text.startswith("high_lr")
    headings = [line.strip().lower() for line in text.splitlines() if line and not line.startswith(" ")]
    assert any(h.startswith("what") for h in headings), headings
    assert any(h.startswith("why") for h in headings), headings
    assert any("fix" in h for h in headings), headings
    assert "lr" in text.lower() and len(text) > 200


@pytest.mark.parametrize("cause", CAUSES)
def test_explain_every_cause(cause):
    result = cli("explain", cause)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(cause)
    assert len(result.stdout.splitlines()) >= 6


def test_explain_unknown_cause():
    result = cli("explain", "high_lrr")
    assert_error(result, "unknown cause 'high_lrr'", "did you mean 'high_lr'?")


# ---- train ---------------------------------------------------------------------------------------

def test_train_json_matches_spec_4b(healthy):
    result, run, payload = healthy
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().count("\n") == 0  # exactly one JSON object and nothing else
    assert set(payload) >= {"schema", "run", "status", "steps", "first_nonfinite", "epochs"}
    assert payload["schema"] == 1
    assert payload["run"] == str(run)
    assert payload["status"] == "completed"
    assert payload["first_nonfinite"] is None
    assert payload["steps"] == TINY["training"]["epochs"] * math.ceil(N_TRAIN / TINY["training"]["batch_size"])
    epochs = payload["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert set(e) >= EPOCH_KEYS
        assert isinstance(e["train_loss"], float) and math.isfinite(e["train_loss"])
        assert isinstance(e["val_loss"], float)
        assert 0.0 <= e["train_metric"] <= 1.0 and 0.0 <= e["val_metric"] <= 1.0


def test_train_writes_the_run_directory(healthy):
    _, run, _ = healthy
    assert (run / "config.yaml").is_file()
    assert (run / "telemetry.sqlite").is_file()
    recorded = load_config(run / "config.yaml")  # the resolved config loads back as it is
    assert recorded.name == "tiny"
    assert recorded.data.generator == "moons" and recorded.data.n_samples == 200
    assert recorded.optimizer.lr == 0.1
    assert [layer.units for layer in recorded.model.layers] == [8, 2]


def test_train_human_output_names_the_run(tmp_path):
    config = write_config(tmp_path, {**TINY, "training": {"epochs": 1}})
    result = cli("train", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert str(tmp_path / "run") in squash(result.stdout)
    assert "Traceback" not in result.stdout + result.stderr


def test_train_quiet_prints_only_the_run_path(tmp_path):
    config = write_config(tmp_path, {**TINY, "training": {"epochs": 1}})
    result = cli("train", config, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "run")


def test_train_default_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, {**TINY, "training": {"epochs": 1}}, name="moons-relu.yaml")
    result = cli("train", config, "--json")
    assert result.exit_code == 0, result.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("moons-relu-")
    assert json.loads(result.stdout)["run"] == os.path.join("runs", runs[0].name)


def test_train_refuses_a_non_empty_out_dir(tmp_path):
    config = write_config(tmp_path, TINY)
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = cli("train", config, "--out", out)
    assert_error(result, str(out), "not empty")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


def test_train_refuses_an_out_path_that_is_a_file(tmp_path):
    config = write_config(tmp_path, TINY)
    out = tmp_path / "a-file"
    out.write_text("x")
    assert_error(cli("train", config, "--out", out), str(out))
    assert out.read_text() == "x"


def test_train_into_an_existing_empty_dir(tmp_path):
    config = write_config(tmp_path, {**TINY, "training": {"epochs": 1}})
    out = tmp_path / "empty"
    out.mkdir()
    result = cli("train", config, "--out", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (out / "config.yaml").is_file()


@pytest.mark.parametrize(("raw", "fragments"), [
    ({**TINY, "optimizer": {"lrr": 0.1}}, ["optimizer.lrr", "did you mean 'lr'"]),
    ({**TINY, "data": {"csv": "missing.csv"}}, ["missing.csv"]),
])
def test_bad_input_writes_no_run_directory(tmp_path, monkeypatch, raw, fragments):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, raw)
    result = cli("train", config)
    assert_error(result, *fragments)
    assert not (tmp_path / "runs").exists()


def test_train_overrides_are_recorded(tmp_path):
    config = write_config(tmp_path, TINY)
    run = tmp_path / "run"
    result = train_json(config, run, "--set", "optimizer.lr=0.5", "--seed", "3", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert len(payload["epochs"]) == 1
    assert payload["steps"] == math.ceil(N_TRAIN / 32)
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["optimizer"]["lr"] == 0.5
    assert recorded["seed"] == 3
    assert recorded["training"]["epochs"] == 1
    assert yaml.safe_load(config.read_text())["optimizer"]["lr"] == 0.1  # the file itself is untouched


def test_train_set_star_is_recorded(tmp_path):
    config = write_config(tmp_path, TINY)
    run = tmp_path / "run"
    result = train_json(config, run, "--set", "model.layers.*.init=he_normal", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert [layer["init"]["name"] for layer in recorded["model"]["layers"]] == ["he_normal", "he_normal"]


def test_diverging_run_without_strict_exits_0(diverged):
    result, run, payload, _ = diverged
    assert result.exit_code == 0, result.stderr
    assert payload["status"] == "diverged"
    fn = payload["first_nonfinite"]
    assert fn is not None and set(fn) >= NONFINITE_KEYS
    assert payload["steps"] == fn["step"]  # stop_on_nonfinite: training stopped where it went non-finite
    assert payload["epochs"][-1]["train_loss"] is None  # a non-finite value is written as null
    assert (run / "config.yaml").is_file() and (run / "telemetry.sqlite").is_file()


def test_diverging_run_with_strict_exits_1(tmp_path, diverged):
    config = diverged[3]
    result = cli("train", config, "--out", tmp_path / "run", "--strict", "--quiet")
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.strip() == str(tmp_path / "run")


def test_healthy_run_with_strict_exits_0(tmp_path):
    config = write_config(tmp_path, {**TINY, "training": {"epochs": 1}})
    result = cli("train", config, "--out", tmp_path / "run", "--strict", "--quiet")
    assert result.exit_code == 0, (result.stdout, result.stderr)


# ---- diagnose ------------------------------------------------------------------------------------

def test_diagnose_json_healthy(healthy):
    _, run, _ = healthy
    result = cli("diagnose", run, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) >= {"schema", "run", "status", "healthy", "verdict", "first_nonfinite", "causes"}
    assert payload["schema"] == 1
    assert payload["run"] == str(run)
    assert payload["status"] == "completed"
    assert payload["healthy"] is True
    assert payload["first_nonfinite"] is None
    assert isinstance(payload["verdict"], str) and payload["verdict"] and "\n" not in payload["verdict"]
    assert all(c["severity"] != "error" for c in payload["causes"])


def test_diagnose_human_healthy(healthy):
    _, run, _ = healthy
    result = cli("diagnose", run)
    assert result.exit_code == 0
    assert "HEALTHY" in result.stdout and "UNHEALTHY" not in result.stdout


def test_diagnose_diverged_run(diverged):
    _, run, _, _ = diverged
    result = cli("diagnose", run, "--json")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    payload = json.loads(result.stdout)
    assert payload["healthy"] is False and payload["status"] == "diverged"
    fn = payload["first_nonfinite"]
    assert set(fn) >= NONFINITE_KEYS
    assert fn["phase"] in {"data", "forward", "loss", "backward", "update"}
    assert isinstance(fn["step"], int) and fn["step"] >= 1 and fn["epoch"] >= 1
    causes = payload["causes"]
    assert any(c["severity"] == "error" for c in causes)
    assert causes[0]["id"] == "high_lr"
    scores = [c["score"] for c in causes]
    assert scores == sorted(scores, reverse=True)
    for c in causes:
        assert c["id"] in CAUSES and c["severity"] in {"error", "warning", "info"}
        assert set(c) >= {"id", "title", "severity", "score", "evidence", "fixes"}
        assert all("patch" in fix and "summary" in fix for fix in c["fixes"])


def test_diagnose_diverged_human_output(diverged):
    _, run, _, _ = diverged
    result = cli("diagnose", run, "--top", "1")
    assert result.exit_code == 1
    assert "UNHEALTHY" in result.stdout
    assert "high_lr" in result.stdout and "first non-finite" in result.stdout


def test_diagnose_missing_dir(tmp_path):
    path = tmp_path / "no-such-run"
    assert_error(cli("diagnose", path), str(path), "not found")


def test_diagnose_dir_without_telemetry(tmp_path):
    assert_error(cli("diagnose", tmp_path), str(tmp_path), "telemetry.sqlite")


def test_diagnose_a_file(tmp_path):
    path = write_config(tmp_path, TINY)
    assert_error(cli("diagnose", path), str(path), "not a directory")


@pytest.mark.parametrize("content", [bytes(range(256)) * 16, b"", b"SQLite format 3\x00" + b"\x07" * 200])
def test_diagnose_garbage_telemetry(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "telemetry.sqlite").write_bytes(content)
    for args in (("diagnose", run), ("diagnose", run, "--json")):
        assert_error(cli(*args), str(run / "telemetry.sqlite"))
    assert (run / "telemetry.sqlite").read_bytes() == content  # diagnose only reads


def test_error_is_one_line_however_long(tmp_path):
    deep = tmp_path / ("a-rather-long-directory-name-" * 3) / "nested"
    deep.mkdir(parents=True)
    result = cli("train", deep / "missing-config.yaml")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---- what a person reads: nothing cut, nothing hard-wrapped that is meant to be copied ----------

def narrow(*args, width=60):
    return CliRunner().invoke(app, [str(a) for a in args], env={**ENV, "COLUMNS": str(width)})


def test_diagnose_set_hints_stay_whole_on_a_narrow_terminal(diverged):
    _, run, _, _ = diverged
    result = narrow("diagnose", run, "--no-charts")
    hints = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("--set")]
    assert hints, result.stdout
    for hint in hints:  # every `--set` is followed by its PATH=VALUE on the same line
        parts = hint.split()
        assert all("=" in parts[i + 1] for i, p in enumerate(parts) if p == "--set"), hint


def test_diagnose_names_the_role_of_the_first_nonfinite_layer(diverged):
    _, run, payload, _ = diverged
    result = cli("diagnose", run, "--no-charts")
    role = payload["first_nonfinite"].get("role") or "producer"
    line = next(line for line in result.stdout.splitlines() if line.startswith("first non-finite:"))
    assert line.endswith(f"[{role}]"), line


def test_diagnose_prints_the_verdict_before_the_charts(diverged):
    _, run, _, _ = diverged
    out = cli("diagnose", run).stdout
    assert out.index("UNHEALTHY") < out.index("loss (") < out.index("gradient norm") < out.index("Ranked causes")


def test_explain_keeps_the_indent_when_it_wraps():
    result = narrow("explain", "high_lr", width=50)
    headings = [line for line in result.stdout.splitlines() if line and not line.startswith("  ")]
    assert headings == ["high_lr — Learning rate too high", "What it detects", "Why it matters", "How to fix it",
                        "Explains (symptoms ranked under it)"]
    assert all(line == line.rstrip() for line in result.stdout.splitlines())  # no padding to the width


def test_fix_refuses_an_existing_output_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, DIVERGING, name="div.yaml")
    (tmp_path / "div.fixed.yaml").write_text("mine\n")
    assert_error(cli("fix", config), "div.fixed.yaml", "already exists")
    assert not (tmp_path / "runs").exists()  # nothing was trained
    assert (tmp_path / "div.fixed.yaml").read_text() == "mine\n"


def test_fix_turns_an_expect_unhealthy_block_into_healthy(tmp_path, diverged):
    _, run, _, _ = diverged
    config = write_config(tmp_path, {**DIVERGING, "expect": {"healthy": False, "causes": ["high_lr"]}}, "div.yaml")
    result = cli("fix", config, "--run", run)
    assert result.exit_code == 0, result.stderr
    assert "expect: block now says healthy" in result.stdout
    fixed = yaml.safe_load((tmp_path / "div.fixed.yaml").read_text())
    assert fixed["expect"] == {"healthy": True, "causes": []}
    assert fixed["optimizer"]["lr"] < DIVERGING["optimizer"]["lr"]


def test_runs_lists_the_runs_inside_a_check_folder_with_whole_paths(tmp_path, monkeypatch, healthy):
    import shutil

    _, run, _ = healthy
    monkeypatch.chdir(tmp_path)
    nested = os.path.join("runs", "check-20260101-000000", "a-config-with-a-rather-long-name")
    shutil.copytree(run, nested)
    shutil.copytree(run, os.path.join("runs", "plain"))
    result = narrow("runs", "runs", width=80)
    assert result.exit_code == 0, result.stderr
    assert nested in result.stdout and os.path.join("runs", "plain") in result.stdout
    listed = json.loads(cli("runs", "runs", "--json").stdout)
    assert [r["run"] for r in listed] == [nested, os.path.join("runs", "plain")]


def test_check_table_keeps_config_names_whole(tmp_path):
    name = "a-healthy-config-with-a-long-name.yaml"
    config = write_config(tmp_path, TINY, name=name)
    result = narrow("check", config, "--max-steps", "3", "--out", tmp_path / "out", width=80)
    assert result.exit_code == 0, result.stdout
    assert name.removesuffix(".yaml") in result.stdout


def test_check_with_an_unwritable_junit_path_trains_nothing(tmp_path):
    config = write_config(tmp_path, TINY)
    result = cli("check", config, "--junit", tmp_path / "no-such-dir" / "report.xml", "--out", tmp_path / "out")
    assert_error(result, "report.xml", "no such directory")
    assert not (tmp_path / "out").exists()
