import math
import statistics

import pytest
import torch
import torch.distributed as dist

from rlloom.ops import (
    entropy_from_logits,
    global_masked_mean,
    global_mean,
    global_sum,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    selective_log_softmax,
)

X = torch.tensor([[1.0, 2.0, 3.0, 50.0], [4.0, 6.0, -7.0, -8.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
KEPT = [1.0, 2.0, 3.0, 4.0, 6.0]  # the masked-in elements of X, by hand


def kept(x, mask):
    return [v for v, m in zip(x.flatten().tolist(), mask.flatten().tolist()) if m]


# --- masked reductions ---------------------------------------------------------------------


def test_masked_sum_and_mean():
    assert masked_sum(X, MASK).item() == sum(KEPT)  # 16
    assert masked_mean(X, MASK).item() == pytest.approx(16 / 5)
    # Per row: (1 + 2 + 3)/3 = 2 and (4 + 6)/2 = 5.
    assert masked_sum(X, MASK, dim=1).tolist() == [6.0, 10.0]
    assert masked_mean(X, MASK, dim=1).tolist() == [2.0, 5.0]
    # Per column: (1 + 4)/2, (2 + 6)/2, 3/1, and an empty column → 0.
    assert masked_mean(X, MASK, dim=0).tolist() == [2.5, 4.0, 3.0, 0.0]


def test_masked_mean_empty_and_bool_mask():
    assert masked_mean(X, torch.zeros_like(MASK)).item() == 0.0
    assert masked_mean(X, MASK.bool()).item() == pytest.approx(16 / 5)


def test_masked_var_matches_statistics():
    assert masked_var(X, MASK).item() == pytest.approx(statistics.variance(KEPT))
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(statistics.pvariance(KEPT))


def test_masked_var_random_against_loop():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    mask = (torch.rand(5, 7, generator=gen) > 0.4).double()
    values = kept(x, mask)
    assert masked_var(x, mask).item() == pytest.approx(statistics.variance(values), rel=1e-10)
    assert masked_mean(x, mask).item() == pytest.approx(statistics.fmean(values), rel=1e-10)


def test_masked_var_single_element_is_finite():
    mask = torch.zeros_like(MASK)
    mask[0, 0] = 1
    assert masked_var(X, mask).item() == 0.0


def test_masked_whiten_against_loop():
    mean, std = statistics.fmean(KEPT), statistics.stdev(KEPT)
    out = masked_whiten(X, MASK, eps=0.0)
    for i in range(2):
        for j in range(4):
            expected = (X[i, j].item() - mean) / std if MASK[i, j] else 0.0
            assert out[i, j].item() == pytest.approx(expected, abs=1e-6)
    # The whitened masked elements have mean 0 and (unbiased) variance 1.
    assert masked_mean(out, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(out, MASK).item() == pytest.approx(1.0, rel=1e-5)


def test_masked_whiten_padding_zero_and_no_shift():
    out = masked_whiten(X, MASK)
    assert out[MASK == 0].tolist() == [0.0, 0.0, 0.0]
    # shift_mean=False scales the deviations but keeps the mean: (x − μ)/σ + μ on real tokens.
    mean, std = statistics.fmean(KEPT), statistics.stdev(KEPT)
    kept_out = masked_whiten(X, MASK, shift_mean=False, eps=0.0)
    expected = [(v - mean) / std + mean for v in KEPT]
    assert kept(kept_out, MASK) == pytest.approx(expected, abs=1e-6)
    assert kept_out[MASK == 0].tolist() == [0.0, 0.0, 0.0]


# --- log-probs and entropy -----------------------------------------------------------------


def reference_logprobs(logits, index):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 100])
def test_selective_log_softmax_float32(chunk_size):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 5, 11, generator=gen) * 4
    index = torch.randint(0, 11, (7, 5), generator=gen)
    out = selective_log_softmax(logits, index, chunk_size=chunk_size)
    assert out.dtype == torch.float32 and out.shape == (7, 5)
    torch.testing.assert_close(out, reference_logprobs(logits, index))


@pytest.mark.parametrize("chunk_size", [2, 8])
def test_selective_log_softmax_bfloat16_in_float32(chunk_size):
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(5, 4, 300, generator=gen) * 6).bfloat16()
    index = torch.randint(0, 300, (5, 4), generator=gen)
    out = selective_log_softmax(logits, index, chunk_size=chunk_size)
    assert out.dtype == torch.float32
    # Exactly the float32 computation on the upcast logits, not a bfloat16 log-softmax.
    torch.testing.assert_close(out, reference_logprobs(logits, index))
    bf16_softmax = torch.log_softmax(logits, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert not torch.equal(out, bf16_softmax.float())


def test_selective_log_softmax_gradient():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 6, (3, 2), generator=gen)
    selective_log_softmax(logits, index, chunk_size=2).sum().backward()
    # ∂ log softmax(z)_k / ∂z_j = 1[j = k] − softmax(z)_j
    expected = torch.nn.functional.one_hot(index, 6).double() - torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, expected)


