import pytest
import torch

from rlloom.kinds import AggregationScope
from rlloom.plugins.aggregation import (
    SeqMeanTokenMean,
    SeqMeanTokenSum,
    SeqMeanTokenSumNorm,
    TokenMean,
)
from rlloom.registry import get_registry

ALL = [
    TokenMean(),
    SeqMeanTokenMean(),
    SeqMeanTokenSum(),
    SeqMeanTokenSumNorm(),
    SeqMeanTokenSumNorm(max_len=7),
    SeqMeanTokenSumNorm(divide_by_sequences=False),
]

# Two rows of lengths 4 and 2; the padding carries a loss of 9 that must never count.
LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
SCOPE = AggregationScope(total_tokens=6, total_sequences=2, max_len=4)


@pytest.mark.parametrize(
    "name,factory",
    [
        ("token_mean", TokenMean),
        ("seq_mean_token_mean", SeqMeanTokenMean),
        ("seq_mean_token_sum", SeqMeanTokenSum),
        ("seq_mean_token_sum_norm", SeqMeanTokenSumNorm),
    ],
)
def test_registered(name, factory):
    assert get_registry().get("aggregation", name).factory is factory


@pytest.mark.parametrize("max_len", [0, -3])
def test_bad_max_len(max_len):
    with pytest.raises(ValueError, match="max_len"):
        SeqMeanTokenSumNorm(max_len=max_len)


def test_token_mean_hand():
    # (1 + 2 + 3 + 4 + 5 + 6) / 6 tokens = 21/6 = 3.5
    assert TokenMean()(LOSS, MASK, SCOPE).item() == pytest.approx(3.5)


def test_seq_mean_token_mean_hand():
    # row means 10/4 = 2.5 and 11/2 = 5.5; (2.5 + 5.5) / 2 sequences = 4.0
    assert SeqMeanTokenMean()(LOSS, MASK, SCOPE).item() == pytest.approx(4.0)


def test_token_mean_and_seq_mean_differ_on_unequal_lengths():
    # 3.5 vs 4.0 above: the short row's tokens weigh 1/4 each under seq_mean_token_mean
    # (1/2 sequence · 1/2 token) but 1/6 under token_mean.
    assert TokenMean()(LOSS, MASK, SCOPE).item() != pytest.approx(SeqMeanTokenMean()(LOSS, MASK, SCOPE).item())


def test_seq_mean_token_sum_hand():
    # row sums 10 and 11; (10 + 11) / 2 sequences = 10.5
    assert SeqMeanTokenSum()(LOSS, MASK, SCOPE).item() == pytest.approx(10.5)


def test_seq_mean_token_sum_norm_hand():
    # 21 / (2 sequences · L = scope.max_len 4) = 2.625; with max_len=7: 21 / 14 = 1.5
    assert SeqMeanTokenSumNorm()(LOSS, MASK, SCOPE).item() == pytest.approx(2.625)
    assert SeqMeanTokenSumNorm(max_len=7)(LOSS, MASK, SCOPE).item() == pytest.approx(1.5)


def test_seq_mean_token_sum_norm_without_sequence_mean_hand():
    # divide_by_sequences=False (verl's agg_loss before Dec 2025): 21 / L = 21/4 = 5.25, i.e. the
    # default's 2.625 times the 2 sequences; with max_len=7: 21/7 = 3.0. TRL's dr_grpo divides
    # by sequences · max_completion_length: 21 / (2·4) = 2.625, the default.
    assert SeqMeanTokenSumNorm(divide_by_sequences=False)(LOSS, MASK, SCOPE).item() == pytest.approx(5.25)
    assert SeqMeanTokenSumNorm(max_len=7, divide_by_sequences=False)(LOSS, MASK, SCOPE).item() == pytest.approx(3.0)
    # The sequence count of the scope no longer matters.
    many = AggregationScope(total_tokens=6, total_sequences=50, max_len=4)
    assert SeqMeanTokenSumNorm(divide_by_sequences=False)(LOSS, MASK, many).item() == pytest.approx(5.25)


@pytest.mark.parametrize("agg", ALL)
def test_empty_row_contributes_zero(agg):
    # Add a row with an all-zero mask (and a non-zero loss): the shares are unchanged.
    loss = torch.cat([LOSS, torch.full((1, 4), 7.0)])
    mask = torch.cat([MASK, torch.zeros(1, 4)])
    out = agg(loss, mask, SCOPE)
    assert torch.isfinite(out)
    assert out.item() == pytest.approx(agg(LOSS, MASK, SCOPE).item())
    # A microbatch made only of empty rows contributes exactly 0.
    assert agg(torch.full((2, 4), 7.0), torch.zeros(2, 4), SCOPE).item() == 0.0


