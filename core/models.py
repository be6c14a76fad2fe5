"""Policy models: the embedded default, any transformers causal LM, and a value head.

The embedded default is a small transformers decoder (Llama architecture) built from a
config, with a character-level tokenizer made with ``tokenizers``; nothing is downloaded.
Any other causal LM loads by local path or hub id with ``from_pretrained`` (safetensors).
Critic methods wrap the policy in ``PolicyWithValue``: a scalar head on the last hidden
state, saved beside the model as ``value_head.safetensors``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from rlloom.errors import ConfigError
from rlloom.weights import WeightsError, check_finite, expected_shapes, read_weights

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
VALUE_HEAD_FILE = "value_head.safetensors"


def char_tokenizer(alphabet: str):
    """A character-level ``PreTrainedTokenizerFast``: one token per character of ``alphabet``
    plus <pad>, <bos>, <eos>, <unk>; decoding concatenates characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS.values(), *chars])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS
    )


def embedded_model(
    tokenizer,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_positions: int = 64,
    seed: int = 0,
):
    """A freshly initialised small ``LlamaForCausalLM`` sized for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


class PolicyWithValue(nn.Module):
    """A causal LM with a scalar value head V(s_t) on its last hidden states.

    ``forward`` returns the LM output with ``values`` [B,L] added: the value of the state
    after reading tokens ≤ t (TRL's value-head layout, a shared backbone).
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def config(self):
        return self.lm.config

    def forward(self, **kwargs: Any):
        out = self.lm(**kwargs, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        out.values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return out

    def generate(self, *args: Any, **kwargs: Any):
        return self.lm.generate(*args, **kwargs)


def unwrap_lm(model: nn.Module) -> nn.Module:
    """The causal LM inside a ``PolicyWithValue`` (or the model itself)."""
    return model.lm if isinstance(model, PolicyWithValue) else model


def save_policy(model: nn.Module, tokenizer, directory: str | Path) -> None:
    """``save_pretrained`` of the LM and tokenizer; the value head, if any, as safetensors."""
    directory = Path(directory)
    unwrap_lm(model).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if isinstance(model, PolicyWithValue):
        save_file(model.value_head.state_dict(), str(directory / VALUE_HEAD_FILE))


def load_policy(path: str, value_head: bool = False, dtype: str = "float32"):
    """(model, tokenizer) from a local directory or hub id; a value head when asked.

    A saved value head (``value_head.safetensors``) is restored; otherwise it starts at 0.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ConfigError(f"model.dtype: unknown dtype '{dtype}' (float32, bfloat16, float16)")
    local = Path(path)
    for file in sorted(local.glob("*.safetensors")) if local.is_dir() else []:
        _check_readable(file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path: cannot load a causal LM from '{path}': {exc}") from None
    _, tied = expected_shapes(lm)
    missing = [k for k in info["missing_keys"] if k not in tied]
    if missing or info["mismatched_keys"]:
        raise ConfigError(f"model.path: the weights in '{path}' do not fit its config (missing {missing[:3]}, shapes differ for {[k for k, *_ in info['mismatched_keys']][:3]})")
    try:
        check_finite(lm.state_dict(), f"model.path: {path}")
    except WeightsError as exc:
        raise ConfigError(str(exc)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not value_head:
        return lm, tokenizer
    model = PolicyWithValue(lm)
    head_file = Path(path) / VALUE_HEAD_FILE
    if head_file.is_file():
        try:
            model.value_head.load_state_dict(read_weights(head_file, model.value_head))
        except WeightsError as exc:
            raise ConfigError(f"model.path: {exc}") from None
    return model, tokenizer


def _check_readable(file: Path) -> None:
    """``ConfigError`` naming ``file`` when its safetensors header or size is broken."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"model.path: {file} cannot be read (truncated or not a safetensors file: {exc})") from None
