"""The live training display: progress, loss, lr, gradient norm, ETA and a health light.

It wraps the Monitor (same observer hooks) and refreshes at most ten times a second, so it costs
nothing measurable. The light turns yellow on cheap online warnings (gradient norm up 100x from its
early level, a loss spike back above the starting loss) and red at the first non-finite value. Late
spikes far below the starting loss are the jitter of a nearly fitted net, not trouble, so they stay green.
"""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

REFRESH_SECONDS = 0.1
GROWTH_WARN = 100.0


class LiveDisplay:
    def __init__(self, inner, out: Console):
        self.inner, self.out = inner, out
        self.health, self.reason = "green", "ok"
        self.early_norm = math.nan
        self.spikes_seen = 0
        self.last = 0.0
        self.progress = Progress(TextColumn("{task.fields[light]}"), TextColumn("[bold]{task.description}"),
                                 BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=out,
                                 transient=False)
        self.task = None

    def _light(self) -> str:
        return {"green": "[green]●[/]", "yellow": "[yellow]●[/]", "red": "[red]●[/]"}[self.health]

    def start(self, trainer) -> None:
        self.inner.start(trainer)
        self.progress.start()
        self.task = self.progress.add_task("epoch 1", total=trainer.total_steps, light=self._light(), stats="")

    def step(self, trainer, info) -> None:
        self.inner.step(trainer, info)
        if info.step <= 5 and math.isfinite(info.grad_norm):
            self.early_norm = info.grad_norm if math.isnan(self.early_norm) else max(self.early_norm, info.grad_norm)
        if self.health == "green" and math.isfinite(info.grad_norm) and self.early_norm > 0 \
                and info.grad_norm > GROWTH_WARN * self.early_norm:
            self.health, self.reason = "yellow", f"gradient norm up {info.grad_norm / self.early_norm:.0f}x"
        spikes = getattr(self.inner, "spikes", 0)  # the Monitor's loss-spike count and early loss level
        if spikes > self.spikes_seen:
            self.spikes_seen = spikes
            if self.health == "green" and info.loss > getattr(self.inner, "scale", math.inf):
                self.health, self.reason = "yellow", f"loss spike at step {info.step}"
        if info.status != "ok":
            self.health, self.reason = "red", f"non-finite at step {info.step}"
        now = time.monotonic()
        if now - self.last >= REFRESH_SECONDS or info.status != "ok" or info.step == trainer.total_steps:
            self.last = now
            stats = f"loss {info.loss:.4g}  lr {info.lr:.3g}  |g| {info.grad_norm:.3g}  {self.reason}"
            self.progress.update(self.task, completed=info.step, description=f"epoch {info.epoch}",
                                 light=self._light(), stats=stats)

    def nonfinite(self, trainer, event) -> None:
        self.inner.nonfinite(trainer, event)
        if event.get("phase") == "data":
            self.health, self.reason = "red", "non-finite data"

    def epoch(self, trainer, record) -> None:
        self.inner.epoch(trainer, record)

    def end(self, trainer, status) -> None:
        self.inner.end(trainer, status)
        if self.task is not None:
            self.progress.update(self.task, completed=trainer.step_no, light=self._light())
        self.progress.stop()
