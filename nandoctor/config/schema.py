"""The config as immutable dataclasses: one class per YAML section, field metadata carries the checks.

Defaults that depend on other fields (a generator's noise, the optimizer's lr) are `None` here and
filled in by `load.resolve`, so a resolved config dumps to YAML and loads back to an equal object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nandoctor import names


def rng(**bounds) -> dict:
    """Field metadata for numeric bounds: ge, gt, le, lt."""
    return {"bounds": bounds}


Activation = Literal[names.ACTIVATIONS]
InitName = Literal[names.INITS]


@dataclass(frozen=True)
class InitSpec:
    """A weight-init scheme; a bare string in YAML is shorthand for `{name: ...}`."""

    SHORTHAND = "name"
    name: InitName = "glorot_uniform"
    gain: float = field(default=1.0, metadata=rng(gt=0))
    std: float | None = field(default=None, metadata=rng(ge=0))
    limit: float | None = field(default=None, metadata=rng(ge=0))
    value: float | None = None


@dataclass(frozen=True)
class DataConfig:
    generator: Literal[names.GENERATORS] | None = None
    builtin: Literal[names.BUILTINS] | None = None
    csv: str | None = None
    npz: str | None = None
    target: str | int | None = None
    n_samples: int | None = field(default=None, metadata=rng(ge=2))
    n_features: int | None = field(default=None, metadata=rng(ge=1))
    n_classes: int | None = field(default=None, metadata=rng(ge=2))
    noise: float | None = field(default=None, metadata=rng(ge=0))
    task: Literal[names.TASKS] | None = None
    scale: float = 1.0
    feature_scales: tuple[float, ...] | None = None
    offset: float = 0.0
    outliers: float = field(default=0.0, metadata=rng(ge=0, le=1))
    missing: float = field(default=0.0, metadata=rng(ge=0, le=1))
    label_noise: float = field(default=0.0, metadata=rng(ge=0, le=1))
    impute: Literal[names.IMPUTES] = "none"
    preprocess: Literal[names.PREPROCESS] = "none"
    validation_split: float = field(default=0.2, metadata=rng(ge=0, lt=1))

    @property
    def source(self) -> str:
        """Which of the four exclusive sources is set (validated to be exactly one)."""
        return next(k for k in ("generator", "builtin", "csv", "npz") if getattr(self, k) is not None)


@dataclass(frozen=True)
class LayerConfig:
    units: int = field(default=1, metadata={"required": True, **rng(ge=1)})
    activation: Activation = "linear"
    alpha: float | None = field(default=None, metadata=rng(ge=0))
    init: InitSpec | None = None
    bias_init: float | None = None
    norm: Literal[names.NORMS] | None = None
    dropout: float = field(default=0.0, metadata=rng(ge=0, lt=1))


@dataclass(frozen=True)
class ModelConfig:
    init: InitSpec = InitSpec()
    bias_init: float = 0.0
    layers: tuple[LayerConfig, ...] = ()


@dataclass(frozen=True)
class LossConfig:
    """The loss; a bare string in YAML is shorthand for `{name: ...}`."""

    SHORTHAND = "name"
    name: Literal[names.LOSSES] = "cross_entropy"
    stable: bool = True
    reduction: Literal[names.REDUCTIONS] = "mean"


@dataclass(frozen=True)
class OptimizerConfig:
    SHORTHAND = "name"
    name: Literal[names.OPTIMIZERS] = "sgd"
    lr: float | None = field(default=None, metadata=rng(gt=0))
    momentum: float = field(default=0.9, metadata=rng(ge=0, lt=1))
    beta1: float = field(default=0.9, metadata=rng(ge=0, lt=1))
    beta2: float = field(default=0.999, metadata=rng(ge=0, lt=1))
    eps: float = field(default=1e-8, metadata=rng(gt=0))
    weight_decay: float = field(default=0.0, metadata=rng(ge=0))
    clip_norm: float | None = field(default=None, metadata=rng(gt=0))
    clip_value: float | None = field(default=None, metadata=rng(gt=0))


@dataclass(frozen=True)
class ScheduleConfig:
    SHORTHAND = "name"
    name: Literal[names.SCHEDULES] = "constant"
    gamma: float | None = field(default=None, metadata=rng(gt=0, le=1))
    step_size: int | None = field(default=None, metadata=rng(ge=1))
    min_lr: float = field(default=0.0, metadata=rng(ge=0))
    warmup: int | None = field(default=None, metadata=rng(ge=0))
    factor: float = field(default=0.5, metadata=rng(gt=0, lt=1))
    patience: int = field(default=5, metadata=rng(ge=0))


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = field(default=20, metadata=rng(ge=1))
    batch_size: int | Literal["full"] = field(default=32, metadata=rng(ge=1))
    shuffle: bool = True
    dtype: Literal[names.DTYPES] = "float32"
    stop_on_nonfinite: bool = True
    max_steps: int | None = field(default=None, metadata=rng(ge=1))


@dataclass(frozen=True)
class MonitorConfig:
    """`every: auto` records every step early on, then a stride that keeps the store small."""

    every: int | Literal["auto"] = field(default="auto", metadata=rng(ge=1))


@dataclass(frozen=True)
class ExpectConfig:
    healthy: bool = True
    causes: tuple[Literal[names.CAUSES], ...] = ()


@dataclass(frozen=True)
class Config:
    name: str | None = None
    seed: int = field(default=0, metadata=rng(ge=0))
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    training: TrainingConfig = TrainingConfig()
    monitor: MonitorConfig = MonitorConfig()
    expect: ExpectConfig = ExpectConfig()
