"""What a rule returns and what a diagnosis is: plain frozen data, rendered elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class Fix:
    summary: str
    patch: dict[str, Any] | None  # SPEC path -> value, or None when no config change can express it


@dataclass
class Finding:
    id: str
    title: str
    severity: str
    score: float
    evidence: list[str]
    fixes: list[Fix]
    explained_by: str | None = None

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "severity": self.severity, "score": round(self.score, 4),
                "evidence": list(self.evidence),
                "fixes": [{"summary": f.summary, "patch": f.patch} for f in self.fixes]}


@dataclass
class Diagnosis:
    run: str
    status: str
    healthy: bool
    verdict: str
    first_nonfinite: dict | None
    causes: list[Finding] = field(default_factory=list)
    verification: list[dict] = field(default_factory=list)
    ranks: list[dict] | None = None  # distributed runs: every rank's path, status, steps, first non-finite value

    def to_json(self, top: int | None = None) -> dict:
        causes = self.causes if top is None else self.causes[:top]
        return {"schema": 1, "run": self.run, "status": self.status, "healthy": self.healthy,
                "verdict": self.verdict, "first_nonfinite": self.first_nonfinite,
                "causes": [c.to_json() for c in causes],
                **({"verification": self.verification} if self.verification else {}),
                **({"ranks": self.ranks} if self.ranks is not None else {})}


@dataclass(frozen=True)
class Rule:
    """One cause: its SPEC id, the text `explain` prints, and a pure check over a run's facts."""

    id: str
    title: str
    what: str
    why: str
    fix: str
    check: Any  # Callable[[Facts], Finding | None]
    explains: tuple[str, ...] = ()  # cause ids whose symptoms this root cause accounts for

    def finding(self, severity: str, score: float, evidence: list[str], fixes: list[Fix]) -> Finding:
        return Finding(self.id, self.title, severity, max(0.0, min(1.0, score)), evidence, fixes)
