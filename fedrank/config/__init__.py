"""Run configuration: one frozen, validated section per concern, composed in a ``Scenario``.

See :mod:`fedrank.config.scenario` for the flat key surface (scenario files, run config,
command-line flags) and the resolution of strategy-dependent defaults.
"""

from fedrank.config.attack import (
    ANY_STRATEGY_ATTACKS,
    DATA_ATTACKS,
    RANKING_ATTACKS,
    UPDATE_ATTACKS,
    AttackConfig,
    AttackDirection,
    AttackKind,
    FlipRule,
    Knowledge,
)
from fedrank.config.fields import FieldInfo, RunConfigValue
from fedrank.config.learning import AggregationConfig, FrlConfig, LoraConfig
from fedrank.config.privacy import DpConfig
from fedrank.config.scenario import CLIENT_SECTIONS, FIELDS, SECTIONS, Effective, Scenario
from fedrank.config.sections import (
    DataConfig,
    ModelConfig,
    OutputConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "ANY_STRATEGY_ATTACKS",
    "CLIENT_SECTIONS",
    "DATA_ATTACKS",
    "FIELDS",
    "RANKING_ATTACKS",
    "SECTIONS",
    "UPDATE_ATTACKS",
    "AggregationConfig",
    "AttackConfig",
    "AttackDirection",
    "AttackKind",
    "DataConfig",
    "DpConfig",
    "Effective",
    "FieldInfo",
    "FlipRule",
    "FrlConfig",
    "Knowledge",
    "LoraConfig",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "RunConfigValue",
    "Scenario",
    "TrainConfig",
]
