"""Scoring completions with the configured reward functions.

Each reward function follows the TRL signature ``fn(prompts, completions, **columns) ->
list[float]``; ``columns`` hold the dataset's other fields per row plus the sampler's
``completion_lengths`` and ``truncated``. ``score`` calls every function once on the whole
batch and combines them into one scalar reward per completion,

    r_i = Σ_k w_k · r_k(prompt_i, completion_i),

the sum of the outcome reward and its shaping terms taken before any normalisation (as DAPO,
Yu et al. 2025, adds its overlong penalty, Eq. 13, to the outcome reward). A function that
raises or returns the wrong number or kind of values stops the step with a ``RewardError``
naming the function and the sample.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from rlloom.errors import DataError, RewardError

_SHOW = 80


@dataclass(frozen=True)
class RewardFunction:
    """One configured reward: its metric name, the callable and its weight in the sum."""

    name: str
    fn: Callable[..., Sequence[float]]
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight):
            raise ValueError(f"reward '{self.name}': weight must be finite, got {self.weight}")


def column(columns: Mapping[str, Any], key: str, owner: str) -> list[Any]:
    """``columns[key]`` as a list, or a ``DataError`` saying who needs it and what was given."""
    if key not in columns:
        given = ", ".join(sorted(columns)) or "none"
        raise DataError(f"{owner} needs the column '{key}'; columns given: {given}")
    return list(columns[key])


def _short(text: Any) -> str:
    text = str(text)
    return repr(text if len(text) <= _SHOW else text[:_SHOW] + "...")


def _sample(prompts: Sequence[str], completions: Sequence[str], index: int) -> str:
    return f"sample {index}: prompt {_short(prompts[index])}, completion {_short(completions[index])}"


def _row(columns: Mapping[str, Any], index: int) -> dict[str, Any]:
    return {k: [v[index]] if isinstance(v, (list, tuple)) else v for k, v in columns.items()}


def _failing_sample(fn: Callable, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Any]) -> int:
    """The first sample on which ``fn`` raises when called on it alone (0 if none does)."""
    for i in range(len(completions)):
        try:
            fn([prompts[i]], [completions[i]], **_row(columns, i))
        except Exception:
            return i
    return 0


def _call(reward: RewardFunction, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Any]) -> Tensor:
    try:
        values = reward.fn(list(prompts), list(completions), **columns)
    except Exception as exc:  # any failure of user code is reported with the sample
        index = _failing_sample(reward.fn, prompts, completions, columns)
        raise RewardError(
            f"reward '{reward.name}' raised {type(exc).__name__}: {exc} "
            f"({_sample(prompts, completions, index)})"
        ) from exc
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    try:
        values = list(values)
    except TypeError:
        raise RewardError(
            f"reward '{reward.name}' returned {type(values).__name__}, expected a list of floats"
        ) from None
    if len(values) != len(completions):
        raise RewardError(
            f"reward '{reward.name}' returned {len(values)} values for {len(completions)} completions"
        )
    for i, value in enumerate(values):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = values[i] = value.item()
        if not isinstance(value, numbers.Real):
            raise RewardError(
                f"reward '{reward.name}' returned {type(value).__name__} {value!r} at index {i}, "
                f"expected a float ({_sample(prompts, completions, i)})"
            )
        if not math.isfinite(value):
            raise RewardError(
                f"reward '{reward.name}' returned the non-finite value {value} at index {i} "
                f"({_sample(prompts, completions, i)})"
            )
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


def score(
    functions: Sequence[RewardFunction],
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: Mapping[str, Any],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of every reward, [B] float32, and each reward's own values by name.

    ``prompts`` and ``completions`` are B strings; ``columns`` maps names to B-long lists
    (tensors are turned into lists), passed to every function as keyword arguments.
    """
    if not functions:
        raise RewardError("no reward functions are configured")
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique, got {names}")
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    columns = {k: v.tolist() if isinstance(v, Tensor) else v for k, v in columns.items()}
    for key, value in columns.items():
        if isinstance(value, (list, tuple)) and len(value) != len(completions):
            raise ValueError(f"column '{key}' has {len(value)} rows for {len(completions)} completions")
    parts = {f.name: _call(f, prompts, completions, columns) for f in functions}
    total = torch.zeros(len(completions), dtype=torch.float32)
    for f in functions:
        total += f.weight * parts[f.name]
    return total, parts
