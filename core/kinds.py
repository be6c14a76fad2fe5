"""The component kinds: one interface and one call signature each.

A *kind* is an interface below plus a registry section. A plugin registers, per kind, a
mapping ``{name: factory}``; a factory is a class or function whose keyword arguments are
exactly the keys a config may give next to ``name``. Calling the factory builds the
component, and the component is then called with the kind's signature.

Components may declare ``requires``: the ``RolloutBatch`` fields they read; the engine checks
them when it builds a pipeline and names the component when one is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from rlloom.batch import RolloutBatch


@dataclass
class AdvantageOutput:
    """``advantages`` [B,T] (0 on padding); ``returns`` [B,T] value targets where the
    estimator has them (GAE, return-to-go, Monte Carlo), else None."""

    advantages: Tensor
    returns: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LossOutput:
    """A loss per element and the mask that aggregation reduces it with.

    ``loss`` is [B,T] for token losses (``mask`` = the batch's completion mask) or [N,1] for
    sequence-level losses such as DPO (``mask`` all ones). ``metrics`` are detached scalars
    named as in DESIGN.md (``clip/low_frac``, ``ratio/mean``, ...).
    """

    loss: Tensor
    mask: Tensor
    metrics: dict[str, Tensor | float] = field(default_factory=dict)


@dataclass
class AggregationScope:
    """What a loss is normalised by, counted over the whole optimizer step.

    ``total_tokens`` and ``total_sequences`` are summed over every microbatch of the step and
    every process, so each microbatch's share adds up to the one-big-batch value.
    ``max_len`` is the constant length normaliser of Dr.GRPO (the generation budget).
    """

    total_tokens: float
    total_sequences: float
    max_len: int


@runtime_checkable
class Advantage(Protocol):
    """``advantage(batch) -> AdvantageOutput``: credit per completion token."""

    requires: ClassVar[set[str]]

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput: ...


@runtime_checkable
class PolicyLoss(Protocol):
    """``policy_loss(logprobs, batch) -> LossOutput``.

    ``logprobs`` are the current policy's log-probs of the batch's tokens, [B,T] for a
    ``RolloutBatch`` or ``SFTBatch``; for a ``PreferenceBatch`` the chosen rows stacked over
    the rejected rows, [2N,L]. A loss that sets ``needs_logits = True`` (label smoothing) is
    also given ``logits`` [B,T,V] aligned with ``logprobs``.
    """

    requires: ClassVar[set[str]]
    needs_logits: ClassVar[bool]
    consumes: ClassVar[str]  # "rollout" (default), "supervised" or "preference": the batch it trains on

    def __call__(self, logprobs: Tensor, batch: Any, logits: Tensor | None = None) -> LossOutput: ...


@runtime_checkable
class KLEstimator(Protocol):
    """``kl(logprobs, ref_logprobs, logits=None, ref_logits=None) -> [B,T]`` per-token KL.

    ``needs_logits`` is True for estimators that use the full distributions ([B,T,V] logits).
    """

    needs_logits: ClassVar[bool]

    def __call__(
        self,
        logprobs: Tensor,
        ref_logprobs: Tensor,
        logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
    ) -> Tensor: ...


@runtime_checkable
class Reward(Protocol):
    """``reward(prompts, completions, **columns) -> list[float]``, one float per completion.

    The signature of TRL reward functions, so existing functions work unchanged. ``columns``
    are the dataset's other fields per row plus ``completion_lengths`` (tokens) and
    ``truncated`` (bool) from the sampler.
    """

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]: ...


@runtime_checkable
class Sampler(Protocol):
    """``sampler(ctx, prompts, num_generations=None) -> RolloutBatch``, G completions a prompt.

    ``prompts`` is a ``PromptBatch`` (a prompt may end in a partial completion, to continue
    from it); ``ctx`` a ``SamplerContext`` giving the model, the tokenizer, a ``score``
    callable (fills ``rewards``) and more prompts, for samplers that filter. A sampler may
    expose ``last_metrics`` (e.g. ``filter/kept_frac``) and ``provides`` (batch fields it
    fills beyond the basic ones, e.g. ``values`` for Monte Carlo value estimates).
    """

    def __call__(self, ctx: Any, prompts: Any, num_generations: int | None = None) -> RolloutBatch: ...


@runtime_checkable
class RefPolicyManager(Protocol):
    """Holds the reference policy π_ref and may change it during training.

    ``setup(policy)`` is called once with the (unwrapped) policy; ``model`` is the reference
    module the engine computes reference log-probs with (None: no reference, β = 0);
    ``on_step_end(step, policy, metrics)`` may update the reference and returns metrics
    (``ref/reset``); ``state_dict``/``load_state_dict`` carry it through checkpoints.
    """

    model: Any

    def setup(self, policy: Any) -> None: ...

    def on_step_end(self, step: int, policy: Any, metrics: dict[str, float]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class ValueLoss(Protocol):
    """``value_loss(values, batch) -> LossOutput``: critic regression of ``values`` [B,T]
    towards ``batch.returns``, with ``batch.old_values`` for clipped variants."""

    def __call__(self, values: Tensor, batch: RolloutBatch) -> LossOutput: ...


@runtime_checkable
class Aggregation(Protocol):
    """``aggregation(loss, mask, scope) -> scalar``: this microbatch's share of the step loss.

    Summing the shares of all microbatches and processes of an optimizer step gives the
    aggregate of the whole step's batch (see ``AggregationScope``).
    """

    def __call__(self, loss: Tensor, mask: Tensor, scope: AggregationScope) -> Tensor: ...


@runtime_checkable
class Schedule(Protocol):
    """``schedule(step, total_steps) -> float``: the learning-rate multiplier at ``step``."""

    def __call__(self, step: int, total_steps: int) -> float: ...


@runtime_checkable
class Task(Protocol):
    """``task.load(split) -> datasets.Dataset`` with a ``prompt`` column (and what rewards,
    SFT or preference training need: ``answer``, ``completion``, ``chosen``/``rejected``).
    ``split`` is ``"train"`` or ``"test"``."""

    def load(self, split: str) -> Any: ...


@dataclass(frozen=True)
class Kind:
    """A registry section: its config key, hook name and interface.

    ``multiple`` kinds take a list of components in a config (rewards, combined with
    weights); ``reserved`` keys sit beside ``name`` in a config entry but belong to the engine
    (``weight``), not to the factory.
    """

    name: str
    hook: str
    interface: type
    summary: str
    multiple: bool = False
    reserved: frozenset[str] = frozenset()


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("advantage", "rlloom_advantage", Advantage, "batch -> advantages [B,T] (and returns)"),
        Kind("policy_loss", "rlloom_policy_loss", PolicyLoss, "log-probs + batch -> loss + metrics"),
        Kind("kl", "rlloom_kl", KLEstimator, "policy and reference log-probs -> per-token KL"),
        Kind(
            "reward",
            "rlloom_reward",
            Reward,
            "prompts + completions -> one float each",
            multiple=True,
            reserved=frozenset({"weight"}),
        ),
        Kind("sampler", "rlloom_sampler", Sampler, "policy + prompts -> RolloutBatch"),
        Kind("ref_policy", "rlloom_ref_policy", RefPolicyManager, "reference log-probs over training"),
        Kind("aggregation", "rlloom_aggregation", Aggregation, "loss [B,T] + mask -> scalar"),
        Kind("schedule", "rlloom_schedule", Schedule, "learning-rate multiplier by step"),
        Kind("task", "rlloom_task", Task, "a dataset with what its rewards need"),
        Kind("value_loss", "rlloom_value_loss", ValueLoss, "values + returns -> critic loss [B,T]"),
    ]
}
