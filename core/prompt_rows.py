"""Left-padded prompt rows [B,P]: the position ids they get, which rows repeat a prompt (a
group's G completions share one), and their prefill, each distinct prompt run once."""
from __future__ import annotations

import inspect
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


def cache_argument(lm) -> str:
    """The forward keyword that takes the KV cache (``cache``; ``past_key_values`` before it)."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def prefill_prompts(lm, prompt_ids: Tensor, prompt_mask: Tensor, index: PromptIndex | None):
    """The causal LM ``lm`` over left-padded prompts [B,P], each distinct prompt (``index``;
    None: all differ) run once: (a ``DynamicCache`` holding every row's keys and values,
    the logits [B,1,V] at each row's last prompt position). Indexing the cache out to the
    rows is differentiable: a prompt's gradient is the sum over its rows."""
    from transformers import DynamicCache

    rows = slice(None) if index is None else index.first
    cache = DynamicCache(config=lm.config)
    out = lm(
        input_ids=prompt_ids[rows], attention_mask=prompt_mask[rows], position_ids=mask_positions(prompt_mask[rows]),
        use_cache=True, logits_to_keep=1, **{cache_argument(lm): cache},
    )
    if index is None:
        return cache, out.logits
    cache.batch_select_indices(index.inverse)
    return cache, out.logits[index.inverse]
