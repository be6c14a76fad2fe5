"""The component kinds: one interface, one call signature and one declared contract each.

A *kind* is an interface below plus a registry section. A plugin registers, per kind, a
mapping ``{name: factory}``; a factory is a class or function whose keyword arguments are
exactly the keys a config may give next to ``name``. Calling the factory builds the
component, and the component is then called with the kind's signature.

Every attribute the engine reads from a component is declared here, on its kind, with its
type, its default (or none: the component must define it) and its meaning. ``conform`` checks
a built component against its kind and returns those attributes, defaults filled in; the
registry runs it on every component it builds, so a component that breaks its contract is
refused by name before training starts.
"""
from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Any, Callable, Optional, Protocol

from torch import Tensor

from rlloom.batch import RolloutBatch
from rlloom.errors import ConfigError


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
    with the stable names of the README (``clip/low_frac``, ``ratio/mean``, ...).
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


@dataclass
class RefUpdate:
    """What a reference-policy manager did at the end of a step: its ``metrics`` and whether
    the engine should clear the optimizer state (``reset_optimizer``, as ProRL's resets do)."""

    metrics: dict[str, float] = field(default_factory=dict)
    reset_optimizer: bool = False


class Advantage(Protocol):
    """``advantage(batch) -> AdvantageOutput``: credit per completion token."""

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput: ...


class PolicyLoss(Protocol):
    """``policy_loss(logprobs, batch, logits=None) -> LossOutput``.

    ``logprobs`` are the current policy's log-probs of the batch's tokens, [B,T] for a
    ``RolloutBatch`` or ``SFTBatch``; for a ``PreferenceBatch`` the chosen rows stacked over
    the rejected rows, [2N,L]. ``logits`` [B,T,V] aligned with ``logprobs`` are given when
    the loss declares ``needs_logits``.
    """

    def __call__(self, logprobs: Tensor, batch: Any, logits: Tensor | None = None) -> LossOutput: ...


class KLEstimator(Protocol):
    """``kl(logprobs, ref_logprobs, logits=None, ref_logits=None) -> [B,T]`` per-token KL;
    the logits [B,T,V] are given when the estimator declares ``needs_logits``."""

    def __call__(
        self,
        logprobs: Tensor,
        ref_logprobs: Tensor,
        logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
    ) -> Tensor: ...


class Reward(Protocol):
    """``reward(prompts, completions, **columns) -> list[float]``, one float per completion.

    The signature of TRL reward functions, so existing functions work unchanged. ``columns``
    are the dataset's other fields per row plus ``completion_lengths`` (tokens) and
    ``truncated`` (bool) from the sampler.
    """

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]: ...


class Sampler(Protocol):
    """``sampler(ctx, prompts, num_generations=None) -> RolloutBatch``, G completions a prompt.

    ``prompts`` is a ``PromptBatch`` (a prompt may end in a partial completion, to continue
    from it); ``ctx`` a ``SamplerContext`` giving the model, the tokenizer, a ``score``
    callable (fills ``rewards``) and more prompts, for samplers that filter. Sampler-level
    metrics of the step (``filter/kept_frac``) travel in the returned batch's ``metrics``.
    """

    def __call__(self, ctx: Any, prompts: Any, num_generations: int | None = None) -> RolloutBatch: ...


class RefPolicyManager(Protocol):
    """Holds the reference policy π_ref and may change it during training.

    ``setup(policy)`` is called once with the (unwrapped) policy; ``model`` is the reference
    module the engine computes reference log-probs with (None: no reference);
    ``on_step_end(step, policy, metrics)`` may update the reference and says what it did
    (``RefUpdate``); ``state_dict``/``load_state_dict`` carry it through checkpoints.
    """

    def setup(self, policy: Any) -> None: ...

    def on_step_end(self, step: int, policy: Any, metrics: dict[str, float]) -> RefUpdate: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ValueLoss(Protocol):
    """``value_loss(values, batch) -> LossOutput``: critic regression of ``values`` [B,T]
    towards ``batch.returns``, with ``batch.old_values`` for clipped variants."""

    def __call__(self, values: Tensor, batch: RolloutBatch) -> LossOutput: ...


