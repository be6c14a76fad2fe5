"""The pipeline: the components a config names, built and checked, and what follows from them.

``build_pipeline`` builds every component through the registry (which checks each against its
kind's contract), reads their declared attributes once, and resolves the facts the engine acts
on: the training mode (what the policy loss consumes), whether a critic is trained, whether a
KL term and a reference policy exist, whether the update is off-policy. It then checks that
every field a component ``requires`` is one the pipeline produces, naming the component when
not. Nothing here touches a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlloom.data import check_preference_rows, require_columns
from rlloom.errors import ConfigError
from rlloom.kinds import KINDS, KLKeys, conform, engine_keys
from rlloom.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller
from rlloom.registry import Registry, split_spec
from rlloom.rewarding import RewardFunction

SAMPLED_FIELDS = frozenset(
    {"prompt_ids", "prompt_mask", "completion_ids", "mask", "group_ids", "truncated", "rewards", "sample_logprobs"}
)
"""RolloutBatch fields every sampled and scored batch has."""


@dataclass
class KLTerm:
    """β·KL[π_θ ‖ π_ref]: the estimator, its coefficient's controller, and where it goes
    (``in_reward``: subtracted from per-token rewards; else added to the loss)."""

    estimator: Any
    control: FixedKLController | AdaptiveKLController
    in_reward: bool
    needs_logits: bool


@dataclass
class OnlineParts:
    """The components of online RL (rollout mode) and the facts that follow from them."""

    sampler: Any
    advantage: Any
    advantage_label: str  # "advantage 'grpo' from plugin '...'": who raised, when it raises
    ref_policy: Any | None  # None: no KL term, so no reference
    kl: KLTerm | None
    value_loss: Any | None  # None: no critic
    temperature: float  # the sampler's: log-probs are recomputed at it
    max_new_tokens: int
    off_policy: bool  # several optimizer steps per rollout, or a rule that needs them: old log-probs are computed
    old_policy: str  # what the update rule needs of π_old: "none", "logprobs" or "logits" ([B,T,V] kept)

    @property
    def needs_critic(self) -> bool:
        return self.value_loss is not None


@dataclass
class Pipeline:
    """Everything a run is built from, resolved once. ``online`` is set in rollout mode only."""

    mode: str  # "rollout", "supervised" or "preference": what the policy loss consumes
    policy_loss: Any
    loss_needs_logits: bool
    reference_free: bool  # preference losses that read no reference log-probs
    aggregation: Any
    schedule: Any
    update: Any  # the update rule (AdamW by default)
    task: Any
    source: str  # the task as a message names it: "task 'dataset' (data.jsonl)"
    too_long: str  # rows longer than the model's positions: "error" or "skip"
    alphabet: str | None  # the task's characters, for the embedded model's tokenizer
    train_data: Any
    rewards: list[RewardFunction]
    online: OnlineParts | None


def build_pipeline(cfg: DictConfig, registry: Registry, world: int) -> Pipeline:
    """Build and check the components of ``cfg`` (loaded settings) for ``world`` processes."""
    policy_loss = _build(cfg, registry, "policy_loss")
    loss = conform("policy_loss", policy_loss)
    aggregation = _build(cfg, registry, "aggregation", default="token_mean")
    schedule = _build(cfg, registry, "schedule", default="constant")
    update = _build(cfg, registry, "update", default="adamw")
    rule = conform("update", update)
    if rule.old_policy != "none" and loss.consumes != "rollout":
        raise ConfigError(f"update: {type(update).__name__} re-evaluates the loss against π_old, which "
                          f"only online RL has; this pipeline trains on {loss.consumes} batches")
    task = _build(cfg, registry, "task")
    train_data = task.load("train")
    rewards = [
        RewardFunction(r.name, registry.build("reward", r.spec, r.path), r.weight) for r in reward_specs(cfg)
    ]
    online = None
    if loss.consumes == "rollout":
        require_columns(train_data, ["prompt"], "task (train split)")
        if not rewards:
            raise ConfigError("reward: online RL needs at least one reward")
        online = _build_online(cfg, registry, world, rule)
        _check_requires(policy_loss, online)
    elif loss.consumes == "supervised":
        require_columns(train_data, ["prompt", "completion"], "task (train split)")
    else:
        check_preference_rows(train_data, "task (train split)")
    return Pipeline(
        mode=loss.consumes,
        policy_loss=policy_loss,
        loss_needs_logits=loss.needs_logits,
        reference_free=loss.reference_free,
        aggregation=aggregation,
        schedule=schedule,
        update=update,
        task=task,
        source=_task_source(cfg.task),
        too_long=engine_keys("task", split_spec(cfg.task, "task")[1], "task").too_long,
        alphabet=conform("task", task).alphabet,
        train_data=train_data,
        rewards=rewards,
        online=online,
    )


def _build(cfg: DictConfig, registry: Registry, kind: str, default: str | None = None) -> Any:
    spec = cfg[kind] if cfg[kind] is not None else default
    if spec is None:
        raise ConfigError(f"{kind}: this pipeline needs a {kind} ({KINDS[kind].summary})")
    return registry.build(kind, spec, kind)


def _task_source(spec: Any) -> str:
    """``task 'name'``, with the data path when the task reads one."""
    name, params = split_spec(spec, "task")
    return f"task '{name}'" + (f" ({params['path']})" if "path" in params else "")


@dataclass(frozen=True)
class RewardSpec:
    """One configured reward: the name its metrics carry (``reward/<name>/mean``), its spec,
    its config path and its weight."""

    name: str
    spec: Any
    path: str
    weight: float


def reward_specs(cfg: DictConfig) -> list[RewardSpec]:
    """The rewards of ``cfg``, each named by its ``alias`` or else its component name, so a
    metric keeps its name when the list is reordered. A name given twice is a ``ConfigError``."""
    value = cfg.reward
    if value is None:
        return []
    items = list(value) if OmegaConf.is_list(value) else [value]
    specs: list[RewardSpec] = []
    for i, item in enumerate(items):
        path = f"reward[{i}]" if OmegaConf.is_list(value) else "reward"
        component, params = split_spec(item, path)
        keys = engine_keys("reward", params, path)
        name = keys.alias or component
        for other in specs:
            if other.name == name:
                raise ConfigError(
                    f"{path}: reward '{name}' is already configured as {other.path}; give one of them an "
                    f"`alias:` to name its metrics (e.g. {{name: {component}, alias: {component}_2}})"
                )
        specs.append(RewardSpec(name, item, path, keys.weight))
    return specs


def _build_online(cfg: DictConfig, registry: Registry, world: int, rule: Any) -> OnlineParts:
    t = cfg.trainer
    sampler = _build(cfg, registry, "sampler")
    sampled = conform("sampler", sampler)
    advantage = _build(cfg, registry, "advantage")
    needs_values = "values" in conform("advantage", advantage).requires - sampled.provides
    value_loss = _build(cfg, registry, "value_loss") if needs_values else None
    if value_loss is not None and not rule.trains_critic:
        raise ConfigError("update: this update rule does not train a critic, but the advantage "
                          f"'{split_spec(cfg.advantage, 'advantage')[0]}' needs values; use a critic-free "
                          "advantage (grpo, rloo, reinforce) or the adamw update")
    kl = _kl_term(cfg, registry)
    ref_policy = _build(cfg, registry, "ref_policy", default="frozen") if kl is not None else None
    if t.prompts_per_step % world:
        raise ConfigError(f"trainer.prompts_per_step={t.prompts_per_step} must divide over {world} processes")
    return OnlineParts(
        sampler=sampler,
        advantage=advantage,
        advantage_label=registry.label("advantage", cfg.advantage),
        ref_policy=ref_policy,
        kl=kl,
        value_loss=value_loss,
        temperature=float(sampled.temperature),
        max_new_tokens=sampled.max_new_tokens,
        off_policy=off_policy(t, rule),
        old_policy=rule.old_policy,
    )


def off_policy(trainer: DictConfig, rule: Any) -> bool:
    """Whether an update moves away from the policy that sampled the batch before it ends:
    several optimizer steps per rollout (``trainer.epochs``, ``trainer.minibatches``), or an
    update rule that re-evaluates the loss away from θ_old (``rule``: its declared attributes)."""
    return trainer.epochs > 1 or trainer.minibatches > 1 or rule.old_policy != "none"


def inert_parameters(cfg: DictConfig, registry: Registry) -> dict[str, str]:
    """{config path: why} of the parameters that provably change nothing under ``cfg`` (loaded
    settings): a loss's ``off_policy_params`` when every update is on-policy, where the ratio
    π_θ/π_old is exactly 1 and V = V_old. Builds only the losses and the update rule."""
    rule = conform("update", _build(cfg, registry, "update", default="adamw"))
    if off_policy(cfg.trainer, rule):
        return {}
    inert = {}
    for kind in ("policy_loss", "value_loss"):
        if cfg[kind] is None:
            continue
        name = split_spec(cfg[kind], kind)[0]
        for param in sorted(conform(kind, _build(cfg, registry, kind)).off_policy_params):
            inert[f"{kind}.{param}"] = (
                f"{kind} '{name}' uses it only once an update has moved away from the sampling policy, "
                f"and here each rollout gets one on-policy optimizer step (trainer.epochs=1, "
                f"trainer.minibatches=1), so the ratio π_θ/π_old stays 1 (and V stays V_old)"
            )
    return inert


def _kl_term(cfg: DictConfig, registry: Registry) -> KLTerm | None:
    """The KL term of ``cfg.kl``, or None when ``kl`` is null or its β is 0."""
    if cfg.kl is None:
        return None
    keys: KLKeys = engine_keys("kl", split_spec(cfg.kl, "kl")[1], "kl")
    if not keys.active:
        return None
    estimator = registry.build("kl", cfg.kl, "kl")
    return KLTerm(
        estimator=estimator,
        control=make_kl_controller(keys.coef, keys.target, keys.horizon),
        in_reward=keys.in_reward,
        needs_logits=conform("kl", estimator).needs_logits,
    )


def _check_requires(policy_loss: Any, online: OnlineParts) -> None:
    """Every field a component requires is produced before it runs, else a ``ConfigError``
    naming the component and what produces the field."""
    available = set(SAMPLED_FIELDS) | set(conform("sampler", online.sampler).provides)
    if online.needs_critic:
        available |= {"values", "old_values"}
    if online.off_policy:
        available.add("old_logprobs")
    if online.kl is not None:
        available.add("ref_logprobs")
        if online.kl.in_reward:
            available.add("token_rewards")
    checks = [("advantage", online.advantage, available)]
    available = available | {"advantages", "returns"}
    checks += [("policy_loss", policy_loss, available)]
    if online.value_loss is not None:
        checks.append(("value_loss", online.value_loss, available))
    for kind, component, fields in checks:
        missing = set(conform(kind, component).requires) - fields
        if missing:
            raise ConfigError(
                f"{kind}: {type(component).__name__} requires batch field(s) {', '.join(sorted(missing))}, "
                f"which nothing in this pipeline fills (available: {', '.join(sorted(fields))})"
            )
