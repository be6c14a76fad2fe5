"""Left-padded prompt rows [B,P]: the position ids they get, and which rows repeat a prompt
(a group's G completions share one)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def mask_positions(attention_mask: Tensor) -> Tensor:
    """Position ids [B,L] that follow the attention mask: a left-padded row gets the positions
    it would have unpadded (padding at 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class PromptIndex:
    """``first`` [N]: one row of each distinct prompt; ``inverse`` [B]: each row's prompt in it."""

    first: Tensor
    inverse: Tensor


def shared_prompt_index(prompt_ids: Tensor, prompt_mask: Tensor) -> PromptIndex | None:
    """Which rows of left-padded prompts [B,P] are the same prompt; None when all differ."""
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if len(unique) == len(rows):
        return None
    first = torch.full((len(unique),), len(rows), dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(rows), device=rows.device), reduce="amin")
    return PromptIndex(first, inverse)