class Aggregation(Protocol):
    """``aggregation(loss, mask, scope) -> scalar``: this microbatch's share of the step loss.

    Summing the shares of all microbatches and processes of an optimizer step gives the
    aggregate of the whole step's batch (see ``AggregationScope``).
    """

    def __call__(self, loss: Tensor, mask: Tensor, scope: AggregationScope) -> Tensor: ...


class Schedule(Protocol):
    """``schedule(step, total_steps) -> float``: the learning-rate multiplier at ``step``."""

    def __call__(self, step: int, total_steps: int) -> float: ...


class UpdateRule(Protocol):
    """How the parameters move once the step's loss is known.

    ``make_optimizer(params, lr)`` builds the torch optimizer whose parameter groups carry the
    scheduled learning rate (and whose state a reference reset clears);
    ``step(closure) -> metrics`` applies one update through a ``StepClosure``
    (``rlloom.update``): accumulate the gradient over the step's microbatches, clip it,
    re-evaluate the loss and the KL to π_old, form Fisher-vector products.
    """

    def make_optimizer(self, params: list[Any], lr: float) -> Any: ...

    def step(self, closure: Any) -> dict[str, float]: ...


class Task(Protocol):
    """``task.load(split) -> datasets.Dataset`` with a ``prompt`` column (and what rewards,
    SFT or preference training need: ``answer``, ``completion``, ``chosen``/``rejected``).
    ``split`` is ``"train"`` or ``"test"``."""

    def load(self, split: str) -> Any: ...


# ------------------------------------------------------------------ declared contracts

REQUIRED: Any = object()
"""The default of an attribute every component of the kind must define."""

MODES = ("rollout", "supervised", "preference")


@dataclass(frozen=True)
class Attribute:
    """One attribute the engine reads from a component: its type, default and meaning.

    ``default`` is ``REQUIRED`` when the component must define it; ``choices`` limits a
    string attribute's values.
    """

    name: str
    type: type | tuple[type, ...]
    meaning: str
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()


_FIELDS = (set, frozenset)

REQUIRES = Attribute("requires", _FIELDS, "the RolloutBatch fields the component reads", frozenset())
NEEDS_LOGITS = Attribute("needs_logits", bool, "it is also given the full logits [B,T,V]", False)
OFF_POLICY_PARAMS = Attribute(
    "off_policy_params", _FIELDS, "its parameters that act only once the update has moved away from "
    "the sampling policy (clip ranges of π_θ/π_old or of V − V_old): with one on-policy optimizer "
    "step per rollout the ratio is exactly 1 and they change nothing", frozenset(),
)


@dataclass(frozen=True)
class RewardKeys:
    """Keys beside ``name`` in a reward's config entry that belong to the engine.

    ``weight`` is w_k in r = Σ_k w_k·r_k; ``alias`` names the reward in metrics
    (``reward/<alias>/mean``), tags and tables instead of its component name, for a reward
    configured twice.
    """

    weight: float = 1.0
    alias: Optional[str] = None

    def __post_init__(self) -> None:
        if self.alias is not None and (not self.alias or "/" in self.alias):
            raise ValueError(f"alias: a reward's alias must be a non-empty name without '/', got {self.alias!r}")


@dataclass(frozen=True)
class KLKeys:
    """Keys beside ``name`` in the ``kl`` entry that belong to the engine: the whole KL term.

    ``coef`` is β (the initial β with ``target``); ``target`` adapts β towards a KL value
    (Ziegler et al. 2019, §2.2) over ``horizon`` steps; ``in_reward`` subtracts β·KL from the
    per-token rewards instead of adding it to the loss.
    """

    coef: Optional[float] = None
    target: Optional[float] = None
    horizon: int = 10000
    in_reward: bool = False

    def __post_init__(self) -> None:
        if self.coef is None:
            raise ValueError("coef: the KL term needs its coefficient β, e.g. `kl: {name: k3, coef: 0.02}` "
                             "(`kl: null` turns the term off)")
        if self.coef < 0:
            raise ValueError(f"coef: β must be >= 0, got {self.coef}")
        if self.target is not None and not (self.target > 0 and self.coef > 0):
            raise ValueError(f"target: an adaptive β needs target > 0 and a starting coef > 0, "
                             f"got target={self.target}, coef={self.coef}")
        if self.horizon < 1:
            raise ValueError(f"horizon: must be >= 1, got {self.horizon}")

    @property
    def active(self) -> bool:
        """Whether the term is on: β > 0 (no reference model is built otherwise)."""
        return self.coef > 0


