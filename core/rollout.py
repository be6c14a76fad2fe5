"""What a sampler is given: prompts as tensors, and the context it samples in."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from rlloom.batch import RolloutBatch
from rlloom.kinds import conform


@dataclass
class PromptBatch:
    """N prompts, left-padded: ``input_ids``/``attention_mask`` [N,P]; ``group_ids`` [N]
    (the id every completion of a prompt carries); ``texts`` and per-row ``columns``.

    A prompt may already hold a prefix of a completion (VinePPO continues reasoning from
    intermediate states this way)."""

    input_ids: Tensor
    attention_mask: Tensor
    group_ids: Tensor
    texts: list[str]
    columns: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class SamplerContext:
    """The policy ``model`` (for generation; no gradients), its ``tokenizer``, ``score``
    (fills ``rewards`` of a ``RolloutBatch`` and returns it) and ``next_prompts`` (another
    ``PromptBatch`` from the training data, for samplers that draw more)."""

    model: Any
    tokenizer: Any
    score: Callable[[RolloutBatch], RolloutBatch]
    next_prompts: Callable[[], PromptBatch]


class WrappingSampler:
    """Base of samplers that wrap another sampler, ``base`` (a nested component in the config:
    ``sampler: {name: dynamic, base: {name: generate, ...}}``): the base's temperature,
    generation budget and provided fields pass through; a subclass adds what it provides."""

    nested_components = {"base": "sampler"}

    def __init__(self, base: Any):
        self.base = base

    @property
    def max_new_tokens(self) -> int:
        return self.base.max_new_tokens

    @property
    def temperature(self) -> float:
        return self.base.temperature

    @property
    def provides(self) -> frozenset[str]:
        return frozenset(conform("sampler", self.base).provides)


def encode_prompts(tokenizer, texts: list[str], group_ids: list[int], columns: dict[str, list]) -> PromptBatch:
    """Tokenise ``texts`` left-padded (no special tokens added beyond the tokenizer's own)."""
    rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
    return PromptBatch(ids, mask, torch.tensor(group_ids, dtype=torch.long), list(texts), columns)


def completion_mask(tokens: Tensor, eos_token_id: int) -> tuple[Tensor, Tensor]:
    """Mask [B,T] that is 1 up to and including each row's first EOS; truncated [B] is True
    for rows with no EOS (cut by the token budget)."""
    is_eos = tokens == eos_token_id
    before_or_at_first = (is_eos.long().cumsum(1) - is_eos.long()) == 0
    return before_or_at_first.long(), ~is_eos.any(1)


def _pad(x: Tensor | None, width: int, value: float, left: bool) -> Tensor | None:
    if x is None or x.shape[1] == width:
        return x
    fill = x.new_full((x.shape[0], width - x.shape[1]), value)
    return torch.cat([fill, x] if left else [x, fill], dim=1)


def concat_rollouts(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Rows of several rollout batches in one, re-padding prompts (left) and completions (right)."""
    import dataclasses

    p = max(b.prompt_ids.shape[1] for b in batches)
    t = max(b.completion_ids.shape[1] for b in batches)
    token_fields = [f.name for f in dataclasses.fields(RolloutBatch)]
    padded = []
    for b in batches:
        changes = {
            "prompt_ids": _pad(b.prompt_ids, p, pad_token_id, True),
            "prompt_mask": _pad(b.prompt_mask, p, 0, True),
            "completion_ids": _pad(b.completion_ids, t, pad_token_id, False),
        }
        for name in token_fields:
            value = getattr(b, name)
            if name not in changes and isinstance(value, Tensor) and value.dim() == 2:
                changes[name] = _pad(value, t, 0, False)
        padded.append(dataclasses.replace(b, **changes))
    return RolloutBatch.concat(padded)
