"""The KV-cache decode loop: the draws of transformers ``generate``, exact log-probs, EOS and
padding handling, and memory that does not grow with vocabulary × length × batch."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rlloom.decoding import Sampling, decode
from rlloom.models import char_tokenizer, embedded_model
from rlloom.plugins.samplers import GenerateSampler
from rlloom.plugins.tasks import ARITHMETIC_ALPHABET
from rlloom.rollout import SamplerContext, encode_prompts
from rlloom.ops import selective_log_softmax
from rlloom import forward as fwd

TOK = char_tokenizer(ARITHMETIC_ALPHABET)


def _model(vocab=None, seed=0, eos_bias=None):
    """A tiny Llama; ``eos_bias`` adds that much to the EOS logit (an output layer with a bias)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab or len(TOK), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
        pad_token_id=TOK.pad_token_id, eos_token_id=TOK.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(config).eval()
    if eos_bias is not None:
        head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        with torch.no_grad():
            head.weight.copy_(lm.lm_head.weight)
            head.bias.zero_()
            head.bias[TOK.eos_token_id] = eos_bias
        lm.lm_head = head
    return lm


def _prompts(n=4):
    # different lengths, so rows are left-padded
    texts = ["1+2=", "3+4+5=", "9=", "7+7+7+1="][:n]
    return encode_prompts(TOK, texts, list(range(n)), {})


@pytest.mark.parametrize("sampling", [Sampling(1.0), Sampling(0.7, top_p=0.9), Sampling(1.3, top_k=5), Sampling(None)])
def test_same_draws_as_transformers_generate(sampling):
    lm, p = _model(), _prompts()
    kwargs = (
        {"do_sample": False} if sampling.temperature is None
        else {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
    )
    torch.manual_seed(3)
    ref = lm.generate(input_ids=p.input_ids, attention_mask=p.attention_mask, max_new_tokens=10,
                      eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id, **kwargs)
    torch.manual_seed(3)
    out = decode(lm, p.input_ids, p.attention_mask, 10, TOK.eos_token_id, TOK.pad_token_id, sampling)
    assert torch.equal(out.tokens, ref[:, p.input_ids.shape[1]:])


def test_logprobs_are_those_of_a_full_forward_and_zero_after_eos():
    # A model whose EOS is likely, so some rows end early: the log-probs the loop keeps equal
    # log softmax(logits / τ) of a fresh full forward over prompt + completion, up to and
    # including EOS; after EOS the tokens are padding and the log-probs 0.
    lm, p = _model(seed=1, eos_bias=2.0), _prompts()
    torch.manual_seed(0)
    out = decode(lm, p.input_ids, p.attention_mask, 12, TOK.eos_token_id, TOK.pad_token_id, Sampling(0.8))
    is_eos = out.tokens == TOK.eos_token_id
    mask = ((is_eos.long().cumsum(1) - is_eos.long()) == 0).long()
    assert is_eos.any(), "no row ended: the check after EOS would be empty"
    assert (out.tokens[mask == 0] == TOK.pad_token_id).all() and (out.logprobs[mask == 0] == 0).all()
    ids = torch.cat([p.input_ids, out.tokens], 1)
    attn = torch.cat([p.attention_mask, mask], 1)
    with torch.no_grad():
        full = fwd.forward_tokens(lm, ids, attn, p.input_ids.shape[1], temperature=0.8).logprobs
    torch.testing.assert_close(out.logprobs, full * mask, atol=1e-5, rtol=1e-5)


def test_stops_when_every_row_has_ended():
    # EOS wins every argmax: each row ends at its first token, so decoding stops after one
    # step instead of running to the budget of 12.
    lm, p = _model(eos_bias=100.0), _prompts()
    out = decode(lm, p.input_ids, p.attention_mask, 12, TOK.eos_token_id, TOK.pad_token_id, Sampling(None))
    assert out.tokens.tolist() == [[TOK.eos_token_id]] * 4


class _LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_sampler_memory_does_not_grow_with_vocabulary_length_and_batch():
    # A 50k-token vocabulary: no op in sampling produces a tensor of B·T·V elements (the
    # stacked per-step logits transformers' generate returns); the largest is one step's [B,V]
    # or a view of the [V,H] output-layer weight.
    vocab, budget, g = 50_000, 16, 2
    lm = _model(vocab=vocab)
    sampler = GenerateSampler(num_generations=g, max_new_tokens=budget)
    ctx = SamplerContext(lm, TOK, lambda b: b, lambda: None)
    with _LargestOutput() as seen:
        batch = sampler(ctx, _prompts())
    rows, length = batch.completion_ids.shape
    assert length == budget  # the untrained model rarely picks EOS among 50k tokens
    largest_weight = max(w.numel() for w in lm.parameters())
    assert seen.largest <= max(rows * vocab, largest_weight) < rows * length * vocab


def _qwen3():
    """A tiny Qwen3 (query / key norms): a decoder ``LayerSteps`` does not drive."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(TOK), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, intermediate_size=64, max_position_embeddings=64, pad_token_id=TOK.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return Qwen3ForCausalLM(config).eval()


def test_cpu_token_steps_run_eager_attention_and_the_model_keeps_its_own():
    from rlloom.decoding import step_attention

    lm = _qwen3()
    lm.set_attn_implementation("sdpa")
    seen = []
    lm.model.layers[0].self_attn.register_forward_hook(lambda *_: seen.append(lm.config._attn_implementation))
    prompts = _prompts()
    decode(lm, prompts.input_ids, prompts.attention_mask, 4, TOK.eos_token_id, TOK.pad_token_id, Sampling(None))
    assert seen[0] == "sdpa" and set(seen[1:]) == {"eager"}  # prefill, then one-token steps
    assert lm.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), step_attention(lm, torch.device("cpu")):
        raise RuntimeError("a failing step")
    assert lm.config._attn_implementation == "sdpa"  # restored on errors too
    with step_attention(lm, torch.device("cuda")):  # other devices keep their kernels
        assert lm.config._attn_implementation == "sdpa"


# ---------------------------------------------------------------- steps through the layers
def _qwen2(**extra):
    """A tiny Qwen2 with grouped-query attention (4 query heads share 2 key/value heads) and
    biased q/k/v projections."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(TOK), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=TOK.pad_token_id, tie_word_embeddings=True,
        **extra,
    )
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # trained-looking biases, so a dropped bias would show
        for layer in lm.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return lm


