"""Metric reduction over microbatches and processes.

Loss shares (``loss/*``) add up: each microbatch's aggregated loss is its share of the step
loss, so their sum over microbatches and processes is the step's value. Other metrics are
token-weighted means, except names ending in ``/min`` or ``/max``.
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist

from rlloom.ops import is_distributed


def _float(value) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


class MetricAccumulator:
    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.weighted: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.extrema: dict[str, float] = {}

    def add_sum(self, name: str, value) -> None:
        self.sums[name] += _float(value)

    def add(self, metrics: dict, weight: float) -> None:
        """Metrics of one microbatch holding ``weight`` tokens."""
        for name, value in metrics.items():
            value = _float(value)
            if name.endswith("/min") or name.endswith("/max"):
                pick = min if name.endswith("/min") else max
                self.extrema[name] = pick(self.extrema.get(name, value), value)
            else:
                acc = self.weighted[name]
                acc[0] += value * weight
                acc[1] += weight

    def reduce(self) -> dict[str, float]:
        """The step's metrics over every process (collective: all processes must call it)."""
        names_sum, names_w, names_x = sorted(self.sums), sorted(self.weighted), sorted(self.extrema)
        flat = torch.tensor(
            [self.sums[n] for n in names_sum] + [v for n in names_w for v in self.weighted[n]],
            dtype=torch.float64,
        )
        mins = torch.tensor([self.extrema[n] if n.endswith("/min") else -self.extrema[n] for n in names_x], dtype=torch.float64)
        if is_distributed():
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            flat, mins = flat.to(device), mins.to(device)
            dist.all_reduce(flat)
            dist.all_reduce(mins, op=dist.ReduceOp.MIN)
            flat, mins = flat.cpu(), mins.cpu()
        out = {n: flat[i].item() for i, n in enumerate(names_sum)}
        offset = len(names_sum)
        for i, n in enumerate(names_w):
            total, weight = flat[offset + 2 * i].item(), flat[offset + 2 * i + 1].item()
            out[n] = total / weight if weight else 0.0
        for i, n in enumerate(names_x):
            out[n] = mins[i].item() if n.endswith("/min") else -mins[i].item()
        return out
