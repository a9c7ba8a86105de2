"""The README stays true: every `$ nandoctor ...` line in its console blocks runs, in order, in a copy
of configs/, at the width and colour the README's outputs were taken with, and prints what the README
shows. Run names' timestamps and durations are wildcards; other numbers may drift by 5 % and chart
rows by a few glyphs (a float rounding change in the engine), nothing more. The Commands section
names every option of every command, and the Config reference has a valid example for every
section of the config and mentions every key.

`python tests/test_readme.py` re-takes the outputs into README.md after a deliberate change.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.config import load_config, schema

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ENV = {"COLUMNS": "100", "NO_COLOR": "1"}
SKIP = {"nandoctor diagnose runs/exp1": "needs a PyTorch training loop recorded with nandoctor.torch"}
BLOCK = re.compile(r"^```console\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXIT = re.compile(r"#\s*exit (\d+)")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
CHART_ROW = re.compile(r"^(.*?│)([ ▁▂▃▄▅▆▇█░▒▓✗]+)$")
ELISION = "..."


@dataclasses.dataclass
class Example:
    command: str
    exit_code: int
    expected: list[str]  # output lines as the README shows them


def examples(text: str) -> list[list[Example]]:
    """The console blocks, each a list of commands with the output lines that follow them."""
    blocks = []
    for body in BLOCK.findall(text):
        block: list[Example] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                m = EXIT.search(line)
                block.append(Example(line[2:].strip(), int(m.group(1)) if m else 0, []))
            elif block:
                block[-1].expected.append(line)
        blocks.append(block)
    return blocks


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def normalise(line: str) -> str:
    line = re.sub(r"\d{8}-\d{6}", "<time>", line)  # run-directory timestamps
    line = re.sub(r"\b\d+(?:\.\d+)?\s?s\b", "<secs>", line)  # durations: "0.1 s", "(6.8 s)", "0.3s"
    line = re.sub(r"([━─])\1+", r"\1", line)  # table rules follow the column widths
    line = re.sub(r"\b(\d+)/\1 as expected", "all as expected", line)  # configs/ may gain configs
    return " ".join(line.split())


def _numbers_close(a: str, b: str) -> bool:
    x, y = float(a), float(b)
    return x == y or math.isclose(x, y, rel_tol=0.05)


def line_matches(expected: str, actual: str) -> bool:
    e, a = CHART_ROW.match(expected), CHART_ROW.match(actual)
    if e and a:  # a chart row: same label and width, and nearly the same glyphs
        ge, ga = e.group(2).rstrip(), a.group(2).rstrip()
        same = sum(x == y for x, y in zip(ge, ga, strict=False))
        return normalise(e.group(1)) == normalise(a.group(1)) and len(ge) == len(ga) and same >= 0.8 * len(ge)
    e, a = normalise(expected), normalise(actual)
    if NUMBER.split(e) != NUMBER.split(a):
        return False
    return all(_numbers_close(x, y) for x, y in zip(NUMBER.findall(e), NUMBER.findall(a), strict=True))


def mismatch(expected: list[str], actual: list[str]) -> str | None:
    """None when each run of README lines between `...` elisions appears, in order and contiguous,
    in the real output; otherwise the first README line that could not be found."""
    actual = [line for line in actual if line.strip()]
    segments, current = [], []
    for line in expected:
        if line.strip() == ELISION:
            segments.append(current)
            current = []
        elif line.strip():
            current.append(line)
    segments.append(current)
    pos = 0
    for seg in filter(None, segments):
        at = next((i for i in range(pos, len(actual) - len(seg) + 1)
                   if all(line_matches(s, actual[i + k]) for k, s in enumerate(seg))), None)
        if at is None:
            return next((s for s in seg if not any(line_matches(s, a) for a in actual[pos:])), seg[0])
        pos = at + len(seg)
    return None


def run(command: str):
    argv = shlex.split(command, comments=True)
    assert argv[0] == "nandoctor", f"the README may only show nandoctor commands: {command}"
    result = CliRunner().invoke(app, argv[1:], env=ENV)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash, not an output to compare
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A new user's checkout: the configs, and nothing trained yet. Shared by the blocks, in order."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "configs", root / "configs")
    return root


BLOCKS = examples(README.read_text(encoding="utf-8"))


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}:{b[0].command[:40]}" if b else f"block{i}"
                                              for i, b in enumerate(BLOCKS)])
def test_readme_console_block_runs_as_shown(block, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    for ex in block:
        if ex.command in SKIP:
            continue
        result = run(ex.command)
        assert "Traceback" not in result.output, result.output
        assert result.exit_code == ex.exit_code, (ex.command, result.exit_code, result.output)
        missing = mismatch(ex.expected, result.output.splitlines())
        assert missing is None, (f"$ {ex.command}\nREADME line not in the output: {missing!r}\n{result.output}\n"
                                 "(after a deliberate change: python tests/test_readme.py re-takes the outputs)")


def test_the_readme_shows_and_checks_the_main_commands():
    shown = {ex.command.split()[1] for block in BLOCKS for ex in block}
    assert shown >= {"train", "diagnose", "fix", "check", "runs", "init", "explain"}
    assert sum(len(ex.expected) for block in BLOCKS for ex in block) > 100  # real outputs, not just commands


def test_mismatch_catches_a_wrong_line_and_tolerates_timings():
    out = ["run: runs/high-lr  (8 steps, 0.0 s, diverged)", "next: nandoctor diagnose runs/high-lr"]
    assert mismatch(["run: runs/high-lr  (8 steps, 0.1 s, diverged)"], out) is None
    assert mismatch(["run: runs/high-lr  (9 steps, 0.1 s, diverged)"], out) is not None
    assert mismatch(["next: nandoctor diagnose runs/high-lr", "run: runs/high-lr (8 steps, 0.0 s, diverged)"],
                    out) is not None  # order matters
    assert mismatch([out[0], ELISION, out[1]], [out[0], "extra", out[1]]) is None
    assert mismatch(out, [out[0], "extra", out[1]]) is not None  # lines left out need a `...`


def test_commands_section_names_every_option():
    text = section(README.read_text(encoding="utf-8"), "Commands")
    click_app = get_command(app)
    missing = [f"{name} {opt}" for name, cmd in click_app.commands.items() for p in cmd.params
               for opt in p.opts + p.secondary_opts if opt.startswith("-") and opt != "--help" and opt not in text]
    missing += [opt for p in click_app.params for opt in p.opts if opt.startswith("--") and opt not in text]
    assert not missing, missing
    for name in click_app.commands:
        assert f"nandoctor {name}" in text, name


def _yaml_blocks(text: str) -> list[dict]:
    return [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def test_config_reference_has_a_valid_example_per_section_and_names_every_key(tmp_path):
    text = section(README.read_text(encoding="utf-8"), "Config reference")
    blocks = _yaml_blocks(text)
    merged: dict = {}
    for block in blocks:
        assert isinstance(block, dict), block
        assert not set(block) & set(merged), f"two examples for {set(block) & set(merged)}"
        merged |= block
    sections = {f.name for f in dataclasses.fields(schema.Config)}
    assert set(merged) == sections, sections ^ set(merged)
    path = tmp_path / "reference.yaml"
    path.write_text(yaml.safe_dump(merged), encoding="utf-8")
    load_config(path)  # every example is valid as written
    classes = [schema.Config, schema.DataConfig, schema.ModelConfig, schema.LayerConfig, schema.InitSpec,
               schema.LossConfig, schema.OptimizerConfig, schema.ScheduleConfig, schema.TrainingConfig,
               schema.MonitorConfig, schema.ExpectConfig]
    unnamed = [f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c)
               if not re.search(rf"\b{f.name}\b", text)]
    assert not unnamed, unnamed


def retake(path: Path = README) -> None:
    """Replace every console block's outputs with what the commands print now (run in a scratch copy)."""
    import os
    import tempfile

    text = path.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "configs", Path(tmp) / "configs")
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            def fill(m: re.Match) -> str:
                lines = []
                for line in m.group(1).splitlines():
                    if not line.startswith("$ "):
                        continue
                    lines.append(line)
                    command = line[2:].strip()
                    if command not in SKIP:
                        lines += [x.rstrip() for x in run(command).output.splitlines()]
                return "```console\n" + "\n".join(lines) + "\n```"

            text = BLOCK.sub(fill, text)
        finally:
            os.chdir(cwd)
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    retake(Path(sys.argv[1]) if len(sys.argv) > 1 else README)
