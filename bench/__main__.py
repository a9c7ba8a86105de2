"""`python -m bench [--quick] [--only NAME[,NAME...]] [--list] [--keep-blas-env]`: run the sections, print tables."""

from __future__ import annotations

import argparse
import os
import sys

from bench import SECTIONS

BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
REEXEC_MARK = "NANDOCTOR_BENCH_REEXEC"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="nandoctor speed benchmarks")
    p.add_argument("--quick", action="store_true", help="shorter timings (noisier)")
    p.add_argument("--only", action="append", default=[], metavar="NAME[,NAME...]",
                   help="run only these sections (repeatable); see --list")
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    p.add_argument("--keep-blas-env", action="store_true",
                   help=f"do not re-execute without {' / '.join(BLAS_ENV)}")
    return p.parse_args(argv)


def drop_blas_env(args: argparse.Namespace) -> list[str]:
    """Re-exec once without the OpenBLAS overrides (read when NumPy loads OpenBLAS, so before any import).
    Returns the notes to print about them."""
    if os.environ.get(REEXEC_MARK):
        return [f"re-executed without {os.environ[REEXEC_MARK]}"]
    found = {k: os.environ[k] for k in BLAS_ENV if k in os.environ}
    if not found:
        return []
    text = ", ".join(f"{k}={v}" for k, v in found.items())
    if args.keep_blas_env or "numpy" in sys.modules:
        return [f"[yellow]kept {text}: OpenBLAS may run a slower kernel[/]"]
    env = {k: v for k, v in os.environ.items() if k not in found}
    env[REEXEC_MARK] = text
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    return []  # not reached


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.list:
        for s in SECTIONS:
            print(f"{s.name:10} {s.description}")
        return 0
    wanted = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    known = {s.name for s in SECTIONS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    notes = drop_blas_env(args) if argv is None else []

    import importlib
    import platform
    import time
    import traceback

    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: do not wrap the tables at 80 columns
        console.width = 170
    console.print(f"[bold]nandoctor bench[/] {'(quick) ' if args.quick else ''}- Python {platform.python_version()}, "
                  f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    for note in notes:
        console.print(note)
    failed = []
    for section in SECTIONS:
        if wanted and section.name not in wanted:
            continue
        t0 = time.perf_counter()
        try:
            result = importlib.import_module(section.module).run(args.quick)
        except Exception:
            failed.append(section.name)
            console.print(f"[red]section {section.name} failed:[/]\n{traceback.format_exc()}")
            continue
        for table in result if isinstance(result, list | tuple) else [result]:
            console.print(table)
        console.print(f"[dim]{section.name}: {time.perf_counter() - t0:.1f} s[/]\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