def test_selective_log_softmax_empty_batch():
    out = selective_log_softmax(torch.zeros(0, 3, 5), torch.zeros(0, 3, dtype=torch.long))
    assert out.shape == (0, 3) and out.dtype == torch.float32


def entropy_loop(logits):
    B, T, _ = logits.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            z = [math.exp(v) for v in logits[b, t].double().tolist()]
            p = [v / sum(z) for v in z]
            out[b, t] = -sum(pv * math.log(pv) for pv in p if pv > 0)
    return out


@pytest.mark.parametrize("chunk_size", [1, 4, 8])
def test_entropy_against_loop(chunk_size):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(9, 3, 7, generator=gen) * 3
    out = entropy_from_logits(logits, chunk_size=chunk_size)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), entropy_loop(logits), rtol=1e-5, atol=1e-6)


def test_entropy_hand_values():
    # Uniform over 5 tokens: ln 5. A one-hot (others −inf): 0. Two equal tokens and a masked one: ln 2.
    inf = float("-inf")
    logits = torch.tensor([[[0.0] * 5, [3.0, inf, inf, inf, inf], [1.0, 1.0, inf, inf, inf]]])
    out = entropy_from_logits(logits)
    assert out.tolist()[0] == pytest.approx([math.log(5), 0.0, math.log(2)], abs=1e-6)


def test_entropy_bfloat16_and_masked_gradient():
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(2, 3, 50, generator=gen) * 5).bfloat16()
    out = entropy_from_logits(logits)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), entropy_loop(logits.float()), rtol=1e-5, atol=1e-6)
    masked = torch.tensor([[[0.0, float("-inf"), 1.0]]], requires_grad=True)
    entropy_from_logits(masked).sum().backward()
    assert torch.isfinite(masked.grad).all() and masked.grad[0, 0, 1] == 0


# --- global reductions (one process) -------------------------------------------------------


def test_global_reductions_single_process():
    assert not dist.is_initialized()
    assert global_sum(3.5).item() == 3.5
    assert global_sum(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]
    assert global_sum(torch.tensor(2.0)).dtype == torch.float64
    assert global_mean(torch.tensor(4.0)).item() == 4.0
    # Token-weighted: (1 + 2 + 3 + 4 + 6)/5, not a mean of row means.
    assert global_masked_mean(X, MASK).item() == pytest.approx(16 / 5)
    assert global_masked_mean(X, torch.zeros_like(MASK)).item() == 0.0


def test_global_reductions_in_a_one_process_group(tmp_path):
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group already running")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert global_sum(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]
        assert global_mean(5.0).item() == 5.0
        assert global_masked_mean(X, MASK).item() == pytest.approx(16 / 5)
    finally:
        dist.destroy_process_group()
