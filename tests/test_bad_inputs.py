"""The bad-input table (docs/bad-inputs.md), one test per row, through the real CLI.

Every row: exit code 2, exactly one line on stderr starting `error: ` that names the file (and the
config path where there is one), nothing on stdout, no traceback, and nothing written: no run
directory appears and every file that was there before is byte-identical afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from store_probe import committed_steps
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.telemetry.store import DB_NAME

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
SQLITE_SIDE_FILES = {f"{DB_NAME}-shm", f"{DB_NAME}-wal"}  # a reader may create these; never the data

TINY = {
    "seed": 0,
    "data": {"generator": "moons", "n_samples": 200},
    "model": {"layers": [{"units": 8, "activation": "relu"}, {"units": 2, "activation": "softmax"}]},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "training": {"epochs": 1, "batch_size": 32},
}
MODEL = TINY["model"]


# ---- helpers ---------------------------------------------------------------------------------------

def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root: file bytes, or None for a directory."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def assert_nothing_written(before: dict, after: dict, allow: set[str] = frozenset()) -> None:
    """Same paths, same bytes; `allow` names files (by basename) that SQLite may create or touch."""
    changed = {k for k in before.keys() | after.keys()
               if before.get(k, b"<absent>") != after.get(k, b"<absent>") and Path(k).name not in allow}
    assert not changed, f"written or changed: {sorted(changed)}"
    for name in allow:
        for key, data in after.items():
            if Path(key).name == name and key not in before and name.endswith("-wal"):
                assert data == b"", f"{key} holds data"


def assert_one_error(result, *fragments: str) -> str:
    """Exit 2; stdout empty; stderr is exactly one line `error: ...` holding every fragment; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit | type(None)), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1, f"more than one line:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "\x1b[" not in line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def write_config(directory: Path, raw: dict | str, name: str = "cfg.yaml") -> Path:
    path = directory / name
    text = raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A fresh working directory (so a default `runs/` would land inside it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def train_fails(work: Path, config: Path | str, *fragments: str, extra: tuple = ()) -> str:
    """`train CONFIG --out work/run` (and without --out) both fail with one error and write nothing."""
    before = snapshot(work)
    line = assert_one_error(cli("train", config, "--out", work / "run", *extra), *fragments)
    assert_nothing_written(before, snapshot(work))
    assert_one_error(cli("train", config, *extra), *fragments)  # the default run directory: runs/<name>-<time>
    assert_nothing_written(before, snapshot(work))
    assert not (work / "runs").exists() and not (work / "run").exists()
    return line


def config_fails(work: Path, raw: dict | str, *fragments: str) -> str:
    config = write_config(work, raw)
    return train_fails(work, config, str(config), *fragments)


def with_(base: dict, section: str, **values) -> dict:
    return {**base, section: {**base.get(section, {}), **values}}


def layer0(**values) -> dict:
    return {**TINY, "model": {"layers": [{**MODEL["layers"][0], **values}, MODEL["layers"][1]]}}


# ---- the config file --------------------------------------------------------------------------------

def test_missing_config_file(work):
    train_fails(work, work / "nope.yaml", f"{work / 'nope.yaml'}: config file not found")


def test_config_path_is_a_directory(work):
    (work / "configs").mkdir()
    train_fails(work, work / "configs", "expected a config file, got a directory")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_config_file(work, text):
    config_fails(work, text, "config file is empty", "nandoctor init")


def test_yaml_syntax_error_shows_line_and_column(work):
    line = config_fails(work, "seed: 0\ndata: {generator: moons\nmodel: [\n", "YAML syntax error at line 3, column 6")
    assert "expected ',' or '}'" in line


def test_yaml_tab_indentation_shows_line_and_column(work):
    config_fails(work, "data:\n\tgenerator: moons\n", "YAML syntax error at line 2, column 1")


def test_control_character_in_config(work):
    line = config_fails(work, "seed: 0\nname: a\x1bb\n", "YAML syntax error at line 2, column 8")
    assert "\x1b" not in line


def test_config_not_utf8(work):
    config = work / "cfg.yaml"
    config.write_bytes(b"name: caf\xe9\n")
    train_fails(work, config, str(config), "cannot read config")


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("42\n", "int"), ("just words\n", "str")])
def test_top_level_not_a_mapping(work, text, kind):
    config_fails(work, text, f"top level must be a mapping of sections, got {kind}")


