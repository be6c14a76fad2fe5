"""Weights read from safetensors files, checked before any is used: the file is readable,
holds the tensors the model expects with their shapes, and every value is finite."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from rlloom.errors import TrainingError


class WeightsError(TrainingError):
    """A weights file is missing, unreadable, does not fit the model, or holds NaN/inf."""


def expected_shapes(module: nn.Module) -> tuple[dict[str, torch.Size], set[str]]:
    """The shape of every tensor of ``module``'s state dict, and the names that may be absent
    from a file because they share storage with another name (tied embeddings)."""
    shapes, tied, owners = {}, set(), {}
    for name, tensor in module.state_dict().items():
        shapes[name] = tensor.shape
        key = (tensor.data_ptr(), tensor.shape)
        if key in owners:
            tied.update({name, owners[key]})
        owners.setdefault(key, name)
    return shapes, tied


def read_weights(file: Path, module: nn.Module | None = None) -> dict[str, Tensor]:
    """The tensors of the safetensors ``file``, checked; ``WeightsError`` naming the file and
    the problem otherwise.

    With ``module``, the file must hold every tensor of its state dict (one of each tied group
    suffices) with the same shape, and no other.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise WeightsError(f"{file} is missing")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{file} cannot be read (truncated or not a safetensors file: {exc})") from exc
    if module is not None:
        shapes, tied = expected_shapes(module)
        missing = sorted(k for k in shapes if k not in tensors and k not in tied)
        unexpected = sorted(k for k in tensors if k not in shapes)
        if missing or unexpected:
            raise WeightsError(f"{file} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        wrong = [f"{k} {tuple(t.shape)} ≠ {tuple(shapes[k])}" for k, t in tensors.items() if t.shape != shapes[k]]
        if wrong:
            raise WeightsError(f"{file} does not fit this model (shapes {', '.join(wrong[:3])})")
    check_finite(tensors, str(file))
    return tensors


def check_finite(tensors: Mapping[str, Tensor], where: str) -> None:
    """``WeightsError`` naming ``where`` and the first tensor holding NaN or inf, if any."""
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise WeightsError(f"{where} holds non-finite weights (NaN or inf) in {bad[0]}{more}")
