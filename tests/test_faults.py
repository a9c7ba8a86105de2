"""Faults on real processes: kill -9 and Ctrl-C of `nandoctor train` at random moments, a write torn by
a power loss, an output directory that cannot be written, a disk that fills up.

The property: whatever moment the process dies, the run directory loads and diagnoses (exit 0 or 1,
valid JSON, status `interrupted`) as long as anything was committed; before the first commit the
answer is one clear `error:` line and exit 2, never a traceback.

Trials: 3 kill -9, 1 Ctrl-C and 1 power-loss cut in the default profile; 20, 10 and 5 with
NANDOCTOR_FUZZ=long (`make fuzz`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from store_probe import committed_steps
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.telemetry.reader import load_run
from nandoctor.telemetry.store import DB_NAME

LONG = os.environ.get("NANDOCTOR_FUZZ") == "long"
KILL_TRIALS = 20 if LONG else 3
SIGINT_TRIALS = 10 if LONG else 1
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
NANDOCTOR = [sys.executable, "-c", "import sys; from nandoctor.cli import main; sys.argv[0] = 'nandoctor'; main()"]

# long enough that it is always killed mid-run: 1600 rows in batches of 8 -> 200 steps per epoch
LONG_RUN = {"seed": 0, "data": {"generator": "moons", "n_samples": 2000},
            "model": {"layers": [{"units": 64, "activation": "relu", "norm": "batch", "dropout": 0.1},
                                 {"units": 64, "activation": "tanh"}, {"units": 2, "activation": "softmax"}]},
            "optimizer": {"name": "adam", "lr": 0.001}, "training": {"epochs": 500, "batch_size": 8}}
SHORT_RUN = {**LONG_RUN, "training": {"epochs": 3, "batch_size": 32}}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def write_config(directory: Path, raw: dict, name: str = "long.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def spawn():
    """Popen `nandoctor train ...`; every process is killed and reaped at teardown."""
    procs: list[subprocess.Popen] = []

    def start(*args, **kwargs) -> subprocess.Popen:
        p = subprocess.Popen([*NANDOCTOR, "train", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, **ENV}, **kwargs)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


def wait_for_commit(p: subprocess.Popen, run: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not committed_steps(run):
        assert p.poll() is None, f"train exited early: {p.communicate()}"
        assert time.monotonic() < deadline, "no step was committed in time"
        time.sleep(0.02)


def diagnose_outcome(run: Path) -> str:
    """Diagnose through the CLI. A run with anything committed must diagnose as interrupted; one killed
    before its first commit must get exactly one `error:` line and exit 2. Returns the outcome."""
    result = cli("diagnose", run, "--json")
    assert "Traceback" not in result.stdout + result.stderr
    assert isinstance(result.exception, SystemExit | type(None)), repr(result.exception)
    if result.exit_code == 2:
        lines = result.stderr.rstrip("\n").split("\n")
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert committed_steps(run) == 0, f"steps were committed, yet: {result.stderr}"
        return "nothing committed: " + lines[0].split(": ", 2)[-1]
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
    report = json.loads(result.stdout)
    assert report["schema"] == 1 and report["status"] == "interrupted", report["status"]
    assert report["run"] == str(run)
    run_data = load_run(run)
    steps = list(run_data.steps["step"])
    assert steps == list(range(1, len(steps) + 1)), "holes in the steps table"
    assert set(run_data.stat_steps) <= set(steps), "statistics for a step without a steps row"
    assert run_data.meta["status"] == "running" and run_data.status == "interrupted"
    return "interrupted"


# ---- kill -9 --------------------------------------------------------------------------------------------

def test_kill_9_at_random_moments_always_diagnoses(tmp_path, spawn):
    config = write_config(tmp_path, LONG_RUN)
    rng = random.Random()
    outcomes = Counter()
    for k in range(KILL_TRIALS):
        run = tmp_path / f"killed{k}"
        p = spawn(config, "--out", run, "--quiet")
        if k % 4 == 3:  # every fourth trial: any moment from process start, startup included
            delay, after = rng.uniform(0.0, 3.0), "start"
        else:
            wait_for_commit(p, run)
            delay, after = rng.uniform(0.0, 1.5), "first commit"
        time.sleep(delay)
        assert p.poll() is None, "training ended before the kill"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        where = f"trial {k}: killed {delay:.2f} s after {after}"
        if not run.exists():
            outcomes["killed before the run directory existed"] += 1
            continue
        try:
            outcomes[diagnose_outcome(run)] += 1
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from exc
    print(f"kill -9 trials: {KILL_TRIALS}; outcomes: {dict(outcomes)}")
    assert outcomes["interrupted"] >= KILL_TRIALS - (KILL_TRIALS + 3) // 4  # every trial after a commit


def test_power_loss_wal_cut_anywhere(tmp_path, spawn):
    """A power loss with synchronous=NORMAL can lose the last commits: the -wal cut at any byte. The run
    must read back to some earlier commit (interrupted), or, if nothing survived, give one clear error."""
    config = write_config(tmp_path, LONG_RUN)
    rng = random.Random()
    outcomes = Counter()
    for k in range(KILL_TRIALS // 4 if LONG else 1):
        run = tmp_path / f"cut{k}"
        p = spawn(config, "--out", run, "--quiet")
        wait_for_commit(p, run)
        time.sleep(rng.uniform(0.0, 1.5))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        wal = run / f"{DB_NAME}-wal"
        size = wal.stat().st_size
        cut = rng.randrange(0, size + 1)
        os.truncate(wal, cut)
        (run / f"{DB_NAME}-shm").unlink(missing_ok=True)
        try:
            outcomes[diagnose_outcome(run)] += 1
        except AssertionError as exc:
            raise AssertionError(f"WAL cut at {cut} of {size}: {exc}") from exc
    print(f"power-loss cuts: {dict(outcomes)}")


# ---- Ctrl-C -----------------------------------------------------------------------------------------------

def test_ctrl_c_gives_status_interrupted(tmp_path, spawn):
    config = write_config(tmp_path, LONG_RUN)
    rng = random.Random()
    for k in range(SIGINT_TRIALS):
        run = tmp_path / f"ctrl_c{k}"
        p = spawn(config, "--out", run)
        wait_for_commit(p, run)
        delay = rng.uniform(0.0, 2.0)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
        where = f"trial {k}, SIGINT {delay:.2f} s after the first commit"
        assert p.returncode == 0, (where, stderr)  # training ran
        assert "Traceback" not in stdout + stderr, where
        assert "interrupted" in stdout, (where, stdout)
        run_data = load_run(run)
        assert run_data.meta["status"] == "interrupted" and run_data.status == "interrupted", where
        assert run_data.meta["steps"] >= len(run_data.steps["step"]) > 0, where
        result = cli("diagnose", run, "--json")
        assert result.exit_code in (0, 1), (where, result.stderr)
        assert json.loads(result.stdout)["status"] == "interrupted", where


def _console_script() -> Path | None:
    found = shutil.which("nandoctor", path=sysconfig.get_path("scripts"))
    return Path(found) if found else None


def test_ctrl_c_while_the_command_starts_is_quiet(tmp_path):
    """Deterministic: a sitecustomize hook raises KeyboardInterrupt when `rich` is first imported, which
    is where a Ctrl-C in the first fraction of a second lands."""
    script = _console_script()
    if script is None:
        pytest.skip("the nandoctor console script is not installed next to this Python")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'rich':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, CtrlC())\n", encoding="utf-8")
    pythonpath = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    p = subprocess.run([sys.executable, str(script), "explain"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **ENV, "PYTHONPATH": pythonpath})
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    assert p.returncode == 130


# ---- the output directory cannot be written --------------------------------------------------------------

def one_error_line(p: subprocess.CompletedProcess | subprocess.Popen, stdout: str, stderr: str) -> str:
    assert p.returncode == 2, (p.returncode, stdout, stderr)
    assert "Traceback" not in stdout + stderr
    lines = stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_output_directory_under_a_file(tmp_path, spawn):
    config = write_config(tmp_path, SHORT_RUN)
    (tmp_path / "blocker").write_text("x")
    p = spawn(config, "--out", tmp_path / "blocker" / "run")
    stdout, stderr = p.communicate(timeout=120)
    line = one_error_line(p, stdout, stderr)
    assert "cannot create the run directory (Not a directory)" in line and "blocker" in line


def test_read_only_output_directory(tmp_path):
    """chmod 0o555 on the parent of --out; as root the process runs without CAP_DAC_OVERRIDE (setpriv)."""
    config = write_config(tmp_path, SHORT_RUN)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        prefix = []
        if os.access(locked, os.W_OK):
            if not shutil.which("setpriv"):
                pytest.skip("running as root (or with CAP_DAC_OVERRIDE) without setpriv: chmod 0o555 does not stop "
                            "this user; test_output_directory_under_a_file covers the error path")
            prefix = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                      "--bounding-set=-dac_override,-dac_read_search", "--"]
        p = subprocess.run([*prefix, *NANDOCTOR, "train", str(config), "--out", str(locked / "run")],
                           capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})
        line = one_error_line(p, p.stdout, p.stderr)
        assert "Permission denied" in line and str(locked / "run") in line
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def _train_with_file_size_limit(config: Path, out: Path, limit: int) -> subprocess.CompletedProcess:
    """A process that cannot grow a file past `limit` bytes (RLIMIT_FSIZE; Python ignores SIGXFSZ, so
    writes fail with EFBIG): to SQLite and to open().write this is a full disk, no root needed."""
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from nandoctor.cli import main; sys.argv[0] = 'nandoctor'; main()")
    return subprocess.run([sys.executable, "-c", code, "train", str(config), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})


def test_full_disk_simulation_really_limits_writes(tmp_path):
    """The simulation itself: the limited process gets an error when a file outgrows the limit."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000)); "
            f"f = open({str(tmp_path / 'big')!r}, 'wb', buffering=0)\n"
            "for _ in range(10): f.write(b'x' * 500)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "File too large" in p.stderr
    assert (tmp_path / "big").stat().st_size <= 1000


def test_disk_fills_up_during_training(tmp_path):
    config = write_config(tmp_path, {**LONG_RUN, "training": {"epochs": 50, "batch_size": 8},
                                     "monitor": {"every": 1}})
    out = tmp_path / "run"
    p = _train_with_file_size_limit(config, out, 1_500_000)  # room for a few commits first
    line = one_error_line(p, p.stdout, p.stderr)
    assert str(out) in line
    assert "disk" in line or "too large" in line.lower()
    # nothing lost: what was committed before the disk filled up is still a readable run
    assert diagnose_outcome(out) == "interrupted"
    assert committed_steps(out) > 0
