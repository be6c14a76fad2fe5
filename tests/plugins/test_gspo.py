import math

import pytest
import torch

from rlloom.plugins.gspo import GSPO
from rlloom.registry import get_registry
from rlloom.testing import check_component, rollout_batch

D = torch.float64


def isclose(metric, value):
    """A metric (a float32 or float64 scalar) equals the hand value to float32 precision."""
    return math.isclose(float(metric), value, rel_tol=1e-6, abs_tol=1e-9)


def seq_mean_token_mean(loss, mask):
    """(1/B) Σ_i (1/|y_i|) Σ_t loss_{i,t}: the GSPO paper's averaging."""
    mask = mask.to(loss.dtype)
    return ((loss * mask).sum(1) / mask.sum(1)).mean()


def sequence_objective_loss(logprobs, old, adv, mask, eps_low, eps_high):
    """−J_GSPO = −(1/B) Σ_i min(s_i A_i, clip(s_i) A_i), written sequence by sequence."""
    total = 0.0
    for i in range(logprobs.shape[0]):
        valid = mask[i].bool()
        n = int(valid.sum())
        s = torch.exp((logprobs[i][valid] - old[i][valid]).sum() / n)
        a = adv[i][valid].sum() / n
        total = total + torch.minimum(s * a, s.clamp(1 - eps_low, 1 + eps_high) * a)
    return -total / logprobs.shape[0]


def test_registered_and_defaults():
    entry = get_registry().get("policy_loss", "gspo")
    assert entry.factory is GSPO
    loss = GSPO()
    check_component("policy_loss", loss)
    # Zheng et al. 2025: left and right clipping ranges 3e-4 and 4e-4.
    assert (loss.eps_low, loss.eps_high) == (3e-4, 4e-4)


@pytest.mark.parametrize("kwargs", [{"eps_low": 0.0}, {"eps_high": -1e-4}])
def test_bad_params(kwargs):
    with pytest.raises(ValueError):
        GSPO(**kwargs)


