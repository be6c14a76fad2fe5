"""rlloom: a plugin framework for reinforcement-learning post-training of language models.

The plugin-author API: ``hookimpl`` marks a plugin's hook implementations; the kinds
(interfaces, their outputs and contracts) and the batch types are re-exported here. The
shared math of the builtins is in ``rlloom.algos``; test helpers in ``rlloom.testing``.
"""
from rlloom.batch import PreferenceBatch, RolloutBatch, SFTBatch
from rlloom.hookspecs import hookimpl
from rlloom.kinds import (
    Advantage,
    AdvantageOutput,
    Aggregation,
    AggregationScope,
    KLEstimator,
    LossOutput,
    PolicyLoss,
    RefPolicyManager,
    RefUpdate,
    Reward,
    Sampler,
    Schedule,
    Task,
    UpdateRule,
    ValueLoss,
)

__version__ = "0.1.0"
__all__ = [
    "Advantage",
    "AdvantageOutput",
    "Aggregation",
    "AggregationScope",
    "KLEstimator",
    "LossOutput",
    "PolicyLoss",
    "PreferenceBatch",
    "RefPolicyManager",
    "RefUpdate",
    "Reward",
    "RolloutBatch",
    "SFTBatch",
    "Sampler",
    "Schedule",
    "Task",
    "UpdateRule",
    "ValueLoss",
    "__version__",
    "hookimpl",
]
