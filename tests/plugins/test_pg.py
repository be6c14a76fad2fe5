import math

import torch
import torch.nn.functional as F

from rlloom.plugins.pg import PolicyGradient
from rlloom.registry import get_registry
from rlloom.testing import check_component, rollout_batch

D = torch.float64


def test_registered():
    entry = get_registry().get("policy_loss", "pg")
    assert entry.factory is PolicyGradient
    loss = entry.factory()
    check_component("policy_loss", loss)
    assert loss.requires == {"advantages"} and loss.needs_logits is False


def test_values_by_hand():
    # loss = −A·log π per token:
    #   row 0: −2·(−1) = 2, −2·(−2) = 4, padding → 0 (its garbage advantage 7 is ignored)
    #   row 1: −(−1)·(−0.5) = −0.5, −(−1)·(−0.25) = −0.25, −(−1)·(−3) = −3
    logprobs = torch.tensor([[-1.0, -2.0, 0.5], [-0.5, -0.25, -3.0]], dtype=D)
    adv = torch.tensor([[2.0, 2.0, 7.0], [-1.0, -1.0, -1.0]], dtype=D)
    batch = rollout_batch([[1, 1, 0], [1, 1, 1]], advantages=adv)
    out = PolicyGradient()(logprobs, batch)
    expected = torch.tensor([[2.0, 4.0, 0.0], [-0.5, -0.25, -3.0]], dtype=D)
    torch.testing.assert_close(out.loss, expected)
    assert out.mask is batch.mask
    # On-policy: no old log-probs, ratio 1 everywhere, KL 0.
    assert out.metrics["ratio/mean"] == 1.0 and out.metrics["ratio/min"] == 1.0
    assert out.metrics["ratio/max"] == 1.0 and out.metrics["kl/old_approx"] == 0.0


def test_gradient_matches_seed_formula():
    # VinePPO, Kazemnejad et al. 2024, Eq. 2 / REINFORCE, Williams 1992: ∇loss = −Σ_t A_t
    # ∇log π(a_t). For a softmax policy with logits θ, ∇_θ log π(a) = onehot(a) − softmax(θ),
    # so the expected gradient is −A·(onehot(a) − softmax(θ)) on valid tokens and 0 on padding.
    gen = torch.Generator().manual_seed(0)
    B, T, V = 2, 4, 5
    theta = torch.randn(B, T, V, dtype=D, generator=gen, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    adv = torch.randn(B, T, dtype=D, generator=gen)
    logprobs = torch.log_softmax(theta, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    out = PolicyGradient()(logprobs, rollout_batch(mask, advantages=adv))
    (grad,) = torch.autograd.grad(out.loss.sum(), theta)
    expected = -(adv * mask).unsqueeze(-1) * (F.one_hot(tokens, V).to(D) - theta.detach().softmax(-1))
    torch.testing.assert_close(grad, expected)


def test_padding_gets_no_loss_and_no_gradient():
    logprobs = torch.tensor([[-1.0, 50.0, -30.0]], dtype=D, requires_grad=True)
    adv = torch.tensor([[1.0, 1e6, -1e6]], dtype=D)
    out = PolicyGradient()(logprobs, rollout_batch([[1, 0, 0]], advantages=adv))
    out.loss.sum().backward()
    assert out.loss[0, 1:].eq(0).all()
    assert logprobs.grad[0, 1:].eq(0).all()
    assert logprobs.grad[0, 0] == -1.0


def test_metrics_against_old_logprobs():
    # log r = log π − log π_old = [ln 2, −ln 2] on the valid tokens, padding ignored:
    # ratio/mean = (2 + 0.5)/2 = 1.25, min 0.5, max 2;
    # kl/old_approx = mean(r − 1 − ln r) = ((1 − ln 2) + (−0.5 + ln 2))/2 = 0.25.
    old = torch.tensor([[-1.0, -1.0, -1.0]], dtype=D)
    logprobs = old + torch.tensor([[math.log(2), -math.log(2), 5.0]], dtype=D)
    batch = rollout_batch([[1, 1, 0]], advantages=torch.ones(1, 3, dtype=D), old_logprobs=old)
    m = PolicyGradient()(logprobs, batch).metrics
    assert math.isclose(m["ratio/mean"], 1.25)
    assert math.isclose(m["ratio/min"], 0.5) and math.isclose(m["ratio/max"], 2.0)
    assert math.isclose(m["kl/old_approx"], 0.25)
