"""Which steps of a PyTorch run get per-layer statistics (the NumPy monitor's retention policy, plus a cost cap).

`every=N`: every N-th step (and step 1, the preflight). `every="auto"`: every one of the first 20
steps, then a stride of at least max(10, ceil(total_steps / 4000)) (10 when total_steps is unknown;
an unbounded run doubles its stride each 2,000 samples so a long run stays near the NumPy engine's
~4,000 samples), and at least the stride that keeps the measured cost of the sampled statistics
under `budget` (3 %) of the measured step time, up to 5x the policy's stride. The cap is what keeps
the recorder cheap on any model and machine: statistics of a large model cost more, and are then
taken less often. Costs are measured, not modelled: the wall time between rec.step calls that
sampled work touched, against the moving average of those it did not (pauses longer than 3 steps,
such as a validation pass, are left out of both).
"""

from __future__ import annotations

import math

from nandoctor.telemetry.monitor import AUTO_DENSE_STEPS, AUTO_MAX_SAMPLES, AUTO_MIN_STRIDE, stride_for

BUDGET = 0.03  # share of the step time the sampled statistics may cost, on average
MAX_FACTOR = 5  # the cap never stretches the stride beyond 5x the retention policy's (enough samples to diagnose)
PAUSE = 3.0  # an interval this many times the usual step is a pause (validation, checkpoint): not a step
SMOOTH = 0.2  # weight of the newest measurement in the moving averages


class Sampler:
    def __init__(self, every: int | str, total_steps: int | None, budget: float = BUDGET):
        self.auto = every == "auto"
        if self.auto:
            self.dense, self.base = stride_for("auto", total_steps) if total_steps else \
                (AUTO_DENSE_STEPS, AUTO_MIN_STRIDE)
        else:
            self.dense, self.base = 0, int(every)
        self.unbounded = self.auto and not total_steps
        self.budget = budget
        self.stride = self.base
        self.next = 1
        self.samples = 0
        self._double_at = AUTO_MAX_SAMPLES // 2
        self.step_seconds = math.nan  # moving average of a step untouched by the sampled work
        self.sample_seconds = math.nan  # moving average of what one sampled step costs on top
        self._excess = 0.0  # since the last sampled step: time above step_seconds in touched intervals
        self._own = 0.0  # ... and the recorder's own timers over its sampled work (a lower bound)

    def sampled(self, step: int) -> bool:
        return step <= max(self.dense, 1) or step == self.next or (not self.auto and step % self.base == 0)

    def measured(self, interval: float, touched: bool, own_cost: float) -> None:
        """The wall time from one rec.step to the next; `touched` when sampled work happened in it (the
        forward hooks of a sampled step, or the statistics and update measurement after one), with
        `own_cost` the part the recorder timed itself. Untouched intervals are the plain step time; what a
        touched one takes beyond that is the price of sampling, hook dispatch and all."""
        usual = self.step_seconds
        if not touched:
            if usual != usual:
                self.step_seconds = interval
            elif interval < PAUSE * usual:
                self.step_seconds = (1 - SMOOTH) * usual + SMOOTH * interval
            return
        if usual == usual:  # a pause in a touched interval must not pass for sampling cost
            self._excess += min(max(interval - usual, own_cost), 2 * own_cost + usual)
        self._own += own_cost

    def advance(self, step: int, was_sampled: bool) -> None:
        """After step `step`: choose the next sampled step."""
        if was_sampled:
            self.samples += 1
            cost = max(self._excess, self._own)
            if cost > 0 and step > self.dense + 1:  # one sample's cost: after the previous one, before this one
                self.sample_seconds = cost if math.isnan(self.sample_seconds) else \
                    (1 - SMOOTH) * self.sample_seconds + SMOOTH * cost
            elif cost > 0 and math.isnan(self.step_seconds):  # dense steps: only the own timers are known
                self.sample_seconds = self._own
            self._excess = self._own = 0.0
        if self.unbounded and self.samples >= self._double_at:
            self.base *= 2
            self._double_at += AUTO_MAX_SAMPLES // 2
        if not self.auto:
            self.next = (step // self.base + 1) * self.base
            return
        if step < self.dense:
            self.next = step + 1
            return
        stride = self.base
        if self.sample_seconds == self.sample_seconds and self.step_seconds == self.step_seconds:
            stride = min(max(stride, math.ceil(self.sample_seconds / (self.budget * self.step_seconds))),
                         MAX_FACTOR * self.base)
        self.stride = stride
        if was_sampled or self.next <= step:
            self.next = step + stride
