"""Completion log-probs with each distinct prompt read once equal those of the full forward."""
import pytest
import torch

from rlloom import forward as fwd
from rlloom.models import PolicyWithValue
from rlloom.prompt_rows import shared_prompt_index
from rlloom.testing import rollout_batch


def _model(seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=23, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def _batch(groups=3, g=4, width=6, length=5, seed=1):
    """``groups`` left-padded prompts of different lengths, each with ``g`` completions, some
    ending early (right padding)."""
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(1, 23, (groups, width), generator=gen)
    prompt_mask = torch.ones(groups, width, dtype=torch.long)
    for i in range(groups):
        prompt_ids[i, :i], prompt_mask[i, :i] = 0, 0
    rows = groups * g
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, 2:] = 0
    mask[rows - 1, 3:] = 0
    completion_ids = torch.randint(1, 23, (rows, length), generator=gen) * mask
    batch = rollout_batch(mask, torch.arange(groups).repeat_interleave(g))
    batch.prompt_ids, batch.prompt_mask = prompt_ids.repeat_interleave(g, 0), prompt_mask.repeat_interleave(g, 0)
    batch.completion_ids = completion_ids
    return batch


def _full(model, batch, temperature):
    """The reference: one forward over prompt + completion of every row."""
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.mask], 1)
    return fwd.forward_tokens(model, ids, mask, batch.prompt_ids.shape[1], temperature, want_logits=True, want_entropy=True)


def _with_gradient(model, out, batch):
    model.zero_grad()
    ((out.logprobs * batch.mask).sum() + (out.entropy * batch.mask).sum()).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("length, temperature", [(5, 1.0), (5, 0.7), (1, 1.0)])
def test_shared_prompts_give_the_full_forwards_logprobs_logits_entropy_and_gradient(length, temperature):
    model, batch = _model(), _batch(length=length)
    index = shared_prompt_index(batch.prompt_ids, batch.prompt_mask)
    assert len(index.first) == 3
    assert torch.equal(batch.prompt_ids[index.first][index.inverse], batch.prompt_ids)  # each row's own prompt
    assert torch.equal(index.inverse.unique_consecutive(return_counts=True)[1], torch.tensor([4, 4, 4]))
    full = _full(model, batch, temperature)
    expected = _with_gradient(model, full, batch)
    shared = fwd.forward_shared_prompts(model, batch, index, temperature, want_logits=True, want_entropy=True)
    got = _with_gradient(model, shared, batch)
    m = batch.mask.bool()
    torch.testing.assert_close(shared.logprobs[m], full.logprobs[m], rtol=0, atol=1e-5)
    torch.testing.assert_close(shared.logits[m], full.logits[m], rtol=0, atol=1e-5)
    torch.testing.assert_close(shared.entropy[m], full.entropy[m], rtol=0, atol=1e-5)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_forward_rollout_reads_each_prompt_once():
    model, batch = _model(), _batch()
    rows_seen = []
    model.model.embed_tokens.register_forward_hook(lambda mod, args, out: rows_seen.append(tuple(args[0].shape)))
    fwd.forward_rollout(model, batch)
    assert rows_seen == [(3, 6), (12, 4)]  # 3 prompts of width 6, then 12 rows of 5 − 1 completion tokens


def test_distinct_prompts_and_value_heads_take_the_full_forward():
    batch = _batch(g=1)
    assert shared_prompt_index(batch.prompt_ids, batch.prompt_mask) is None
    # the same ids under another padding are another prompt
    ids = torch.tensor([[0, 5, 6], [5, 5, 6]])
    assert shared_prompt_index(ids, torch.tensor([[0, 1, 1], [1, 1, 1]])) is None
    policy = PolicyWithValue(_model())
    shared = _batch()
    rows_seen = []
    policy.lm.model.embed_tokens.register_forward_hook(lambda mod, args, out: rows_seen.append(tuple(args[0].shape)))
    out = fwd.forward_rollout(policy, shared, want_values=True)
    assert rows_seen == [(12, 11)] and out.values.shape == (12, 5)
