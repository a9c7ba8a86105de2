"""The data profile of a PyTorch run, built from the batches the recorder is shown.

Same keys as `nandoctor.data.profile.build_profile` (what the diagnoser reads: task, n_classes,
features[{name, mean, std, min, max, abs_max, nonfinite}], nonfinite_inputs, target), computed
over the first `max_batches` batches (statistics); after them the non-finite check runs at the
recorder's sampled steps and whenever the loss is not finite (a NaN input makes the loss NaN, so
no batch that matters is missed), and the non-finite counts cover the batches checked. Features
are the columns of a 2-D input (B, D) and the channels (dim 1) of a 3-D or wider one (images:
mean/std per channel over the batch and the spatial dims). Integer inputs (token
ids, indexes) get no feature statistics: their scale means nothing. `raw` repeats `features`:
the recorder sees the inputs only as the model does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

MAX_FEATURES = 4096  # a wider 2-D input is profiled as one feature
SHOWN_FEATURES = 8


def _as_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return None


def _all_finite(x: torch.Tensor) -> bool:
    """All entries finite: a NaN or Inf makes the sum non-finite, so one reduction decides (about 30x
    cheaper than torch.isfinite(x).all() on CPU); only a non-finite sum needs the exact check (finite
    values whose sum overflows)."""
    if x.numel() == 0:
        return True
    total = float(x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32))
    return math.isfinite(total) or bool(torch.isfinite(x).all())


def _columns(x: torch.Tensor, channels_first: bool = True) -> torch.Tensor:
    """(rows, features) float64 view of a batch for the statistics: the columns of a 2-D batch, the
    channels of an image batch (B, C, H, W) or of a 3-D batch that feeds a convolution (B, C, L), the
    last dim of any other 3-D batch (sequences: B, T, D)."""
    x = x.to("cpu", torch.float64)
    if x.ndim == 0:
        return x.reshape(1, 1)
    if x.ndim == 1:
        return x.reshape(-1, 1)
    if x.ndim == 2:
        return x if x.shape[1] <= MAX_FEATURES else x.reshape(-1, 1)
    dim = 1 if channels_first or x.ndim > 3 else x.ndim - 1
    cols = x.movedim(dim, -1).reshape(-1, x.shape[dim])
    return cols if cols.shape[1] <= MAX_FEATURES else cols.reshape(-1, 1)


class _Moments:
    """Per-column count, mean, M2 (Chan's parallel update), min, max over finite entries."""

    def __init__(self, d: int):
        self.n = np.zeros(d)
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)
        self.lo = np.full(d, np.inf)
        self.hi = np.full(d, -np.inf)

    def add(self, X: np.ndarray) -> None:
        finite = np.isfinite(X)
        n = finite.sum(axis=0).astype(np.float64)
        live = n > 0
        if not live.any():
            return
        Z = np.where(finite, X, 0.0)
        mean = np.divide(Z.sum(axis=0), n, out=np.zeros_like(n), where=live)
        dev = np.where(finite, X - mean, 0.0)
        m2 = (dev * dev).sum(axis=0)
        total = self.n + n
        delta = mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = np.where(live, self.mean + delta * np.divide(n, total, where=total > 0,
                                                                     out=np.zeros_like(n)), self.mean)
            self.m2 = np.where(live, self.m2 + m2 + delta * delta * np.divide(self.n * n, total, where=total > 0,
                                                                           out=np.zeros_like(n)), self.m2)
        self.n = total
        self.lo = np.minimum(self.lo, np.where(finite, X, np.inf).min(axis=0))
        self.hi = np.maximum(self.hi, np.where(finite, X, -np.inf).max(axis=0))

    def column(self, j: int) -> dict:
        if self.n[j] == 0:
            return {"mean": None, "std": None, "min": None, "max": None}
        return {"mean": _num(self.mean[j]), "std": _num(math.sqrt(max(self.m2[j] / self.n[j], 0.0))),
                "min": _num(self.lo[j]), "max": _num(self.hi[j])}


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class BatchProfile:
    def __init__(self, max_batches: int = 50, task: str | None = None, feature_names: list[str] | None = None,
                 channels_first: bool = False):
        self.max_batches, self.task_hint = max_batches, task
        self.channels_first = channels_first
        self.given_names = list(feature_names) if feature_names else None
        self.batches = 0  # batches that went into the statistics
        self.rows = 0  # rows seen in every batch
        self.moments: _Moments | None = None
        self.names: list[str] = []
        self.integer_inputs = False
        self.nonfinite = 0
        self.feature_bad: np.ndarray | None = None
        self.class_counts: np.ndarray | None = None
        self.target_moments: _Moments | None = None
        self.target_bad = 0
        self.target_kind: str | None = None  # labels | binary | onehot | values
        self.max_label = -1
        self.changed = False

    # ---- per batch --------------------------------------------------------------------------------
    def observe(self, inputs: Any, targets: Any, check: bool = True) -> tuple[int, int, list[str]]:
        """Add one batch; returns (non-finite inputs, non-finite targets, names of the bad features).
        After the first `max_batches` batches only rows are counted, unless `check` asks for the
        non-finite check (the recorder asks at sampled steps and when the loss is not finite)."""
        x, y = _as_tensor(inputs), _as_tensor(targets)
        profiling = self.batches < self.max_batches
        bad_x = bad_y = 0
        bad_names: list[str] = []
        if x is not None and x.ndim >= 1:
            self.rows += int(x.shape[0])
            if not (profiling or check):
                pass
            elif not (x.is_floating_point() or x.is_complex()):
                self.integer_inputs = True
            else:
                cols = None
                if profiling:
                    cols = _columns(x, self.channels_first).numpy()
                    self._features(cols)
                if not _all_finite(x):  # one cheap pass
                    cols = _columns(x, self.channels_first).numpy() if cols is None else cols
                    per = (~np.isfinite(cols)).sum(axis=0)
                    if self.feature_bad is None or len(self.feature_bad) != len(per):
                        self.feature_bad = np.zeros(len(per), np.int64)
                    self.feature_bad += per
                    bad_x = int((~torch.isfinite(x)).sum())
                    self.nonfinite += bad_x
                    self._names(len(per))
                    bad_names = [self.names[j] for j in np.flatnonzero(per)]
                    self.changed = True
        if y is not None and (profiling or check):
            bad_y = self._targets(y, profiling)
        if profiling and (x is not None or y is not None):
            self.batches += 1
            self.changed = True
        return bad_x, bad_y, bad_names

    def _names(self, d: int) -> None:
        if len(self.names) != d:
            given = self.given_names
            self.names = given if given and len(given) == d else [f"x{j}" for j in range(d)]

    def _features(self, cols: np.ndarray) -> None:
        if self.moments is None or len(self.moments.n) != cols.shape[1]:
            self.moments = _Moments(cols.shape[1])
            self._names(cols.shape[1])
        self.moments.add(cols)

    def _targets(self, y: torch.Tensor, profiling: bool) -> int:
        bad = 0
        if y.is_floating_point():
            if not _all_finite(y):
                bad = int((~torch.isfinite(y)).sum())
                self.target_bad += bad
                self.changed = True
            if not profiling:
                return bad
            Y = y.to("cpu", torch.float64).reshape(y.shape[0], -1).numpy() if y.ndim else y.reshape(1, 1).numpy()
            finite = Y[np.isfinite(Y)]
            zero_one = finite.size and bool(np.all((finite == 0) | (finite == 1)))
            if zero_one and Y.shape[1] > 1 and np.allclose(Y.sum(axis=1), 1):
                self._count(Y.argmax(axis=1), Y.shape[1], "onehot")
            elif zero_one and Y.shape[1] == 1 and self.target_kind in (None, "binary"):
                self._count(Y[:, 0].astype(np.int64), 2, "binary")
            else:
                self.target_kind = "values"
                if self.target_moments is None or len(self.target_moments.n) != Y.shape[1]:
                    self.target_moments = _Moments(Y.shape[1])
                self.target_moments.add(Y)
        elif profiling and not y.is_complex() and y.dtype != torch.bool:
            labels = y.to("cpu").reshape(-1).numpy().astype(np.int64)
            labels = labels[labels >= 0]  # ignore_index (-100) and padding
            if labels.size:
                self._count(labels, int(labels.max()) + 1, "labels")
        return bad

    def _count(self, labels: np.ndarray, n: int, kind: str) -> None:
        self.target_kind = kind
        n = max(n, 0 if self.class_counts is None else len(self.class_counts))
        counts = np.bincount(labels, minlength=n)
        if self.class_counts is None:
            self.class_counts = counts
        else:
            if len(counts) > len(self.class_counts):
                self.class_counts = np.pad(self.class_counts, (0, len(counts) - len(self.class_counts)))
            self.class_counts[: len(counts)] += counts
        self.max_label = max(self.max_label, int(labels.max()) if labels.size else -1)

    # ---- the profile -------------------------------------------------------------------------------
    def task(self) -> str | None:
        if self.task_hint:
            return self.task_hint
        if self.target_kind in ("labels", "binary", "onehot"):
            return "classification"
        if self.target_kind == "values":
            return "regression"
        return None

    def n_classes(self, output_units: int | None) -> int | None:
        if self.task() != "classification":
            return None
        seen = len(self.class_counts) if self.class_counts is not None else 0
        units = output_units if output_units and output_units > 1 else 2
        return max(seen, units)

    def to_dict(self, output_units: int | None = None) -> dict[str, Any]:
        n_classes = self.n_classes(output_units)
        features = []
        d = len(self.names)
        for j in range(d):
            stats = self.moments.column(j) if self.moments is not None and j < len(self.moments.n) else \
                {"mean": None, "std": None, "min": None, "max": None}
            bad = int(self.feature_bad[j]) if self.feature_bad is not None and j < len(self.feature_bad) else 0
            absmax = None if stats["min"] is None else max(abs(stats["min"]), abs(stats["max"]))
            features.append({"name": self.names[j], **stats, "abs_max": absmax, "nonfinite": bad})
        target: dict[str, Any] = {}
        if n_classes is not None:
            counts = np.zeros(n_classes, np.int64)
            if self.class_counts is not None:
                counts[: len(self.class_counts)] = self.class_counts[:n_classes]
            target = {"class_counts": counts.tolist(), "val_class_counts": [0] * n_classes,
                      "nonfinite": self.target_bad, "val_nonfinite": 0}
        elif self.target_moments is not None:
            stats = self.target_moments.column(0)
            target = {**stats, "nonfinite": self.target_bad, "val_nonfinite": 0}
        elif self.target_bad:
            target = {"nonfinite": self.target_bad, "val_nonfinite": 0}
        return {
            "n_train": self.rows, "n_val": 0, "n_features": d, "task": self.task(), "n_classes": n_classes,
            "classes": list(range(n_classes)) if n_classes else None, "feature_names": list(self.names),
            "dropped_target_rows": 0, "dropped_incomplete_rows": 0,
            "features": features, "raw": [{k: f[k] for k in ("name", "mean", "std", "min", "max", "nonfinite")}
                                          for f in features],
            "nonfinite_inputs": {"train": self.nonfinite, "val": 0},
            "target": target,
            "source": "batches", "batches_profiled": self.batches, "integer_inputs": self.integer_inputs,
        }