def test_unknown_key(work):
    config_fails(work, with_(TINY, "optimizer", lrr=0.1), "optimizer.lrr: unknown key 'lrr'", "did you mean 'lr'?")


def test_unknown_section(work):
    config_fails(work, {**TINY, "optimiser": {"lr": 0.1}}, "optimiser: unknown key 'optimiser'",
                 "did you mean 'optimizer'?")


@pytest.mark.parametrize(("raw", "fragment"), [
    (with_(TINY, "training", epochs="ten"), "training.epochs: expected an integer, got str 'ten'"),
    (with_(TINY, "training", shuffle="maybe"), "training.shuffle: expected true or false, got str 'maybe'"),
    (with_(TINY, "optimizer", lr=[0.1]), "optimizer.lr: expected a number, got a list"),
    ({**TINY, "model": {"layers": {"units": 2}}}, "model.layers: expected a list, got a dict"),
    ({**TINY, "data": "moons"}, "data: expected a mapping, got str 'moons'"),
])
def test_wrong_type(work, raw, fragment):
    config_fails(work, raw, fragment)


@pytest.mark.parametrize("lr", [0, 0.0, -0.1, -1e-9])
def test_lr_not_positive(work, lr):
    config_fails(work, with_(TINY, "optimizer", lr=lr), "optimizer.lr: ", "is out of range: must be > 0")


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "nan", "inf"])
def test_non_finite_number(work, text):
    raw = yaml.safe_dump(TINY, sort_keys=False).replace("lr: 0.1", f"lr: {text}")
    config_fails(work, raw, "optimizer.lr: non-finite number")


def test_units_zero(work):
    config_fails(work, layer0(units=0), "model.layers[0].units: 0 is out of range: must be >= 1")


def test_unknown_activation(work):
    config_fails(work, layer0(activation="rellu"), "model.layers[0].activation: unknown activation 'rellu'",
                 "did you mean 'relu'?")


def test_unknown_init(work):
    config_fails(work, layer0(init="he_norml"), "model.layers[0].init.name: unknown init 'he_norml'",
                 "did you mean 'he_normal'?")


def test_unknown_loss(work):
    config_fails(work, {**TINY, "loss": "crossentropy"}, "loss.name: unknown loss 'crossentropy'",
                 "did you mean 'cross_entropy'?")


def test_unknown_optimizer(work):
    config_fails(work, with_(TINY, "optimizer", name="adamm"), "optimizer.name: unknown optimizer 'adamm'",
                 "did you mean 'adam'?")


def test_null_key_at_top_level(work):
    config_fails(work, "~: 1\n" + yaml.safe_dump(TINY), "unknown key 'None'")


def test_yaml_nested_too_deeply(work):
    config_fails(work, "[" * 3000 + "]" * 3000 + "\n", "nested too deeply")


@pytest.mark.parametrize(("section", "values"), [
    ("model", {"layers": [{"units": 100_000_000_000, "activation": "relu"}, {"units": 2, "activation": "softmax"}]}),
    ("data", {"generator": "moons", "n_samples": 100_000_000_000}),
])
def test_size_too_large_to_allocate(work, section, values):
    config_fails(work, {**TINY, section: values}, "too large")


# ---- data files ---------------------------------------------------------------------------------------

def csv_config(work: Path, text: str, **data) -> Path:
    (work / "train.csv").write_text(text, encoding="utf-8")
    return write_config(work, {**TINY, "data": {"csv": "train.csv", **data}})


def test_csv_text_cells(work):
    config = csv_config(work, "a,b,label\n1,2,0\n3,x,1\n")
    train_fails(work, config, str(config), "data.csv", "train.csv: row 3, column 'b' (index 1): 'x' is not a number")


def test_csv_ragged_rows(work):
    config = csv_config(work, "a,b,label\n1,2,0\n3,4\n")
    train_fails(work, config, str(config), "data.csv", "row 3 has 2 columns, expected 3")


