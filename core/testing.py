"""Helpers for testing components: the contract check of a kind, and a RolloutBatch from just
the fields a component reads."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlloom.batch import RolloutBatch
from rlloom.kinds import conform

_NOT_TENSORS = ("prompts", "completions", "columns")


def rollout_batch(mask: Any, group_ids: Any = None, **fields: Any) -> RolloutBatch:
    """A RolloutBatch of B rows around ``mask`` [B,T] (1 on real completion tokens).

    ``prompt_ids`` [B,1] zeros, ``prompt_mask`` [B,1] ones, ``completion_ids`` [B,T] zeros
    (all long); ``group_ids`` [B] defaults to ``arange(B)`` (each row its own group).
    ``fields`` (``rewards`` [B], ``values``/``advantages``/``old_logprobs``/... [B,T]) pass
    through: lists and numbers via ``torch.as_tensor``, tensors as they are (dtype kept).
    """
    mask = torch.as_tensor(mask)
    B, T = mask.shape
    for name, value in fields.items():
        if value is not None and not isinstance(value, Tensor) and name not in _NOT_TENSORS:
            fields[name] = torch.as_tensor(value)
    return RolloutBatch(
        prompt_ids=torch.zeros(B, 1, dtype=torch.long),
        prompt_mask=torch.ones(B, 1, dtype=torch.long),
        completion_ids=torch.zeros(B, T, dtype=torch.long),
        mask=mask,
        group_ids=torch.arange(B) if group_ids is None else torch.as_tensor(group_ids),
        **fields,
    )


def check_component(kind: str, component: Any) -> Any:
    """Check ``component`` against the contract of ``kind`` exactly as the engine does when it
    builds a pipeline (its methods, and the type of every attribute the engine reads); returns
    the declared attributes with the kind's defaults filled in. Raises ``ConfigError`` saying
    what is missing or wrong.

    In a plugin's tests: ``assert check_component("advantage", MyAdvantage()).requires == {"rewards"}``.
    """
    return conform(kind, component, kind)
