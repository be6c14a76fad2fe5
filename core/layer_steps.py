"""One-token decoding steps that drive a Llama-style decoder's layers directly.

For a one-token step the model's own forward spends more time building masks, caches and
keyword plumbing than in arithmetic on small models. ``LayerSteps`` runs the same
computation as the model's eager attention path, op for op, through the model's own
modules (embedding, RMSNorms, projections, MLP, rotary embedding, output layer) with:

- each distinct prompt prefilled once and its keys / values copied out to its rows (a
  group's G completions share the prompt);
- keys and values in zeroed buffers preallocated for prompt + budget, written in place;
- attention over the whole buffer with an additive bias that masks padding and the slots
  not yet written (each step opens one). Slicing the live prefix instead makes ``bmm`` copy
  the strided slice: measured 1.5× slower per step at 44 of 76 slots (64 rows, 6 heads).

Per position t with hidden state h (Vaswani et al. 2017; rotary positions, Su et al. 2021):

    x = RMSNorm₁(h);  q, k, v = rope(W_q x), rope(W_k x), W_v x
    h ← h + W_o softmax(q Kᵀ / √d + bias) V          (K, V: the cache buffers)
    h ← h + MLP(RMSNorm₂(h))

It fits decoders of type ``llama`` and ``qwen2`` without sliding-window layers; any other
model decodes through its own forward (``rlloom.decoding``).
"""
from __future__ import annotations

import contextlib
import inspect

import torch
from torch import Tensor

from rlloom.prompt_rows import mask_positions, prefill_prompts, shared_prompt_index

ARCHITECTURES = ("llama", "qwen2")


def layer_steps_fit(lm, device: torch.device) -> bool:
    """Whether ``LayerSteps`` computes exactly what ``lm``'s own forward does: a CPU,
    a ``llama`` / ``qwen2`` decoder, no sliding-window layer, no attention dropout in play."""
    inner = getattr(lm, "model", None)
    return (
        device.type == "cpu"
        and getattr(lm.config, "model_type", None) in ARCHITECTURES
        and inner is not None
        and hasattr(lm, "lm_head")
        and all(getattr(layer.self_attn, "sliding_window", None) is None for layer in inner.layers)
        and (not lm.training or not getattr(lm.config, "attention_dropout", 0.0))
    )


class LayerSteps:
    """The prefill of left-padded prompts [B,P] and then one token per row per ``next``, with
    a cache for ``max_new_tokens`` tokens. ``logits`` [B,V] predict each row's next token."""

    def __init__(self, lm, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int):
        self.lm, self.inner = lm, lm.model
        source = inspect.getmodule(self.inner.layers[0].self_attn)
        self.rotate, self.repeat_kv = source.apply_rotary_pos_emb, source.repeat_kv
        batch, width = input_ids.shape
        cache, logits = prefill_prompts(lm, input_ids, attention_mask, shared_prompt_index(input_ids, attention_mask))
        self.logits = logits[:, -1]
        total = width + max_new_tokens
        self.keys, self.values = [], []
        for layer in cache.layers:
            for kept, filled in ((self.keys, layer.keys), (self.values, layer.values)):
                buffer = filled.new_zeros(batch, filled.shape[1], total, filled.shape[3])
                buffer[:, :, :width] = filled
                kept.append(buffer)
        # 0 where a row attends, the lowest float where it does not: its padding, and the
        # slots not yet written (each step opens one)
        self.bias = torch.full((batch, 1, 1, total), torch.finfo(torch.float32).min, device=input_ids.device)
        self.bias[..., :width].masked_fill_(attention_mask[:, None, None, :] == 1, 0.0)
        self.position = mask_positions(attention_mask)[:, -1:]
        self.length = width

    def stepping(self):
        """The context the one-token steps run in: none needed."""
        return contextlib.nullcontext()

    def next(self, tokens: Tensor) -> Tensor:
        """Feed ``tokens`` [B] at each row's next position; the logits [B,V] that follow."""
        self.position = self.position + 1
        at, self.length = self.length, self.length + 1
        self.bias[..., at] = 0.0
        hidden = self.inner.embed_tokens(tokens[:, None])  # [B,1,H]
        cos, sin = self.inner.rotary_emb(hidden, self.position)
        for i, layer in enumerate(self.inner.layers):
            hidden = hidden + self._attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, i, at)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.logits = self.lm.lm_head(self.inner.norm(hidden))[:, -1]
        return self.logits

    def _attention(self, attn, x: Tensor, cos: Tensor, sin: Tensor, i: int, at: int) -> Tensor:
        """Layer ``i``'s attention output [B,1,H] for the normed input ``x`` [B,1,H] at cache slot ``at``."""
        batch = x.shape[0]
        q = attn.q_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = self.rotate(q, k, cos, sin)
        self.keys[i][:, :, at : at + 1] = k
        self.values[i][:, :, at : at + 1] = v
        keys = self.repeat_kv(self.keys[i], attn.num_key_value_groups)
        values = self.repeat_kv(self.values[i], attn.num_key_value_groups)
        scores = torch.matmul(q, keys.transpose(2, 3)) * attn.scaling + self.bias
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(weights, values).transpose(1, 2).reshape(batch, 1, -1)
        return attn.o_proj(out)
