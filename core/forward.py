"""Forward passes that turn token rows into log-probs (and logits, values, entropy).

Log-probs are log softmax(logits / temperature) of the tokens actually present, in float32,
gathered without a second [B,L,V] tensor (log space avoids underflow of π).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlloom.models import PolicyWithValue
from rlloom.ops import entropy_from_logits, selective_log_softmax
from rlloom.prompt_rows import PromptIndex, cache_argument, mask_positions, prefill_prompts, shared_prompt_index


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
    width = input_ids.shape[1]
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=mask_positions(attention_mask),
        use_cache=False, logits_to_keep=width - start + 1,
    )
    result = _outputs(out.logits[:, :-1], input_ids[:, start:], temperature, want_logits, want_entropy, entropy_grad)
    if want_values:
        result.values = out.values[:, start - 1 : -1].float()
    return result


def _outputs(
    logits: Tensor, tokens: Tensor, temperature: float, want_logits: bool, want_entropy: bool, entropy_grad: bool
) -> ForwardOutput:
    """From the logits [B,T,V] predicting ``tokens`` [B,T]: their log-probs at ``temperature``,
    and the scaled logits and entropy when asked for (no entropy gradient unless
    ``entropy_grad``)."""
    if temperature != 1.0:
        logits = logits / temperature
    result = ForwardOutput(selective_log_softmax(logits, tokens))
    if want_logits:
        result.logits = logits
    if want_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            result.entropy = entropy_from_logits(logits)
    return result


def forward_rollout(model, batch, temperature: float = 1.0, **want: bool) -> ForwardOutput:
    """Log-probs (and what else is asked for) of a ``RolloutBatch``'s completions: outputs [B,T].

    Rows that share a prompt (a group's G completions) read it once: ``forward_shared_prompts``.
    With a value head, or when every prompt is different, ``forward_tokens`` over prompt +
    completion.
    """
    index = shared_prompt_index(batch.prompt_ids, batch.prompt_mask)
    if index is not None and not want.get("want_values") and not isinstance(_inside_ddp(model), PolicyWithValue):
        want.pop("want_values", None)
        return forward_shared_prompts(model, batch, index, temperature, **want)
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.mask], dim=1)
    return forward_tokens(model, input_ids, attention_mask, batch.prompt_ids.shape[1], temperature, **want)


def _inside_ddp(model):
    """The module a DDP wrapper holds (the model itself when it is not wrapped)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def forward_shared_prompts(
    model, batch, index: PromptIndex, temperature: float = 1.0, want_logits: bool = False,
    want_entropy: bool = False, entropy_grad: bool = True,
) -> ForwardOutput:
    """``forward_rollout`` reading each distinct prompt once: the same log-probs, logits and
    entropy as the full forward, with the prompt positions computed for N prompts, not B rows.

    The prompts [N,P] run through the LM (unwrapped from DDP: its gradients are synchronised
    once, by the completions' pass) with a KV cache; the cache is indexed out to the B rows
    (its gradient flows back summed over each prompt's rows), and the completions [B,T−1]
    (the last token predicts nothing) run on it. A causal LM without a value head. Position ids follow the attention
    mask as in ``forward_tokens``. The prediction of completion token 0 is the prompt's last
    position; of token t > 0 the completion position t − 1. Under dropout a prompt's rows
    share its dropout mask.
    """
    lm = _inside_ddp(model)
    cache, logits = prefill_prompts(lm, batch.prompt_ids, batch.prompt_mask, index)
    width, length = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    if length > 1:
        attention_mask = torch.cat([batch.prompt_mask, batch.mask[:, :-1]], dim=1)
        positions = mask_positions(attention_mask)[:, width:]
        rest = model(
            input_ids=batch.completion_ids[:, :-1], attention_mask=attention_mask, position_ids=positions,
            use_cache=True, cache_position=torch.arange(width, width + length - 1, device=positions.device),
            **{cache_argument(lm): cache},
        )
        logits = torch.cat([logits, rest.logits], dim=1)
    return _outputs(logits, batch.completion_ids, temperature, want_logits, want_entropy, entropy_grad)


def forward_rows(model, input_ids: Tensor, attention_mask: Tensor, **want: bool) -> ForwardOutput:
    """``forward_tokens`` over whole right-padded rows (SFT, preference), outputs [B,L]
    aligned with ``input_ids``: position 0 has no prediction and holds 0."""
    out = forward_tokens(model, input_ids, attention_mask, 1, **want)

    def pad(x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        return torch.cat([x.new_zeros((x.shape[0], 1, *x.shape[2:])), x], dim=1)

    return ForwardOutput(pad(out.logprobs), pad(out.logits), pad(out.values), pad(out.entropy))
