"""Rendering for people: the only module (with the live display) that knows about rich.

The diagnoser returns plain data; this turns it into a verdict, a ranked table, per-cause evidence
and fixes, and the first non-finite value. Console width and colour follow rich's detection, so
piped output carries no escape codes and NO_COLOR is honoured.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nandoctor.diagnose.finding import Diagnosis

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, soft_wrap=False)


def format_patch(patch: dict | None) -> str:
    if not patch:
        return "(no config change: see advice)"
    return "  ".join(f"--set {k}={_scalar(v)}" for k, v in patch.items())


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def print_diagnosis(d: Diagnosis, out: Console, top: int | None = None) -> None:
    style = "bold green" if d.healthy else "bold red"
    out.print(f"[{style}]{'HEALTHY' if d.healthy else 'UNHEALTHY'}[/] [dim]({d.status})[/]  {escape(d.verdict)}")
    out.print(f"[dim]run:[/] {escape(d.run)}")
    fn = d.first_nonfinite
    if fn:
        layer = "" if fn.get("layer") is None else f", layer {fn['layer']} (model.layers.{fn['layer']})"
        role = f" [{fn.get('role')}]" if fn.get("role") else ""
        out.print(f"[bold]first non-finite:[/] step {fn.get('step')}, epoch {fn.get('epoch')}, phase "
                  f"{fn.get('phase')}{layer}, tensor {fn.get('tensor')}{role}")
        out.print(f"  {escape(str(fn.get('detail', '')))}")
    causes = d.causes if top is None else d.causes[:top]
    if not causes:
        out.print("No causes found.")
        return
    table = Table(title="Ranked causes", show_lines=False, expand=False)
    for col, kw in (("#", {"justify": "right"}), ("cause", {}), ("severity", {}), ("score", {"justify": "right"}),
                    ("title", {})):
        table.add_column(col, **kw)
    for i, c in enumerate(causes, 1):
        sev = f"[{SEVERITY_STYLE[c.severity]}]{c.severity}[/]"
        note = f" [dim](symptom of {c.explained_by})[/]" if c.explained_by else ""
        table.add_row(str(i), c.id, sev, f"{c.score:.2f}", escape(c.title) + note)
    out.print(table)
    for i, c in enumerate(causes, 1):
        out.print(f"\n[bold]{i}. {c.id}[/] [{SEVERITY_STYLE[c.severity]}]{c.severity}[/] — {escape(c.title)}")
        for line in c.evidence:
            out.print(f"   • {escape(line)}")
        for fix in c.fixes:
            out.print(f"   [green]fix:[/] {escape(fix.summary)}")
            if fix.patch:
                out.print(f"        [dim]{escape(format_patch(fix.patch))}[/]")
    for v in d.verification:
        out.print(f"\n[bold]verified[/] {v['id']}: {escape(v['summary'])}")
