"""The run store: one SQLite database per run directory, written in WAL mode.

WAL lets other processes read while training writes; commits happen about once a second (and at
every epoch end and event), so a kill -9 loses at most the last second. NaN cannot be stored in
SQLite (it becomes NULL): readers treat a NULL measurement as non-finite, and the per-step
`status` column says so explicitly.
"""

from __future__ import annotations

import json
import sqlite3
import time
from itertools import chain
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
DB_NAME = "telemetry.sqlite"
CONFIG_NAME = "config.yaml"
COMMIT_SECONDS = 1.0
STATS_PER_INSERT = 64  # layer_stats rows per INSERT statement: ~30 % less time per row than one row each

STAT_COLUMNS = ("mean", "std", "min", "max", "abs_max", "norm", "nonfinite", "saturated", "zero", "ratio")

DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layers (layer INTEGER PRIMARY KEY, name TEXT NOT NULL, fan_in INTEGER, fan_out INTEGER,
    params INTEGER, activation TEXT, init TEXT, init_std REAL, norm TEXT, dropout REAL);
CREATE TABLE IF NOT EXISTS steps (step INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, loss REAL, lr REAL,
    grad_norm REAL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layer_stats (step INTEGER NOT NULL, layer INTEGER NOT NULL, tensor TEXT NOT NULL,
    {", ".join(f"{c} REAL" for c in STAT_COLUMNS)}, PRIMARY KEY (step, layer, tensor));
CREATE TABLE IF NOT EXISTS epochs (epoch INTEGER PRIMARY KEY, train_loss REAL, val_loss REAL,
    train_metric REAL, val_metric REAL);
CREATE TABLE IF NOT EXISTS dead_units (epoch INTEGER NOT NULL, layer INTEGER NOT NULL, dead INTEGER NOT NULL,
    units INTEGER NOT NULL, PRIMARY KEY (epoch, layer));
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER NOT NULL, epoch INTEGER,
    kind TEXT NOT NULL, phase TEXT, layer INTEGER, tensor TEXT, detail TEXT);
"""


STAT_ROW = f"({', '.join('?' * (3 + len(STAT_COLUMNS)))})"
INSERT_STATS = "INSERT OR REPLACE INTO layer_stats VALUES "


def _num(x: Any) -> Any:
    """SQLite stores floats; numpy scalars become Python floats, NaN becomes NULL."""
    if x is None:
        return None
    x = float(x)
    return None if x != x else x


class RunWriter:
    """Append-only writer with time-based commits. One writer per run directory."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.db = sqlite3.connect(self.dir / DB_NAME, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(DDL)
        self.db.execute("BEGIN")
        self.last_commit = time.monotonic()
        self._steps: list[tuple] = []
        self._stats: list[tuple] = []
        self.set_meta(schema_version=SCHEMA_VERSION, status="running")
        self.commit()  # a reader polling from the first instant finds a valid (empty) run

    def set_meta(self, **items: Any) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            [(k, json.dumps(v)) for k, v in items.items()])

    def layers(self, rows: list[dict]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO layers VALUES (:layer, :name, :fan_in, :fan_out, :params, :activation, :init, "
            ":init_std, :norm, :dropout)", rows)

    def step(self, step: int, epoch: int, loss: float, lr: float, grad_norm: float, status: str) -> None:
        self._steps.append((step, epoch, _num(loss), _num(lr), _num(grad_norm), status))
        if time.monotonic() - self.last_commit > COMMIT_SECONDS:
            self.commit()

    def stats(self, step: int, layer: int, tensor: str, values: tuple) -> None:
        self._stats.append((step, layer, tensor, *map(_num, values)))

    def stat_rows(self, rows: list[tuple]) -> None:
        """(step, layer, tensor, *values) rows holding only Python floats and None, as `tensor_stats`
        returns them: no per-value conversion (SQLite itself stores a NaN as NULL)."""
        self._stats.extend(rows)

    def epoch(self, record: dict, dead: list[tuple[int, int, int]]) -> None:
        self.db.execute("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?, ?, ?)",
                        (record["epoch"], *(_num(record[k]) for k in
                                            ("train_loss", "val_loss", "train_metric", "val_metric"))))
        self.db.executemany("INSERT OR REPLACE INTO dead_units VALUES (?, ?, ?, ?)",
                            [(record["epoch"], *d) for d in dead])
        self.commit()

    def event(self, step: int, epoch: int | None, kind: str, phase: str | None = None, layer: int | None = None,
              tensor: str | None = None, detail: Any = None) -> None:
        self.db.execute("INSERT INTO events (step, epoch, kind, phase, layer, tensor, detail) VALUES (?,?,?,?,?,?,?)",
                        (step, epoch, kind, phase, layer, tensor, json.dumps(detail)))
        self.commit()

    def commit(self) -> None:
        if self._steps:
            self.db.executemany("INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, ?, ?)", self._steps)
            self._steps.clear()
        if self._stats:
            rows, k = self._stats, STATS_PER_INSERT
            full = len(rows) - len(rows) % k
            if full:
                self.db.executemany(INSERT_STATS + ", ".join([STAT_ROW] * k),
                                    [tuple(chain.from_iterable(rows[i:i + k])) for i in range(0, full, k)])
            self.db.executemany(INSERT_STATS + STAT_ROW, rows[full:])
            rows.clear()
        self.set_meta(heartbeat=time.time())
        # a Ctrl-C can land between COMMIT and BEGIN: the checks keep the next call valid either way
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.db.execute("BEGIN")
        self.last_commit = time.monotonic()

    def close(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN")
        self.commit()
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()
