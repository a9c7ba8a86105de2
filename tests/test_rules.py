"""The diagnoser's rules, driven by data: every case in rule_cases.yaml is written as a real run
directory (tests/run_builder.py) and diagnosed like `nandoctor diagnose` does. Meta-tests keep the
rule registry, the SPEC cause ids, the `explain` docs and the case file in step."""

from __future__ import annotations

import pytest
from run_builder import build_run, load_cases
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.config import from_mapping
from nandoctor.config.paths import apply_all
from nandoctor.diagnose import RULES, Diagnosis, diagnose
from nandoctor.diagnose.finding import SEVERITIES
from nandoctor.names import CAUSES
from nandoctor.telemetry.reader import Run, load_run

CASES = load_cases()
GENERIC = ("exploding_gradients", "vanishing_gradients")  # "with no more specific cause" (SPEC 3)


def _param(case: dict):
    marks = [pytest.mark.xfail(strict=True, reason=case["xfail"])] if case.get("xfail") else []
    return pytest.param(case, id=case["name"].replace(" ", "-"), marks=marks)


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    """Build and diagnose each case once per module: name -> (run, diagnosis)."""
    cache: dict[str, tuple[Run, Diagnosis]] = {}

    def get(case: dict) -> tuple[Run, Diagnosis]:
        if case["name"] not in cache:
            run_dir = build_run(case, tmp_path_factory.mktemp("case") / "run")
            run = load_run(run_dir)
            cache[case["name"]] = run, diagnose(run)
        return cache[case["name"]]

    return get


def _summary(d: Diagnosis) -> str:
    return "; ".join(f"{c.id} {c.severity} {c.score:.2f}" + (f" (explained by {c.explained_by})" if c.explained_by
                                                              else "") for c in d.causes) or "no causes"


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_rule_case(case, diagnosed):
    run, d = diagnosed(case)
    got = {c.id: c for c in d.causes}
    ids = [c.id for c in d.causes]
    for cause, severity in (case.get("fires") or {}).items():
        assert cause in got, f"{cause} should fire; got {_summary(d)}"
        assert got[cause].severity == severity, f"{cause} severity; got {_summary(d)}"
    for cause in case.get("quiet") or ():
        assert cause not in got, f"{cause} should not fire; got {_summary(d)}"
    if case.get("top"):
        assert ids[0] == case["top"], f"{case['top']} should rank first; got {_summary(d)}"
    for symptom, root in (case.get("explained") or {}).items():
        assert got[symptom].explained_by == root, f"{symptom} explained by {root}; got {_summary(d)}"
    if "healthy" in case:
        assert d.healthy == case["healthy"], _summary(d)
    if run.status == "diverged":
        assert not d.healthy, f"a diverged run reported healthy: {_summary(d)}"
    _check_ranking(d)
    _check_patches(run, d)


def _check_ranking(d: Diagnosis) -> None:
    """Symptoms rank below the cause that explains them; generic causes below every specific one at the
    same or a higher severity; the list is sorted as SPEC 4 says."""
    ids = [c.id for c in d.causes]
    for i, c in enumerate(d.causes):
        if c.explained_by:
            assert c.explained_by in ids, f"{c.id} explained by absent {c.explained_by}"
            assert ids.index(c.explained_by) < i, f"symptom {c.id} ranks above its root; got {_summary(d)}"
        if c.id in GENERIC:
            for other in d.causes[i + 1:]:
                assert other.id in GENERIC or SEVERITIES.index(other.severity) < SEVERITIES.index(c.severity), \
                    f"generic {c.id} outranks the more specific {other.id}; got {_summary(d)}"
    keys = [(SEVERITIES.index(c.severity), c.score) for c in d.causes]
    assert keys == sorted(keys, reverse=True)
    assert d.healthy == (not any(c.severity == "error" for c in d.causes))