def test_csv_missing_target_column(work):
    config = csv_config(work, "a,b,label\n1,2,0\n3,4,1\n", target="lable")
    train_fails(work, config, str(config), "data.target", "no column named 'lable'", "did you mean 'label'?")


def test_csv_target_index_out_of_range(work):
    config = csv_config(work, "1,2,0\n3,4,1\n", target=7)
    train_fails(work, config, str(config), "data.target", "index 7 is out of range")


@pytest.mark.parametrize(("text", "fragment"), [("a,b,label\n", "no data rows below the header"),
                                                ("", "the file is empty"), ("\n\n", "the file is empty")])
def test_csv_no_rows(work, text, fragment):
    config = csv_config(work, text)
    train_fails(work, config, str(config), "data.csv", fragment)


def test_csv_single_class(work):
    config = csv_config(work, "a,b,label\n1,2,0\n3,4,0\n5,6,0\n")
    train_fails(work, config, str(config), "data.target", "only one class (0.0) in the target")


def test_csv_file_missing(work):
    config = write_config(work, {**TINY, "data": {"csv": "nothere.csv"}})
    train_fails(work, config, str(config), "data.csv", "data file not found: ", "nothere.csv")


def test_csv_not_text(work):
    (work / "train.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    config = write_config(work, {**TINY, "data": {"csv": "train.csv"}})
    train_fails(work, config, str(config), "data.csv", "cannot read the file as CSV")


def npz_config(work: Path, **arrays) -> Path:
    with open(work / "train.npz", "wb") as fh:
        np.savez(fh, **arrays)
    return write_config(work, {**TINY, "data": {"npz": "train.npz"}})


def test_npz_missing_x(work):
    config = npz_config(work, x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    train_fails(work, config, str(config), "data.npz", "no array named 'X'", "arrays in the file: x, y")


def test_npz_missing_y(work):
    config = npz_config(work, X=np.zeros((4, 2)), labels=np.array([0, 1, 0, 1]))
    train_fails(work, config, str(config), "data.npz", "no array named 'y'")


@pytest.mark.parametrize("which", ["X", "y"])
def test_npz_object_arrays(work, which):
    arrays = {"X": np.zeros((2, 2)), "y": np.array([0, 1])}
    arrays[which] = np.array([1, "a"], dtype=object) if which == "y" else np.array([[1, None], [2, "b"]], dtype=object)
    config = npz_config(work, **arrays)
    line = train_fails(work, config, str(config), "data.npz", f"array '{which}' holds Python objects")
    assert "never unpickles" in line


def test_npz_not_an_archive(work):
    (work / "train.npz").write_bytes(b"not an archive at all\n" * 10)
    config = write_config(work, {**TINY, "data": {"npz": "train.npz"}})
    line = train_fails(work, config, str(config), "data.npz", "cannot read the file as an .npz archive")
    assert "pickle" not in line


# ---- run directories (diagnose) --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    config = write_config(root, {**TINY, "training": {"epochs": 3}, "monitor": {"every": 1}})
    result = cli("train", config, "--out", root / "run", "--quiet")
    assert result.exit_code == 0, result.stderr
    return root / "run"


def damaged_copy(finished: Path, tmp_path: Path, name: str, *sql: str) -> Path:
    """A copy of the finished run, with these SQL statements run on its store."""
    run = tmp_path / name
    shutil.copytree(finished, run)
    if sql:
        con = sqlite3.connect(run / DB_NAME)
        for statement in sql:
            con.execute(statement)
        con.commit()
        con.close()
    return run


def diagnose_fails(run: Path, *fragments: str) -> str:
    parent = run.parent
    before = snapshot(parent)
    line = assert_one_error(cli("diagnose", run), *fragments)
    assert_one_error(cli("diagnose", run, "--json"), *fragments)
    assert_nothing_written(before, snapshot(parent), allow=SQLITE_SIDE_FILES)
    return line


def test_the_finished_run_is_readable(finished):
    """The copies below are damaged versions of a run that diagnoses fine."""
    result = cli("diagnose", finished, "--json")
    assert result.exit_code in (0, 1), result.stderr


def test_run_directory_missing(tmp_path):
    diagnose_fails(tmp_path / "nope", f"{tmp_path / 'nope'}: run directory not found")


def test_run_directory_is_a_file(tmp_path):
    (tmp_path / "run.txt").write_text("x")
    diagnose_fails(tmp_path / "run.txt", f"{tmp_path / 'run.txt'}: not a directory")


def test_run_directory_empty(tmp_path):
    (tmp_path / "run").mkdir()
    diagnose_fails(tmp_path / "run", f"{tmp_path / 'run'}: not a run directory (no telemetry.sqlite)")


def test_run_store_empty_file(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / DB_NAME).write_bytes(b"")
    diagnose_fails(tmp_path / "run", f"{tmp_path / 'run' / DB_NAME}: run store has no meta table")


def test_run_store_truncated(finished, tmp_path):
    """The store file itself cut short (a partial copy or download). A crash while writing cannot do
    this: in WAL mode writes go to the -wal file first (see the next test)."""
    run = damaged_copy(finished, tmp_path, "truncated")
    db = run / DB_NAME
    size = db.stat().st_size
    with open(db, "r+b") as fh:
        fh.truncate(size // 2)
    diagnose_fails(run, f"{db}: run store is corrupt or truncated")


@pytest.fixture(scope="module")
def diverged(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diverged")
    config = write_config(root, {**TINY, "optimizer": {"name": "sgd", "lr": 1.0e6},
                                 "training": {"epochs": 3}, "monitor": {"every": 1}})
    result = cli("train", config, "--out", root / "run", "--quiet")
    assert result.exit_code == 0, result.stderr
    return root / "run"


def test_run_store_cut_inside_a_page(diverged, tmp_path):
    """Every 61st byte offset: each cut gives one clear error (or a readable prefix), never a crash."""
    from nandoctor.diagnose import diagnose
    from nandoctor.errors import NandoctorError
    from nandoctor.telemetry.reader import load_run

    run = damaged_copy(diverged, tmp_path, "cut")
    db, original = run / DB_NAME, (diverged / DB_NAME).read_bytes()
    for cut in range(0, len(original), 61):
        db.write_bytes(original[:cut])
        try:
            diagnose(load_run(run))
        except NandoctorError:
            continue
        except Exception:  # what the CLI makes of it
            diagnose_fails(run, f"{db}: run store ")


def kill_9_mid_run(config: Path, run: Path, extra_seconds: float = 0.0) -> None:
    """Start `train`, wait until steps are committed (plus `extra_seconds`), kill -9."""
    exe = [sys.executable, "-c", "from nandoctor.cli import main; main()"]
    p = subprocess.Popen([*exe, "train", str(config), "--out", str(run), "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not committed_steps(run):
            assert p.poll() is None, p.stderr.read()
            time.sleep(0.02)
        time.sleep(extra_seconds)
        assert p.poll() is None, "training ended before the kill"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()


def test_run_truncated_mid_write_recovers_the_last_commit(tmp_path):
    """kill -9 of `train`, then the -wal cut inside its last two frames (the write the crash tore):
    SQLite drops the torn frames, the run reads back to its last whole commit and diagnoses as
    interrupted. (The same with the cut anywhere, as a power loss can leave it: tests/test_faults.py.)"""
    config = write_config(tmp_path, {**TINY, "data": {"generator": "moons", "n_samples": 2000},
                                     "training": {"epochs": 400, "batch_size": 8}})
    run = tmp_path / "run"
    kill_9_mid_run(config, run, extra_seconds=float(np.random.default_rng().uniform(0, 1.5)))
    wal = run / f"{DB_NAME}-wal"
    size = wal.stat().st_size
    frame = 24 + 4096
    cut = int(np.random.default_rng().integers(max(32, size - 2 * frame), size))
    with open(wal, "r+b") as fh:
        fh.truncate(cut)
    (run / f"{DB_NAME}-shm").unlink(missing_ok=True)  # as a copy on another machine would be
    result = cli("diagnose", run, "--json")
    assert result.exit_code in (0, 1), (cut, size, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    report = yaml.safe_load(result.stdout)
    assert report["status"] == "interrupted", (cut, size)


def test_run_store_corrupt(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / DB_NAME).write_bytes(np.random.default_rng(0).bytes(8192))
    diagnose_fails(tmp_path / "run", f"{tmp_path / 'run' / DB_NAME}: run store is corrupt or truncated")


def test_run_store_not_sqlite(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / DB_NAME).write_text("these are my notes\n" * 100)
    diagnose_fails(tmp_path / "run", "run store is corrupt or truncated (file is not a database)")


def test_run_store_missing_tables(finished, tmp_path):
    run = damaged_copy(finished, tmp_path, "no-steps", "DROP TABLE steps")
    diagnose_fails(run, f"{run / DB_NAME}: run store lacks tables: steps")


def test_run_store_from_a_newer_schema(finished, tmp_path):
    run = damaged_copy(finished, tmp_path, "newer", "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    diagnose_fails(run, f"{run / DB_NAME}: run store schema 2 is newer than this nandoctor understands (1)",
                   "upgrade nandoctor")


def test_run_store_without_meta_rows(tmp_path):
    """Tables created, nothing else committed (a power loss right after the store was created)."""
    from nandoctor.telemetry.store import DDL

    (tmp_path / "run").mkdir()
    con = sqlite3.connect(tmp_path / "run" / DB_NAME)
    con.executescript(DDL)
    con.close()
    diagnose_fails(tmp_path / "run", f"{tmp_path / 'run' / DB_NAME}: run store has no schema version")


def test_run_store_bytes_flipped(finished, tmp_path):
    run = damaged_copy(finished, tmp_path, "flipped")
    db = run / DB_NAME
    data = bytearray(db.read_bytes())
    data[data.find(b"CREATE TABLE meta") + 3] = 0xC8
    db.write_bytes(bytes(data))
    diagnose_fails(run, f"{db}: run store is corrupt")


def test_run_store_cell_of_the_wrong_type(finished, tmp_path):
    run = damaged_copy(finished, tmp_path, "cells", "UPDATE steps SET loss = 'x' WHERE step = 2")
    diagnose_fails(run, f"{run / DB_NAME}: run store ", "could not convert string to float: 'x'")


def test_run_store_fractional_layer_index(finished, tmp_path):
    run = damaged_copy(finished, tmp_path, "layer", "UPDATE layer_stats SET layer = 0.5 WHERE rowid = 1")
    diagnose_fails(run, f"{run / DB_NAME}: run store ")


def test_run_store_layer_with_zero_fan_in(finished, tmp_path):
    run = damaged_copy(finished, tmp_path, "fan_in", "UPDATE layers SET fan_in = 0 WHERE layer = 0")
    diagnose_fails(run, f"{run}", "run store ")


def test_run_store_meta_of_the_wrong_type(finished, tmp_path):
    run = damaged_copy(finished, tmp_path, "metatype", "UPDATE meta SET value = '1.5' WHERE key = 'data_profile'")
    diagnose_fails(run, f"{run / DB_NAME}: run store ", "data_profile")


def test_run_store_meta_nested_too_deeply(finished, tmp_path):
    deep = "[" * 5000 + "]" * 5000  # valid JSON, but past Python's recursion limit
    run = damaged_copy(finished, tmp_path, "deepmeta", f"UPDATE meta SET value = '{deep}' WHERE key = 'preflight'")
    diagnose_fails(run, f"{run / DB_NAME}: run store meta 'preflight' is nested too deeply to read")


def test_run_store_meta_not_json(finished, tmp_path):
    run = damaged_copy(finished, tmp_path, "meta", "UPDATE meta SET value = '{oops' WHERE key = 'preflight'")
    diagnose_fails(run, f"{run / DB_NAME}: run store meta 'preflight' is not valid JSON")


def test_run_config_corrupt(finished, tmp_path):
    run = damaged_copy(finished, tmp_path, "badconfig")
    (run / "config.yaml").write_text("seed: 0\ndata: {generator: moons\n", encoding="utf-8")
    diagnose_fails(run, f"{run / 'config.yaml'}: ", "run config is unreadable", "line 3")


def test_run_config_invalid(finished, tmp_path):
    run = damaged_copy(finished, tmp_path, "invalidconfig")
    text = (run / "config.yaml").read_text(encoding="utf-8").replace("activation: relu", "activation: rellu")
    (run / "config.yaml").write_text(text, encoding="utf-8")
    diagnose_fails(run, f"{run / 'config.yaml'}: ", "run config is unreadable", "model.layers[0].activation",
                   "unknown activation 'rellu'")


# ---- the command line: --set -----------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "fragment"), [
    ("optimizer.lr", "malformed override 'optimizer.lr'"),
    ("=0.1", "malformed override '=0.1'"),
    ("optimizer..lr=0.1", "malformed path 'optimizer..lr'"),
    ("model.layers.5.units=3", "index 5 out of range, 'model.layers' has 2 items"),
    ("model.layers.first.units=3", "'first' is not an index, a slice (a:b) or '*'"),
    ("model.layers.5:9.units=3", "slice 5:9 selects none of the 2 items of 'model.layers'"),
    ("optimizer.*=1", "'*' only selects list items"),
    ("seed.x=1", "'seed' is not a mapping or list"),
    ("optimizer.lr=[0.1", "value is not valid YAML"),
    ("optimizer.lr=fast", "optimizer.lr: expected a number, got str 'fast'"),
])
def test_malformed_set(work, override, fragment):
    config = write_config(work, TINY)
    train_fails(work, config, fragment, extra=("--set", override))


@pytest.mark.parametrize("override", ["optimizer.lr", "optimizer.lr=[0.1"])
def test_malformed_set_names_the_config_file(work, override):
    config = write_config(work, TINY)
    train_fails(work, config, f"{config}: ", extra=("--set", override))


def test_set_value_with_a_control_character(work):
    config = write_config(work, TINY)
    line = train_fails(work, config, "value is not valid YAML", extra=("--set", "name=a\x1bb"))
    assert "\x1b" not in line


@pytest.mark.parametrize(("open_", "close"), [("[", "]"), ("{a: ", "}")])
def test_set_value_nested_too_deeply(work, open_, close):
    config = write_config(work, TINY)
    line = train_fails(work, config, f"{config}: override 'name=", "value is nested too deeply to read",
                       extra=("--set", "name=" + open_ * 3000 + "1" + close * 3000))
    assert len(line) < 300 + len(str(config))  # the override is shortened, not echoed in full


def test_set_path_with_600_parts(work):
    config = write_config(work, TINY)
    train_fails(work, config, "too deep", extra=("--set", ".".join(["a"] * 600) + "=1"))


@pytest.mark.parametrize(("args", "fragment"), [(("--seed", "-1"), "seed: -1 is out of range"),
                                                (("--epochs", "0"), "training.epochs: 0 is out of range")])
def test_bad_seed_or_epochs_flag(work, args, fragment):
    config = write_config(work, TINY)
    train_fails(work, config, str(config), fragment, extra=args)


# ---- the output directory -----------------------------------------------------------------------------------

def test_existing_non_empty_out(work):
    config = write_config(work, TINY)
    out = work / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / DB_NAME).write_bytes(b"an older run")
    before = snapshot(work)
    assert_one_error(cli("train", config, "--out", out), f"{out}: output directory already exists and is not empty")
    assert_nothing_written(before, snapshot(work))


def test_out_is_an_existing_file(work):
    config = write_config(work, TINY)
    out = work / "notes.txt"
    out.write_text("mine")
    before = snapshot(work)
    assert_one_error(cli("train", config, "--out", out), f"{out}: output directory already exists")
    assert_nothing_written(before, snapshot(work))


def test_read_only_output_directory_under_a_file(work):
    """mkdir fails whoever runs the test (root included): the parent is a file."""
    config = write_config(work, TINY)
    (work / "blocker").write_text("a file where a directory should be")
    out = work / "blocker" / "run"
    before = snapshot(work)
    assert_one_error(cli("train", config, "--out", out), f"{out}: cannot create the run directory (Not a directory)")
    assert_nothing_written(before, snapshot(work))


def _writable_anyway(directory: Path) -> bool:
    probe = directory / ".probe"
    try:
        probe.mkdir()
    except OSError:
        return False
    probe.rmdir()
    return True


DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search", "--"]


def _drop_dac_works(directory: Path) -> bool:
    """Root can be made to obey file permissions by dropping CAP_DAC_OVERRIDE (util-linux setpriv)."""
    if not shutil.which("setpriv"):
        return False
    p = subprocess.run([*DROP_DAC, sys.executable, "-c", f"import os; os.mkdir({str(directory / '.probe')!r})"],
                       capture_output=True, timeout=60)
    if p.returncode == 0:
        (directory / ".probe").rmdir()
    return p.returncode != 0


@pytest.mark.parametrize("where", ["parent", "out", "default runs/"])
def test_read_only_output_directory(work, where):
    """chmod 0o555; as root (which writes anyway) the CLI runs without CAP_DAC_OVERRIDE via setpriv."""
    config = write_config(work, TINY)
    locked = work / "locked"
    locked.mkdir()
    if where == "out":
        out, args, cwd = locked, ["--out", str(locked)], work  # an existing, empty, read-only --out
    elif where == "parent":
        out, args, cwd = locked / "run", ["--out", str(locked / "run")], work
    else:
        out, args, cwd = locked / "runs", [], locked
    locked.chmod(0o555)
    try:
        prefix = []
        if _writable_anyway(locked):
            if not _drop_dac_works(locked):
                pytest.skip("running as root (or with CAP_DAC_OVERRIDE) without setpriv to drop it: chmod 0o555 "
                            "does not stop this user; test_read_only_output_directory_under_a_file covers the path")
            prefix = DROP_DAC
        before = snapshot(work)
        exe = [sys.executable, "-c", "import sys; from nandoctor.cli import main; sys.argv[0] = 'nandoctor'; main()"]
        p = subprocess.run([*prefix, *exe, "train", str(config), *args], capture_output=True, text=True, cwd=cwd,
                           timeout=300, env={**os.environ, **ENV})
        assert p.returncode == 2, (p.returncode, p.stderr)
        assert "Traceback" not in p.stdout + p.stderr and p.stdout == ""
        lines = p.stderr.rstrip("\n").split("\n")
        assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
        assert "Permission denied" in lines[0] and out.name in lines[0], lines[0]
        assert_nothing_written(before, snapshot(work))
    finally:
        locked.chmod(0o755)


def _train_with_file_size_limit(config: Path, out: Path | None, limit: int) -> subprocess.CompletedProcess:
    """`nandoctor train` in a process that cannot write files beyond `limit` bytes: what a full disk
    looks like to the writer (EFBIG instead of ENOSPC; both are OSError / SQLITE_FULL|IOERR)."""
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from nandoctor.cli import main; sys.argv[0] = 'nandoctor'; main()")
    where = [] if out is None else ["--out", str(out)]
    return subprocess.run([sys.executable, "-c", code, "train", str(config), *where, "--quiet"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **ENV}, cwd=config.parent)


@pytest.mark.parametrize("limit", [1000, 20_000])  # config.yaml cannot be written / the store cannot be created
@pytest.mark.parametrize("out", ["run", "new/parents/run", None])  # None: the default runs/<name>-<time>
def test_full_disk(work, limit, out):
    config = write_config(work, TINY)
    before = snapshot(work)
    p = _train_with_file_size_limit(config, None if out is None else work / out, limit)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith(f"error: {work / out if out else 'runs/'}"), p.stderr
    assert "disk" in lines[0] or "too large" in lines[0].lower(), lines[0]
    assert_nothing_written(before, snapshot(work))


def test_disk_full_during_training(work):
    """The one row that keeps what it wrote: the steps committed before the disk filled up."""
    config = write_config(work, {**TINY, "data": {"generator": "moons", "n_samples": 2000},
                                 "training": {"epochs": 50, "batch_size": 8}, "monitor": {"every": 1}})
    out = work / "run"
    p = _train_with_file_size_limit(config, out, 1_500_000)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith(f"error: {out / DB_NAME}") and "disk" in lines[0], p.stderr
    result = cli("diagnose", out, "--json")
    assert result.exit_code in (0, 1), result.stderr
    assert yaml.safe_load(result.stdout)["status"] == "interrupted"
    assert committed_steps(out) > 0
