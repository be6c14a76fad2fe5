import math

import pytest
import torch
import torch.nn.functional as F

from rlloom.plugins.cispo import CISPO
from rlloom.plugins.pg import PolicyGradient
from rlloom.plugins.ppo import PPOClip
from rlloom.registry import get_registry
from rlloom.testing import check_component, rollout_batch

D = torch.float64


def isclose(metric, value):
    """A metric (a float32 or float64 scalar) equals the hand value to float32 precision."""
    return math.isclose(float(metric), value, rel_tol=1e-6, abs_tol=1e-9)


def test_registered_and_defaults():
    assert get_registry().get("policy_loss", "cispo").factory is CISPO
    loss = CISPO()
    check_component("policy_loss", loss)
    # MiniMax-M1: no lower bound on the IS weight (ε_low = 1 → bound 0), ε_high tuned.
    assert (loss.eps_low, loss.eps_high) == (1.0, 0.28)


@pytest.mark.parametrize("kwargs", [{"eps_low": 0.0}, {"eps_high": 0.0}, {"eps_high": -0.5}])
def test_bad_params(kwargs):
    with pytest.raises(ValueError):
        CISPO(**kwargs)


def test_values_and_gradients_by_hand():
    # log π = [−0.5, −2, −1, −0.25], ratios r = [2, 0.5, 1.1, 0.1], A = [1, −1, 2, −1].
    # Weight w = clip(r, 1 − ε_low, 1 + ε_high), detached; loss = −w·A·log π; d/d log π = −w·A.
    # Defaults ε_low = 1, ε_high = 0.28 → w = [1.28, 0.5, 1.1, 0.1] (no lower bound):
    #   loss = [−1.28·1·(−0.5), −0.5·(−1)·(−2), −1.1·2·(−1), −0.1·(−1)·(−0.25)]
    #        = [0.64, −1, 2.2, −0.025];  grad = [−1.28, 0.5, −2.2, 0.1]
    # ε_low = 0.2 → w = [1.28, 0.8, 1.1, 0.8]:
    #   loss = [0.64, −1.6, 2.2, −0.2];  grad = [−1.28, 0.8, −2.2, 0.8]
    ratios = torch.tensor([[2.0, 0.5, 1.1, 0.1]], dtype=D)
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0]], dtype=D)
    lp_values = torch.tensor([[-0.5, -2.0, -1.0, -0.25]], dtype=D)
    cases = [
        (CISPO(), [0.64, -1.0, 2.2, -0.025], [-1.28, 0.5, -2.2, 0.1]),
        (CISPO(eps_low=0.2), [0.64, -1.6, 2.2, -0.2], [-1.28, 0.8, -2.2, 0.8]),
    ]
    for loss_fn, expected_loss, expected_grad in cases:
        logprobs = lp_values.clone().requires_grad_()
        batch = rollout_batch([[1, 1, 1, 1]], advantages=adv, old_logprobs=lp_values - ratios.log())
        out = loss_fn(logprobs, batch)
        torch.testing.assert_close(out.loss[0], torch.tensor(expected_loss, dtype=D))
        out.loss.sum().backward()
        torch.testing.assert_close(logprobs.grad[0], torch.tensor(expected_grad, dtype=D))


