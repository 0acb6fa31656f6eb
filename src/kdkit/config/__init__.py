"""Experiment configuration: YAML validated with pydantic, `--set a.b=c` overrides, readable errors.

One module per group of sections: `base` (models, training, data, runtime), `distill` (losses, terms, teacher
outputs, ensembles, compression), `strategy`, `experiment` (the whole run and the rules that tie sections
together), `loading` (files, overrides, error messages).
"""

from kdkit.config.base import (
    AugmentConfig,
    DataConfig,
    LMDataConfig,
    ModelSpec,
    PhaseModel,
    PretrainedConfig,
    RuntimeConfig,
    TextAugmentConfig,
    TextDataConfig,
    TrainConfig,
    is_lm_dataset,
    is_text_dataset,
)
from kdkit.config.distill import (
    CacheConfig,
    CompressConfig,
    CompressDistillConfig,
    DistillConfig,
    EnsembleConfig,
    LMDistillConfig,
    ResponseLossConfig,
    TermConfig,
    UnlabeledConfig,
)
from kdkit.config.experiment import EnsembleMember, ExperimentConfig, Phase, TeacherConfig
from kdkit.config.loading import (
    apply_overrides,
    build_config,
    format_validation_error,
    load_config,
    load_yaml,
    parse_override,
)
from kdkit.config.strategy import StrategyConfig, StrategyKind

__all__ = [
    "AugmentConfig",
    "CacheConfig",
    "CompressConfig",
    "CompressDistillConfig",
    "DataConfig",
    "DistillConfig",
    "EnsembleConfig",
    "EnsembleMember",
    "LMDataConfig",
    "LMDistillConfig",
    "ExperimentConfig",
    "ModelSpec",
    "PretrainedConfig",
    "Phase",
    "PhaseModel",
    "ResponseLossConfig",
    "RuntimeConfig",
    "StrategyConfig",
    "StrategyKind",
    "TeacherConfig",
    "TermConfig",
    "TextAugmentConfig",
    "TextDataConfig",
    "TrainConfig",
    "UnlabeledConfig",
    "apply_overrides",
    "build_config",
    "format_validation_error",
    "is_lm_dataset",
    "is_text_dataset",
    "load_config",
    "load_yaml",
    "parse_override",
]
