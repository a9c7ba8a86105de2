"""Scale check: peak memory, wall time and run-store size of `nandoctor train` (and of diagnosing the run)
on three large cases, plus a BLAS thread-count determinism check. Numbers go to docs/scale.md.

    python scripts/scale_check.py                 # all cases, one at a time (a few minutes)
    python scripts/scale_check.py csv deep        # some of: csv deep long blas
    python scripts/scale_check.py --json out.json --keep /tmp/scale

Each measurement runs in its own process; peak memory is that process's ru_maxrss (os.wait4), so it
includes the interpreter, NumPy and the imports (see the `baseline` row: a tiny run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

NANDOCTOR = [sys.executable, "-c", "import sys; from nandoctor.cli import main; sys.argv[0] = 'nandoctor'; main()"]


def measure(args: list[str], env: dict | None = None) -> dict:
    """Run `nandoctor ARGS` as a child; wall seconds, peak RSS (MiB), exit code, output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([*NANDOCTOR, *args], stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = {"seconds": round(seconds, 2), "peak_mib": round(usage.ru_maxrss / 1024, 1), "exit": p.returncode,
                  "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}
    if p.returncode not in (0, 1):
        raise SystemExit(f"nandoctor {' '.join(args)} failed ({p.returncode}):\n{result['stderr']}")
    return result


def store_facts(run: Path) -> dict:
    files = {p.name: p.stat().st_size for p in run.iterdir() if p.is_file()}
    con = sqlite3.connect(f"file:{run / 'telemetry.sqlite'}?mode=ro", uri=True)
    try:
        counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("steps", "layer_stats")}
        sampled = con.execute("SELECT COUNT(DISTINCT step) FROM layer_stats").fetchone()[0]
        meta = dict(con.execute("SELECT key, value FROM meta"))
    finally:
        con.close()
    return {"store_mib": round(sum(v for k, v in files.items() if k.startswith("telemetry.sqlite")) / 2**20, 2),
            "files": files, "steps": counts["steps"], "layer_stats_rows": counts["layer_stats"],
            "sampled_steps": sampled, "stride": json.loads(meta.get("stride", "null")),
            "status": json.loads(meta.get("status", "null")), "n_params": json.loads(meta.get("n_params", "null"))}


def write_config(work: Path, name: str, raw: dict) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def train_and_diagnose(work: Path, name: str, raw: dict) -> dict:
    config = write_config(work, name, raw)
    run = work / f"run-{name}"
    shutil.rmtree(run, ignore_errors=True)
    train = measure(["train", str(config), "--out", str(run), "--quiet"])
    facts = store_facts(run)
    diag = measure(["diagnose", str(run), "--json"])
    verdict = json.loads(diag["stdout"])["verdict"]
    return {"case": name, "train_seconds": train["seconds"], "train_peak_mib": train["peak_mib"], **facts,
            "diagnose_seconds": diag["seconds"], "diagnose_peak_mib": diag["peak_mib"], "verdict": verdict}


# ---- the cases ---------------------------------------------------------------------------------------

def case_baseline(work: Path) -> dict:
    """A tiny run: what the interpreter, NumPy and the imports cost before any data."""
    raw = {"seed": 0, "data": {"generator": "moons", "n_samples": 200},
           "model": {"layers": [{"units": 8, "activation": "relu"}, {"units": 2, "activation": "softmax"}]},
           "training": {"epochs": 1}}
    return train_and_diagnose(work, "baseline-tiny", raw)


def case_csv(work: Path, rows: int = 200_000, features: int = 20) -> dict:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, features))
    w = rng.standard_normal(features)
    y = (X @ w + 0.5 * rng.standard_normal(rows) > 0).astype(int)
    path = work / "big.csv"
    header = ",".join([f"f{j}" for j in range(features)] + ["label"])
    t0 = time.perf_counter()
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="",
               fmt=["%.6f"] * features + ["%d"])
    gen = time.perf_counter() - t0
    raw = {"seed": 0, "data": {"csv": str(path), "preprocess": "standardize"},
           "model": {"init": "he_normal", "layers": [{"units": 64, "activation": "relu"},
                                                     {"units": 64, "activation": "relu"},
                                                     {"units": 2, "activation": "softmax"}]},
           "optimizer": {"name": "adam", "lr": 0.001}, "training": {"epochs": 1, "batch_size": 32}}
    out = train_and_diagnose(work, "csv-200k", raw)
    out.update(csv_mib=round(path.stat().st_size / 2**20, 1), csv_rows=rows, csv_features=features,
               csv_write_seconds=round(gen, 1))
    return out


