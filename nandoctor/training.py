"""One training run end to end: data, run directory, trainer with telemetry.

Inputs are validated and the data is built before anything is written, so a bad config or data
file leaves no half-made run directory behind.
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from nandoctor.config import Config, dump_config
from nandoctor.data import Dataset, load_dataset
from nandoctor.engine.trainer import Trainer, TrainResult
from nandoctor.errors import ConfigError, RunError
from nandoctor.telemetry.monitor import Monitor
from nandoctor.telemetry.store import CONFIG_NAME, DB_NAME


def prepare(cfg: Config, config_file: Path | None) -> tuple[Config, Dataset]:
    """Build the data and return the config as the run will keep it: the inferred task filled in and
    file paths made absolute, so the run directory's config.yaml can be re-trained from anywhere."""
    base = config_file.parent if config_file else Path.cwd()
    data = load_dataset(cfg.data, cfg.seed, base_dir=base, file=str(config_file) if config_file else None)
    updates = {"task": data.task}
    for key in ("csv", "npz"):
        value = getattr(cfg.data, key)
        if value is not None:
            updates[key] = str((base / Path(value).expanduser()).resolve())
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **updates)), data


def new_run_dir(cfg: Config, out: Path | None, root: Path = Path("runs")) -> tuple[Path, Path | None]:
    """`out` if given (must not hold anything), else runs/<name>-<timestamp>[-k]. Also returns the
    topmost directory this call created (None when `out` existed), so a failed start can undo it."""
    if out is not None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RunError("output directory already exists and is not empty", file=str(out),
                           hint="choose another --out, or delete it first")
        target = out
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = root / f"{cfg.name}-{stamp}"
        k = 1
        while target.exists():
            k += 1
            target = root / f"{cfg.name}-{stamp}-{k}"
    created = None
    for parent in (target, *target.parents):
        if parent.exists():
            break
        created = parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the run directory ({exc.strerror})", file=str(target)) from None
    return target, created


def _undo(run_dir: Path, created: Path | None) -> None:
    """Remove what a failed start wrote: the directories it created, or the files it put into an
    empty `--out` that was there before."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for item in run_dir.iterdir():
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)


@contextmanager
def _fits_in_memory(what: str, where: str, config_file: Path | None, hint: str):
    """Data and model are allocated before anything is written: a size this machine cannot hold is
    a config problem with a message, not a crash."""
    try:
        yield
    except MemoryError:
        raise ConfigError(f"the {what} is too large for this machine's memory", file=str(config_file or "config"),
                          path=where, hint=hint) from None


def run_training(cfg: Config, config_file: Path | None, out: Path | None = None,
                 observer_factory=None) -> tuple[TrainResult, Path, Config]:
    """Train `cfg` and record it; returns (result, run directory, the config as recorded)."""
    with _fits_in_memory("data", "data", config_file, "use fewer samples or features"):
        cfg, data = prepare(cfg, config_file)
    with _fits_in_memory("model", "model.layers", config_file, "use fewer or narrower layers"):
        trainer = Trainer(cfg, data)
    run_dir, created = new_run_dir(cfg, out)
    try:
        (run_dir / CONFIG_NAME).write_text(dump_config(cfg), encoding="utf-8")
        monitor = Monitor(run_dir, cfg)
    except (OSError, sqlite3.Error) as exc:
        _undo(run_dir, created)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise RunError(f"cannot write the run directory ({reason})", file=str(run_dir),
                       hint="is the disk full or read-only?") from None
    trainer.observer = observer_factory(monitor) if observer_factory else monitor
    try:
        result = trainer.run()
    except (OSError, sqlite3.Error) as exc:
        raise RunError(f"recording stopped at step {trainer.step_no}: {exc}; what was committed before is kept",
                       file=str(run_dir / DB_NAME),
                       hint="free some disk space; `nandoctor diagnose` reads the run as interrupted") from None
    return result, run_dir, cfg
