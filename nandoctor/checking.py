"""`nandoctor check`: train every config (in parallel), diagnose it, compare with its `expect:` block.

Configs are all validated before anything trains, so a typo in one file fails fast with exit 2.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from nandoctor.config import Config
from nandoctor.config.load import from_mapping, read_yaml
from nandoctor.errors import ConfigError
from nandoctor.experiment import run_many


@dataclass
class CheckResult:
    config: str
    expected_healthy: bool
    expected_causes: tuple[str, ...]
    outcome: dict  # what experiment.train_and_diagnose returned
    passed: bool

    @property
    def got(self) -> str:
        o = self.outcome
        if "error" in o:
            return "error"
        return "healthy" if o["healthy"] else f"unhealthy: {o['top']}"

    @property
    def expected(self) -> str:
        if self.expected_healthy:
            return "healthy"
        return "unhealthy" + (f": {' | '.join(self.expected_causes)}" if self.expected_causes else "")

    def to_json(self) -> dict:
        o = self.outcome
        return {"config": self.config, "expected": {"healthy": self.expected_healthy,
                                                    "causes": list(self.expected_causes)},
                "passed": self.passed, "healthy": o.get("healthy"), "top_cause": o.get("top"),
                "status": o.get("status"), "verdict": o.get("verdict") or o.get("error"), "fix": o.get("fix"),
                "steps": o.get("steps"), "seconds": o.get("seconds"), "run": o.get("run")}


def collect(targets: list[Path]) -> list[Path]:
    files: list[Path] = []
    for t in targets:
        if t.is_dir():
            found = sorted(p for p in t.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                raise ConfigError("no .yaml configs in this directory", file=str(t))
            files += found
        elif t.exists():
            files.append(t)
        else:
            raise ConfigError("config file or directory not found", file=str(t))
    return files


def load_all(files: list[Path]) -> list[tuple[Path, dict, Config]]:
    """Validate every config first; the first error stops the whole check (exit 2)."""
    loaded = []
    for f in files:
        raw = read_yaml(f)
        loaded.append((f, raw, from_mapping(raw, file=str(f), default_name=f.stem)))
    return loaded


def run_check(targets: list[Path], out_root: Path, max_steps: int | None = None) -> list[CheckResult]:
    loaded = load_all(collect(targets))
    names: dict[str, int] = {}
    jobs = []
    for f, raw, cfg in loaded:
        k = names[cfg.name] = names.get(cfg.name, 0) + 1
        out = out_root / (cfg.name if k == 1 else f"{cfg.name}-{k}")
        jobs.append((raw, None, max_steps, str(out), str(f)))
    outcomes = run_many(jobs)
    results = []
    for (f, _, cfg), o in zip(loaded, outcomes, strict=True):
        exp = cfg.expect
        if "error" in o:
            passed = False
        elif exp.healthy:
            passed = bool(o["healthy"])
        else:
            passed = not o["healthy"] and (not exp.causes or o["top"] in exp.causes)
        results.append(CheckResult(str(f), exp.healthy, exp.causes, o, passed))
    return results


def default_out() -> Path:
    return Path("runs") / f"check-{time.strftime('%Y%m%d-%H%M%S')}"


def junit_xml(results: list[CheckResult], seconds: float) -> str:
    """JUnit XML as CI reporters read it: one testcase per config, failure text = verdict + cause + fix."""
    failures = sum(not r.passed for r in results)
    suite = ET.Element("testsuite", name="nandoctor-check", tests=str(len(results)), failures=str(failures),
                       errors="0", time=f"{seconds:.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="nandoctor.check", name=r.config,
                             time=f"{r.outcome.get('seconds') or 0:.3f}")
        if not r.passed:
            o = r.outcome
            msg = f"expected {r.expected}, got {r.got}"
            body = "\n".join(x for x in (f"verdict: {o.get('verdict') or o.get('error')}",
                                         f"top cause: {o.get('top')}", f"fix: {o.get('fix')}",
                                         f"run: {o.get('run')}") if x)
            fail = ET.SubElement(case, "failure", message=msg, type="nandoctor.unexpected")
            fail.text = body
    suites = ET.Element("testsuites", tests=str(len(results)), failures=str(failures), time=f"{seconds:.3f}")
    suites.append(suite)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)
