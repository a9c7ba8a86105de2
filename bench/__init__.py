"""Speed benchmarks for nandoctor, run as `python -m bench` from the repository root (`make bench`).

The benchmark is a registry of sections. A section is a module exposing

    run(quick: bool) -> rich.table.Table | list[rich.table.Table]

and is listed in SECTIONS below as (name, module, one-line description). `python -m bench` runs every
section in order; `--only NAME[,NAME...]` picks some (`--list` shows them) and `--quick` asks each
section for shorter timings. To add a section, write `bench/<module>.py` with such a `run` and add
one line to SECTIONS; modules are imported lazily, so one section's missing optional dependency
(torch, say) never stops the others.

OpenBLAS reads OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE once, when NumPy loads it; a shell that sets
them (to keep other work from hogging the cores) also slows the benchmark, so `python -m bench`
re-executes itself once without them before importing NumPy (`--keep-blas-env` keeps them).
The Makefile line that does the same without the re-exec is

    $(BIN)/python -m bench  ->  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BIN)/python -m bench $(BENCH_ARGS)
"""

from __future__ import annotations

from typing import NamedTuple


class Section(NamedTuple):
    name: str
    module: str
    description: str


SECTIONS: tuple[Section, ...] = (
    Section("engine", "bench.engine_speed",
            "float32 MLP training steps/s, nandoctor vs PyTorch CPU (interleaved), and % of the GEMM rate"),
    Section("profile", "bench.engine_profile",
            "where one engine step's time goes: GEMM vs elementwise vs Python, numpy calls per step"),
    Section("recorder", "bench.recorder_overhead",
            "nandoctor.torch.Recorder's cost on a PyTorch MNIST-shape MLP loop at default settings (target <= 10 %)"),
    Section("telemetry", "bench.telemetry_overhead",
            "telemetry cost against the bare engine step, at monitor.every auto and 1 (targets 5 % / 15 %)"),
    Section("diagnoser", "bench.diagnoser_accuracy",
            "diagnoser top-1 accuracy per cause and false alarms on healthy bases (dev corpus)"),
    Section("configs", "bench.configs_check",
            "shipped configs: top-1 with and without --verify, repaired rate, wall times"),
)