@pytest.mark.parametrize("agg", ALL)
def test_zero_count_scope_gives_zero_with_graph(agg):
    loss = torch.ones(2, 3, requires_grad=True)
    out = agg(loss, torch.zeros(2, 3), AggregationScope(total_tokens=0, total_sequences=0, max_len=3))
    assert out.item() == 0.0
    out.backward()
    assert loss.grad.abs().sum() == 0


@pytest.mark.parametrize("agg", ALL)
def test_bool_mask_and_tensor_counts(agg):
    # Masks may be bool and the engine's global counts are float64 tensors; the share keeps
    # the loss's dtype.
    scope = AggregationScope(torch.tensor(6.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64), 4)
    out = agg(LOSS, MASK.bool(), scope)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(agg(LOSS, MASK, SCOPE).item())


def whole_batch_loop(name, loss, mask, max_len, divide_by_sequences=True):
    """The one-big-batch aggregate by plain loops over rows and tokens (rows counted as sequences)."""
    rows = [[(loss[i, t].item(), mask[i, t].item()) for t in range(loss.shape[1])] for i in range(loss.shape[0])]
    sums = [sum(v * m for v, m in row) for row in rows]
    lens = [sum(m for _, m in row) for row in rows]
    n = len(rows)
    if name == "TokenMean":
        return sum(sums) / sum(lens)
    if name == "SeqMeanTokenMean":
        return sum(s / ln for s, ln in zip(sums, lens) if ln > 0) / n
    if name == "SeqMeanTokenSum":
        return sum(sums) / n
    return sum(sums) / ((n if divide_by_sequences else 1) * max_len)


@pytest.mark.parametrize("agg", ALL)
def test_microbatch_shares_sum_to_whole_batch(agg):
    gen = torch.Generator().manual_seed(0)
    B, T = 8, 6
    loss = torch.randn(B, T, generator=gen)
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 6, 4])
    mask = (torch.arange(T) < lengths.unsqueeze(1)).float()
    scope = AggregationScope(total_tokens=float(mask.sum()), total_sequences=B, max_len=T)

    whole = agg(loss, mask, scope)
    max_len = agg.max_len if getattr(agg, "max_len", None) else T
    by_seq = getattr(agg, "divide_by_sequences", True)
    assert whole.item() == pytest.approx(
        whole_batch_loop(type(agg).__name__, loss, mask, max_len, by_seq), rel=1e-5
    )

    # 4 microbatches of 2 rows, each normalised by the counts of the whole step.
    leaf = loss.clone().requires_grad_(True)
    shares = [agg(lb, mb, scope) for lb, mb in zip(leaf.split(2), mask.split(2))]
    total = torch.stack(shares).sum()
    assert total.item() == pytest.approx(whole.item(), rel=1e-5)

    # Accumulating the shares' gradients gives the whole batch's gradient.
    total.backward()
    leaf_whole = loss.clone().requires_grad_(True)
    agg(leaf_whole, mask, scope).backward()
    torch.testing.assert_close(leaf.grad, leaf_whole.grad)


def test_gradient_weights_by_hand():
    # d/d loss[i,t] of each aggregate on LOSS/MASK (lengths 4 and 2, 6 tokens, 2 sequences):
    #   token_mean:           1/6 on every real token
    #   seq_mean_token_mean:  1/(2·4) = 1/8 on row 0, 1/(2·2) = 1/4 on row 1
    #   seq_mean_token_sum:   1/2 everywhere real
    #   seq_mean_token_sum_norm (L = 4): 1/(2·4) = 1/8 everywhere real
    #   seq_mean_token_sum_norm, divide_by_sequences=False: 1/4 everywhere real
    expected = {
        TokenMean(): MASK / 6,
        SeqMeanTokenMean(): torch.tensor([[1 / 8] * 4, [1 / 4, 1 / 4, 0, 0]]),
        SeqMeanTokenSum(): MASK / 2,
        SeqMeanTokenSumNorm(): MASK / 8,
        SeqMeanTokenSumNorm(divide_by_sequences=False): MASK / 4,
    }
    for agg, grad in expected.items():
        loss = LOSS.clone().requires_grad_(True)
        agg(loss, MASK, SCOPE).backward()
        torch.testing.assert_close(loss.grad, grad)
