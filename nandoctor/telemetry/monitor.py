"""The Monitor: the trainer's observer that writes the run store.

Retention policy (what `monitor.every` controls): every step gets a `steps` row (loss, lr,
gradient norm, status). Per-layer statistics are recorded at sampled steps: with `every: N` each
N-th step; with the default `auto`, every one of the first 20 steps, then every
max(10, ceil(total_steps / 4000))-th step, which bounds a run to about 4,000 sampled steps (100k
steps of a 10-layer net stay near 35 MB). Anomalies are always recorded in full whatever the
stride: the first non-finite step, loss spikes above 10x the running median, and the last step.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from pathlib import Path

import numpy as np

from nandoctor.config import Config
from nandoctor.telemetry.preflight import preflight
from nandoctor.telemetry.stats import scaled_stats, stats_many, tensor_stats
from nandoctor.telemetry.store import RunWriter

AUTO_DENSE_STEPS = 20
AUTO_MIN_STRIDE = 10
AUTO_MAX_SAMPLES = 4000
SPIKE_FACTOR = 10.0
SPIKE_WINDOW = 50
SPIKE_REFRESH = 25
SPIKE_FLOOR = 0.1  # a spike must also exceed this share of the early loss (near-zero losses jitter by 10x)


def stride_for(every: int | str, total_steps: int) -> tuple[int, int]:
    """(dense steps, stride) for a `monitor.every` setting."""
    if every != "auto":
        return 0, int(every)
    return AUTO_DENSE_STEPS, max(AUTO_MIN_STRIDE, math.ceil(total_steps / AUTO_MAX_SAMPLES))


class Monitor:
    def __init__(self, run_dir: Path, cfg: Config):
        self.dir, self.cfg = Path(run_dir), cfg
        self.writer = RunWriter(self.dir)
        self.recent: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self.median = math.inf
        self.last_recorded = 0
        self.spikes = 0
        self.last_step = 0
        self.scale = math.inf  # median of the first losses: spikes must also be large in absolute terms
        self.weight_norms: list[float | None] = []  # |W| per layer at the end of step last_recorded

    # ---- observer hooks -----------------------------------------------------------------------
    def start(self, trainer) -> None:
        self.dense, self.stride = stride_for(self.cfg.monitor.every, trainer.total_steps)
        trainer.track_weight_norms = self._sampled(1)
        w = self.writer
        w.set_meta(status="running", pid=os.getpid(), started=time.time(), engine="nandoctor-numpy",
                   name=self.cfg.name, dtype=str(trainer.dtype), total_steps=trainer.total_steps,
                   steps_per_epoch=trainer.steps_per_epoch, batch_size=trainer.batch_size,
                   epochs=self.cfg.training.epochs, every=self.cfg.monitor.every, dense_steps=self.dense,
                   stride=self.stride, n_params=trainer.model.n_params, task=trainer.data.task,
                   data_profile=trainer.data.profile, first_nonfinite=None)
        rows = []
        for layer, cfg in zip(trainer.model.layers, self.cfg.model.layers, strict=True):
            rows.append({"layer": layer.index, "name": f"model.layers.{layer.index}", "fan_in": layer.fan_in,
                         "fan_out": layer.fan_out, "params": sum(int(np.prod(s)) for _, s in layer.param_shapes()),
                         "activation": layer.act.name, "init": cfg.init.name,
                         "init_std": float(layer.W.astype(np.float64).std()), "norm": cfg.norm,
                         "dropout": cfg.dropout})
        w.layers(rows)
        w.set_meta(preflight=preflight(trainer))
        w.commit()

    def step(self, trainer, info) -> None:
        self.last_step = info.step
        self.writer.step(info.step, info.epoch, info.loss, info.lr, info.grad_norm, info.status)
        anomaly = info.status != "ok" or self._spike(info)
        if self._sampled(info.step) or anomaly or info.step == trainer.total_steps:
            self.record_layers(trainer, info.step)
        nxt = info.step + 1
        # the weights before step nxt's update are the ones just recorded, if this step was recorded
        trainer.track_weight_norms = ((self._sampled(nxt) or nxt == trainer.total_steps)
                                      and self.last_recorded != info.step)

    def _sampled(self, step: int) -> bool:
        return step <= self.dense or step % self.stride == 0

    def nonfinite(self, trainer, event: dict) -> None:
        self.writer.set_meta(first_nonfinite=event)
        self.writer.event(event["step"], event["epoch"], "nonfinite", event["phase"], event["layer"],
                          event["tensor"], event)

    def epoch(self, trainer, record: dict) -> None:
        self.writer.epoch(record, trainer.dead_units)

    def end(self, trainer, status: str) -> None:
        last = self.last_step
        in_step = all(getattr(layer.buf, "dz", None) is not None for layer in trainer.model.layers)
        if last and last == trainer.step_no and self.last_recorded != last and in_step:
            self.record_layers(trainer, last)  # not when Ctrl-C landed mid-step or in the evaluation
        self.writer.set_meta(status=status, ended=time.time(), steps=trainer.step_no)
        self.writer.close()

    # ---- helpers ------------------------------------------------------------------------------
    def _spike(self, info) -> bool:
        """Loss above 10x the running median (refreshed every few steps to stay cheap)."""
        loss = info.loss
        spike = (math.isfinite(loss) and len(self.recent) >= SPIKE_REFRESH and loss > SPIKE_FACTOR * self.median
                 and loss > SPIKE_FLOOR * self.scale)
        if math.isfinite(loss):
            self.recent.append(loss)
            if len(self.recent) == SPIKE_REFRESH and self.scale == math.inf:
                self.scale = statistics.median(self.recent)
            if info.step % SPIKE_REFRESH == 0 or self.median == math.inf:
                self.median = statistics.median(self.recent)  # np.median costs ~100 us here
        if spike:
            self.spikes += 1
            self.writer.event(info.step, info.epoch, "loss_spike", "loss", None, "loss",
                              {"loss": loss, "running_median": self.median})
        return spike

    def _ratio(self, trainer, step: int, i: int, w: np.ndarray, u_norm: float | None) -> float | None:
        """|update| / |W before the update|: the norm recorded at the end of the previous step, else
        the one the trainer measured for a sampled step; on an unforeseen anomaly step W - u recovers
        it (if that cancels to 0 the update dwarfed W)."""
        if u_norm is None:
            return None
        if self.last_recorded == step - 1 and len(self.weight_norms) > i:
            wn = self.weight_norms[i]
        elif trainer.track_weight_norms and len(trainer.weight_norms) > i:
            wn = trainer.weight_norms[i]
        else:
            u = trainer.update[trainer.model.slices[i]["W"]].reshape(w.shape)
            wn = tensor_stats(w - u if trainer.update_applied else w)[5]
        if wn is None or not math.isfinite(wn):
            return None
        return u_norm / wn if wn > 0 else math.inf

    def record_layers(self, trainer, step: int) -> None:
        """Per-layer statistics from the buffers the step left behind (nothing is recomputed). With
        `every: 1` weights, biases, gradients and updates get no mean and std (`moments`): nothing
        reads them, and the sum behind them is one more pass over every parameter on every step."""
        model, scale = trainer.model, trainer.update_scale
        moments = self.stride != 1  # the parameters' and gradients' mean and std
        upd = None if scale else trainer.update
        keys, specs, derived = [], [], []
        for layer, spans in zip(model.layers, model.slices, strict=True):
            s, i, act = layer.buf, layer.index, layer.act
            if s is None:
                continue
            tensors = [("pre_activation", s.lin, True, False, None, True)]
            if layer.batch_norm:
                tensors.append(("normalized", s.z, True, False, None, True))
            tensors += [("activation", s.a, True, True, act.name if act.saturating else None, True),
                        ("weight", layer.W, False, False, None, moments),
                        ("bias", layer.b, False, False, None, moments)]
            if trainer.backward_ran:  # else the gradient buffers still hold the previous step
                if scale:  # the update is scale * dW: its statistics follow from the gradient's
                    derived.append((i, len(keys) + len(tensors)))
                tensors += [("grad_weight", layer.dW, False, True, None, moments),
                            ("grad_bias", layer.db, False, True, None, moments)]
                dout = getattr(s, "dout", None)
                if dout is not None and dout.shape == s.a.shape:
                    tensors.append(("grad_output", dout, False, True, None, moments))
                if not scale:  # 2-D, so its sum is one matrix-vector product
                    tensors.append(("update", upd[spans["W"]].reshape(layer.W.shape), False, False, None, moments))
            keys += [(step, i, name) for name, *_ in tensors]
            specs += [spec for _, *spec in tensors]
        values = stats_many(specs)
        for i, k in derived:
            keys.append((step, i, "update"))
            values.append(scaled_stats(values[k], scale))
        by_layer = {key[1]: k for k, key in enumerate(keys) if key[2] == "weight"}
        for k, key in enumerate(keys):
            if key[2] == "update":
                u = values[k]
                values[k] = (*u[:9], self._ratio(trainer, step, key[1], model.layers[key[1]].W, u[5]))
        self.writer.stat_rows([(*key, *v) for key, v in zip(keys, values, strict=True)])
        self.last_recorded = step
        self.weight_norms = [values[by_layer[layer.index]][5] if layer.index in by_layer else None
                             for layer in model.layers]
