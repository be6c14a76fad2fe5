"""One optimizer step, shared by every training mode; how it moves the parameters is the
configured update rule's (``update:``, AdamW by default).

The step's rows are cut into microbatches; each microbatch's loss is its share of the whole
step's loss (``AggregationScope`` counts tokens and sequences over every microbatch and
process), multiplied by the process count because DDP averages gradients. So 1 process × 4
microbatches and 2 processes × 2 microbatches produce the same gradient. ``StepClosure`` is
what an update rule gets: that gradient, and for trust-region rules the loss and the KL to
π_old at any parameters and Fisher-vector products, all summed the same way.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from rlloom.algos.trust_region import flat
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
    tokens, or pairs) when the step's metrics are reduced. ``kl_old`` is the microbatch's
    share of the mean KL(π_old ‖ π_θ) over the step's tokens, where the batch carries log π_old
    (what a trust region bounds), else None.
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    weight: float = 1.0
    kl_old: Tensor | None = None


LossFn = Callable[[Any, AggregationScope, Tensor], LossShare]
"""``loss_fn(microbatch, scope, row_index)``: the share of the rows ``row_index`` of the step."""


class StepClosure:
    """The step's rows and loss, as an update rule uses them.

    ``accumulate_gradient`` leaves ∇(step loss) in the parameters' ``.grad`` (synchronised over
    processes) and records the loss terms and metrics; ``step_loss`` is the loss it
    differentiated; ``clip_gradient`` clips the gradient norm to ``trainer.max_grad_norm``;
    ``evaluate`` gives the step loss and the mean KL(π_old ‖ π_θ) at the current parameters;
    ``fisher_vector_product`` the Hessian of that KL times a vector.
    """

    def __init__(self, rt: Runtime, rows: Any, mask: Tensor, max_len: int, loss_fn: LossFn, acc: MetricAccumulator):
        self.rt, self.rows, self.loss_fn, self.acc = rt, rows, loss_fn, acc
        self.optimizer = rt.optimizer
        self.params = [p for p in rt.model.parameters() if p.requires_grad]
        totals = global_sum(torch.stack([mask.sum().double(), torch.tensor(float(len(rows)), dtype=torch.float64)]))
        self.scope = AggregationScope(total_tokens=float(totals[0]), total_sequences=float(totals[1]), max_len=max_len)
        # Every process runs the same number of microbatches (DDP synchronises on the last
        # backward); a process with fewer rows runs a zero-weighted copy of its first row.
        count = int(global_max(math.ceil(len(rows) / rt.cfg.trainer.micro_batch_size)))
        self.pieces = list(torch.arange(len(rows)).tensor_split(count))
        self._local_loss = torch.zeros((), dtype=torch.float64)

    def accumulate_gradient(self) -> None:
        """Backward over every microbatch: ``.grad`` = ∇ of the whole step's loss."""
        rt = self.rt
        for i, idx in enumerate(self.pieces):
            sync = contextlib.nullcontext() if i == len(self.pieces) - 1 else rt.accelerator.no_sync(rt.model)
            with sync:
                if len(idx) == 0:
                    share = self.loss_fn(self.rows.select([0]), self.scope, torch.tensor([0]))
                    rt.accelerator.backward(share.total * 0.0)
                    continue
                share = self.loss_fn(self.rows.select(idx), self.scope, idx)
                if not torch.isfinite(share.total):
                    rt.optimizer.zero_grad(set_to_none=True)
                    raise TrainingError(
                        f"non-finite loss ({share.total.item()}) at microbatch {i}: terms "
                        + ", ".join(f"{k}={v.item():.4g}" for k, v in share.terms.items())
                        + "; lower trainer.lr or check the rewards"
                    )
                rt.accelerator.backward(share.total * rt.world)
            self._local_loss += share.total.detach().double().cpu()
            for name, value in share.terms.items():
                self.acc.add_sum(name, value)
            self.acc.add(share.metrics, share.weight)

    def step_loss(self) -> float:
        """The step's loss as ``accumulate_gradient`` computed it (at the parameters it ran
        at), summed over microbatches and processes (a collective: every process calls it)."""
        return float(global_sum(self._local_loss))

    def clip_gradient(self) -> float:
        """Clip the gradient norm to ``trainer.max_grad_norm``; the norm before clipping. A
        non-finite norm drops the gradient and stops the step."""
        rt = self.rt
        norm = rt.accelerator.clip_grad_norm_(rt.model.parameters(), rt.cfg.trainer.max_grad_norm)
        if not torch.isfinite(torch.as_tensor(norm)):
            rt.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"non-finite gradient norm ({norm}); the step was not applied")
        return float(norm)

    def _shares(self, want_graph: bool):
        """(microbatch share) for each non-empty microbatch, without DDP gradient sync."""
        with self.rt.accelerator.no_sync(self.rt.model), torch.set_grad_enabled(want_graph):
            for idx in self.pieces:
                if len(idx):
                    yield self.loss_fn(self.rows.select(idx), self.scope, idx)

    def _kl_old(self, share: LossShare) -> Tensor:
        if share.kl_old is None:
            raise TrainingError("this update rule needs log π_old in the batch (an online pipeline)")
        return share.kl_old

    def evaluate(self) -> tuple[float, float]:
        """(the step's loss, mean KL(π_old ‖ π_θ) over its tokens) at the current parameters,
        summed over microbatches and processes; no gradients."""
        sums = torch.zeros(2, dtype=torch.float64)
        for share in self._shares(want_graph=False):
            sums += torch.stack([share.total.detach().double().cpu(), self._kl_old(share).detach().double().cpu()])
        loss, kl = global_sum(sums).tolist()
        return loss, kl

    def fisher_vector_product(self, vector: Tensor) -> Tensor:
        """H v with H the Hessian of the mean KL(π_old ‖ π_θ) at the current θ (= θ_old: the
        Fisher information), ``vector`` [n] float64 → [n] float64, summed over microbatches
        and processes (double backward, Pearlmutter 1994)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        out = torch.zeros_like(vector)
        pieces = vector.split([p.numel() for p in self.params])
        # Double backward needs the math attention kernel (the fused ones have no second
        # derivative); one microbatch's graph at a time.
        with sdpa_kernel([SDPBackend.MATH]):
            for share in self._shares(want_graph=True):
                grads = torch.autograd.grad(self._kl_old(share), self.params, create_graph=True, allow_unused=True)
                directional = sum(
                    g.reshape(-1).double() @ v.to(g.device) for g, v in zip(grads, pieces) if g is not None
                )
                hv = torch.autograd.grad(directional, self.params, allow_unused=True)
                out += flat(hv, self.params).cpu()
        return global_sum(out)

    def gradient(self) -> Tensor:
        """The accumulated gradient as one float64 vector [n] (zeros where no gradient)."""
        return flat((p.grad for p in self.params), self.params).cpu()


def optimizer_step(rt: Runtime, rows: Any, mask: Tensor, max_len: int, loss_fn: LossFn, acc: MetricAccumulator) -> None:
    """One update of ``rows`` by the configured rule, then the schedule; metrics into ``acc``.

    ``rows`` is any batch with ``select``; ``mask`` [N,L] marks its loss elements (the step's
    token count comes from it); ``max_len`` is the scope's constant length normaliser.
    """
    closure = StepClosure(rt, rows, mask, max_len, loss_fn, acc)
    metrics = rt.update.step(closure)
    rt.scheduler.step()
    rt.optimizer.zero_grad(set_to_none=True)
    acc.add({**metrics, "lr": rt.optimizer.param_groups[0]["lr"]}, 1.0)


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
