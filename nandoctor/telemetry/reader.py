"""Read a run directory back as plain data, whatever state the run is in.

Works on finished, diverged, interrupted and still-running runs (SQLite WAL readers do not block
the writer). Every way a directory can be unusable becomes a `RunError` naming it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nandoctor.config import Config, from_mapping
from nandoctor.config.load import read_yaml
from nandoctor.errors import ConfigError, RunError
from nandoctor.telemetry.store import CONFIG_NAME, DB_NAME, SCHEMA_VERSION, STAT_COLUMNS

STALE_SECONDS = 30.0
META_TYPES = {"data_profile": dict, "preflight": dict, "first_nonfinite": dict, "pid": int,
              "heartbeat": int | float, "status": str, "total_steps": int, "batch_size": int, "dtype": str,
              "world_size": int, "loss": dict}


@dataclass
class Run:
    """Everything recorded about one run. Stats are indexed [sampled step, layer]; NaN = not
    recorded or non-finite (the `nonfinite` column tells which)."""

    path: Path
    meta: dict[str, Any]
    config: Config | None
    layers: list[dict]
    steps: dict[str, np.ndarray]  # step, epoch, loss, lr, grad_norm (float; NaN = non-finite), ok (bool)
    stat_steps: np.ndarray
    stats: dict[str, dict[str, np.ndarray]]  # tensor -> column -> (n_stat_steps, n_layers)
    epochs: list[dict]
    dead_units: dict[int, list[tuple[int, int, int]]]
    events: list[dict]
    status: str = "completed"
    raw_config: dict | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def first_nonfinite(self) -> dict | None:
        return self.meta.get("first_nonfinite")

    @property
    def profile(self) -> dict:
        return self.meta.get("data_profile") or {}

    @property
    def preflight(self) -> dict:
        return self.meta.get("preflight") or {}

    def stat(self, tensor: str, column: str) -> np.ndarray:
        """(n_stat_steps, n_layers) array; all-NaN when the tensor was never recorded."""
        table = self.stats.get(tensor)
        if table is None:
            return np.full((len(self.stat_steps), self.n_layers), np.nan)
        return table[column]


def load_run(run_dir: str | Path) -> Run:
    path = Path(run_dir)
    if not path.exists():
        raise RunError("run directory not found", file=str(path))
    if not path.is_dir():
        raise RunError("not a directory", file=str(path), hint="pass the run directory that `train` printed")
    db_path = path / DB_NAME
    if not db_path.exists():
        raise RunError(f"not a run directory (no {DB_NAME})", file=str(path),
                       hint="pass the run directory that `train` printed")
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            db.execute("BEGIN")  # one snapshot for every table, while the writer keeps committing
            return _read(db, path)
        finally:
            db.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError, TypeError, ValueError, OverflowError, KeyError,
            IndexError, RecursionError) as exc:
        # cells of the wrong type, text SQLite cannot decode, rows cut mid-page, JSON nested past Python's
        # recursion limit: all a damaged store
        raise RunError(f"run store is corrupt or truncated ({exc})", file=str(db_path)) from None


def _read(db: sqlite3.Connection, path: Path) -> Run:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "meta" not in tables:
        raise RunError("run store has no meta table (empty or not a nandoctor run)", file=str(path / DB_NAME))
    meta = {}
    for key, value in db.execute("SELECT key, value FROM meta"):
        try:
            meta[key] = json.loads(value)
        except (TypeError, ValueError):
            raise RunError(f"run store meta '{key}' is not valid JSON", file=str(path / DB_NAME)) from None
        except RecursionError:
            raise RunError(f"run store meta '{key}' is nested too deeply to read", file=str(path / DB_NAME)) from None
    for key, kinds in META_TYPES.items():
        if key in meta and meta[key] is not None and not isinstance(meta[key], kinds):
            raise RunError(f"run store meta '{key}' has the wrong type ({type(meta[key]).__name__})",
                           file=str(path / DB_NAME))
    version = meta.get("schema_version")
    if not isinstance(version, int):
        raise RunError("run store has no schema version", file=str(path / DB_NAME))
    if version > SCHEMA_VERSION:
        raise RunError(f"run store schema {version} is newer than this nandoctor understands ({SCHEMA_VERSION})",
                       file=str(path / DB_NAME), hint="upgrade nandoctor")
    missing = {"layers", "steps", "layer_stats", "epochs", "events", "dead_units"} - tables
    if missing:
        raise RunError(f"run store lacks tables: {', '.join(sorted(missing))}", file=str(path / DB_NAME))
    cols = ("layer", "name", "fan_in", "fan_out", "params", "activation", "init", "init_std", "norm", "dropout")
    query = f"SELECT {', '.join(cols)} FROM layers ORDER BY layer"
    layers = [dict(zip(cols, r, strict=True)) for r in db.execute(query)]
    for row in layers:  # rules divide by fan_in: a damaged row must not reach them
        if not all(isinstance(row[k], int) and row[k] > 0 for k in ("fan_in", "fan_out")):
            raise RunError(f"run store layer {row['layer']!r} has fan_in {row['fan_in']!r} and fan_out "
                           f"{row['fan_out']!r} (expected positive integers)", file=str(path / DB_NAME))
    rows = db.execute("SELECT step, epoch, loss, lr, grad_norm, status FROM steps ORDER BY step").fetchall()
    steps = {
        "step": np.array([r[0] for r in rows], dtype=np.int64),
        "epoch": np.array([r[1] for r in rows], dtype=np.int64),
        "loss": np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64),
        "lr": np.array([np.nan if r[3] is None else r[3] for r in rows], dtype=np.float64),
        "grad_norm": np.array([np.nan if r[4] is None else r[4] for r in rows], dtype=np.float64),
        "ok": np.array([r[5] == "ok" for r in rows], dtype=bool),
    }
    stat_steps, stats = _read_stats(db, len(layers))
    epochs = [dict(zip(("epoch", "train_loss", "val_loss", "train_metric", "val_metric"), r, strict=True))
              for r in db.execute("SELECT * FROM epochs ORDER BY epoch")]
    dead: dict[int, list[tuple[int, int, int]]] = {}
    for e, layer, d, u in db.execute("SELECT epoch, layer, dead, units FROM dead_units ORDER BY epoch, layer"):
        dead.setdefault(e, []).append((layer, d, u))
    events = [{"step": r[0], "epoch": r[1], "kind": r[2], "phase": r[3], "layer": r[4], "tensor": r[5],
               "detail": json.loads(r[6]) if r[6] else None}
              for r in db.execute("SELECT step, epoch, kind, phase, layer, tensor, detail FROM events ORDER BY id")]
    raw, config = _read_config(path)
    return Run(path, meta, config, layers, steps, stat_steps, stats, epochs, dead, events,
               status=_status(meta), raw_config=raw)


def _read_stats(db: sqlite3.Connection, n_layers: int) -> tuple[np.ndarray, dict]:
    rows = db.execute(f"SELECT step, layer, tensor, {', '.join(STAT_COLUMNS)} FROM layer_stats").fetchall()
    steps = np.array(sorted({r[0] for r in rows}), dtype=np.int64)
    index = {s: i for i, s in enumerate(steps)}
    stats: dict[str, dict[str, np.ndarray]] = {}
    for r in rows:
        if not 0 <= r[1] < n_layers:
            continue
        table = stats.get(r[2])
        if table is None:
            table = stats[r[2]] = {c: np.full((len(steps), n_layers), np.nan) for c in STAT_COLUMNS}
        i = index[r[0]]
        for c, v in zip(STAT_COLUMNS, r[3:], strict=True):
            if v is not None:
                table[c][i, r[1]] = v
    return steps, stats


def _read_config(path: Path) -> tuple[dict | None, Config | None]:
    file = path / CONFIG_NAME
    if not file.exists():
        return None, None  # runs recorded by other frameworks may have no config
    try:
        raw = read_yaml(file)
        return raw, from_mapping(raw, file=str(file))
    except ConfigError as exc:
        where = f"{exc.path}: " if exc.path else ""
        raise RunError(f"run config is unreadable: {where}{exc.message}", file=str(file),
                       hint=exc.hint if exc.path else None) from None


def _status(meta: dict) -> str:
    """`running` unless the writer is gone: a dead pid or a stale heartbeat means interrupted."""
    status = meta.get("status", "running")
    if status != "running":
        return status
    pid, beat = meta.get("pid"), meta.get("heartbeat")
    alive = True
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, OverflowError, ValueError):
            alive = False
        except PermissionError:
            pass
    if isinstance(beat, int | float) and time.time() - beat > STALE_SECONDS:
        alive = False
    return "running" if alive else "interrupted"


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
