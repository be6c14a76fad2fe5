"""The typed batches that travel through a pipeline.

One container per data shape, so no component guesses what it receives:

- ``RolloutBatch``: B sampled completions × T completion positions (online RL).
- ``SFTBatch``: prompt + completion token rows with a loss mask (supervised fine-tuning).
- ``PreferenceBatch``: N (prompt, chosen, rejected) pairs (DPO family).

All token tensors are right-padded over the completion axis; ``mask`` is 1 on every real
completion token (EOS included) and 0 on padding.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def _index(value: Any, idx: Tensor) -> Any:
    if isinstance(value, Tensor):
        return value[idx]
    if isinstance(value, list):
        return [value[i] for i in idx.tolist()]
    return value


def _concat(values: list[Any]) -> Any:
    first = values[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat(values, dim=0)
    if isinstance(first, list):
        return [item for value in values for item in value]
    return first


class _Rows:
    """Row selection and concatenation shared by the batch dataclasses.

    Tensor fields are indexed on dim 0, list fields element-wise, ``columns`` (a dict of
    per-row lists) per key; scalars pass through.
    """

    def select(self, idx: Tensor | list[int]):
        """A new batch holding the rows ``idx`` (a LongTensor or list of row indices)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        kwargs = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "columns":
                kwargs[f.name] = {k: _index(v, idx) for k, v in value.items()}
            else:
                kwargs[f.name] = _index(value, idx)
        return type(self)(**kwargs)

    @classmethod
    def concat(cls, batches: list):
        """Rows of several batches of one type, in order (padding widths must agree)."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            values = [getattr(b, f.name) for b in batches]
            if f.name == "columns":
                keys = values[0].keys()
                kwargs[f.name] = {k: _concat([v[k] for v in values]) for k in keys}
            else:
                kwargs[f.name] = _concat(values)
        return cls(**kwargs)

    def to(self, device: torch.device | str):
        """The same batch with every tensor field on ``device``."""
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )

    def has(self, name: str) -> bool:
        """Whether field ``name`` is set (not None)."""
        return getattr(self, name, None) is not None


@dataclass
class RolloutBatch(_Rows):
    """B completions of an online rollout, T completion positions.

    Shapes: ``prompt_ids``/``prompt_mask`` [B,P] (left-padded), ``completion_ids``/``mask``
    [B,T] (right-padded), ``group_ids`` [B] (completions answering one prompt share an id),
    ``rewards`` [B], ``truncated`` [B] bool; the optional per-token fields are [B,T].
    ``columns`` holds the dataset's other fields per row (e.g. ``answer``) for rewards;
    ``prompts``/``completions`` are the decoded texts; ``metrics`` are the sampler's scalar
    metrics of the step (``filter/kept_frac``), logged by the engine.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    mask: Tensor
    group_ids: Tensor
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    columns: dict[str, list] = field(default_factory=dict)
    truncated: Tensor | None = None
    rewards: Tensor | None = None
    token_rewards: Tensor | None = None
    sample_logprobs: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    values: Tensor | None = None
    old_values: Tensor | None = None
    advantages: Tensor | None = None
    returns: Tensor | None = None
    step_ends: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]


@dataclass
class SFTBatch(_Rows):
    """Supervised rows: ``input_ids``/``attention_mask`` [B,L] (prompt then completion,
    right-padded) and ``loss_mask`` [B,L], 1 on completion tokens whose log-likelihood
    is trained (completion-only loss)."""

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class PreferenceBatch(_Rows):
    """N preference pairs (prompt, chosen, rejected).

    ``chosen_*``/``rejected_*`` are [N,L] rows laid out as in ``SFTBatch`` (prompt then
    completion, ``*_loss_mask`` 1 on completion tokens). ``ref_chosen_logps`` and
    ``ref_rejected_logps`` [N] are the reference policy's summed completion log-probs,
    computed once before training, or None when the loss is reference-free. A loss receives
    the policy's token log-probs of ``chosen`` rows stacked over ``rejected`` rows, [2N,L].
    """

    chosen_input_ids: Tensor
    chosen_attention_mask: Tensor
    chosen_loss_mask: Tensor
    rejected_input_ids: Tensor
    rejected_attention_mask: Tensor
    rejected_loss_mask: Tensor
    ref_chosen_logps: Tensor | None = None
    ref_rejected_logps: Tensor | None = None

    def __len__(self) -> int:
        return self.chosen_input_ids.shape[0]
