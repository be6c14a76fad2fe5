import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from omegaconf import OmegaConf

from rlloom.algos.trust_region import conjugate_gradient, flat, set_flat
from rlloom.metrics import MetricAccumulator
from rlloom.plugins.pg import PolicyGradient
from rlloom.plugins.trpo import NaturalGradient, TRPOSurrogate
from rlloom.registry import get_registry
from rlloom.testing import check_component, rollout_batch
from rlloom.update import LossShare, StepClosure

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


# ------------------------------------------------------------------ the natural-gradient update


class SoftmaxPolicy(torch.nn.Module):
    """π(a|s) = softmax(θ_s)_a: a policy small enough to form its Fisher matrix exactly."""

    def __init__(self, states=3, actions=4):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(states, actions, dtype=D, generator=torch.Generator().manual_seed(0)))

    def logprobs(self, s, a):
        return self.logits[s].log_softmax(-1).gather(1, a[:, None]).squeeze(1)


@dataclasses.dataclass
class Rows:
    s: torch.Tensor
    a: torch.Tensor
    adv: torch.Tensor
    old: torch.Tensor

    def select(self, idx):
        idx = torch.as_tensor(idx)
        return Rows(self.s[idx], self.a[idx], self.adv[idx], self.old[idx])

    def __len__(self):
        return len(self.s)


def _closure(policy, rows, micro_batch_size):
    """A StepClosure over the softmax policy: loss = −mean r·A (TRPO surrogate), kl_old = mean k3."""
    rt = type("Rt", (), {})()
    rt.cfg = OmegaConf.create({"trainer": {"micro_batch_size": micro_batch_size, "max_grad_norm": 1e9}})
    rt.accelerator, rt.model, rt.world = Accelerator(cpu=True), policy, 1
    rt.optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)

    def loss_fn(mb, scope, idx):
        log_r = policy.logprobs(mb.s, mb.a) - mb.old
        total = -(log_r.exp() * mb.adv).sum() / scope.total_tokens
        kl = (torch.expm1(log_r) - log_r).sum() / scope.total_tokens
        return LossShare(total, {"loss/total": total}, {}, float(len(mb)), kl)

    return StepClosure(rt, rows, torch.ones(len(rows), 1), 1, loss_fn, MetricAccumulator())


