import math

import torch
import torch.nn.functional as F

from rlloom.plugins.pg import PolicyGradient
from rlloom.plugins.trpo import TRPOSurrogate
from rlloom.registry import get_registry
from rlloom.testing import check_component, rollout_batch

D = torch.float64


def test_registered():
    entry = get_registry().get("policy_loss", "trpo_surrogate")
    assert entry.factory is TRPOSurrogate
    check_component("policy_loss", entry.factory())
    assert TRPOSurrogate.requires == {"advantages"}


def test_values_gradients_and_metrics_by_hand():
    # TRPO, Schulman et al. 2015: L = (π/π_old)·A; loss = −r·A,
    # d loss/d log π = −r·A (∂r/∂log π = r).
    #   r = [2, 0.5, 1, 4 (padding)], A = [1.5, −2, 3, 1]
    #   loss = [−3, 1, −3, 0], grad = [−3, 1, −3, 0]
    # kl/old_approx = mean over valid tokens of r − 1 − ln r
    #   = ((1 − ln 2) + (−0.5 + ln 2) + 0)/3 = 0.5/3.
    ratios = torch.tensor([[2.0, 0.5, 1.0, 4.0]], dtype=D)
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], dtype=D)
    logprobs = (old + ratios.log()).requires_grad_()
    adv = torch.tensor([[1.5, -2.0, 3.0, 1.0]], dtype=D)
    out = TRPOSurrogate()(logprobs, rollout_batch([[1, 1, 1, 0]], advantages=adv, old_logprobs=old))
    torch.testing.assert_close(out.loss[0], torch.tensor([-3.0, 1.0, -3.0, 0.0], dtype=D))
    out.loss.sum().backward()
    torch.testing.assert_close(logprobs.grad[0], torch.tensor([-3.0, 1.0, -3.0, 0.0], dtype=D))
    m = out.metrics
    assert math.isclose(m["kl/old_approx"], 0.5 / 3)
    assert math.isclose(m["ratio/mean"], 3.5 / 3)
    assert math.isclose(m["ratio/min"], 0.5) and math.isclose(m["ratio/max"], 2.0)


def test_gradient_is_ratio_weighted_policy_gradient():
    # ∇loss = −r·A·∇log π; softmax policy with logits θ: ∇_θ log π(a) = onehot(a) − softmax(θ).
    gen = torch.Generator().manual_seed(0)
    B, T, V = 2, 3, 4
    theta = torch.randn(B, T, V, dtype=D, generator=gen, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.randn(B, T, dtype=D, generator=gen)
    logprobs = torch.log_softmax(theta, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    old = logprobs.detach() + 0.5 * torch.randn(B, T, dtype=D, generator=gen)
    out = TRPOSurrogate()(logprobs, rollout_batch(mask, advantages=adv, old_logprobs=old))
    (grad,) = torch.autograd.grad(out.loss.sum(), theta)
    ratio = [[math.exp(float(logprobs[i, t].detach() - old[i, t])) for t in range(T)] for i in range(B)]
    coeff = -torch.tensor(ratio, dtype=D) * adv * mask
    expected = coeff.unsqueeze(-1) * (F.one_hot(tokens, V).to(D) - theta.detach().softmax(-1))
    torch.testing.assert_close(grad, expected)


def test_on_policy_gradient_equals_policy_gradient():
    gen = torch.Generator().manual_seed(1)
    logprobs = (-torch.rand(2, 3, dtype=D, generator=gen)).requires_grad_()
    batch = rollout_batch([[1, 1, 1], [1, 0, 0]], advantages=torch.randn(2, 3, dtype=D, generator=gen))
    (g_trpo,) = torch.autograd.grad(TRPOSurrogate()(logprobs, batch).loss.sum(), logprobs)
    (g_pg,) = torch.autograd.grad(PolicyGradient()(logprobs, batch).loss.sum(), logprobs)
    torch.testing.assert_close(g_trpo, g_pg)


def test_padding_gets_no_loss_and_no_gradient():
    logprobs = torch.tensor([[-1.0, 30.0, -30.0]], dtype=D, requires_grad=True)
    old = torch.tensor([[-1.0, -30.0, 30.0]], dtype=D)
    adv = torch.tensor([[2.0, 1e6, -1e6]], dtype=D)
    out = TRPOSurrogate()(logprobs, rollout_batch([[1, 0, 0]], advantages=adv, old_logprobs=old))
    out.loss.sum().backward()
    assert out.loss[0, 1:].eq(0).all() and logprobs.grad[0, 1:].eq(0).all()
    assert out.loss[0, 0] == -2.0 and logprobs.grad[0, 0] == -2.0


def test_log_ratio_is_clamped_before_exp():
    # A log-ratio of 200 would overflow exp in float32; it is clamped to 20 first, so the
    # loss is finite (−e^20·A) and the clamped token gets no gradient.
    logprobs = torch.tensor([[100.0]], requires_grad=True)
    old = torch.tensor([[-100.0]])
    out = TRPOSurrogate()(logprobs, rollout_batch([[1]], advantages=torch.ones(1, 1), old_logprobs=old))
    assert torch.isfinite(out.loss).all()
    assert math.isclose(float(out.loss.detach()), -math.exp(20.0), rel_tol=1e-6)
    out.loss.sum().backward()
    assert logprobs.grad[0, 0] == 0.0
