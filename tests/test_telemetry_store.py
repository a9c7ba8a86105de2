"""The run store: what the retention policy keeps, reading a run while it trains, after kill -9 and
Ctrl-C, every way a directory can be unusable (RunError naming it), and the size a long run takes."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nandoctor.config import from_mapping
from nandoctor.engine.trainer import Trainer
from nandoctor.errors import RunError
from nandoctor.telemetry import monitor as monitor_mod
from nandoctor.telemetry.reader import load_run
from nandoctor.telemetry.store import DB_NAME
from nandoctor.training import run_training

EXE = shutil.which("nandoctor")
NANDOCTOR = [EXE] if EXE else [sys.executable, "-c", "from nandoctor.cli import main; main()"]

SMALL = {"seed": 0, "data": {"generator": "moons", "n_samples": 200},  # 160 training rows: 5 steps of 32
         "model": {"layers": [{"units": 8, "activation": "relu"}, {"units": 2, "activation": "softmax"}]},
         "optimizer": {"name": "sgd", "lr": 0.1}}


def train(tmp_path: Path, raw: dict, name: str = "run"):
    result, run_dir, _ = run_training(from_mapping(raw), None, tmp_path / name)
    return result, load_run(run_dir)


def spike_steps(run) -> set[int]:
    return {e["step"] for e in run.events if e["kind"] == "loss_spike"}


# ---- retention ------------------------------------------------------------------------------------

def test_every_5_records_multiples_of_5_and_the_last_step(tmp_path):
    result, run = train(tmp_path, {**SMALL, "training": {"epochs": 5, "max_steps": 23}, "monitor": {"every": 5}})
    assert result.status == "completed" and result.steps == 23
    assert list(run.steps["step"]) == list(range(1, 24))  # every step gets a steps row
    assert set(run.stat_steps) - spike_steps(run) == {5, 10, 15, 20, 23}
    assert (run.meta["dense_steps"], run.meta["stride"]) == (0, 5)
    # a sampled step has every tensor of every layer
    for tensor in ("pre_activation", "activation", "weight", "bias", "grad_weight", "grad_bias", "update"):
        assert np.isfinite(run.stat(tensor, "norm")).all(), tensor


def test_every_5_also_records_the_first_nonfinite_step(tmp_path):
    raw = {"seed": 0, "data": {"generator": "blobs", "n_classes": 2, "n_samples": 200, "noise": 1.0},
           "model": {"layers": [{"units": 8, "activation": "relu"}, {"units": 1, "activation": "sigmoid"}]},
           "loss": {"name": "binary_cross_entropy", "stable": False}, "optimizer": {"name": "adam", "lr": 0.01},
           "training": {"epochs": 400}, "monitor": {"every": 5}}
    result, run = train(tmp_path, raw)
    bad = result.first_nonfinite["step"]
    assert result.status == "diverged" and bad % 5 != 0 and bad == result.steps
    expected = set(range(5, bad, 5)) | {bad}
    assert set(run.stat_steps) - spike_steps(run) == expected
    assert spike_steps(run) <= set(run.stat_steps)  # spikes are anomalies: recorded too


def test_auto_records_every_step_of_a_short_run(tmp_path):
    result, run = train(tmp_path, {**SMALL, "training": {"epochs": 3}})  # default every: auto
    assert result.steps == 15
    assert list(run.stat_steps) == list(range(1, 16))


def test_auto_is_dense_for_20_steps_then_strided(tmp_path):
    result, run = train(tmp_path, {**SMALL, "training": {"epochs": 10, "max_steps": 47}, "monitor": {"every": "auto"}})
    assert result.steps == 47
    assert set(run.stat_steps) - spike_steps(run) == set(range(1, 21)) | {30, 40, 47}
    assert monitor_mod.stride_for("auto", 47) == (20, 10)
    assert monitor_mod.stride_for("auto", 100_000) == (20, 25)  # bounded to ~4000 samples
    assert monitor_mod.stride_for(7, 100_000) == (0, 7)


# ---- reading while it trains, kill -9, Ctrl-C ---------------------------------------------------------

LONG = """\
name: long
seed: 0
data: {generator: moons, n_samples: 400}
model:
  layers:
    - {units: 16, activation: relu}
    - {units: 2, activation: softmax}
