"""Learning-rate schedules: ``schedule(step, total_steps) -> multiplier`` of the base rate η0.

Linear, cosine and exponential decay (and a constant rate), each with an optional linear
warmup. Conventions, shared by all:

- ``step`` counts optimizer steps already taken (0 for the first step), as
  ``torch.optim.lr_scheduler.LambdaLR`` passes it; the multiplier at ``step`` sets the rate
  of optimizer step ``step + 1``.
- Warmup: for ``step < warmup_steps`` the multiplier is (step + 1) / warmup_steps, so the
  first step already trains (at η0/warmup_steps) and step warmup_steps − 1 runs at η0.
- Decay then runs on t = step − warmup_steps over T = total_steps − warmup_steps (at least 1):
  it starts at 1 at the first step after warmup; linear and cosine decays clip t to T and
  reach their final value at step = total_steps, one past the last step.
- ``min_ratio`` m rescales a decay shape f(t) ∈ [0, 1] to m + (1 − m)·f(t): the rate never
  falls below m·η0 and reaches it at t = T (m = 0 is the plain decay η0·f(t)).
"""
from __future__ import annotations

import math

from rlloom.errors import ParameterError
from rlloom import hookimpl


class _Warmup:
    """Linear warmup over ``warmup_steps``, then ``decay(t, T)`` (see the module docstring)."""

    def __init__(self, warmup_steps: int = 0):
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ParameterError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps

    def __call__(self, step: int, total_steps: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.decay(step - self.warmup_steps, max(total_steps - self.warmup_steps, 1))

    def decay(self, t: int, horizon: int) -> float:
        raise NotImplementedError


class _MinRatio(_Warmup):
    """A decay shape f(t, T) ∈ [0, 1] rescaled to [min_ratio, 1]."""

    def __init__(self, min_ratio: float = 0.0, warmup_steps: int = 0):
        super().__init__(warmup_steps)
        if not 0.0 <= min_ratio <= 1.0:
            raise ParameterError(f"min_ratio must be in [0, 1], got {min_ratio}")
        self.min_ratio = min_ratio

    def decay(self, t: int, horizon: int) -> float:
        return self.min_ratio + (1.0 - self.min_ratio) * self.shape(min(t, horizon), horizon)

    def shape(self, t: int, horizon: int) -> float:
        raise NotImplementedError


class Constant(_Warmup):
    """η_t = η0 after an optional linear warmup."""

    def decay(self, t: int, horizon: int) -> float:
        return 1.0


class Linear(_MinRatio):
    """η_t = η0·(1 − t/T): linear decay, rescaled to end at min_ratio·η0."""

    def shape(self, t: int, horizon: int) -> float:
        return 1.0 - t / horizon


class Cosine(_MinRatio):
    """η_t = η0·cos(πt / 2T): quarter-period cosine decay, ending at min_ratio·η0.

    cos(πt/2T) falls from 1 at t = 0 to 0 at t = T along a quarter period (steepest at the
    end); ``cosine_half`` is the more common half period.
    """

    def shape(self, t: int, horizon: int) -> float:
        return math.cos(math.pi * t / (2 * horizon))


class CosineHalf(_MinRatio):
    """η_t = η0·(m + (1 − m)·½(1 + cos(πt/T))): the usual half-cosine decay (Loshchilov & Hutter 2017, SGDR).

    Flat at both ends, ending at min_ratio m; the schedule of most LLM post-training recipes.
    """

    def shape(self, t: int, horizon: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * t / horizon))


class Exponential(_Warmup):
    """η_t = η0·γ^t: exponential decay, t counted from the end of warmup.

    Not bounded by ``total_steps``: γ^t keeps falling past it.
    """

    def __init__(self, gamma: float = 0.99, warmup_steps: int = 0):
        super().__init__(warmup_steps)
        if not 0.0 < gamma <= 1.0:
            raise ParameterError(f"gamma must be in (0, 1], got {gamma}")
        self.gamma = gamma

    def decay(self, t: int, horizon: int) -> float:
        return self.gamma**t


@hookimpl
def rlloom_schedule():
    return {
        "constant": Constant,
        "linear": Linear,
        "cosine": Cosine,
        "cosine_half": CosineHalf,
        "exponential": Exponential,
    }