def case_deep(work: Path, depth: int = 50, width: int = 64) -> dict:
    layers = [{"units": width, "activation": "relu"} for _ in range(depth - 1)]
    layers.append({"units": 2, "activation": "softmax"})
    raw = {"seed": 0, "data": {"generator": "moons", "n_samples": 2000, "preprocess": "standardize"},
           "model": {"init": "he_normal", "layers": layers}, "optimizer": {"name": "adam", "lr": 0.001},
           "training": {"epochs": 6, "batch_size": 32}}  # 1600 rows -> 50 steps/epoch -> 300 steps
    return train_and_diagnose(work, f"deep-{depth}x{width}", raw)


def case_long(work: Path) -> dict:
    """100k steps of a 10-layer net: what the retention policy (`monitor.every: auto`) keeps."""
    layers = [{"units": 16, "activation": "relu"} for _ in range(9)] + [{"units": 2, "activation": "softmax"}]
    raw = {"seed": 0, "data": {"generator": "moons", "n_samples": 1000},  # 800 rows in batches of 8: 100 steps/epoch
           "model": {"init": "he_normal", "layers": layers},
           "optimizer": {"name": "sgd", "lr": 0.01}, "training": {"epochs": 1000, "batch_size": 8},
           "monitor": {"every": "auto"}}
    return train_and_diagnose(work, "long-100k-steps-10-layers", raw)


def case_blas(work: Path) -> dict:
    """The same config under OPENBLAS/OMP/MKL_NUM_THREADS=1 and =2: are the losses bit-identical?"""
    threads_vars = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    results = {}
    for label, widths, features, dtype in (("tile-multiple widths", (512, 512), 64, "float32"),
                                           ("odd widths", (300, 700), 37, "float32"),
                                           ("odd widths", (300, 700), 37, "float64")):
        raw = {"seed": 3, "data": {"generator": "blobs", "n_samples": 3000, "n_features": features, "n_classes": 7,
                                   "preprocess": "standardize"},
               "model": {"layers": [{"units": widths[0], "activation": "relu"},
                                    {"units": widths[1], "activation": "tanh"}, {"units": 7, "activation": "softmax"}]},
               "optimizer": {"name": "adam", "lr": 0.001},
               "training": {"epochs": 3, "batch_size": 100, "dtype": dtype}, "monitor": {"every": "auto"}}
        config = write_config(work, "blas", raw)
        losses = {}
        for n in (1, 2):
            run = work / f"blas-{n}"
            shutil.rmtree(run, ignore_errors=True)
            measure(["train", str(config), "--out", str(run), "--quiet"], env=dict.fromkeys(threads_vars, str(n)))
            con = sqlite3.connect(run / "telemetry.sqlite")
            losses[n] = [r[0] for r in con.execute("SELECT loss FROM steps ORDER BY step")]
            con.close()
        a, b = np.array(losses[1]), np.array(losses[2])
        differ = np.flatnonzero(a != b)
        key = f"{label} {widths[0]}x{widths[1]}, {features} inputs, {dtype}"
        results[key] = {"steps": len(a), "identical": not differ.size,
                        "first_differing_step": int(differ[0]) + 1 if differ.size else None,
                        "final_loss_1_thread": float(a[-1]), "final_loss_2_threads": float(b[-1]),
                        "max_relative_difference": float(np.max(np.abs(a - b) / np.abs(a))) if differ.size else 0.0}
    return {"case": "blas threads 1 vs 2", "results": results}


CASES = {"baseline": case_baseline, "csv": case_csv, "deep": case_deep, "long": case_long, "blas": case_blas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"some of {', '.join(CASES)} (default: all)")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    names = args.cases or list(CASES)
    unknown = set(names) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="nandoctor-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for name in names:  # one at a time: the numbers are per process, and the machine may be shared
            print(f"== {name} ...", file=sys.stderr, flush=True)
            r = CASES[name](work)
            results.append(r)
            print(json.dumps(r, indent=1), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print("\n| case | steps | train s | train peak MiB | store MiB | sampled steps | diagnose s | diagnose peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "results" in r:
            continue
        print(f"| {r['case']} | {r.get('steps', '-')} | {r['train_seconds']} | {r['train_peak_mib']} | "
              f"{r.get('store_mib', '-')} | {r.get('sampled_steps', '-')} | {r.get('diagnose_seconds', '-')} | "
              f"{r.get('diagnose_peak_mib', '-')} |")


if __name__ == "__main__":
    main()