TOO_LONG = ("error", "skip")


@dataclass(frozen=True)
class TaskKeys:
    """Keys beside ``name`` in the ``task`` entry that belong to the engine.

    ``too_long`` says what becomes of a row that does not fit the model's positions (online:
    the prompt and the generation budget; SFT and preference pairs: prompt, completion and
    EOS): ``error`` stops before training, naming the row; ``skip`` drops such rows and says
    how many.
    """

    too_long: str = "error"

    def __post_init__(self) -> None:
        if self.too_long not in TOO_LONG:
            raise ValueError(f"too_long: must be one of {', '.join(TOO_LONG)}, got {self.too_long!r}")


@dataclass(frozen=True)
class Kind:
    """A registry section: its config key, hook, interface and the contract of its components.

    ``methods`` must exist on every component; ``attributes`` are read by the engine (see
    ``Attribute``). ``multiple`` kinds take a list of components in a config (rewards);
    ``engine_keys`` is the dataclass of keys that sit beside ``name`` in a config entry but
    belong to the engine, not to the factory (a reward's ``weight``, the KL's ``coef``).
    """

    name: str
    hook: str
    interface: type
    summary: str
    methods: tuple[str, ...] = ("__call__",)
    attributes: tuple[Attribute, ...] = ()
    multiple: bool = False
    engine_keys: type | None = None

    @property
    def reserved(self) -> frozenset[str]:
        """The config keys beside ``name`` that belong to the engine."""
        return frozenset(f.name for f in fields(self.engine_keys)) if self.engine_keys else frozenset()


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("advantage", "rlloom_advantage", Advantage, "batch -> advantages [B,T] (and returns)", attributes=(REQUIRES,)),
        Kind(
            "policy_loss",
            "rlloom_policy_loss",
            PolicyLoss,
            "log-probs + batch -> loss + metrics",
            attributes=(
                REQUIRES,
                NEEDS_LOGITS,
                Attribute("consumes", str, "the batch it trains on, which picks the training mode", "rollout", MODES),
                Attribute("reference_free", bool, "a preference loss that reads no reference log-probs", False),
                OFF_POLICY_PARAMS,
            ),
        ),
        Kind("kl", "rlloom_kl", KLEstimator, "policy and reference log-probs -> per-token KL",
             attributes=(NEEDS_LOGITS,), engine_keys=KLKeys),
        Kind("reward", "rlloom_reward", Reward, "prompts + completions -> one float each",
             multiple=True, engine_keys=RewardKeys),
        Kind(
            "sampler",
            "rlloom_sampler",
            Sampler,
            "policy + prompts -> RolloutBatch",
            attributes=(
                Attribute("temperature", (int, float), "the softmax temperature its log-probs are taken at; "
                          "the update recomputes log-probs at the same temperature"),
                Attribute("max_new_tokens", int, "the generation budget (Dr.GRPO's length normaliser, the eval budget)"),
                Attribute("provides", _FIELDS, "RolloutBatch fields it fills beyond the sampled ones (e.g. values)", frozenset()),
            ),
        ),
        Kind(
            "ref_policy",
            "rlloom_ref_policy",
            RefPolicyManager,
            "reference log-probs over training",
            methods=("setup", "on_step_end", "state_dict", "load_state_dict"),
            attributes=(Attribute("model", object, "the reference module after setup (None: no reference)"),),
        ),
        Kind("aggregation", "rlloom_aggregation", Aggregation, "loss [B,T] + mask -> scalar"),
        Kind("schedule", "rlloom_schedule", Schedule, "learning-rate multiplier by step"),
        Kind(
            "task",
            "rlloom_task",
            Task,
            "a dataset with what its rewards need",
            methods=("load",),
            attributes=(Attribute("alphabet", (str, type(None)), "every character its texts can hold "
                                  "(the embedded model's tokenizer); None: read from the data", None),),
            engine_keys=TaskKeys,
        ),
        Kind("value_loss", "rlloom_value_loss", ValueLoss, "values + returns -> critic loss [B,T]",
             attributes=(REQUIRES, OFF_POLICY_PARAMS)),
        Kind(
            "update",
            "rlloom_update",
            UpdateRule,
            "one optimizer step from the step's loss",
            methods=("make_optimizer", "step"),
            attributes=(
                Attribute("old_policy", str, "what it needs of π_old beyond the sampled tokens' log-probs: "
                          "'logprobs' (it re-evaluates the loss away from θ_old) or 'logits' (also the "
                          "full distributions, for the exact KL(π_old ‖ π_θ))", "none", ("none", "logprobs", "logits")),
                Attribute("trains_critic", bool, "it can train a value head alongside the policy", True),
            ),
        ),
    ]
}


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def conform(kind: str, component: Any, where: str | None = None) -> SimpleNamespace:
    """Check ``component`` against its kind's contract; return its declared attributes.

    Every method of the kind must exist and every attribute must have its declared type
    (``bool`` is not a number) and, for strings, one of its choices; attributes the component
    omits take the kind's default. Raises ``ConfigError`` naming ``where`` (the config path)
    and what is wrong. Kinds added by plugins have no contract here.
    """
    where = where or kind
    spec = KINDS.get(kind)
    if spec is None:
        return SimpleNamespace()
    label = f"{where}: {kind} {type(component).__name__}"
    for method in spec.methods:
        if not callable(getattr(component, method, None)):
            what = "is not callable" if method == "__call__" else f"has no method `{method}`"
            raise ConfigError(f"{label} {what} (a {kind} must provide {', '.join(spec.methods)})")
    values = {}
    for attr in spec.attributes:
        value = getattr(component, attr.name, attr.default)
        if value is REQUIRED:
            raise ConfigError(
                f"{label} does not declare `{attr.name}` ({_type_name(attr.type)}): {attr.meaning}"
            )
        if not _is(value, attr.type) or (attr.choices and value not in attr.choices):
            allowed = f"one of {', '.join(attr.choices)}" if attr.choices else _type_name(attr.type)
            raise ConfigError(f"{label}: `{attr.name}` must be {allowed}, got {value!r} ({attr.meaning})")
        values[attr.name] = value
    return SimpleNamespace(**values)