def test_values_gradients_and_metrics_by_hand():
    # Default range [1 − 3e-4, 1 + 4e-4] = [0.9997, 1.0004]. s_i = exp(mean of valid log-ratios).
    #   seq 0: log r = [0.001, −0.0006], mean 0.0002, s = e^0.0002 ≈ 1.0002 (inside), A = 1
    #          → loss −s on both tokens; d loss/d log π_t = −s·A = −e^0.0002
    #   seq 1: log r = [0.002, 0, 0.001], mean 0.001, s = e^0.001 ≈ 1.0010 > 1.0004, A = 2
    #          → min(2s, 2·1.0004) = 2.0008 → loss −2.0008, clipped high, grad 0
    #   seq 2: log r = [−0.0015, −0.0005], mean −0.001, s = e^−0.001 ≈ 0.9990 < 0.9997, A = −1
    #          → min(−s, −0.9997) = −0.9997 → loss 0.9997, clipped low, grad 0
    #   seq 3: log r = [0, 0.002], mean 0.001, s = e^0.001; A = mean(−0.5, −1.5) = −1
    #          → min(−s, −1.0004) = −s → loss e^0.001, unclipped, grad −s·A = e^0.001
    # Padding (column 2 of rows 0, 2, 3) holds garbage that must not enter the means.
    log_r = torch.tensor(
        [[0.001, -0.0006, 5.0], [0.002, 0.0, 0.001], [-0.0015, -0.0005, -5.0], [0.0, 0.002, 3.0]],
        dtype=D,
    )
    adv = torch.tensor([[1.0, 1.0, 9.0], [2.0, 2.0, 2.0], [-1.0, -1.0, 9.0], [-0.5, -1.5, 9.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]])
    old = torch.full((4, 3), -2.0, dtype=D)
    logprobs = (old + log_r).requires_grad_()
    out = GSPO()(logprobs, rollout_batch(mask, advantages=adv, old_logprobs=old))
    s0, s1, s2, s3 = math.exp(0.0002), math.exp(0.001), math.exp(-0.001), math.exp(0.001)
    expected = torch.tensor(
        [[-s0, -s0, 0.0], [-2.0008, -2.0008, -2.0008], [0.9997, 0.9997, 0.0], [s3, s3, 0.0]], dtype=D
    )
    torch.testing.assert_close(out.loss, expected)
    out.loss.sum().backward()
    expected_grad = torch.tensor(
        [[-s0, -s0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [s3, s3, 0.0]], dtype=D
    )
    torch.testing.assert_close(logprobs.grad, expected_grad)
    # 9 valid tokens: 3 (seq 1) clipped high, 2 (seq 2) clipped low.
    m = out.metrics
    assert isclose(m["clip/high_frac"], 3 / 9) and isclose(m["clip/low_frac"], 2 / 9)
    assert isclose(m["clip/frac"], 5 / 9)
    assert isclose(m["ratio/mean"], (2 * s0 + 3 * s1 + 2 * s2 + 2 * s3) / 9)
    assert isclose(m["ratio/min"], s2) and isclose(m["ratio/max"], s1)
    token_log_r = [0.001, -0.0006, 0.002, 0.0, 0.001, -0.0015, -0.0005, 0.0, 0.002]
    kl = sum(math.exp(x) - 1 - x for x in token_log_r) / 9
    assert math.isclose(float(m["kl/old_approx"]), kl, rel_tol=1e-9)


def test_gradient_equals_sequence_level_objective():
    # Averaged per sequence, the token form has the value and the gradient of −J_GSPO: every
    # token's s_{i,t} has value s_i and gradient s_i ∇log π_t, and since
    # s_i = exp((1/|y_i|) Σ_t (log π_t − log π_old,t)), ∇s_i = s_i (1/|y_i|) Σ_t ∇log π_t, so
    # (1/|y_i|) Σ_t s_i ∇log π_t = ∇s_i; the clip indicator is the same on every token of a
    # sequence. Sequences are offset so that some are clipped.
    gen = torch.Generator().manual_seed(0)
    B, T = 6, 5
    eps_low, eps_high = 0.1, 0.15
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1] * 5, [1, 1, 0, 0, 0], [1] * 5])
    old = -torch.rand(B, T, dtype=D, generator=gen) * 3
    offsets = torch.tensor([0.3, -0.3, 0.05, -0.05, 0.4, -0.4], dtype=D).unsqueeze(1)
    logprobs = (old + offsets + 0.02 * torch.randn(B, T, dtype=D, generator=gen)).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, -2.0, 1.5], dtype=D).unsqueeze(1).expand(B, T) * mask
    batch = rollout_batch(mask, advantages=adv, old_logprobs=old)
    out = GSPO(eps_low=eps_low, eps_high=eps_high)(logprobs, batch)
    assert 0 < float(out.metrics["clip/frac"]) < 1
    token_form = seq_mean_token_mean(out.loss, mask)
    sequence_form = sequence_objective_loss(logprobs, old, adv, mask, eps_low, eps_high)
    torch.testing.assert_close(token_form, sequence_form)
    (g_token,) = torch.autograd.grad(token_form, logprobs)
    (g_seq,) = torch.autograd.grad(sequence_form, logprobs)
    torch.testing.assert_close(g_token, g_seq)
    assert g_token.abs().sum() > 0


def test_on_policy_is_sequence_averaged_policy_gradient():
    # Without old log-probs s_i = 1: loss −A_i per token, gradient −A_i per token.
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]], dtype=D, requires_grad=True)
    adv = torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = GSPO()(logprobs, rollout_batch(mask, advantages=adv))
    expected = torch.tensor([[-2.0, -2.0, -2.0], [1.0, 1.0, 0.0]], dtype=D)
    torch.testing.assert_close(out.loss, expected)
    out.loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, expected)
    assert out.metrics["clip/frac"] == 0.0


def test_padding_gets_no_loss_and_no_gradient():
    logprobs = torch.tensor([[-1.0, 30.0, -30.0]], dtype=D, requires_grad=True)
    old = torch.tensor([[-1.0, -30.0, 30.0]], dtype=D)
    adv = torch.tensor([[1.0, 1e6, -1e6]], dtype=D)
    out = GSPO()(logprobs, rollout_batch([[1, 0, 0]], advantages=adv, old_logprobs=old))
    out.loss.sum().backward()
    assert out.loss[0, 1:].eq(0).all() and logprobs.grad[0, 1:].eq(0).all()
    # The sequence ratio comes from the valid token only: log r = 0 → s = 1, loss −A = −1.
    assert out.loss[0, 0] == -1.0 and out.metrics["ratio/max"] == 1.0
