"""What a training mode runs on, and what a training mode is.

``Runtime`` holds the accelerator, the policy (prepared: DDP-wrapped under several
processes), its optimizer, learning-rate scheduler and tokenizer. ``TrainingMode`` is the
interface of the three modes (``online``, ``supervised``, ``preference``): one step, one
evaluation, and the state that goes into a checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from omegaconf import DictConfig, OmegaConf

from rlloom.models import PolicyWithValue, char_tokenizer, embedded_model, load_policy, unwrap_lm
from rlloom.pipeline import Pipeline
from rlloom.precision import autocast, autocast_dtype


@dataclass
class Runtime:
    """The accelerator, the policy and its optimizer, shared by every part of a run."""

    cfg: DictConfig
    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    tokenizer: Any
    update: Any  # the update rule: how an optimizer step moves the parameters
    compute_dtype: torch.dtype | None = None  # autocast dtype of ``trainer.precision`` (None: float32)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def policy(self) -> torch.nn.Module:
        """The policy module without DDP wrapping."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def max_positions(self) -> int | None:
        """The model's context length, where its config states one."""
        return getattr(unwrap_lm(self.policy).config, "max_position_embeddings", None)

    def autocast(self):
        """The context the model runs in: ``trainer.precision``'s autocast (or none)."""
        return autocast(self.compute_dtype, self.device)

    def reset_optimizer_state(self) -> None:
        """Forget the optimizer's moment estimates (a reference reset asks for this)."""
        self.optimizer.state.clear()


def build_runtime(cfg: DictConfig, pipeline: Pipeline, accelerator: Any) -> Runtime:
    """Load or build the policy (with a value head when the pipeline trains a critic), the
    optimizer of ``pipeline.update`` and the scheduler of ``pipeline.schedule``, prepared by
    ``accelerator``."""
    m, t = cfg.model, cfg.trainer
    value_head = m.value_head if m.value_head is not None else bool(pipeline.online and pipeline.online.needs_critic)
    if m.path:
        model, tokenizer = load_policy(m.path, value_head=value_head, dtype=m.dtype)
    else:
        data = pipeline.train_data
        alphabet = pipeline.alphabet or "".join(
            sorted({ch for col in ("prompt", "completion", "chosen", "rejected") if col in data.column_names for s in data[col] for ch in s})
        )
        tokenizer = char_tokenizer(alphabet)
        model = embedded_model(tokenizer, seed=cfg.seed, **OmegaConf.to_container(m.embedded))
        if value_head:
            model = PolicyWithValue(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = pipeline.update.make_optimizer(params, t.lr)
    total = t.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: pipeline.schedule(s, total))
    model, optimizer = accelerator.prepare(model, optimizer)
    compute_dtype = autocast_dtype(t.precision, accelerator.device)
    return Runtime(cfg, accelerator, model, optimizer, scheduler, tokenizer, pipeline.update, compute_dtype)


class TrainingMode(Protocol):
    """One way of training: online RL (rollout), supervised, or preference."""

    def step(self, step: int) -> dict[str, float]:
        """Run step ``step`` (0-based): build its batch, run its optimizer step(s); its metrics."""

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current policy (``eval/*``)."""

    def completion_table(self, limit: int) -> dict[str, list] | None:
        """The last step's sampled completions as table columns (None when nothing is sampled)."""

    def state_dict(self) -> dict[str, Any]:
        """What the mode's components need to resume (KL coefficient, reference policy)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class OfflineMode:
    """What the offline modes (supervised, preference) share: nothing is sampled and their
    components keep no state between steps."""

    def completion_table(self, limit: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
