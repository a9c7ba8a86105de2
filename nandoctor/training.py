"""One training run end to end: data, run directory, trainer with telemetry.

Inputs are validated and the data is built before anything is written, so a bad config or data
file leaves no half-made run directory behind.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from nandoctor.config import Config, dump_config
from nandoctor.data import Dataset, load_dataset
from nandoctor.engine.trainer import Trainer, TrainResult
from nandoctor.errors import RunError
from nandoctor.telemetry.monitor import Monitor
from nandoctor.telemetry.store import CONFIG_NAME


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


def new_run_dir(cfg: Config, out: Path | None, root: Path = Path("runs")) -> Path:
    """`out` if given (must not hold anything), else runs/<name>-<timestamp>[-k]."""
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
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the run directory ({exc.strerror})", file=str(target)) from None
    return target


def run_training(cfg: Config, config_file: Path | None, out: Path | None = None,
                 observer_factory=None) -> tuple[TrainResult, Path, Config]:
    """Train `cfg` and record it; returns (result, run directory, the config as recorded)."""
    cfg, data = prepare(cfg, config_file)
    run_dir = new_run_dir(cfg, out)
    try:
        (run_dir / CONFIG_NAME).write_text(dump_config(cfg), encoding="utf-8")
        monitor = Monitor(run_dir, cfg)
    except OSError as exc:
        raise RunError(f"cannot write the run directory ({exc.strerror or exc})", file=str(run_dir)) from None
    observer = observer_factory(monitor) if observer_factory else monitor
    result = Trainer(cfg, data, observer).run()
    return result, run_dir, cfg
