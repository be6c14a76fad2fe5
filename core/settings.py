"""The engine's own config keys (everything that is not a component), with defaults.

``load_settings`` merges a config onto this schema, so a misspelled key
(``trainer.max_stpes``) or a wrong type is rejected with its path before anything runs.
Each numeric setting that has a lower bound declares it with its default (``at_least``,
``above``), and the merged config is checked against those bounds, so a value that cannot run
(``trainer.lr=-1``, ``trainer.max_steps=0``) is one line at ``rlloom validate`` time.
Component sections (``advantage``, ``policy_loss``, ...) are free-form here; the registry
validates them against their factories.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlloom.errors import ConfigError
from rlloom.kinds import KINDS


@dataclass(frozen=True)
class Bound:
    """The lowest value a setting may take: ``low`` itself included unless ``strict``."""

    low: float
    strict: bool = False

    def admits(self, value: float) -> bool:
        return value > self.low if self.strict else value >= self.low

    def __str__(self) -> str:
        return f"{'>' if self.strict else '>='} {self.low:g}"


def at_least(default: Any, low: float) -> Any:
    """A setting whose value (when not null) is ``>= low``."""
    return field(default=default, metadata={"bound": Bound(low)})


def above(default: Any, low: float) -> Any:
    """A setting whose value (when not null) is ``> low``."""
    return field(default=default, metadata={"bound": Bound(low, strict=True)})


@dataclass
class EmbeddedModelSettings:
    """The small Llama the embedded default builds (used when ``model.path`` is null)."""

    hidden_size: int = at_least(64, 1)
    num_layers: int = at_least(2, 1)
    num_heads: int = at_least(4, 1)
    intermediate_size: int = at_least(128, 1)
    max_positions: int = at_least(64, 1)


@dataclass
class ModelSettings:
    path: Optional[str] = None  # local directory or hub id; null builds the embedded model
    dtype: str = "float32"
    value_head: Optional[bool] = None  # null: when the advantage or value loss needs values
    embedded: EmbeddedModelSettings = field(default_factory=EmbeddedModelSettings)


@dataclass
class TrainerSettings:
    max_steps: int = at_least(100, 1)
    prompts_per_step: int = at_least(16, 1)  # prompts sampled per step, over all processes
    micro_batch_size: int = at_least(64, 1)  # rows per forward/backward
    epochs: int = at_least(1, 1)  # passes over one rollout batch (PPO epochs)
    minibatches: int = at_least(1, 1)  # optimizer steps per epoch
    lr: float = above(1e-4, 0)
    max_grad_norm: float = above(1.0, 0)
    entropy_coef: float = 0.0  # c2: loss −= c2·H
    value_coef: float = at_least(0.5, 0)  # c1: loss += c1·L_value
    eval_every: int = at_least(10, 0)  # 0: no evaluation
    eval_size: int = at_least(200, 0)  # held-out prompts per evaluation
    eval_max_new_tokens: Optional[int] = at_least(None, 1)  # null: the sampler's budget
    eval_reward: Optional[str] = None  # the reward whose positive score counts as correct (null: the first)
    checkpoint_every: int = at_least(0, 0)  # 0: only at the end
    log_completions: int = at_least(32, 0)  # sampled completions kept per logged table
    completions_every: Optional[int] = at_least(None, 1)  # steps between completion tables; null: at evaluations (and the last step)
    precision: str = "fp32"  # auto | fp32 | bf16: bf16 autocast with float32 weights (auto: where bf16 is fast)
    batch_size: int = at_least(32, 1)  # offline (SFT, DPO): rows per optimizer step, over all processes


@dataclass
class TrackingSettings:
    uri: Optional[str] = None  # null: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: str = "rlloom"
    run_name: Optional[str] = None
    parent_run_id: Optional[str] = None  # nest this run under another (``rlloom compare``)
    tags: dict = field(default_factory=dict)  # extra run tags
    flush_timeout: float = at_least(60.0, 0)  # seconds the end of a run waits for an unreachable store


@dataclass
class PluginSettings:
    disable: list = field(default_factory=list)


@dataclass
class WarmStartSettings:
    config: Optional[str] = None  # a config run first; its final model becomes model.path
    overrides: list = field(default_factory=list)


@dataclass
class Settings:
    algorithm: str = "custom"
    seed: int = 0
    output_dir: str = "runs/default"
    resume: bool = False  # continue from the newest complete checkpoint in output_dir
    resume_fallback: bool = False  # a corrupt newest checkpoint: resume from the one before (else stop)
    model: ModelSettings = field(default_factory=ModelSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    warm_start: WarmStartSettings = field(default_factory=WarmStartSettings)


MOVED = {
    "trainer.kl_coef": "kl.coef",
    "trainer.kl_target": "kl.target",
    "trainer.kl_horizon": "kl.horizon",
    "trainer.kl_in_reward": "kl.in_reward",
    "trainer.weight_decay": "update.weight_decay",
    "trainer.adam_betas": "update.betas",
    "trainer.mixed_precision": "trainer.precision",
}
"""Keys that moved: the KL term (estimator, β, its control and placement) is one entry,
``kl:``; the optimizer's own parameters belong to the update rule, ``update:``."""


def load_settings(cfg: DictConfig) -> DictConfig:
    """``cfg`` merged onto the schema: unknown keys and wrong types raise ``ConfigError``."""
    for old, new in MOVED.items():
        if OmegaConf.select(cfg, old, default=None) is not None:
            section = new.split(".")[0]
            example = {
                "kl": "kl: {name: k3, coef: 0.02}` (`kl: null` turns it off)",
                "update": "update: {name: adamw, weight_decay: 0.01}`",
                "trainer": "trainer.precision: bf16` (auto, fp32 or bf16)",
            }[section]
            raise ConfigError(f"{old}: moved to `{new}`, e.g. `{example}")
    schema = OmegaConf.structured(Settings)
    own = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in KINDS]) if len(cfg) else cfg
    try:
        merged = OmegaConf.merge(schema, own)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"{key or 'config'}: {reason}") from None
    problems = [f"{path}: must be {bound}, got {value}" for path, bound, value in out_of_bounds(merged, Settings)]
    if problems:
        raise ConfigError("\n".join(problems))
    OmegaConf.set_struct(merged, False)
    for kind in KINDS:
        merged[kind] = cfg[kind] if kind in cfg else None
    OmegaConf.set_struct(merged, True)
    return merged


def out_of_bounds(cfg: DictConfig, schema: type, prefix: str = "") -> Iterator[tuple[str, Bound, Any]]:
    """(config path, bound, value) of every setting of ``schema`` whose value breaks its bound."""
    for f in fields(schema):
        value = cfg[f.name]
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):
            yield from out_of_bounds(value, f.default_factory, f"{prefix}{f.name}.")
        elif "bound" in f.metadata and value is not None and not f.metadata["bound"].admits(value):
            yield f"{prefix}{f.name}", f.metadata["bound"], value


def as_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python containers."""
    return OmegaConf.to_container(cfg, resolve=True)