def _check_patches(run: Run, d: Diagnosis) -> None:
    """Every fix `fix` could apply is a valid config change of this run's config."""
    for c in d.causes:
        assert c.fixes, f"{c.id} has no fix"
        for fix in c.fixes:
            if fix.patch is not None:
                from_mapping(apply_all(run.raw_config, fix.patch), file=f"{c.id} patch")


# ---- meta-tests: registry, docs and cases in step -----------------------------------------------

def test_every_cause_has_exactly_one_rule():
    assert sorted(r.id for r in RULES) == sorted(CAUSES)
    assert len({r.id for r in RULES}) == len(RULES)


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_rule_is_documented(rule):
    for field in ("title", "what", "why", "fix"):
        assert getattr(rule, field).strip(), f"{rule.id}.{field} is empty"
    assert all(e in CAUSES and e != rule.id for e in rule.explains)
    result = CliRunner().invoke(app, ["explain", rule.id], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    squash = "".join(result.output.split())
    for text in (rule.title, rule.what, rule.why, rule.fix):
        assert "".join(text.split()) in squash


@pytest.mark.parametrize("cause", CAUSES)
def test_cause_has_firing_and_quiet_cases(cause):
    live = [c for c in CASES if not c.get("xfail")]
    assert any(cause in (c.get("fires") or {}) for c in live), f"no case where {cause} fires"
    assert any(cause in (c.get("quiet") or ()) for c in live), f"no case where {cause} stays quiet"


def test_case_file_is_consistent():
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for c in CASES:
        mentioned = [*(c.get("fires") or {}), *(c.get("quiet") or ()), *(c.get("explained") or {}).items()]
        flat = [x for m in mentioned for x in (m if isinstance(m, tuple) else (m,))]
        assert set(flat) <= set(CAUSES), f"{c['name']}: unknown cause id"
        assert not set(c.get("fires") or {}) & set(c.get("quiet") or ()), f"{c['name']}: fires and quiet overlap"
        assert set((c.get("fires") or {}).values()) <= set(SEVERITIES)
        if c.get("top"):
            assert c["top"] in (c.get("fires") or {}), f"{c['name']}: top must also be listed in fires"


# ---- ranking by root cause ------------------------------------------------------------------------

RANK_CASES = [c for c in CASES if c.get("explained")]


@pytest.mark.parametrize("case", [_param(c) for c in RANK_CASES])
def test_symptom_ranks_below_its_root(case, diagnosed):
    _, d = diagnosed(case)
    ids = [c.id for c in d.causes]
    for symptom, root in case["explained"].items():
        s = d.causes[ids.index(symptom)]
        assert s.explained_by == root
        assert ids.index(root) < ids.index(symptom), _summary(d)
        assert s.evidence[0] == f"a symptom of {root}"
        assert any(e.startswith(f"explains {symptom}:") for e in d.causes[ids.index(root)].evidence)
    assert d.causes[0].explained_by is None, f"a symptom ranks first: {_summary(d)}"


def test_rank_cases_cover_root_and_symptom():
    """The rank tests above need at least one case per kind of link this matters most for."""
    links = {(s, r) for c in RANK_CASES if not c.get("xfail") for s, r in c["explained"].items()}
    assert ("saturating_activation", "unscaled_data") in links
    assert any(s in GENERIC for s, _ in links)


GENERIC_CASES = [c for c in CASES if not c.get("xfail") and set(c.get("fires") or {}) & set(GENERIC)
                 and "error" in [v for k, v in c["fires"].items() if k not in GENERIC]]


@pytest.mark.parametrize("case", [_param(c) for c in GENERIC_CASES])
def test_generic_gradient_causes_never_rank_first(case, diagnosed):
    """exploding/vanishing_gradients are what is left "with no more specific cause" (SPEC 3)."""
    _, d = diagnosed(case)
    assert d.causes[0].id not in GENERIC, _summary(d)


def test_generic_cases_exist():
    assert {g for c in GENERIC_CASES for g in c["fires"] if g in GENERIC} == set(GENERIC)
