"""check exit codes and JUnit XML, fix keeping the user's text, and --verify correcting a wrong guess."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.config import from_mapping
from nandoctor.diagnose import diagnose
from nandoctor.telemetry.reader import load_run
from nandoctor.training import run_training
from nandoctor.verify import verify

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
HEALTHY = """\
# a healthy little net; this comment must survive `fix`
seed: 0
data: {generator: moons, n_samples: 300, preprocess: standardize}
model:
  init: he_normal
  layers:
    - {units: 16, activation: relu}
    - {units: 2, activation: softmax}
optimizer: {name: adam, lr: 0.01}   # inline comment
training: {epochs: 5, batch_size: 32}
"""
SICK = HEALTHY.replace("optimizer: {name: adam, lr: 0.01}", "optimizer: {name: sgd, lr: 50.0}")


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_check_exit_0_when_every_config_is_as_expected_and_junit_parses(tmp_path):
    write(tmp_path / "cfgs", "ok.yaml", HEALTHY) if (tmp_path / "cfgs").mkdir() is None else None
    write(tmp_path / "cfgs", "sick.yaml", SICK + "expect: {healthy: false, causes: [high_lr]}\n")
    junit = tmp_path / "report.xml"
    res = cli("check", str(tmp_path / "cfgs"), "--junit", str(junit), "--out", str(tmp_path / "runs"))
    assert res.exit_code == 0, res.output
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert sorted(Path(c.get("name")).name for c in suite.iter("testcase")) == ["ok.yaml", "sick.yaml"]


def test_check_exit_1_and_a_junit_failure_naming_cause_and_fix(tmp_path):
    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    write(cfgs, "sick.yaml", SICK)  # no expect block: expected healthy
    junit = tmp_path / "report.xml"
    res = cli("check", str(cfgs), "--junit", str(junit), "--json", "--out", str(tmp_path / "runs"))
    assert res.exit_code == 1
    body = json.loads(res.stdout)
    assert body["ok"] is False and body["results"][0]["top_cause"] == "high_lr"
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None
    assert "expected healthy" in failure.get("message")
    assert "high_lr" in failure.text and "optimizer.lr" in failure.text


def test_check_exit_2_on_a_bad_config_and_trains_nothing(tmp_path):
    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    write(cfgs, "ok.yaml", HEALTHY)
    write(cfgs, "typo.yaml", HEALTHY.replace("activation: relu", "activation: rleu"))
    res = cli("check", str(cfgs), "--out", str(tmp_path / "runs"))
    assert res.exit_code == 2
    assert "did you mean 'relu'" in res.output
    assert not (tmp_path / "runs").exists()


def test_check_max_steps_bounds_each_run(tmp_path):
    path = write(tmp_path, "ok.yaml", HEALTHY)
    res = cli("check", str(path), "--max-steps", "3", "--json", "--out", str(tmp_path / "runs"))
    assert json.loads(res.stdout)["results"][0]["steps"] == 3


def test_fix_writes_next_to_the_original_keeping_comments_and_other_keys(tmp_path):
    path = write(tmp_path, "net.yaml", SICK)
    res = cli("fix", str(path))
    assert res.exit_code == 0, res.output
    fixed = tmp_path / "net.fixed.yaml"
    text = fixed.read_text()
    assert path.read_text() == SICK  # the original is untouched
    assert "# a healthy little net; this comment must survive `fix`" in text
    assert "# inline comment" in text
    before, after = yaml.safe_load(SICK), yaml.safe_load(text)
    assert after["optimizer"]["lr"] < before["optimizer"]["lr"]
    after["optimizer"]["lr"] = before["optimizer"]["lr"]
    assert after == before  # nothing else changed


def test_fix_refuses_to_overwrite_without_force(tmp_path):
    path = write(tmp_path, "net.yaml", SICK)
    existing = write(tmp_path, "net.fixed.yaml", "mine\n")
    assert cli("fix", str(path)).exit_code == 2
    assert existing.read_text() == "mine\n"


def test_fix_verify_shows_before_and_after_and_exits_0_when_repaired(tmp_path):
    path = write(tmp_path, "net.yaml", SICK)
    res = cli("fix", str(path), "--verify")
    assert res.exit_code == 0, res.output
    assert "before" in res.output and "after" in res.output and "diverged" in res.output


MNIST_LIKE = {
    "seed": 6,
    "data": {"builtin": "digits", "scale": 16.0},  # raw 0-255 pixels
    "model": {"init": {"name": "normal", "std": 1.0},
              "layers": [{"units": 128, "activation": "sigmoid"}, {"units": 128, "activation": "sigmoid"},
                         {"units": 10, "activation": "sigmoid"}]},
    "loss": "mse",
    "optimizer": {"name": "sgd", "lr": 0.1},
    "training": {"epochs": 5, "batch_size": 64},
}


def test_verify_corrects_a_wrong_heuristic_guess(tmp_path):
    """Raw pixels, a large init and sigmoid + MSE on ten classes: the evidence points first at the
    unscaled inputs, but standardizing them alone does not make this network learn, while the
    output/loss fix does. The experiment must overrule the heuristic ranking."""
    _, run_dir, _ = run_training(from_mapping(MNIST_LIKE), None, tmp_path / "run")
    run = load_run(run_dir)
    guessed = diagnose(run)
    assert not guessed.healthy
    top_guess = guessed.causes[0].id
    checked = verify(run, diagnose(run), top=4)
    outcome = {v["id"]: v["outcome"] for v in checked.verification}
    assert outcome[top_guess] != "restored health", outcome  # the heuristic's favourite does not fix it
    restored = [cid for cid, o in outcome.items() if o == "restored health"]
    assert restored, outcome
    assert checked.causes[0].id in restored and checked.causes[0].id != top_guess
    assert any("verified by experiment" in line for line in checked.causes[0].evidence)
    listed = json.loads(json.dumps(checked.to_json()))["verification"]  # what `diagnose --verify --json` prints
    assert {v["id"]: v["outcome"] for v in listed} == outcome
    assert all(v["patched"]["status"] and v["baseline"]["status"] for v in listed)
    assert "verification" not in guessed.to_json()
