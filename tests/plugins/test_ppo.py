import math

import pytest
import torch

from rlloom.errors import ConfigError
from rlloom.plugins.pg import PolicyGradient
from rlloom.plugins.ppo import ClippedMSEValueLoss, MSEValueLoss, PPOClip
from rlloom.registry import get_registry
from rlloom.testing import check_component, rollout_batch

D = torch.float64


def isclose(metric, value):
    """A metric (a float32 or float64 scalar) equals the hand value to float32 precision."""
    return math.isclose(float(metric), value, rel_tol=1e-6, abs_tol=1e-9)


def ratio_inputs(ratios, old=-1.5):
    """Leaf log-probs whose ratio to ``old`` is ``ratios``: log π = log π_old + ln r."""
    old_lp = torch.full((1, len(ratios)), old, dtype=D)
    logprobs = (old_lp + torch.tensor([ratios], dtype=D).log()).requires_grad_()
    return logprobs, old_lp


def loss_and_grad(loss_fn, ratios, advs, mask=None):
    logprobs, old = ratio_inputs(ratios)
    mask = [[1] * len(ratios)] if mask is None else mask
    batch = rollout_batch(mask, advantages=torch.tensor([advs], dtype=D), old_logprobs=old)
    out = loss_fn(logprobs, batch)
    out.loss.sum().backward()
    return out, logprobs.grad[0]


# --- registry and parameters -------------------------------------------------------------


def test_registered_once():
    reg = get_registry()
    assert reg.get("policy_loss", "ppo_clip").factory is PPOClip
    assert [e.name for e in reg.entries("policy_loss") if e.factory is PPOClip] == ["ppo_clip"]
    assert reg.get("value_loss", "mse").factory is MSEValueLoss
    assert reg.get("value_loss", "clipped_mse").factory is ClippedMSEValueLoss
    check_component("policy_loss", PPOClip())
    check_component("value_loss", MSEValueLoss())
    check_component("value_loss", ClippedMSEValueLoss())
    assert PPOClip.requires == {"advantages"}
    assert ClippedMSEValueLoss.requires == {"returns", "old_values"}


def test_eps_defaults_and_overrides():
    loss = PPOClip()
    assert (loss.eps_low, loss.eps_high, loss.dual_clip) == (0.2, 0.2, None)
    loss = PPOClip(eps=0.1, eps_high=0.28)
    assert (loss.eps_low, loss.eps_high) == (0.1, 0.28)
    built = get_registry().build("policy_loss", {"name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28})
    assert (built.eps_low, built.eps_high) == (0.2, 0.28)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": 0.0},
        {"eps": -0.1},
        {"eps_low": 0.0},
        {"eps_high": -0.2},
        {"dual_clip": 1.0},
        {"dual_clip": 0.5},
    ],
)
def test_bad_policy_params(kwargs):
    with pytest.raises(ValueError):
        PPOClip(**kwargs)


def test_bad_params_through_registry():
    with pytest.raises(ConfigError, match="dual_clip"):
        get_registry().build("policy_loss", {"name": "ppo_clip", "dual_clip": 1.0})


def test_bad_value_params():
    with pytest.raises(ValueError):
        ClippedMSEValueLoss(eps=0.0)


# --- policy loss ---------------------------------------------------------------------------


