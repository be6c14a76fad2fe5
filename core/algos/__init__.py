"""Shared math for plugin authors: the pieces the builtin components are made of.

- ``rlloom.algos.returns``: reading batch fields, per-token rewards, discounted returns,
  prompt groups (``Groups``: mean, leave-one-out mean, std), group-relative advantages,
  and ``finish`` (clip, zero padding, the ``adv/*`` metrics every estimator reports).
- ``rlloom.algos.ratio``: importance ratios in log space, the clipped surrogate and the
  ``ratio/*`` and ``clip/*`` metrics every ratio-based loss reports.
- ``rlloom.algos.reference``: ``FrozenCopy``, a gradient-free copy of the policy that
  reference-policy managers build on.
- ``rlloom.algos.trust_region``: conjugate gradient and flat parameter vectors, for update
  rules that solve with Fisher-vector products (TRPO).

The names most plugins need are re-exported here.
"""
from rlloom.algos.ratio import (
    check_positive,
    clip_metrics,
    clipped_surrogate,
    log_ratio,
    old_logprobs,
    ratio_metrics,
    zero_padding,
)
from rlloom.algos.reference import FrozenCopy
from rlloom.algos.trust_region import conjugate_gradient, flat, set_flat
from rlloom.algos.returns import (
    Groups,
    check_clip,
    check_unit,
    discounted_returns,
    finish,
    group_relative,
    last_token,
    read,
    read_mask,
    token_rewards,
)

__all__ = [
    "FrozenCopy",
    "Groups",
    "check_clip",
    "check_positive",
    "check_unit",
    "clip_metrics",
    "clipped_surrogate",
    "conjugate_gradient",
    "discounted_returns",
    "finish",
    "flat",
    "group_relative",
    "last_token",
    "log_ratio",
    "old_logprobs",
    "ratio_metrics",
    "read",
    "read_mask",
    "set_flat",
    "token_rewards",
    "zero_padding",
]
