"""The command line. Only this module knows typer; every user error surfaces here, once, as a red
one-line message and exit code 2 (never a traceback)."""

from __future__ import annotations

import functools
import json
import math
import os
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
            report.console(stderr=True).print(f"[bold red]error:[/] {report.escape(exc.render())}", soft_wrap=True)
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
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="PATH=VALUE",
                                                   help="Override a config value (optimizer.lr=0.01).")] = None,
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
    verify: Annotated[bool, typer.Option("--verify", help="Retrain with each top cause's fix and re-rank.")] = False,
    verify_top: Annotated[int, typer.Option("--verify-top", min=1, help="How many causes --verify tries.")] = 3,
    charts: Annotated[bool, typer.Option("--charts/--no-charts", help="Draw the loss and gradient charts.")] = True,
) -> None:
    """Read a run directory and print the ranked causes with evidence and fixes."""
    from nandoctor.diagnose import diagnose
    from nandoctor.telemetry.reader import load_run

    run = load_run(run_dir)
    d = diagnose(run)
    trouble = (d.first_nonfinite or {}).get("rank")
    if d.ranks and trouble:  # a distributed run: chart the rank where trouble started
        run = load_run(next(r["path"] for r in d.ranks if r["rank"] == trouble))
    if verify and d.causes:
        from nandoctor.verify import verify as verify_diagnosis

        d = verify_diagnosis(run, d, verify_top)
    if json_:
        typer.echo(json.dumps(d.to_json(top)))
    else:
        report.print_diagnosis(d, report.console(), top, run if charts else None)
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
    report.print_explain(rule, out)


@app.command()
@handles_errors
def check(
    targets: Annotated[list[Path], typer.Argument(help="Config files or directories of configs.")],
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="At most N steps per config.")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML for CI reporters.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Runs go here (default runs/check-<timestamp>).")] = None,
    json_: JsonOpt = False,
) -> None:
    """CI smoke check: train and diagnose every config, compare with its expect: block."""
    import time

    from nandoctor import checking

    if junit is not None and not junit.parent.is_dir():  # fail before training, not after
        raise NandoctorError("cannot write JUnit file (no such directory)", file=str(junit))
    t0 = time.perf_counter()
    out_root = out or checking.default_out()
    results = checking.run_check(targets, out_root, max_steps)
    seconds = time.perf_counter() - t0
    if junit is not None:
        try:
            junit.write_text(checking.junit_xml(results, seconds), encoding="utf-8")
        except OSError as exc:
            raise NandoctorError(f"cannot write JUnit file ({exc.strerror})", file=str(junit)) from None
    ok = all(r.passed for r in results)
    if json_:
        typer.echo(json.dumps({"schema": 1, "ok": ok, "seconds": round(seconds, 3),
                               "results": [r.to_json() for r in results]}))
    else:
        report.print_check(results, seconds, report.console())
    if not ok:
        raise typer.Exit(1)


@app.command()
@handles_errors
def fix(
    config: Annotated[Path, typer.Argument(help="The config to repair.")],
    run: Annotated[Path | None, typer.Option("--run", help="Diagnose this run instead of training CONFIG.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write (default <config>.fixed.yaml).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Train the patched config and compare.")] = False,
) -> None:
    """Write a patched config applying the top diagnosis' fix; --verify trains it and shows before/after."""
    from nandoctor import patching
    from nandoctor.config.load import read_yaml
    from nandoctor.diagnose import diagnose_dir
    from nandoctor.experiment import summarize, train_and_diagnose
    from nandoctor.training import run_training

    cfg = load_config(config)
    target = out or config.with_name(f"{config.stem}.fixed{config.suffix or '.yaml'}")
    if target.exists() and not force:  # before training, which may take a while
        raise NandoctorError("output file already exists", file=str(target), hint="pass --force or another --out")
    out_c = report.console()
    if run is None:
        err = report.console(stderr=True)
        err.print(f"[dim]training {config} to diagnose it ...[/]")
        _, run, _ = run_training(cfg, config)
    d = diagnose_dir(run)
    chosen = next(((c, f) for c in d.causes if c.severity == "error" for f in c.fixes if f.patch), None)
    if chosen is None:
        out_c.print(f"nothing to fix: {report.escape(d.verdict)}")
        return
    cause, chosen_fix = chosen
    patch, note = dict(chosen_fix.patch), ""
    if not cfg.expect.healthy:  # the fix is meant to cure it
        patch |= {"expect.healthy": True, "expect.causes": []}
        note = "; its expect: block now says healthy"
    text, kept = patching.patch_text(config.read_text(encoding="utf-8"), patch)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise NandoctorError(f"cannot write the patched config ({exc.strerror})", file=str(target)) from None
    out_c.print(f"[bold]{cause.id}[/]: {report.escape(chosen_fix.summary)}")
    out_c.print(f"wrote {target}{note}" + ("" if kept else " (re-emitted: comments inside sections were not kept)"),
                soft_wrap=True)
    if not verify:
        return
    before = summarize(d)
    after = train_and_diagnose(read_yaml(config), chosen_fix.patch, None, None, str(config))
    report.print_before_after(before, after, out_c)
    if not after.get("healthy"):
        raise typer.Exit(1)


@app.command()
@handles_errors
def init(
    template: Annotated[str, typer.Argument(help="classification or regression.")] = "classification",
    out: Annotated[Path, typer.Option("--out", help="File to write.")] = Path("nandoctor.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter config."""
    from nandoctor.errors import did_you_mean
    from nandoctor.templates import TEMPLATES, render

    if template not in TEMPLATES:
        raise NandoctorError(f"unknown template '{template}'", hint=did_you_mean(template, TEMPLATES) or
                             f"choose one of {', '.join(TEMPLATES)}")
    if out.exists() and not force:
        raise NandoctorError("file already exists", file=str(out), hint="pass --force or another --out")
    try:
        out.write_text(render(template, out.stem, str(out)), encoding="utf-8")
    except OSError as exc:
        raise NandoctorError(f"cannot write ({exc.strerror})", file=str(out)) from None
    report.console().print(f"wrote {out}; next: nandoctor train {out}")


@app.command()
@handles_errors
def runs(
    root: Annotated[Path, typer.Argument(help="Directory holding run directories.")] = Path("runs"),
    json_: JsonOpt = False,
) -> None:
    """List run directories with their status and verdict."""
    from nandoctor.diagnose import diagnose_dir
    from nandoctor.errors import RunError

    if not root.is_dir():
        raise NandoctorError("no such directory", file=str(root), hint="train something first: nandoctor train")
    rows = []
    for d in _run_dirs(root):
        try:
            diag = diagnose_dir(d)
            rows.append({"run": str(d), "status": diag.status, "healthy": diag.healthy, "verdict": diag.verdict,
                         "top_cause": diag.causes[0].id if diag.causes else None})
        except RunError as exc:
            rows.append({"run": str(d), "status": "unreadable", "healthy": None, "verdict": exc.render(),
                         "top_cause": None})
    if json_:
        typer.echo(json.dumps(rows))
    else:
        report.print_runs(rows, report.console())


def _run_dirs(root: Path, depth: int = 2) -> list[Path]:
    """Run directories in `root` and in folders of runs below it (`check` writes runs/check-<time>/<name>)."""
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError as exc:
        raise NandoctorError(f"cannot list the directory ({exc.strerror})", file=str(root)) from None
    found = []
    for p in children:
        if (p / "telemetry.sqlite").exists():
            found.append(p)
        elif depth > 1 and os.access(p, os.R_OK | os.X_OK):
            found += _run_dirs(p, depth - 1)
    return found


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