def test_on_policy_equals_policy_gradient():
    # Without old log-probs r = exp(log π − sg[log π]) = 1, so the loss value is −r·A = −A and
    # its gradient −A·∇log π, the gradient of pg's −A·log π.
    gen = torch.Generator().manual_seed(0)
    logprobs = (-torch.rand(3, 5, dtype=D, generator=gen) * 3).requires_grad_()
    adv = torch.randn(3, 5, dtype=D, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    batch = rollout_batch(mask, advantages=adv)
    out = PPOClip()(logprobs, batch)
    torch.testing.assert_close(out.loss, -adv * mask)
    (g_ppo,) = torch.autograd.grad(out.loss.sum(), logprobs)
    (g_pg,) = torch.autograd.grad(PolicyGradient()(logprobs, batch).loss.sum(), logprobs)
    torch.testing.assert_close(g_ppo, g_pg)
    assert out.metrics["clip/frac"] == 0.0 and out.metrics["kl/old_approx"] == 0.0


def test_clip_values_by_hand():
    # ε = 0.2, clip range [0.8, 1.2]; loss = −min(rA, clip(r)A); d loss / d log π = −rA on the
    # unclipped branch (∂r/∂log π = r), 0 on the clipped one.
    #   r=1.5, A=+1: min(1.5, 1.2) = 1.2 → loss −1.2, upper clip binds, grad 0
    #   r=0.5, A=−1: min(−0.5, −0.8) = −0.8 → loss 0.8, lower clip binds, grad 0
    #   r=0.5, A=+1: min(0.5, 0.8) = 0.5 → loss −0.5, grad −0.5
    #   r=1.5, A=−1: min(−1.5, −1.2) = −1.5 → loss 1.5, grad 1.5
    #   r=1.1, A=+2: inside the range, loss −2.2, grad −2.2
    out, grad = loss_and_grad(PPOClip(eps=0.2), [1.5, 0.5, 0.5, 1.5, 1.1], [1.0, -1.0, 1.0, -1.0, 2.0])
    torch.testing.assert_close(out.loss[0], torch.tensor([-1.2, 0.8, -0.5, 1.5, -2.2], dtype=D))
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, -0.5, 1.5, -2.2], dtype=D))
    # One token of five on each side: low 1/5, high 1/5, either 2/5.
    m = out.metrics
    assert isclose(m["clip/low_frac"], 0.2) and isclose(m["clip/high_frac"], 0.2)
    assert isclose(m["clip/frac"], 0.4)
    # ratio/mean = (1.5 + 0.5 + 0.5 + 1.5 + 1.1)/5 = 1.02, min 0.5, max 1.5.
    assert isclose(m["ratio/mean"], 1.02) and isclose(m["ratio/min"], 0.5)
    assert isclose(m["ratio/max"], 1.5)
    kl = sum(r - 1 - math.log(r) for r in [1.5, 0.5, 0.5, 1.5, 1.1]) / 5
    assert isclose(m["kl/old_approx"], kl)
    assert "clip/dual_frac" not in m


def test_decoupled_clip_by_hand():
    # ε_low = 0.2, ε_high = 0.28 (DAPO Eq. (10)): range [0.8, 1.28].
    #   r=1.25, A=+1: inside (a symmetric 0.2 would clip it at 1.2) → loss −1.25, grad −1.25
    #   r=1.5,  A=+1: min(1.5, 1.28) → loss −1.28, grad 0
    #   r=0.7,  A=−1: min(−0.7, −0.8) = −0.8 → loss 0.8, grad 0
    #   r=0.85, A=−1: inside → loss 0.85, grad 0.85
    loss = PPOClip(eps=0.2, eps_high=0.28)
    out, grad = loss_and_grad(loss, [1.25, 1.5, 0.7, 0.85], [1.0, 1.0, -1.0, -1.0])
    torch.testing.assert_close(out.loss[0], torch.tensor([-1.25, -1.28, 0.8, 0.85], dtype=D))
    torch.testing.assert_close(grad, torch.tensor([-1.25, 0.0, 0.0, 0.85], dtype=D))
    assert isclose(out.metrics["clip/low_frac"], 0.25)
    assert isclose(out.metrics["clip/high_frac"], 0.25)