def _decode_both(lm, prompts, sampling, budget, monkeypatch, dtype=None):
    """``decode`` through ``LayerSteps`` and through the model's own forward, same seed."""
    import rlloom.decoding as decoding

    runs = []
    for fits in (True, False):
        monkeypatch.setattr(decoding, "layer_steps_fit", lambda *_, fits=fits: fits)
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            runs.append(decode(lm, prompts.input_ids, prompts.attention_mask, budget, TOK.eos_token_id, TOK.pad_token_id, sampling))
    return runs


@pytest.mark.parametrize("make", [_model, _qwen2], ids=["llama", "qwen2"])
@pytest.mark.parametrize("sampling", [Sampling(1.0), Sampling(0.7, top_p=0.9)])
def test_layer_steps_draw_what_the_models_own_forward_draws(make, sampling, monkeypatch):
    # Left-padded prompts of different lengths, each repeated 3 times as a group's rows are:
    # the prefill runs once per distinct prompt and its cache is copied out to the rows.
    lm, p = make(), _prompts()
    p.input_ids, p.attention_mask = p.input_ids.repeat_interleave(3, 0), p.attention_mask.repeat_interleave(3, 0)
    mine, theirs = _decode_both(lm, p, sampling, 12, monkeypatch)
    assert mine.tokens.shape == (12, 12)
    assert torch.equal(mine.tokens, theirs.tokens)
    torch.testing.assert_close(mine.logprobs, theirs.logprobs, atol=1e-5, rtol=1e-5)


def test_layer_steps_under_bfloat16_autocast_match_the_models_own_forward(monkeypatch):
    lm, p = _qwen2(), _prompts()
    mine, theirs = _decode_both(lm, p, Sampling(None), 10, monkeypatch, dtype=torch.bfloat16)
    assert torch.equal(mine.tokens, theirs.tokens)
    torch.testing.assert_close(mine.logprobs, theirs.logprobs, atol=1e-3, rtol=1e-3)


def test_layer_steps_fit_llama_and_qwen2_on_cpu_only():
    from rlloom.layer_steps import layer_steps_fit

    cpu = torch.device("cpu")
    assert layer_steps_fit(_model(), cpu) and layer_steps_fit(_qwen2(), cpu)
    assert not layer_steps_fit(_model(), torch.device("cuda"))
    assert not layer_steps_fit(_qwen3(), cpu)  # query / key norms
    windowed = _qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert not layer_steps_fit(windowed, cpu)
    dropout = _qwen2(attention_dropout=0.1)
    assert layer_steps_fit(dropout, cpu) and not layer_steps_fit(dropout.train(), cpu)


def test_a_transformers_whose_static_cache_casts_values_decodes_over_a_dynamic_cache(monkeypatch):
    # Before transformers 5.24 a StaticCache stored values in the keys' dtype, which fails
    # under bfloat16 autocast; there the model's own steps run over a DynamicCache and draw
    # the same tokens.
    import rlloom.decoding as decoding

    lm, p = _qwen3(), _prompts()
    runs = []
    for static in (True, False):
        monkeypatch.setattr(decoding, "static_cache_keeps_value_dtype", lambda static=static: static)
        torch.manual_seed(2)
        runs.append(decode(lm, p.input_ids, p.attention_mask, 8, TOK.eos_token_id, TOK.pad_token_id, Sampling(1.0)))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = decode(lm, p.input_ids, p.attention_mask, 8, TOK.eos_token_id, TOK.pad_token_id, Sampling(None))
    assert out.tokens.shape == (4, 8)