def test_gradient_is_clipped_weight_times_policy_gradient():
    # ∇loss = −clip(r)·A·∇log π. Softmax policy with logits θ: ∇_θ log π(a) = onehot(a) − softmax(θ).
    gen = torch.Generator().manual_seed(0)
    B, T, V = 3, 4, 6
    eps_low, eps_high = 0.2, 0.28
    theta = torch.randn(B, T, V, dtype=D, generator=gen, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    adv = torch.randn(B, T, dtype=D, generator=gen)
    logprobs = torch.log_softmax(theta, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    old = logprobs.detach() + 0.8 * torch.randn(B, T, dtype=D, generator=gen)
    out = CISPO(eps_low, eps_high)(logprobs, rollout_batch(mask, advantages=adv, old_logprobs=old))
    (grad,) = torch.autograd.grad(out.loss.sum(), theta)
    weight = torch.zeros(B, T, dtype=D)
    for i in range(B):
        for t in range(T):
            r = math.exp(float(logprobs[i, t].detach() - old[i, t]))
            weight[i, t] = min(max(r, 1 - eps_low), 1 + eps_high)
    coeff = -weight * adv * mask
    expected = coeff.unsqueeze(-1) * (F.one_hot(tokens, V).to(D) - theta.detach().softmax(-1))
    torch.testing.assert_close(grad, expected)
    assert 0 < float(out.metrics["clip/frac"]) < 1


def test_clipped_tokens_keep_their_gradient():
    # r = 2, A = +1: PPO's clip zeroes the token's gradient, CISPO keeps −1.28·A.
    old = torch.tensor([[-1.0]], dtype=D)
    batch = rollout_batch([[1]], advantages=torch.ones(1, 1, dtype=D), old_logprobs=old)
    grads = []
    for loss_fn in (PPOClip(eps=0.2, eps_high=0.28), CISPO()):
        logprobs = (old + math.log(2.0)).requires_grad_()
        loss_fn(logprobs, batch).loss.sum().backward()
        grads.append(float(logprobs.grad))
    assert grads == [0.0, pytest.approx(-1.28)]


def test_on_policy_equals_policy_gradient():
    gen = torch.Generator().manual_seed(1)
    logprobs = (-torch.rand(2, 3, dtype=D, generator=gen)).requires_grad_()
    batch = rollout_batch([[1, 1, 1], [1, 1, 0]], advantages=torch.randn(2, 3, dtype=D, generator=gen))
    out = CISPO()(logprobs, batch)
    torch.testing.assert_close(out.loss, PolicyGradient()(logprobs, batch).loss)


def test_clip_fractions_whatever_the_advantage_sign():
    # ε_low = ε_high = 0.2, ratios [1.5, 1.5, 0.5, 0.5, 1.0], A = [+1, −1, +1, −1, 0]:
    # the weight is clipped high on tokens 1–2 (2/5) and low on tokens 3–4 (2/5), either 4/5.
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.0]], dtype=D)
    logprobs = torch.full((1, 5), -1.0, dtype=D)
    batch = rollout_batch(
        [[1] * 5],
        advantages=torch.tensor([[1.0, -1.0, 1.0, -1.0, 0.0]], dtype=D),
        old_logprobs=logprobs - ratios.log(),
    )
    m = CISPO(eps_low=0.2, eps_high=0.2)(logprobs, batch).metrics
    assert isclose(m["clip/high_frac"], 0.4) and isclose(m["clip/low_frac"], 0.4)
    assert isclose(m["clip/frac"], 0.8)
    assert isclose(m["ratio/mean"], 1.0) and isclose(m["ratio/min"], 0.5) and isclose(m["ratio/max"], 1.5)
    # Default ε_low = 1: no lower clip at all.
    assert CISPO()(logprobs, batch).metrics["clip/low_frac"] == 0.0


def test_padding_gets_no_loss_and_no_gradient():
    logprobs = torch.tensor([[-1.0, 30.0, -30.0]], dtype=D, requires_grad=True)
    old = torch.tensor([[-1.0, -30.0, 30.0]], dtype=D)
    adv = torch.tensor([[1.0, 1e6, -1e6]], dtype=D)
    out = CISPO()(logprobs, rollout_batch([[1, 0, 0]], advantages=adv, old_logprobs=old))
    out.loss.sum().backward()
    assert out.loss[0, 1:].eq(0).all() and logprobs.grad[0, 1:].eq(0).all()
    assert out.loss[0, 0] == 1.0 and logprobs.grad[0, 0] == -1.0