def test_dual_clip_by_hand():
    # c = 3, ε = 0.2. For A < 0: loss = min(−min(rA, clip(r)A), −cA), i.e. the objective
    # max(min(rA, clip(r)A), cA) (Ye et al. 2020): with A < 0 and r > c the constant −cA wins.
    #   r=5, A=−1: −min(−5, −1.2) = 5, min(5, 3) = 3 → loss 3, grad 0 (dual bound binds)
    #   r=2, A=−1: −min(−2, −1.2) = 2, min(2, 3) = 2 → loss 2, grad −rA = 2
    #   r=4, A=−2: −min(−8, −2.4) = 8, min(8, 6) = 6 → loss 6, grad 0
    #   r=5, A=+1: A > 0, untouched: −min(5, 1.2) = −1.2, grad 0
    #   r=0.5, A=−1: lower clip: 0.8, below −cA = 3, grad 0
    out, grad = loss_and_grad(
        PPOClip(eps=0.2, dual_clip=3.0), [5.0, 2.0, 4.0, 5.0, 0.5], [-1.0, -1.0, -2.0, 1.0, -1.0]
    )
    torch.testing.assert_close(out.loss[0], torch.tensor([3.0, 2.0, 6.0, -1.2, 0.8], dtype=D))
    torch.testing.assert_close(grad, torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0], dtype=D))
    # dual bound binds on tokens 1 and 3 of 5; upper clip on token 4, lower on token 5.
    m = out.metrics
    assert isclose(m["clip/dual_frac"], 0.4)
    assert isclose(m["clip/high_frac"], 0.2) and isclose(m["clip/low_frac"], 0.2)
    # Without dual clip the same tokens give the unbounded 5 and 8.
    out, _ = loss_and_grad(PPOClip(eps=0.2), [5.0, 4.0], [-1.0, -2.0])
    torch.testing.assert_close(out.loss[0], torch.tensor([5.0, 8.0], dtype=D))


def test_clip_fractions_ignore_padding():
    # Token 2 is padding with a ratio far outside the range; only 2 valid tokens count:
    # token 0 (r=1.5, A=+1) clipped high → high 1/2, low 0, either 1/2.
    out, grad = loss_and_grad(PPOClip(), [1.5, 1.0, 3.0], [1.0, 1.0, 1.0], mask=[[1, 1, 0]])
    assert isclose(out.metrics["clip/high_frac"], 0.5)
    assert out.metrics["clip/low_frac"] == 0.0 and isclose(out.metrics["clip/frac"], 0.5)
    assert isclose(out.metrics["ratio/max"], 1.5)


def test_padding_gets_no_loss_and_no_gradient():
    logprobs = torch.tensor([[-1.0, 40.0, -40.0]], dtype=D, requires_grad=True)
    old = torch.tensor([[-1.2, -60.0, 30.0]], dtype=D)
    adv = torch.tensor([[1.0, -1e6, 1e6]], dtype=D)
    batch = rollout_batch([[1, 0, 0]], advantages=adv, old_logprobs=old)
    out = PPOClip(dual_clip=3.0)(logprobs, batch)
    out.loss.sum().backward()
    assert out.loss[0, 1:].eq(0).all() and logprobs.grad[0, 1:].eq(0).all()
    assert torch.isfinite(logprobs.grad).all()


def test_gradcheck_off_the_kinks():
    # Ratios drawn away from the clip boundaries; gradcheck compares autograd with finite
    # differences in float64.
    gen = torch.Generator().manual_seed(1)
    old = -torch.rand(2, 6, dtype=D, generator=gen) * 2
    ratios = torch.tensor([[0.5, 0.9, 1.1, 1.5, 2.5, 0.7], [1.3, 0.6, 1.05, 4.0, 0.95, 1.6]], dtype=D)
    logprobs = (old + ratios.log()).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 2.0, -0.5, -1.5, 0.3], [-1.0, 1.0, -2.0, -1.0, 0.5, 1.0]], dtype=D)
    batch = rollout_batch(torch.tensor([[1] * 6, [1, 1, 1, 1, 1, 0]]), advantages=adv, old_logprobs=old)
    loss = PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    assert torch.autograd.gradcheck(lambda lp: loss(lp, batch).loss, (logprobs,))


# --- value losses --------------------------------------------------------------------------


