"""What an outside reader sees of a run store while `train` writes it (tests of live and killed runs)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nandoctor.telemetry.store import DB_NAME


def committed_steps(run: Path) -> int:
    """Steps committed so far (0 while the store is not there yet)."""
    try:
        con = sqlite3.connect(f"file:{run / DB_NAME}?mode=ro", uri=True)
        try:
            return con.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0
