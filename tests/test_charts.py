"""The terminal charts of `diagnose`, read at a pinned width: what they show must match the run."""

from __future__ import annotations

import re

from rich.console import Console
from run_builder import build_run
from typer.testing import CliRunner

from nandoctor.charts import SHADES, gradient_heatmap, layer_health, loss_chart
from nandoctor.cli import app
from nandoctor.telemetry.reader import load_run

LAYERS = ["relu 16", "relu 16", "relu 16", "relu 16", "softmax 2"]


def render(renderable, color: bool = False) -> str:
    console = Console(width=100, record=True, color_system="truecolor" if color else None, force_terminal=color)
    console.print(renderable)
    return console.export_text(styles=color)


def heat_rows(run) -> dict[int, str]:
    rows = {}
    for line in render(gradient_heatmap(run)).splitlines():
        m = re.match(r"\s*layer (\d+) │(.*)$", line)
        if m:
            rows[int(m.group(1))] = m.group(2).strip()
    return rows


def brightness(row: str) -> float:
    return sum(SHADES.index(ch) for ch in row if ch in SHADES) / max(1, sum(ch in SHADES for ch in row))


def test_vanishing_gradients_draw_the_first_layers_dim(tmp_path):
    run = load_run(build_run({"name": "vanish", "layers": LAYERS,
                              "stats": {"grad_norm": [1e-6, 1e-4, 1e-2, 0.3, 1.0]}}, tmp_path))
    rows = heat_rows(run)
    assert set(rows) == {0, 1, 2, 3, 4}
    assert set(rows[0]) == {SHADES[0]}  # the dimmest glyph all along
    assert brightness(rows[0]) < brightness(rows[2]) < brightness(rows[4])


def test_exploding_gradients_draw_the_first_layers_bright(tmp_path):
    run = load_run(build_run({"name": "explode", "layers": LAYERS,
                              "stats": {"grad_norm": [1e4, 1e3, 1e2, 10, 1]}}, tmp_path))
    rows = heat_rows(run)
    assert set(rows[0]) == {SHADES[-1]}
    assert brightness(rows[0]) > brightness(rows[2]) > brightness(rows[4])


def test_loss_chart_marks_the_first_nonfinite_step_and_uses_log_scale_over_decades(tmp_path):
    run = load_run(build_run({"name": "nan", "loss": {"start": 100.0, "end": 0.01, "nan_from": 150}}, tmp_path))
    text = render(loss_chart(run))
    assert "(log)" in text
    assert "✗" in text and "first non-finite at step" in text
    flat = load_run(build_run({"name": "flat", "loss": {"start": 0.7, "end": 0.6}}, tmp_path / "flat"))
    assert "(linear)" in render(loss_chart(flat))


def test_layer_health_shows_dead_units(tmp_path):
    run = load_run(build_run({"name": "dead", "layers": LAYERS, "dead": [0, 1.0, 0, 0]}, tmp_path))
    text = render(layer_health(run))
    assert re.search(r"│ 1\s+│ relu .*16/16", text), text


def test_piped_diagnose_output_has_no_escape_codes(tmp_path):
    run_dir = build_run({"name": "vanish", "layers": LAYERS, "stats": {"grad_norm": [1e-6, 1e-4, 1e-2, 0.3, 1.0]}},
                        tmp_path)
    res = CliRunner().invoke(app, ["diagnose", str(run_dir)], env={"COLUMNS": "100"})
    assert "\x1b[" not in res.output
    assert "gradient norm" in res.output and "per-layer health" in res.output


def test_colour_follows_the_glyph_when_a_terminal_asks_for_it(tmp_path):
    run = load_run(build_run({"name": "explode", "layers": LAYERS,
                              "stats": {"grad_norm": [1e4, 1e3, 1e2, 10, 1]}}, tmp_path))
    assert "\x1b[" in render(gradient_heatmap(run), color=True)


# ---- the live health light --------------------------------------------------------------------

class FakeMonitor:
    """The Monitor's observer hooks, with the two counters the light reads."""

    def __init__(self, scale: float):
        self.spikes, self.scale = 0, scale

    def start(self, trainer): ...
    def step(self, trainer, info): ...
    def nonfinite(self, trainer, event): ...
    def epoch(self, trainer, record): ...
    def end(self, trainer, status): ...


def drive(losses, grad_norms=None, spike_steps=(), scale=1.0):
    """Feed LiveDisplay a run step by step; returns (light, reason)."""
    from io import StringIO
    from types import SimpleNamespace

    from nandoctor.live import LiveDisplay

    inner = FakeMonitor(scale)
    trainer = SimpleNamespace(total_steps=len(losses), step_no=0)
    live = LiveDisplay(inner, Console(file=StringIO(), force_terminal=True, width=100))
    live.start(trainer)
    for k, loss in enumerate(losses, 1):
        inner.spikes += k in spike_steps
        trainer.step_no = k
        status = "ok" if loss == loss and abs(loss) != float("inf") else "nonfinite"
        live.step(trainer, SimpleNamespace(step=k, epoch=1, loss=loss, lr=0.1, status=status,
                                           grad_norm=(grad_norms or [1.0] * len(losses))[k - 1]))
    live.epoch(trainer, {"epoch": 1})
    live.end(trainer, "completed")
    return live.health, live.reason


def test_live_light_stays_green_for_late_jitter_of_a_fitted_net():
    losses = [1.0] * 30 + [0.002] * 60 + [0.05] + [0.002] * 9  # a 25x spike, far below the start
    assert drive(losses, spike_steps={91}) == ("green", "ok")


def test_live_light_turns_yellow_on_a_spike_above_the_start_and_red_on_nan():
    losses = [1.0] * 30 + [0.1] * 30 + [3.0] + [0.1] * 9
    assert drive(losses, spike_steps={61}) == ("yellow", "loss spike at step 61")
    assert drive([*losses[:40], float("nan")])[0] == "red"


def test_live_light_turns_yellow_when_the_gradient_norm_grows_100x():
    norms = [1.0] * 10 + [500.0] * 5
    health, reason = drive([1.0] * 15, grad_norms=norms)
    assert health == "yellow" and "gradient norm up" in reason
