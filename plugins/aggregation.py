"""Loss aggregations: a per-token loss [B,T] and its mask → this microbatch's share of the step loss.

An optimizer step may span several microbatches and processes. Every aggregation below is a
sum over this microbatch's rows divided by a count of the whole step taken from
``AggregationScope`` (``total_tokens``, ``total_sequences``, ``max_len``), so the shares of
all microbatches and processes add up to the aggregate of the one big batch, and
1 process × 4 microbatches gives the same gradient as 2 processes × 2 microbatches.

The four variants differ in how tokens of sequences of different lengths are weighted:

- ``token_mean``: every token alike (DAPO, Yu et al. 2025, Eq. 8/10).
- ``seq_mean_token_mean``: every sequence alike, tokens averaged within it (GRPO, Shao et al. 2024).
- ``seq_mean_token_sum``: every sequence alike, tokens summed within it.
- ``seq_mean_token_sum_norm``: token sums divided by a constant length (Dr.GRPO), averaged over
  sequences unless ``divide_by_sequences: false``.

Masked positions never contribute, and a row whose mask is all zero contributes 0 (no NaN).
A count of 0 in the scope (nothing to train on) gives a share of 0.
"""
from __future__ import annotations

from torch import Tensor

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.kinds import AggregationScope


def _share(total: Tensor, count: float | Tensor) -> Tensor:
    """``total / count`` in ``total``'s dtype, or a zero that keeps the graph when ``count`` is 0."""
    count = float(count)
    return total / count if count > 0 else total * 0.0


class TokenMean:
    """Σ_i Σ_t loss·mask / (tokens in the step): every token weighs the same (DAPO).

    DAPO, Yu et al. 2025, Eq. 8/10: the token-level weighting 1/Σ_{i=1}^G |o_i| so that long
    completions are not down-weighted per token. ``loss``, ``mask`` [B,T] → scalar, divided by
    ``scope.total_tokens`` (the mask's sum over the whole optimizer step).
    """

    def __call__(self, loss: Tensor, mask: Tensor, scope: AggregationScope) -> Tensor:
        return _share((loss * mask).sum(), scope.total_tokens)


class SeqMeanTokenMean:
    """Σ_i [Σ_t loss·mask / |o_i|] / (sequences in the step): mean over tokens, then sequences (GRPO).

    The GRPO objective (Shao et al. 2024, DeepSeekMath), (1/G) Σ_i (1/|o_i|) Σ_t (...): each
    sequence weighs the same, so a token of a short sequence weighs more than one of a long one.
    ``loss``, ``mask`` [B,T] → scalar, divided by ``scope.total_sequences``; |o_i| = Σ_t mask.
    """

    def __call__(self, loss: Tensor, mask: Tensor, scope: AggregationScope) -> Tensor:
        per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return _share(per_seq.sum(), scope.total_sequences)


class SeqMeanTokenSum:
    """Σ_i Σ_t loss·mask / (sequences in the step): token sums averaged over sequences.

    The per-sequence log-likelihood form (the SFT loss −E_y[Σ_t log π(y_t | x, y_<t)], a sum
    over t inside the expectation over sequences). ``loss``, ``mask`` [B,T] → scalar, divided by
    ``scope.total_sequences``.
    """

    def __call__(self, loss: Tensor, mask: Tensor, scope: AggregationScope) -> Tensor:
        return _share((loss * mask).sum(), scope.total_sequences)


class SeqMeanTokenSumNorm:
    """Σ_i Σ_t loss·mask / (sequences in the step · L): token sums over a constant length (Dr.GRPO).

    Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr.GRPO): GRPO's 1/|o_i| is replaced
    by a constant 1/L, removing the length bias while keeping (1/G)Σ_i. L is ``max_len`` when
    given, else ``scope.max_len`` (the generation budget). ``loss``, ``mask`` [B,T] → scalar.
    ``divide_by_sequences: false`` drops the (1/G)Σ_i mean: Σ_i Σ_t loss·mask / L.

    Peer conventions: ``true`` (default) is TRL's ``loss_type="dr_grpo"`` (sum / (B ·
    max_completion_length)) and verl's current ``seq-mean-token-sum-norm``; ``false`` is the
    formula of verl's ``agg_loss`` before Dec 2025 (sum / L per microbatch, which verl then
    averaged over gradient-accumulation steps, so its step loss was that over their count).
    """

    def __init__(self, max_len: int | None = None, divide_by_sequences: bool = True):
        if max_len is not None and not max_len > 0:
            raise ParameterError(f"max_len must be a positive token count or null, got {max_len}")
        self.max_len = max_len
        self.divide_by_sequences = bool(divide_by_sequences)

    def __call__(self, loss: Tensor, mask: Tensor, scope: AggregationScope) -> Tensor:
        length = self.max_len if self.max_len is not None else scope.max_len
        if not length > 0:
            raise ValueError(f"seq_mean_token_sum_norm needs a positive max_len, got {length}")
        sequences = float(scope.total_sequences) if self.divide_by_sequences else 1.0
        return _share((loss * mask).sum(), sequences * length)


@hookimpl
def rlloom_aggregation():
    return {
        "token_mean": TokenMean,
        "seq_mean_token_mean": SeqMeanTokenMean,
        "seq_mean_token_sum": SeqMeanTokenSum,
        "seq_mean_token_sum_norm": SeqMeanTokenSumNorm,
    }
