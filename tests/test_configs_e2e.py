"""End to end over the shipped configs: each one is trained with the real engine into a temporary run
directory and diagnosed as its `expect:` block says (the same contract `nandoctor check` enforces).

The whole file trains every config in full (each once, shared by the tests below): about 17-25 s,
of which the heaviest, real-mnist-sigmoid.yaml (two 1000-unit layers), takes 5-6.5 s; that is well
under a minute, so nothing is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nandoctor.config import load_config
from nandoctor.diagnose import Diagnosis, diagnose_dir
from nandoctor.training import run_training

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _summary(d: Diagnosis) -> str:
    causes = "; ".join(f"{c.id} {c.severity} {c.score:.2f}" for c in d.causes) or "no causes"
    return f"{d.verdict} [{causes}]"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train and diagnose each config once per module: file -> (config, diagnosis)."""
    cache: dict[Path, tuple] = {}

    def get(file: Path):
        if file not in cache:
            cfg = load_config(file)
            _, run_dir, _ = run_training(cfg, file, tmp_path_factory.mktemp(file.stem) / "run")
            cache[file] = cfg, diagnose_dir(run_dir)
        return cache[file]

    return get


def test_configs_are_shipped():
    assert len(CONFIGS) >= 10
    assert any(load_config(f).expect.healthy for f in CONFIGS)


@pytest.mark.parametrize("file", CONFIGS, ids=[f.name for f in CONFIGS])
def test_config_diagnosed_as_expected(file, trained):
    cfg, d = trained(file)
    exp = cfg.expect
    if exp.healthy:
        assert d.healthy, f"expected healthy: {_summary(d)}"
        assert not [c.id for c in d.causes if c.severity == "error"], _summary(d)
    else:
        assert not d.healthy, f"expected unhealthy: {_summary(d)}"
        assert d.causes, _summary(d)
        if exp.causes:
            assert d.causes[0].id in exp.causes, f"expected top in {list(exp.causes)}: {_summary(d)}"

@pytest.mark.parametrize("file", CONFIGS, ids=[f.name for f in CONFIGS])
def test_config_symptoms_rank_below_their_root(file, trained):
    _, d = trained(file)
    ids = [c.id for c in d.causes]
    for i, c in enumerate(d.causes):
        if c.explained_by:
            assert ids.index(c.explained_by) < i, f"symptom {c.id} ranks above its root: {_summary(d)}"