def _rows(policy, n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(3, (n,), generator=g)
    with torch.no_grad():
        a = torch.multinomial(policy.logits[s].softmax(-1), 1, generator=g).squeeze(1)
        old = policy.logprobs(s, a)
    return Rows(s, a, torch.randn(n, dtype=D, generator=g), old)


def _empirical_fisher(policy, rows):
    # Hessian of mean_i k3(log π(a_i|s_i) − log π_old) at θ = θ_old: with r = π/π_old,
    # ∇²(r − 1 − log r) = r ∇log π ∇log πᵀ + (r − 1)∇² log π, and r = 1 there, so
    # F = (1/N) Σ_i ∇log π_i ∇log π_iᵀ, the empirical Fisher matrix, formed row by row.
    scores = []
    for i in range(len(rows)):
        (grad,) = torch.autograd.grad(policy.logprobs(rows.s[i : i + 1], rows.a[i : i + 1]).sum(), policy.logits)
        scores.append(grad.reshape(-1))
    scores = torch.stack(scores)
    return scores.T @ scores / len(rows)


@pytest.mark.parametrize("micro_batch_size", [12, 5])
def test_fisher_vector_product_is_the_empirical_fisher_times_v(micro_batch_size):
    policy = SoftmaxPolicy()
    rows = _rows(policy)
    closure = _closure(policy, rows, micro_batch_size)
    v = torch.randn(12, dtype=D, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(closure.fisher_vector_product(v), _empirical_fisher(policy, rows) @ v, rtol=1e-10, atol=1e-12)


def test_conjugate_gradient_solves_the_damped_fisher_system():
    policy = SoftmaxPolicy()
    rows = _rows(policy)
    closure = _closure(policy, rows, 5)
    damping = 0.1
    fisher = _empirical_fisher(policy, rows) + damping * torch.eye(12, dtype=D)
    g = torch.randn(12, dtype=D, generator=torch.Generator().manual_seed(4))
    x, residual = conjugate_gradient(lambda v: closure.fisher_vector_product(v) + damping * v, g, iterations=50)
    torch.testing.assert_close(x, torch.linalg.solve(fisher, g), rtol=1e-6, atol=1e-6)
    assert residual < 1e-6


def test_an_accepted_step_stays_inside_the_trust_region():
    policy = SoftmaxPolicy()
    rows = _rows(policy, n=40)
    closure = _closure(policy, rows, 16)
    theta_old = flat(policy.parameters(), list(policy.parameters()))
    rule = NaturalGradient(max_kl=0.02, cg_iters=12)
    metrics = rule.step(closure)
    assert metrics["trpo/accepted"] == 1.0
    # the KL after the step, recomputed here: mean over rows of r − 1 − log r
    with torch.no_grad():
        log_r = policy.logprobs(rows.s, rows.a) - rows.old
        kl = (torch.expm1(log_r) - log_r).mean().item()
        gain = (log_r.exp() * rows.adv).mean().item() - rows.adv.mean().item()
    assert kl <= 0.02 and kl == pytest.approx(metrics["trpo/kl"], rel=1e-9)
    assert gain > 0 and gain == pytest.approx(metrics["trpo/actual_improve"], rel=1e-9)
    assert not torch.equal(flat(policy.parameters(), list(policy.parameters())), theta_old)


class QuadraticClosure:
    """A stand-in closure on θ ∈ R²: F = I, gradient of the loss −e₁, KL(θ) = ½|Δθ|² + c|Δθ|³
    (c > 0 makes the quadratic model underestimate the KL), loss(θ) given."""

    def __init__(self, loss, cubic):
        self.theta = torch.zeros(2, dtype=D, requires_grad=True)
        self.params, self.loss, self.cubic = [self.theta], loss, cubic
        self.optimizer = torch.optim.SGD(self.params, lr=0.0)

    def accumulate_gradient(self):
        self.theta.grad = torch.tensor([-1.0, 0.0], dtype=D)

    def gradient(self):
        return self.theta.grad.clone()

    def step_loss(self):
        return self.evaluate()[0]

    def fisher_vector_product(self, v):
        return v.clone()

    def evaluate(self):
        d = self.theta.detach().norm().item()
        return self.loss(self.theta.detach()), 0.5 * d**2 + self.cubic * d**3


def test_a_step_past_the_bound_is_shrunk():
    # Full step: s = F⁻¹g = e₁ (no damping), Δθ = √(2δ)·e₁ = 0.2·e₁ for δ = 0.02, whose KL is
    # 0.02 + 5·0.008 = 0.06 > δ; half of it: 0.005 + 5·0.001 = 0.01 ≤ δ, accepted after 1 backtrack.
    closure = QuadraticClosure(loss=lambda t: -t[0].item(), cubic=5.0)
    metrics = NaturalGradient(max_kl=0.02, damping=0.0, cg_iters=2).step(closure)
    assert metrics["trpo/accepted"] == 1.0 and metrics["trpo/backtracks"] == 1.0
    torch.testing.assert_close(closure.theta.detach(), torch.tensor([0.1, 0.0], dtype=D))
    assert metrics["trpo/kl"] == pytest.approx(0.01)
    assert metrics["trpo/expected_improve"] == pytest.approx(0.1) == metrics["trpo/actual_improve"]


def test_a_step_that_worsens_the_loss_everywhere_is_rejected():
    closure = QuadraticClosure(loss=lambda t: t.norm().item(), cubic=0.0)
    metrics = NaturalGradient(max_kl=0.02, damping=0.0, cg_iters=2, max_backtracks=4).step(closure)
    assert metrics["trpo/accepted"] == 0.0 and metrics["trpo/backtracks"] == 4.0
    assert torch.equal(closure.theta.detach(), torch.zeros(2, dtype=D))  # θ_old kept


def test_natural_gradient_is_registered_and_refuses_bad_parameters():
    registry = get_registry()
    assert registry.get("update", "natural_gradient").factory is NaturalGradient
    declared = check_component("update", NaturalGradient())
    assert declared.old_policy == "logits" and not declared.trains_critic
    for bad in ({"max_kl": 0}, {"damping": -1}, {"backtrack_factor": 1.0}, {"cg_iters": 0}):
        with pytest.raises(ValueError):
            NaturalGradient(**bad)


def test_flat_and_set_flat_round_trip():
    params = [torch.zeros(2, 3), torch.zeros(4)]
    vector = torch.arange(10, dtype=D)
    set_flat(params, vector)
    assert torch.equal(flat(params, params), vector)
