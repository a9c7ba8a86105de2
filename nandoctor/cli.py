"""The command line. Only this module knows typer; every user error surfaces here, once, as a red
one-line message and exit code 2 (never a traceback)."""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from nandoctor import __version__, report
from nandoctor.config import load_config
from nandoctor.errors import NandoctorError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A doctor for neural-network training: train an MLP from YAML, record per-layer "
                       "telemetry, and diagnose why it went NaN or stalled.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else on stdout.")]


def handles_errors(fn):
    """Turn a NandoctorError into one clear line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NandoctorError as exc:
            report.console(stderr=True).print(f"[bold red]error:[/] {report.escape(exc.render())}")
            raise typer.Exit(2) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nandoctor {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Show the version and exit.")] = False) -> None:
    """nandoctor: evidence instead of guessing when training goes wrong."""


def _none_if_nan(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


@app.command()
@handles_errors
def train(
    config: Annotated[Path, typer.Argument(help="The YAML config to train.")],
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>-<timestamp>).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override PATH=VALUE (optimizer.lr=0.01).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the config's seed.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override training.epochs.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    json_: JsonOpt = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when the run is unhealthy.")] = False,
) -> None:
    """Validate CONFIG, train it with the NumPy engine while recording telemetry, print a verdict."""
    from nandoctor.diagnose import diagnose_dir
    from nandoctor.live import LiveDisplay
    from nandoctor.training import run_training

    overrides = list(set_ or [])
    if seed is not None:
        overrides.append(f"seed={seed}")
    if epochs is not None:
        overrides.append(f"training.epochs={epochs}")
    cfg = load_config(config, overrides)
    err = report.console(stderr=True)
    factory = None if (quiet or json_ or not err.is_terminal) else (lambda m: LiveDisplay(m, err))
    result, run_dir, _ = run_training(cfg, config, out, factory)
    diagnosis = diagnose_dir(run_dir)
    if json_:
        epochs_json = [{k: _none_if_nan(v) for k, v in e.items()} for e in result.epochs]
        typer.echo(json.dumps({"schema": 1, "run": str(run_dir), "status": result.status, "steps": result.steps,
                               "first_nonfinite": result.first_nonfinite, "epochs": epochs_json}))
    elif not quiet:
        out_c = report.console()
        style = "bold green" if diagnosis.healthy else "bold red"
        out_c.print(f"[{style}]{report.escape(diagnosis.verdict)}[/]")
        out_c.print(f"run: {run_dir}  ({result.steps} steps, {result.seconds:.1f} s, {result.status})")
        out_c.print(f"next: nandoctor diagnose {run_dir}")
    else:
        typer.echo(str(run_dir))
    if strict and not diagnosis.healthy:
        raise typer.Exit(1)


@app.command()
@handles_errors
def diagnose(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `train` (or a recorder).")],
    json_: JsonOpt = False,
    top: Annotated[int | None, typer.Option("--top", min=1, help="Show only the K highest-ranked causes.")] = None,
) -> None:
    """Read a run directory and print the ranked causes with evidence and fixes."""
    from nandoctor.diagnose import diagnose_dir

    d = diagnose_dir(run_dir)
    if json_:
        typer.echo(json.dumps(d.to_json(top)))
    else:
        report.print_diagnosis(d, report.console(), top)
    if any(c.severity == "error" for c in d.causes):
        raise typer.Exit(1)


@app.command()
@handles_errors
def explain(cause: Annotated[str | None, typer.Argument(help="A cause id; omit to list them all.")] = None) -> None:
    """List the causes the diagnoser knows, or explain one: what, why, and how to fix it."""
    from nandoctor.diagnose import BY_ID, RULES
    from nandoctor.errors import did_you_mean

    out = report.console()
    if cause is None:
        for rule in RULES:
            out.print(f"[bold]{rule.id:<22}[/] {rule.title}")
        return
    rule = BY_ID.get(cause)
    if rule is None:
        raise NandoctorError(f"unknown cause '{cause}'", hint=did_you_mean(cause, BY_ID) or
                             "run `nandoctor explain` for the list")
    out.print(f"[bold]{rule.id}[/] — {rule.title}\n")
    for head, text in (("What it detects", rule.what), ("Why it matters", rule.why), ("How to fix it", rule.fix)):
        out.print(f"[bold]{head}[/]\n  {text}\n")
    if rule.explains:
        out.print(f"[bold]Explains[/] (symptoms ranked under it)\n  {', '.join(rule.explains)}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
