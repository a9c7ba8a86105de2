"""Terminal charts for `diagnose`: the loss curve, a layers x time gradient-norm heatmap, and
per-layer saturation and dead units. Drawn with plain characters so they survive NO_COLOR and
pipes: intensity is carried by the glyph (░▒▓█), colour only adds to it.
"""

from __future__ import annotations

import math

import numpy as np
from rich.table import Table
from rich.text import Text

from nandoctor.telemetry.reader import Run

BARS = " ▁▂▃▄▅▆▇█"
SHADES = "░▒▓█"
HEAT_STYLES = ("blue", "cyan", "yellow", "bold red")
WIDTH = 60
ROWS = 6


def _buckets(x: np.ndarray, width: int) -> list[np.ndarray]:
    return [c for c in np.array_split(x, min(width, len(x))) if c.size] if len(x) else []


def loss_chart(run: Run, width: int = WIDTH, rows: int = ROWS) -> Text:
    """Loss per step (bucketed means), log scale when it spans more than two decades; `✗` marks the
    first non-finite step."""
    loss = run.steps["loss"]
    steps = run.steps["step"]
    text = Text()
    if not len(loss):
        return text.append("no steps recorded\n")
    finite = np.isfinite(loss)
    good = loss[finite]
    log = good.size and good.min() > 0 and good.max() / good.min() > 100
    vals = np.where(finite, np.log10(np.where(finite & (loss > 0), loss, 1)) if log else loss, np.nan)
    cols = [float(np.nanmean(c)) if np.isfinite(c).any() else math.nan for c in _buckets(vals, width)]
    bad_cols = [not np.isfinite(c).all() for c in _buckets(np.where(finite, 0.0, np.nan), width)]
    lo, hi = np.nanmin(cols) if any(map(math.isfinite, cols)) else 0.0, np.nanmax(cols) if any(
        map(math.isfinite, cols)) else 1.0
    span = (hi - lo) or 1.0
    top = f"{10 ** hi:.3g}" if log else f"{hi:.3g}"
    bottom = f"{10 ** lo:.3g}" if log else f"{lo:.3g}"
    scale = "log" if log else "linear"
    text.append(f"loss ({scale}), steps {int(steps[0])}-{int(steps[-1])}\n", style="bold")
    for r in range(rows - 1, -1, -1):
        label = top if r == rows - 1 else (bottom if r == 0 else "")
        text.append(f"{label:>9} │")
        for c, bad in zip(cols, bad_cols, strict=True):
            if not math.isfinite(c):
                text.append("✗" if r == 0 and bad else " ", style="bold red")
                continue
            h = (c - lo) / span * rows * 8
            level = int(min(8, max(0, h - r * 8)))
            text.append(BARS[level] if (r > 0 or level) else "▁", style="red" if bad else "green")
        text.append("\n")
    fn = run.first_nonfinite
    if fn:
        text.append(f"{'':>9}   ✗ first non-finite at step {fn.get('step')} ({fn.get('phase')})\n", style="red")
    return text


def gradient_heatmap(run: Run, width: int = WIDTH) -> Text:
    """Rows: layers (input first); columns: sampled steps. The glyph and colour grow with
    log10 |dL/dW|, on one scale for the whole map, so vanishing layers look dim and exploding bright."""
    norms = run.stat("grad_weight", "norm")
    text = Text()
    if norms.size == 0 or not np.isfinite(norms).any():
        return text.append("no gradient statistics recorded\n")
    logs = np.log10(np.where(np.isfinite(norms) & (norms > 0), norms, np.nan))
    lo, hi = np.nanmin(logs), np.nanmax(logs)
    span = (hi - lo) or 1.0
    text.append(f"gradient norm |dL/dW| per layer over time (log scale {10 ** lo:.2g} ░▒▓█ {10 ** hi:.2g})\n",
                style="bold")
    for layer in range(norms.shape[1]):
        text.append(f"{'layer ' + str(layer):>9} │")
        for chunk in _buckets(logs[:, layer], width):
            v = np.nanmean(chunk) if np.isfinite(chunk).any() else math.nan
            if not math.isfinite(v):
                text.append("✗", style="bold red")
                continue
            k = min(len(SHADES) - 1, int((v - lo) / span * len(SHADES)))
            text.append(SHADES[k], style=HEAT_STYLES[k])
        text.append("\n")
    return text


def layer_health(run: Run) -> Table:
    """Per layer: activation, saturated share, exactly-zero share, dead units at the last epoch.
    A softmax output shows no saturation: confident probabilities are the goal there, and the
    loss is computed from the logits, so its gradient does not vanish."""
    table = Table(title="per-layer health", title_justify="left")
    for col in ("layer", "activation", "saturated", "zero out", "dead", "upd/w"):
        table.add_column(col, justify="left" if col in ("layer", "activation") else "right", no_wrap=True)
    sat = run.stat("activation", "saturated")
    zero = run.stat("activation", "zero")
    ratio = run.stat("update", "ratio")
    dead = {layer: (d, u) for layer, d, u in run.dead_units.get(max(run.dead_units), [])} if run.dead_units else {}

    def med(a: np.ndarray, i: int) -> float:
        col = a[:, i] if a.size else a
        col = col[np.isfinite(col)] if col.size else col
        return float(np.median(col)) if col.size else math.nan

    for i, info in enumerate(run.layers):
        s = math.nan if info["activation"] == "softmax" else med(sat, i)
        z, r = med(zero, i), med(ratio, i)
        d = dead.get(i)
        table.add_row(str(i), info["activation"], _bar(s), _bar(z),
                      "-" if d is None else f"{d[0]}/{d[1]}", "-" if math.isnan(r) else f"{r:.2g}")
    return table


def _bar(x: float, width: int = 8) -> str:
    if math.isnan(x):
        return "-"
    n = round(x * width)
    return f"{'█' * n}{'·' * (width - n)} {100 * x:3.0f}%"
