"""One optimizer step, shared by every training mode.

The step's rows are cut into microbatches; each microbatch's loss is its share of the whole
step's loss (``AggregationScope`` counts tokens and sequences over every microbatch and
process), multiplied by the process count because DDP averages gradients. So 1 process × 4
microbatches and 2 processes × 2 microbatches produce the same gradient. Then the gradient
norm is clipped and AdamW steps.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from rlloom.errors import TrainingError
from rlloom.kinds import AggregationScope
from rlloom.metrics import MetricAccumulator
from rlloom.ops import global_max, global_sum
from rlloom.runtime import Runtime


@dataclass
class LossShare:
    """One microbatch's share of the step loss.

    ``total`` is what backward runs on; ``terms`` its named parts (``loss/policy``,
    ``loss/kl``, ..., ``loss/total``), which add up over microbatches and processes to the
    step's values; ``metrics`` are means over the microbatch, weighted by ``weight`` (its
    tokens, or pairs) when the step's metrics are reduced.
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    weight: float = 1.0


LossFn = Callable[[Any, AggregationScope, Tensor], LossShare]
"""``loss_fn(microbatch, scope, row_index)``: the share of the rows ``row_index`` of the step."""


def optimizer_step(rt: Runtime, rows: Any, mask: Tensor, max_len: int, loss_fn: LossFn, acc: MetricAccumulator) -> None:
    """Accumulate the gradient of ``rows`` over microbatches, clip it, step; metrics into ``acc``.

    ``rows`` is any batch with ``select``; ``mask`` [N,L] marks its loss elements (the step's
    token count comes from it); ``max_len`` is the scope's constant length normaliser.
    """
    t = rt.cfg.trainer
    totals = global_sum(torch.stack([mask.sum().double(), torch.tensor(float(len(rows)), dtype=torch.float64)]))
    scope = AggregationScope(total_tokens=float(totals[0]), total_sequences=float(totals[1]), max_len=max_len)
    # Every process runs the same number of microbatches (DDP synchronises on the last
    # backward); a process with fewer rows runs a zero-weighted copy of its first row.
    count = int(global_max(math.ceil(len(rows) / t.micro_batch_size)))
    pieces = list(torch.arange(len(rows)).tensor_split(count))
    for i, idx in enumerate(pieces):
        sync = contextlib.nullcontext() if i == len(pieces) - 1 else rt.accelerator.no_sync(rt.model)
        with sync:
            if len(idx) == 0:
                share = loss_fn(rows.select([0]), scope, torch.tensor([0]))
                rt.accelerator.backward(share.total * 0.0)
                continue
            share = loss_fn(rows.select(idx), scope, idx)
            if not torch.isfinite(share.total):
                rt.optimizer.zero_grad(set_to_none=True)
                raise TrainingError(
                    f"non-finite loss ({share.total.item()}) at microbatch {i}: terms "
                    + ", ".join(f"{k}={v.item():.4g}" for k, v in share.terms.items())
                    + "; lower trainer.lr or check the rewards"
                )
            rt.accelerator.backward(share.total * rt.world)
        for name, value in share.terms.items():
            acc.add_sum(name, value)
        acc.add(share.metrics, share.weight)
    grad_norm = rt.accelerator.clip_grad_norm_(rt.model.parameters(), t.max_grad_norm)
    if not torch.isfinite(torch.as_tensor(grad_norm)):
        rt.optimizer.zero_grad(set_to_none=True)
        raise TrainingError(f"non-finite gradient norm ({grad_norm}); the step was not applied")
    rt.optimizer.step()
    rt.scheduler.step()
    rt.optimizer.zero_grad(set_to_none=True)
    acc.add({"grad_norm": float(grad_norm), "lr": rt.optimizer.param_groups[0]["lr"]}, 1.0)


def offline_step(rt: Runtime, rows: Any, mask: Tensor, loss_fn: LossFn, tokens: Tensor) -> dict[str, float]:
    """One optimizer step over a whole batch of the data (SFT, preference pairs), timed:
    its metrics plus ``time/update_s`` and ``throughput/tokens_per_s`` (``tokens``: the
    batch's real tokens on this process)."""
    start = time.perf_counter()
    acc = MetricAccumulator()
    optimizer_step(rt, rows, mask, mask.shape[1], loss_fn, acc)
    metrics = acc.reduce()
    metrics["time/update_s"] = time.perf_counter() - start
    metrics["throughput/tokens_per_s"] = global_sum(tokens).item() / metrics["time/update_s"]
    return metrics
