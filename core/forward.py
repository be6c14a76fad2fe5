"""Forward passes that turn token rows into log-probs (and logits, values, entropy).

Log-probs are log softmax(logits / temperature) of the tokens actually present, in float32,
gathered without a second [B,L,V] tensor (log space avoids underflow of π).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlloom.ops import entropy_from_logits, selective_log_softmax


@dataclass
class ForwardOutput:
    """Per predicted position: ``logprobs`` [B,T]; ``logits`` [B,T,V] (scaled by the
    temperature), ``values`` [B,T] and ``entropy`` [B,T] when asked for, else None."""

    logprobs: Tensor
    logits: Tensor | None = None
    values: Tensor | None = None
    entropy: Tensor | None = None


def forward_tokens(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    start: int,
    temperature: float = 1.0,
    want_logits: bool = False,
    want_values: bool = False,
    want_entropy: bool = False,
    entropy_grad: bool = True,
) -> ForwardOutput:
    """Log-probs of ``input_ids[:, start:]`` given everything before, [B,L] → [B,L−start].

    Position ids follow the attention mask, so left-padded prompts get the positions they
    would have unpadded. The output layer runs only over the predicting positions
    start−1 … L−2. ``values`` at position t are V(s_t), the state before token t.
    ``entropy`` carries no gradient when ``entropy_grad`` is False (a metric, not a loss term).
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    width = input_ids.shape[1]
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
        logits_to_keep=width - start + 1,
    )
    logits = out.logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    result = ForwardOutput(selective_log_softmax(logits, input_ids[:, start:]))
    if want_logits:
        result.logits = logits
    if want_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            result.entropy = entropy_from_logits(logits)
    if want_values:
        result.values = out.values[:, start - 1 : -1].float()
    return result


def forward_rollout(model, batch, temperature: float = 1.0, **want: bool) -> ForwardOutput:
    """``forward_tokens`` over prompt + completion of a ``RolloutBatch``: outputs [B,T]."""
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.mask], dim=1)
    return forward_tokens(model, input_ids, attention_mask, batch.prompt_ids.shape[1], temperature, **want)


def forward_rows(model, input_ids: Tensor, attention_mask: Tensor, **want: bool) -> ForwardOutput:
    """``forward_tokens`` over whole right-padded rows (SFT, preference), outputs [B,L]
    aligned with ``input_ids``: position 0 has no prediction and holds 0."""
    out = forward_tokens(model, input_ids, attention_mask, 1, **want)

    def pad(x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        return torch.cat([x.new_zeros((x.shape[0], 1, *x.shape[2:])), x], dim=1)

    return ForwardOutput(pad(out.logprobs), pad(out.logits), pad(out.values), pad(out.entropy))