optimizer: {name: sgd, lr: 0.05}
training: {epochs: 100000, batch_size: 32}
monitor: {every: 1}
"""


@pytest.fixture
def spawn(tmp_path):
    """Start `nandoctor train` on a long config in the background; always killed at teardown."""
    procs: list[subprocess.Popen] = []
    (tmp_path / "long.yaml").write_text(LONG)

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        out = tmp_path / name
        p = subprocess.Popen([*NANDOCTOR, "train", str(tmp_path / "long.yaml"), "--out", str(out), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        return p, out

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


def wait_for_steps(p: subprocess.Popen, out: Path, timeout: float = 60.0) -> int:
    """Poll (read-only, like any outside reader) until the store holds committed steps."""
    deadline = time.monotonic() + timeout
    db = out / DB_NAME
    while time.monotonic() < deadline:
        assert p.poll() is None, f"train exited early: {p.communicate()}"
        if db.exists():
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                try:
                    n = con.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
                finally:
                    con.close()
                if n:
                    return n
            except sqlite3.OperationalError:
                pass  # tables not created yet
        time.sleep(0.05)
    raise AssertionError("no steps were committed in time")


def diagnose_json(run_dir: Path) -> dict:
    q = subprocess.run([*NANDOCTOR, "diagnose", str(run_dir), "--json"], capture_output=True, text=True, timeout=120)
    assert q.returncode in (0, 1), q.stderr
    report = json.loads(q.stdout)
    assert report["schema"] == 1
    return report


def assert_consistent(run) -> None:
    steps = list(run.steps["step"])
    assert steps == list(range(1, len(steps) + 1))  # no holes: commits are whole batches
    assert set(run.stat_steps) <= set(steps)


def test_stat_rows_are_written_in_multi_row_statements_without_loss_or_duplicates(tmp_path):
    from nandoctor.telemetry.store import STATS_PER_INSERT, RunWriter

    w = RunWriter(tmp_path)
    n = 3 * STATS_PER_INSERT + 5  # full statements and a remainder
    w.stat_rows([(k // 10, k % 10, "weight", float(k), None, -1.0, 1.0, 1.0, math.nan, 0.0, None, 0.5, None)
                 for k in range(n)])
    w.stats(0, 3, "weight", (7.0,) * 10)  # the same key again: the later row replaces the earlier
    w.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    rows = db.execute("SELECT step, layer, mean, std, norm FROM layer_stats ORDER BY step, layer").fetchall()
    assert len(rows) == n
    assert rows[3] == (0, 3, 7.0, 7.0, 7.0)
    assert rows[-1] == ((n - 1) // 10, (n - 1) % 10, float(n - 1), None, None)  # None and NaN stored as NULL


def test_the_store_is_readable_while_the_run_is_going(spawn):
    p, out = spawn("live")
    wait_for_steps(p, out)
    run = load_run(out)
    assert run.status == "running" and run.meta["status"] == "running"
    assert run.meta["pid"] == p.pid
    assert len(run.steps["step"]) > 0 and len(run.stat_steps) > 0
    assert run.config is not None and run.config.name == "long"
    assert_consistent(run)
    report = diagnose_json(out)
    assert report["status"] == "running"
    later = load_run(out)  # and it keeps growing
    deadline = time.monotonic() + 20
    while len(later.steps["step"]) <= len(run.steps["step"]) and time.monotonic() < deadline:
        time.sleep(0.2)
        later = load_run(out)
    assert len(later.steps["step"]) > len(run.steps["step"])
    assert p.poll() is None


def test_a_run_is_read_from_one_snapshot_while_the_writer_commits(tmp_path, monkeypatch):
    """The writer commits between two of the reader's queries: the reader must not see the later rows
    (per-layer statistics for steps its steps table does not have yet)."""
    from nandoctor.telemetry import reader

    _, run = train(tmp_path, {**SMALL, "training": {"epochs": 1}})
    last = int(run.steps["step"][-1])
    read_stats = reader._read_stats

    def commit_then_read(db, n_layers):
        other = sqlite3.connect(run.path / DB_NAME)
        other.execute("INSERT INTO layer_stats (step, layer, tensor, norm) VALUES (?, 0, 'weight', 1.0)", (last + 1,))
        other.commit()
        other.close()
        return read_stats(db, n_layers)

    monkeypatch.setattr(reader, "_read_stats", commit_then_read)
    seen = load_run(run.path)
    assert last + 1 not in set(seen.stat_steps)
    assert_consistent(seen)
    monkeypatch.undo()
    assert last + 1 in set(load_run(run.path).stat_steps)  # the row was committed: a new read sees it


def test_kill_9_at_random_moments_leaves_a_readable_interrupted_run(spawn):
    rng = random.Random()
    for k in range(3):
        p, out = spawn(f"killed{k}")
        wait_for_steps(p, out)
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        run = load_run(out)
        assert run.status == "interrupted", f"delay {delay:.2f}s"  # the pid is dead
        assert run.meta["status"] == "running"  # what the writer last said
        assert len(run.steps["step"]) > 0
        assert_consistent(run)
        report = diagnose_json(out)
        assert report["status"] == "interrupted", f"delay {delay:.2f}s"


def test_ctrl_c_ends_the_run_as_interrupted(spawn):
    p, out = spawn("ctrl_c")
    wait_for_steps(p, out)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr  # training ran
    assert "Traceback" not in stderr
    assert stdout.strip().endswith(str(out))
    run = load_run(out)
    assert run.status == "interrupted" and run.meta["status"] == "interrupted"
    assert run.meta["steps"] >= len(run.steps["step"]) > 0
    assert diagnose_json(out)["status"] == "interrupted"


def test_an_interrupted_step_leaves_no_statistics_without_a_steps_row(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = Trainer.train_step

    def interrupted_on_7th(self, xb, yb, lr):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(self, xb, yb, lr)

    monkeypatch.setattr(Trainer, "train_step", interrupted_on_7th)
    result, run = train(tmp_path, {**SMALL, "training": {"epochs": 5}, "monitor": {"every": 1}})
    assert result.status == "interrupted" and run.status == "interrupted"
    assert list(run.steps["step"]) == list(range(1, 7))
    assert set(run.stat_steps) <= {1, 2, 3, 4, 5, 6}


# ---- unusable directories ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    _, run = train(tmp, {**SMALL, "training": {"epochs": 20}, "monitor": {"every": 1}})
    assert not (run.path / f"{DB_NAME}-wal").exists() or (run.path / f"{DB_NAME}-wal").stat().st_size == 0
    return run.path


def raises_naming(path: Path) -> RunError:
    with pytest.raises(RunError) as info:
        load_run(path)
    assert str(path) in str(info.value)
    return info.value


def test_missing_directory(tmp_path):
    raises_naming(tmp_path / "nope")


def test_directory_without_a_store(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text("seed: 0\n")
    raises_naming(tmp_path / "empty")


def test_truncated_store(tmp_path, finished):
    bad = tmp_path / "truncated"
    shutil.copytree(finished, bad)
    db = bad / DB_NAME
    size = db.stat().st_size
    assert size > 16 * 4096  # enough pages for the truncation to cut into the tables
    with open(db, "r+b") as fh:
        fh.truncate(size // 2)
    err = raises_naming(bad)
    assert "corrupt" in err.message or "truncated" in err.message
    q = subprocess.run([*NANDOCTOR, "diagnose", str(bad), "--json"], capture_output=True, text=True, timeout=120)
    assert q.returncode == 2 and str(bad) in q.stderr + q.stdout and "Traceback" not in q.stderr


def test_garbage_store(tmp_path):
    bad = tmp_path / "garbage"
    bad.mkdir()
    (bad / DB_NAME).write_bytes(os.urandom(8192))
    raises_naming(bad)


def test_store_from_a_newer_schema(tmp_path, finished):
    newer = tmp_path / "newer"
    shutil.copytree(finished, newer)
    con = sqlite3.connect(newer / DB_NAME)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    err = raises_naming(newer)
    assert "99" in err.message


def test_the_copies_were_readable_before_being_damaged(finished):
    run = load_run(finished)
    assert run.status == "completed" and len(run.steps["step"]) == 100


# ---- size -----------------------------------------------------------------------------------------------

def table_bytes(db: Path, work: Path, table: str) -> int:
    """Bytes a table (with its index) takes: the vacuumed size with and without its rows."""
    sizes = []
    for drop in (False, True):
        copy = work / f"{table}-{drop}.sqlite"
        shutil.copy(db, copy)
        con = sqlite3.connect(copy)
        if drop:
            con.execute(f"DELETE FROM {table}")
            con.commit()
        con.execute("VACUUM")
        con.close()
        sizes.append(copy.stat().st_size)
    return sizes[0] - sizes[1]


def policy_samples(total: int) -> int:
    """Steps whose layer statistics `every: auto` keeps in a healthy run of `total` steps."""
    dense, stride = monitor_mod.stride_for("auto", total)
    if total <= dense:
        return total
    strided = total // stride - dense // stride
    return dense + strided + (total % stride != 0)


def test_a_100k_step_run_of_a_10_layer_net_stays_under_50_mb(tmp_path):
    layers = [{"units": 16, "activation": "relu"}] * 9 + [{"units": 2, "activation": "softmax"}]
    raw = {"seed": 0, "data": {"generator": "moons", "n_samples": 400},  # 320 rows: 10 steps per epoch
           "model": {"init": "he_normal", "layers": layers}, "optimizer": {"name": "sgd", "lr": 0.01},
           "training": {"epochs": 250}, "monitor": {"every": "auto"}}
    result, run = train(tmp_path, raw)
    assert result.status == "completed" and result.steps == 2500
    db = run.path / DB_NAME
    on_disk = sum(f.stat().st_size for f in run.path.glob(f"{DB_NAME}*"))

    # measured: bytes per sampled step (layer_stats: 8 tensors x 10 layers) and per steps row
    sampled = len(run.stat_steps)
    assert monitor_mod.stride_for("auto", result.steps) == (20, 10)
    assert policy_samples(result.steps) <= sampled <= policy_samples(result.steps) + len(spike_steps(run))
    per_sample = table_bytes(db, tmp_path, "layer_stats") / sampled
    per_step = table_bytes(db, tmp_path, "steps") / result.steps
    fixed = max(on_disk - per_sample * sampled - per_step * result.steps, 0)

    # extrapolated with the policy in monitor.py: `auto` records the first AUTO_DENSE_STEPS (20) steps, then
    # every stride-th step with stride = max(AUTO_MIN_STRIDE, ceil(total / AUTO_MAX_SAMPLES)) = 25 for 100k
    # steps, and the last step: samples = min(total, dense + #multiples of stride after dense + last) = 4020,
    # plus anomalies (loss spikes, the first non-finite step), for which we allow 100 more. Every step also
    # gets a steps row, and `fixed` (meta, layers, epochs, pages) is taken as measured.
    total = 100_000
    _, stride = monitor_mod.stride_for("auto", total)
    assert stride == max(monitor_mod.AUTO_MIN_STRIDE, math.ceil(total / monitor_mod.AUTO_MAX_SAMPLES)) == 25
    samples = policy_samples(total) + 100
    assert samples == 4020 + 100
    extrapolated = fixed + per_sample * samples + per_step * total
    print(f"\n10-layer net: {per_sample:.0f} bytes per sampled step, {per_step:.1f} bytes per step row, "
          f"{sampled} sampled of {result.steps} steps, {on_disk} bytes on disk; "
          f"100k steps -> {samples} samples, {extrapolated / 1e6:.1f} MB")
    assert 1000 < per_sample < 20_000  # sanity: ~80 rows of 13 columns
    assert extrapolated < 50e6
