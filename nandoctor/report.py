"""Rendering for people: the only module (with the live display) that knows about rich.

The diagnoser returns plain data; this turns it into a verdict, a ranked table, per-cause evidence
and fixes, and the first non-finite value. Console width and colour follow rich's detection, so
piped output carries no escape codes and NO_COLOR is honoured.
"""

from __future__ import annotations

import functools
import os
import textwrap
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nandoctor.config.paths import compact
from nandoctor.diagnose.finding import Diagnosis

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, soft_wrap=False)


def format_patch(patch: dict | None) -> str:
    if not patch:
        return "(no config change: see advice)"
    return "  ".join(f"--set {k}={_scalar(v)}" for k, v in compact(patch).items())


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def print_diagnosis(d: Diagnosis, out: Console, top: int | None = None, run=None) -> None:
    """Verdict first, then the charts of `run` (when given), then the ranked causes. Text lines are
    soft-wrapped so a long `--set` hint stays one line when copied from the terminal or a pipe."""
    style = "bold green" if d.healthy else "bold red"
    line = functools.partial(out.print, soft_wrap=True)
    line(f"[{style}]{'HEALTHY' if d.healthy else 'UNHEALTHY'}[/] [dim]({d.status})[/]  {escape(d.verdict)}")
    line(f"[dim]run:[/] {escape(d.run)}")
    fn = d.first_nonfinite
    if fn:
        where = fn.get("module") or f"model.layers.{fn.get('layer')}"  # nandoctor.torch names the module
        layer = "" if fn.get("layer") is None else f", layer {fn['layer']} ({where})"
        layer += f", rank {fn['rank']}" if fn.get("rank") is not None else ""
        role = f" [{fn.get('role')}]" if fn.get("role") else ""
        line(f"[bold]first non-finite:[/] step {fn.get('step')}, epoch {fn.get('epoch')}, phase "
             f"{fn.get('phase')}{layer}, tensor {fn.get('tensor')}{escape(role)}")
        line(f"  {escape(str(fn.get('detail', '')))}")
    if run is not None:
        out.print()
        print_charts(run, out)
    causes = d.causes if top is None else d.causes[:top]
    if not causes:
        line("No causes found.")
        return
    table = Table(title="Ranked causes", show_lines=False, expand=False)
    for col, kw in (("#", {"justify": "right"}), ("cause", {"no_wrap": True}), ("severity", {}),
                    ("score", {"justify": "right"}), ("title", {})):
        table.add_column(col, **kw)
    for i, c in enumerate(causes, 1):
        sev = f"[{SEVERITY_STYLE[c.severity]}]{c.severity}[/]"
        note = f" [dim](symptom of {c.explained_by})[/]" if c.explained_by else ""
        table.add_row(str(i), c.id, sev, f"{c.score:.2f}", escape(c.title) + note)
    out.print(table)
    for i, c in enumerate(causes, 1):
        line(f"\n[bold]{i}. {c.id}[/] [{SEVERITY_STYLE[c.severity]}]{c.severity}[/] — {escape(c.title)}")
        for ev in c.evidence:
            line(f"   • {escape(ev)}")
        for fix in c.fixes:
            line(f"   [green]fix:[/] {escape(fix.summary)}")
            if fix.patch:
                line(f"        [dim]{escape(format_patch(fix.patch))}[/]")
    if d.verification:
        line("\n[bold]Verified by experiment[/] (same seed, bounded steps)")
        for v in d.verification:
            line(f"   {v['id']}: {v['outcome']} (patched {_run_cell(v['patched'])}; "
                 f"unpatched {_run_cell(v['baseline'])})")
            line(f"        [dim]{escape(format_patch(v['patch']))}[/]")


def _run_cell(r: dict) -> str:
    if not r.get("status"):
        return "error"
    loss = "" if r.get("final_loss") is None else f", loss {r['final_loss']:.3g}"
    return f"{r['status']}{loss}"


def print_explain(rule, out: Console) -> None:
    out.print(f"[bold]{rule.id}[/] — {escape(rule.title)}\n")
    sections = [("What it detects", rule.what), ("Why it matters", rule.why), ("How to fix it", rule.fix)]
    if rule.explains:
        sections.append(("Explains (symptoms ranked under it)", ", ".join(rule.explains)))
    for head, text in sections:  # wrapped here so the body keeps its indent
        out.print(f"[bold]{head}[/]")
        body = textwrap.fill(text, max(40, out.width - 1), initial_indent="  ", subsequent_indent="  ",
                             break_on_hyphens=False)
        out.print(escape(body) + "\n", soft_wrap=True)


def print_check(results, seconds: float, out: Console) -> None:
    """One row per config: what it got (a pass got what it expected); each failure then gets a line
    with the expectation, the verdict and the fix. Config names stay whole: they are what to open."""
    table = Table(title=f"nandoctor check: {sum(r.passed for r in results)}/{len(results)} as expected "
                        f"({seconds:.1f} s)")
    for col in ("config", "result", "got", "status", "steps", "time"):
        table.add_column(col, no_wrap=col != "got")
    for r in results:
        o = r.outcome
        mark = "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
        table.add_row(escape(Path(r.config).stem), mark, escape(r.got.removeprefix("unhealthy: ")),
                      str(o.get("status", "-")), str(o.get("steps", "-")), f"{o.get('seconds') or 0:.1f}s")
    out.print(table)
    for r in results:
        if not r.passed:
            o = r.outcome
            out.print(f"[bold red]FAIL[/] {escape(r.config)}: expected {escape(r.expected)}, got {escape(r.got)}: "
                      f"{escape(str(o.get('verdict') or o.get('error')))}", soft_wrap=True)
            if o.get("fix"):
                out.print(f"     fix: {escape(o['fix'])}", soft_wrap=True)


def print_before_after(before: dict, after: dict, out: Console) -> None:
    table = Table(title="before / after the fix (same seed)")
    for col in ("", "status", "healthy", "last epoch loss", "metric", "verdict"):
        table.add_column(col, no_wrap=col != "verdict")
    for name, r in (("before", before), ("after", after)):
        if "error" in r:
            table.add_row(name, "error", "-", "-", "-", escape(r["error"]))
            continue
        loss = "-" if r.get("final_loss") is None else f"{r['final_loss']:.3g}"
        metric = "-" if r.get("metric") is None else f"{r['metric']:.3g}"
        table.add_row(name, r["status"], "yes" if r["healthy"] else "no", loss, metric, escape(r["verdict"]))
    out.print(table)


def print_runs(rows: list[dict], out: Console) -> None:
    """One line per run, path first and never cut (it is what you copy into `diagnose`); the verdict
    may run past the terminal's edge and wrap there rather than squeeze the path."""
    if not rows:
        out.print("no run directories here")
        return
    width = max(len(r["run"]) for r in rows)
    out.print(f"[bold]{'run':<{width}}  {'status':<11}  verdict[/]")
    for r in rows:
        style = "dim" if r["healthy"] is None else ("green" if r["healthy"] else "red")
        out.print(f"{escape(r['run']):<{width}}  {r['status']:<11}  [{style}]{escape(r['verdict'])}[/]", soft_wrap=True)


def print_charts(run, out: Console) -> None:
    from nandoctor import charts

    out.print(charts.loss_chart(run))
    out.print(charts.gradient_heatmap(run))
    out.print(charts.layer_health(run))
