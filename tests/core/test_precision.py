"""trainer.precision: what each setting resolves to, bf16 training with float32 weights, and
the key it replaces."""
import math

import pytest
import torch

from rlloom.config import PRESET_DIR, load_config
from rlloom.engine import Trainer
from rlloom.errors import ConfigError
from rlloom.precision import autocast_dtype, fast_bf16

CPU = torch.device("cpu")


def test_fp32_runs_plain_and_bf16_autocasts():
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16


def test_auto_is_bf16_exactly_where_bf16_is_fast():
    assert autocast_dtype("auto", CPU) == (torch.bfloat16 if fast_bf16(CPU) else None)


def test_unknown_precision_is_named():
    with pytest.raises(ConfigError, match=r"trainer\.precision: unknown precision 'fp8' \(one of auto, fp32, bf16\)"):
        autocast_dtype("fp8", CPU)


def test_mixed_precision_key_moved(tiny):
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "trainer.mixed_precision=bf16"])
    with pytest.raises(ConfigError, match=r"trainer\.mixed_precision: moved to `trainer\.precision`"):
        Trainer(cfg)


def test_bf16_trains_with_float32_weights_and_float32_logprobs(tiny):
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "sampler.num_generations=2", "sampler.max_new_tokens=3",
                                                  "trainer.precision=bf16"])
    trainer = Trainer(cfg)
    metrics = trainer.train()
    assert all(p.dtype == torch.float32 for p in trainer.runtime.policy.parameters())
    moments = [s["exp_avg"] for s in trainer.runtime.optimizer.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    assert all(math.isfinite(metrics[k]) for k in ("loss/total", "kl/mean", "grad_norm", "eval/accuracy"))
    batch = trainer.mode.last_batch
    assert batch.sample_logprobs.dtype == torch.float32
    with trainer.runtime.autocast():  # the model's matmuls in bf16, the log-probs float32
        out = trainer.mode._forward(trainer.runtime.model, batch)
    assert out.logprobs.dtype == torch.float32