def _is(value: Any, expected: type | tuple[type, ...]) -> bool:
    """``isinstance``, except that a bool is not a number."""
    types = expected if isinstance(expected, tuple) else (expected,)
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def nested_components(factory: Callable[..., Any]) -> dict[str, str]:
    """``{parameter: kind}`` for factories taking other components as parameters (a sampler
    wrapping a sampler declares ``nested_components = {"base": "sampler"}``); else ``{}``."""
    return dict(getattr(factory, "nested_components", {}))


def fits(value: Any, annotation: Any) -> bool:
    """Whether a config value fits a parameter's type annotation.

    ``float`` takes ints too, a ``bool`` is no number, a list stands for a list, tuple or set
    (element types checked), ``X | None`` takes null. ``Any``, a missing annotation and
    annotations that are not plain types (callables, protocols, strings left unresolved)
    accept every value.
    """
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return all(fits(v, args[0]) for v in value) if args else True
    if origin is dict:
        key, item = args or (Any, Any)
        return isinstance(value, dict) and all(fits(k, key) and fits(v, item) for k, v in value.items())
    if annotation is float:
        return _is(value, (int, float))
    if isinstance(annotation, type) and origin is None:
        return _is(value, annotation)
    return True


def annotation_name(annotation: Any) -> str:
    """``float or None``, ``list[float]``, ``int``: an annotation as a config author reads it."""
    if annotation is None or annotation is type(None):
        return "None"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(annotation_name(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def engine_keys(kind: str, params: dict[str, Any], where: str) -> Any:
    """The engine's keys of a config entry (``Kind.engine_keys``), type-checked against the
    dataclass's annotations, defaults filled; ``ConfigError`` naming ``where.key`` for a
    wrong type."""
    schema = KINDS[kind].engine_keys if kind in KINDS else None
    if schema is None:
        return None
    hints = typing.get_type_hints(schema)
    values = {}
    for f in fields(schema):
        if f.name not in params:
            continue
        value, expected = params[f.name], hints[f.name]
        if not fits(value, expected):
            raise ConfigError(f"{where}.{f.name}: expected {annotation_name(expected)}, got {value!r}")
        values[f.name] = float(value) if fits(0.5, expected) and _is(value, int) else value
    try:
        return schema(**values)
    except ValueError as exc:
        raise ConfigError(f"{where}.{exc}") from None
