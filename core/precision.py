"""Compute precision of a run (``trainer.precision``): ``fp32``, ``bf16`` or ``auto``.

``bf16`` runs the model's matmuls under bfloat16 autocast; the weights, their gradients and
the optimizer state stay float32 (mixed precision, Micikevicius et al. 2018), and log-probs,
losses and the softmax behind them are computed in float32 from the logits. ``auto`` is
``bf16`` where the hardware has fast bfloat16 matmuls (a CUDA device that supports them; a
CPU with AVX512-BF16 or AMX), else ``fp32``.
"""
from __future__ import annotations

import contextlib

import torch

from rlloom.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices faster than float32 ones."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: plain float32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision: unknown precision '{precision}' (one of {', '.join(PRECISIONS)})")
    if precision == "bf16" or (precision == "auto" and fast_bf16(device)):
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None, device: torch.device):
    """A context running eligible ops (matmuls, linear layers) in ``dtype``; none for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