def test_mse_values_and_gradient():
    # ½(V − G)²: V = [1, 3, 0.5], G = [2, 2, 0.5] → [0.5, 0.5, 0]; padding → 0.
    # Gradient of ½(V − G)²: ∂/∂V = V − G = [−1, 1, 0], padding 0.
    values = torch.tensor([[1.0, 3.0, 0.5, 9.0]], dtype=D, requires_grad=True)
    returns = torch.tensor([[2.0, 2.0, 0.5, -9.0]], dtype=D)
    batch = rollout_batch([[1, 1, 1, 0]], returns=returns)
    out = MSEValueLoss()(values, batch)
    torch.testing.assert_close(out.loss[0], torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=D))
    out.loss.sum().backward()
    torch.testing.assert_close(values.grad[0], torch.tensor([-1.0, 1.0, 0.0, 0.0], dtype=D))
    # value/mean = (1 + 3 + 0.5)/3 = 1.5; value/error = (1 + 1 + 0)/3 = 2/3.
    assert isclose(out.metrics["value/mean"], 1.5)
    assert isclose(out.metrics["value/error"], 2 / 3)


def test_mse_gradient_through_a_value_head():
    # Value-loss gradient: ∇_φ L = Σ (V_φ − V_target) ∇_φ V_φ. With a linear head
    # V = x·w, ∇_w V = x, so ∇_w L = Σ_{valid} (V − G) x.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, dtype=D, generator=gen)
    w = torch.randn(4, dtype=D, generator=gen, requires_grad=True)
    returns = torch.randn(2, 3, dtype=D, generator=gen)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    values = x @ w
    out = MSEValueLoss()(values, rollout_batch(mask, returns=returns))
    (grad,) = torch.autograd.grad(out.loss.sum(), w)
    expected = (((values.detach() - returns) * mask).unsqueeze(-1) * x).sum((0, 1))
    torch.testing.assert_close(grad, expected)


def test_clipped_mse_by_hand():
    # ε = 0.2, V_old = 1, G = 2 for every token; clip(V) = clamp(V, 0.8, 1.2).
    #   V=1.5: (V−G)² = 0.25, (1.2−2)² = 0.64 → ½·0.64 = 0.32; clipped term larger, grad 0
    #   V=0.5: (V−G)² = 2.25, (0.8−2)² = 1.44 → ½·2.25 = 1.125; grad V−G = −1.5
    #   V=1.1: inside, both 0.81 → 0.405; grad V−G = −0.9
    #   V=0.9: inside, both 1.21 → 0.605; grad −1.1
    values = torch.tensor([[1.5, 0.5, 1.1, 0.9, 7.0]], dtype=D, requires_grad=True)
    batch = rollout_batch(
        [[1, 1, 1, 1, 0]],
        returns=torch.full((1, 5), 2.0, dtype=D),
        old_values=torch.ones(1, 5, dtype=D),
    )
    out = ClippedMSEValueLoss(eps=0.2)(values, batch)
    torch.testing.assert_close(out.loss[0], torch.tensor([0.32, 1.125, 0.405, 0.605, 0.0], dtype=D))
    out.loss.sum().backward()
    torch.testing.assert_close(values.grad[0], torch.tensor([0.0, -1.5, -0.9, -1.1, 0.0], dtype=D))
    # clipped term strictly larger on 1 token of 4.
    assert isclose(out.metrics["value/clip_frac"], 0.25)
    # value/mean = (1.5 + 0.5 + 1.1 + 0.9)/4 = 1; value/error = (0.5 + 1.5 + 0.9 + 1.1)/4 = 1.
    assert isclose(out.metrics["value/mean"], 1.0)
    assert isclose(out.metrics["value/error"], 1.0)


def test_clipped_mse_equals_mse_inside_the_range():
    gen = torch.Generator().manual_seed(3)
    old = torch.randn(2, 4, dtype=D, generator=gen)
    values = old + 0.1 * (2 * torch.rand(2, 4, dtype=D, generator=gen) - 1)  # |V − V_old| < 0.2
    batch = rollout_batch(
        torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
        returns=torch.randn(2, 4, dtype=D, generator=gen),
        old_values=old,
    )
    clipped = ClippedMSEValueLoss(0.2)(values, batch).loss
    torch.testing.assert_close(clipped, MSEValueLoss()(values, batch).loss)
