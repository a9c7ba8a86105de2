"""Determinism: the same config and seed give bit-identical telemetry, across processes (with different
hash seeds), for dropout, batch norm, shuffling, data corruption, float16/32/64 and a diverging run; a
different seed gives different numbers. Whether the BLAS thread count changes results is measured and
reported (printed and recorded as a test property), not asserted: it depends on the BLAS library.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nandoctor.config import from_mapping
from nandoctor.telemetry.store import DB_NAME
from nandoctor.training import run_training

NANDOCTOR = [sys.executable, "-c", "import sys; from nandoctor.cli import main; sys.argv[0] = 'nandoctor'; main()"]
VOLATILE_META = {"pid", "heartbeat", "started", "ended"}  # when and where, not what
TABLES = {"steps": "step", "layer_stats": "step, layer, tensor", "epochs": "epoch", "dead_units": "epoch, layer",
          "events": "id", "layers": "layer"}

BASE = {
    "seed": 7,
    "data": {"generator": "moons", "n_samples": 400, "label_noise": 0.05, "missing": 0.02, "impute": "mean",
             "preprocess": "standardize", "validation_split": 0.2},
    "model": {"init": "he_normal", "layers": [
        {"units": 32, "activation": "relu", "norm": "batch", "dropout": 0.2},
        {"units": 32, "activation": "tanh", "dropout": 0.1},
        {"units": 2, "activation": "softmax"}]},
    "optimizer": {"name": "adam", "lr": 0.005},
    "training": {"epochs": 3, "batch_size": 16, "shuffle": True, "dtype": "float32"},
    "monitor": {"every": 1},
}
CONFIGS = {
    "dropout-batchnorm-float32": BASE,
    "dropout-batchnorm-float16": {**BASE, "optimizer": {"name": "momentum", "lr": 0.02},
                                  "training": {**BASE["training"], "dtype": "float16"}},
    "regression-float64-cosine": {
        **BASE, "data": {"generator": "sine", "n_samples": 300, "n_features": 3, "noise": 0.1, "outliers": 0.02},
        "model": {"layers": [{"units": 24, "activation": "gelu", "norm": "batch", "dropout": 0.1},
                             {"units": 1, "activation": "linear"}]},
        "loss": "huber", "optimizer": {"name": "rmsprop", "lr": 0.003}, "schedule": {"name": "cosine"},
        "training": {**BASE["training"], "dtype": "float64"}, "monitor": {"every": "auto"}},
    "diverging-float32": {**BASE, "model": {"layers": [{"units": 32, "activation": "relu", "dropout": 0.1},
                                                       {"units": 2, "activation": "softmax"}]},
                          "optimizer": {"name": "sgd", "lr": 1.0e6}},
}


def exact(value):
    """A float as its exact bits (hex), so that equality below is bit-for-bit, -0.0 included."""
    return value.hex() if isinstance(value, float) else value


def telemetry(run: Path) -> dict:
    """Every table of the store, rows in key order with floats as hex, and meta minus timing/pid."""
    con = sqlite3.connect(f"file:{run / DB_NAME}?mode=ro", uri=True)
    try:
        out = {table: [tuple(exact(v) for v in row) for row in con.execute(f"SELECT * FROM {table} ORDER BY {key}")]
               for table, key in TABLES.items()}
        out["meta"] = {k: v for k, v in con.execute("SELECT key, value FROM meta") if k not in VOLATILE_META}
    finally:
        con.close()
    out["config.yaml"] = (run / "config.yaml").read_text(encoding="utf-8")
    return out


def train_subprocess(config: Path, out: Path, **env: str) -> None:
    p = subprocess.run([*NANDOCTOR, "train", str(config), "--out", str(out), "--quiet"], capture_output=True,
                       text=True, timeout=600, env={**os.environ, **env})
    assert p.returncode == 0, p.stderr


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key] != b[key]:
            if isinstance(a[key], list):
                first = next(i for i, (x, y) in enumerate(zip(a[key], b[key], strict=False)) if x != y) \
                    if len(a[key]) == len(b[key]) else None
                detail = (f"{key}: {len(a[key])} vs {len(b[key])} rows" if first is None
                          else f"{key} row {first}: {a[key][first]} != {b[key][first]}")
            else:
                detail = f"{key} differs"
            raise AssertionError(f"not bit-identical: {detail}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_config_and_seed_give_bit_identical_telemetry(tmp_path, name):
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(CONFIGS[name], sort_keys=False), encoding="utf-8")
    train_subprocess(config, tmp_path / "a", PYTHONHASHSEED="1")
    train_subprocess(config, tmp_path / "b", PYTHONHASHSEED="2")
    a, b = telemetry(tmp_path / "a"), telemetry(tmp_path / "b")
    assert len(a["steps"]) > 0 and len(a["layer_stats"]) > 0 and len(a["epochs"]) > 0
    if name.startswith("diverging"):
        assert json.loads(a["meta"]["first_nonfinite"]) is not None and a["events"]
    else:
        assert json.loads(a["meta"]["status"]) == "completed"
    assert_identical(a, b)


def test_in_process_runs_are_identical_too(tmp_path):
    """Two runs in one process (caches, module state) match each other and a fresh process."""
    cfg = from_mapping(BASE)
    run_training(cfg, None, tmp_path / "a")
    run_training(cfg, None, tmp_path / "b")
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(BASE, sort_keys=False), encoding="utf-8")
    train_subprocess(config, tmp_path / "c")
    a, b, c = telemetry(tmp_path / "a"), telemetry(tmp_path / "b"), telemetry(tmp_path / "c")
    assert_identical(a, b)
    for t in TABLES:
        assert a[t] == c[t], t
    assert {k: v for k, v in a["meta"].items() if k != "name"} == {k: v for k, v in c["meta"].items() if k != "name"}


def test_a_different_seed_differs(tmp_path):
    run_training(from_mapping(BASE), None, tmp_path / "a")
    run_training(from_mapping({**BASE, "seed": BASE["seed"] + 1}), None, tmp_path / "b")
    a, b = telemetry(tmp_path / "a"), telemetry(tmp_path / "b")
    assert [r[2] for r in a["steps"]] != [r[2] for r in b["steps"]]  # the losses
    assert a["layer_stats"] != b["layer_stats"]
    assert len(a["steps"]) == len(b["steps"])


# ---- BLAS threads: measured, recorded, not asserted -------------------------------------------------------

# Shapes matter: with widths that are multiples of the GEMM tile sizes, OpenBLAS splits the output
# matrix evenly and every element is summed in the same order whatever the thread count; with odd
# widths the edge tiles, and the threaded dot product over more than 10,000 parameters (the gradient
# norm), round differently.
BLAS_CONFIGS = {
    "tile-multiple widths (64 in, 512, 512)": {
        "seed": 3, "data": {"generator": "blobs", "n_samples": 1600, "n_features": 64, "n_classes": 8,
                            "preprocess": "standardize"},
        "model": {"layers": [{"units": 512, "activation": "relu"}, {"units": 512, "activation": "relu"},
                             {"units": 8, "activation": "softmax"}]},
        "optimizer": {"name": "sgd", "lr": 0.05}, "training": {"epochs": 1, "batch_size": 128},
        "monitor": {"every": 1}},
    "odd widths (37 in, 300, 700), float64": {
        "seed": 3, "data": {"generator": "blobs", "n_samples": 1200, "n_features": 37, "n_classes": 7,
                            "preprocess": "standardize"},
        "model": {"layers": [{"units": 300, "activation": "relu"}, {"units": 700, "activation": "tanh"},
                             {"units": 7, "activation": "softmax"}]},
        "optimizer": {"name": "adam", "lr": 0.001}, "training": {"epochs": 1, "batch_size": 100, "dtype": "float64"},
        "monitor": {"every": 1}},
}
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_threads_in_a_subprocess(n: int) -> int | None:
    """The thread count the BLAS really uses under N (threadpoolctl, when installed; else None)."""
    code = ("import numpy, json\n"
            "try:\n    import threadpoolctl\n"
            "    print(json.dumps([i['num_threads'] for i in threadpoolctl.threadpool_info()"
            " if i['user_api'] == 'blas']))\n"
            "except ImportError:\n    print('null')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **dict.fromkeys(THREAD_VARS, str(n))})
    found = json.loads(p.stdout or "null")
    return found[0] if found else None


@pytest.mark.parametrize("label", sorted(BLAS_CONFIGS))
def test_blas_thread_count_outcome_is_recorded(tmp_path, record_property, label):
    config = tmp_path / "blas.yaml"
    config.write_text(yaml.safe_dump(BLAS_CONFIGS[label], sort_keys=False), encoding="utf-8")
    runs = {}
    for n in (1, 2):
        train_subprocess(config, tmp_path / f"threads{n}", **dict.fromkeys(THREAD_VARS, str(n)))
        runs[n] = telemetry(tmp_path / f"threads{n}")
    losses = {n: [r[2] for r in runs[n]["steps"]] for n in runs}
    same_losses = losses[1] == losses[2]
    first = next((i + 1 for i, (x, y) in enumerate(zip(losses[1], losses[2], strict=True)) if x != y), None)
    same_all = all(runs[1][t] == runs[2][t] for t in TABLES)
    threads = {n: blas_threads_in_a_subprocess(n) for n in (1, 2)}
    outcome = (f"{label}: BLAS threads {threads[1]} vs {threads[2]} (asked 1 vs 2): losses over {len(losses[1])} "
               f"steps {'bit-identical' if same_losses else f'DIFFER from step {first}'}; telemetry tables "
               f"{'bit-identical' if same_all else 'differ'}")
    print(outcome)
    record_property("blas_thread_outcome", outcome)
    assert len(losses[1]) == len(losses[2]) > 0
