"""Samplers: G completions per prompt, decoded over a preallocated KV cache."""
from __future__ import annotations

import torch

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.decoding import Sampling, decode
from rlloom.models import unwrap_lm
from rlloom.rollout import PromptBatch, SamplerContext, completion_mask


class GenerateSampler:
    """G sampled completions per prompt, with their log-probs (``rlloom.decoding.decode``:
    the draws of transformers ``generate`` at the same seed, without its per-token overhead).

    Samples y ~ softmax(logits / temperature) truncated by top-k/top-p, stops a row at EOS
    and the whole batch when every row has ended, at most ``max_new_tokens``.
    ``sample_logprobs`` [B,T] are log softmax(logits / temperature) of the sampled tokens,
    the same quantity the update computes (top-k/top-p truncation is not renormalised into
    them). Rows are ordered prompt by prompt: the G completions of prompt i are rows
    iG … iG+G−1 and share ``group_ids``.
    """

    def __init__(
        self,
        num_generations: int = 4,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 16,
    ):
        if num_generations < 1:
            raise ParameterError(f"num_generations must be >= 1, got {num_generations}")
        if temperature <= 0:
            raise ParameterError(f"temperature must be > 0 (use a small value for near-greedy), got {temperature}")
        if not 0 < top_p <= 1:
            raise ParameterError(f"top_p must be in (0, 1], got {top_p}")
        if max_new_tokens < 1:
            raise ParameterError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.num_generations = num_generations
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, ctx: SamplerContext, prompts: PromptBatch, num_generations: int | None = None) -> RolloutBatch:
        g = num_generations or self.num_generations
        tok = ctx.tokenizer
        lm = unwrap_lm(ctx.model)
        device = next(lm.parameters()).device
        ids = prompts.input_ids.repeat_interleave(g, 0).to(device)
        attn = prompts.attention_mask.repeat_interleave(g, 0).to(device)
        was_training = lm.training
        lm.eval()
        out = decode(
            lm, ids, attn, self.max_new_tokens, tok.eos_token_id, tok.pad_token_id,
            Sampling(self.temperature, self.top_p, self.top_k),
        )
        lm.train(was_training)
        tokens, logprobs = out.tokens, out.logprobs
        mask, truncated = completion_mask(tokens, tok.eos_token_id)
        tokens = tokens.masked_fill(mask == 0, tok.pad_token_id)
        return RolloutBatch(
            prompt_ids=ids.cpu(),
            prompt_mask=attn.cpu(),
            completion_ids=tokens.cpu(),
            mask=mask.cpu(),
            group_ids=prompts.group_ids.repeat_interleave(g, 0),
            prompts=[t for t in prompts.texts for _ in range(g)],
            completions=tok.batch_decode(tokens, skip_special_tokens=True),
            columns={k: [v for v in vals for _ in range(g)] for k, vals in prompts.columns.items()},
            truncated=truncated.cpu(),
            sample_logprobs=(logprobs * mask).cpu(),
        )


@hookimpl
def rlloom_sampler():
    return {"generate": GenerateSampler}
