"""Ranking by root cause: the explicit "explains" links between causes.

When a root cause and a symptom it accounts for both fire, the symptom ranks below its root, its
first evidence line is attached to the root's evidence, and it is marked `explained_by`. The links
live on each rule (`Rule.explains`) and are written down here once as a table for the README:

    nan_in_data            -> every other cause
    unscaled_data          -> saturating_activation, exploding/vanishing_gradients, high_lr, dead_relu, bad_init
    bad_init               -> saturating_activation, vanishing/exploding_gradients, dead_relu
    sum_reduction          -> high_lr, exploding_gradients
    unstable_loss          -> exploding_gradients, high_lr
    low_precision          -> exploding_gradients, unstable_loss, high_lr, vanishing_gradients, low_lr
    output_mismatch        -> unstable_loss, vanishing_gradients, saturating_activation
    high_lr                -> exploding_gradients, dead_relu
    saturating_activation  -> vanishing_gradients
    dead_relu              -> vanishing_gradients
"""

from __future__ import annotations

from nandoctor.diagnose.finding import SEVERITIES, Finding
from nandoctor.diagnose.rules import BY_ID

DEMOTED_GAP = 0.01


def rank(findings: list[Finding]) -> list[Finding]:
    present = {f.id: f for f in findings}
    order = sorted(findings, key=_key, reverse=True)
    for root in order:
        if root.explained_by:
            continue
        for sid in BY_ID[root.id].explains:
            symptom = present.get(sid)
            if symptom is None or symptom.explained_by or symptom is root or _explains(sid, root.id):
                continue
            if SEVERITIES.index(symptom.severity) > SEVERITIES.index(root.severity):
                continue  # a warning cannot account for an error; severities are never lowered
            symptom.explained_by = root.id
            if symptom.evidence:
                root.evidence.append(f"explains {symptom.id}: {symptom.evidence[0]}")
            symptom.evidence.insert(0, f"a symptom of {root.id}")
    return order_below_roots(findings)


def order_below_roots(findings: list[Finding]) -> list[Finding]:
    """Sort by severity and score, every symptom below its root (also down chains of symptoms)."""
    present = {f.id: f for f in findings}
    for _ in findings:
        for f in findings:
            root = present.get(f.explained_by)
            if root is not None and f.score > root.score - DEMOTED_GAP:
                f.score = max(0.0, root.score - DEMOTED_GAP)
    return sorted(findings, key=_key, reverse=True)


def _explains(a: str, b: str) -> bool:
    return b in BY_ID[a].explains


def _key(f: Finding) -> tuple:
    return (SEVERITIES.index(f.severity), f.score)
