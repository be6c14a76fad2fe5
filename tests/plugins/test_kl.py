import math

import pytest
import torch

from rlloom.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller
from rlloom.plugins.kl import K1, K2, K3, ExactKL
from rlloom.registry import get_registry

LN2 = math.log(2.0)

# A small categorical pair for the expectation tests (4 outcomes).
PI = [0.1, 0.2, 0.3, 0.4]
PI_REF = [0.4, 0.3, 0.2, 0.1]


def kl_loop(p, q):
    """KL(p ‖ q) = Σ_v p_v log(p_v / q_v), a plain loop."""
    return sum(pv * math.log(pv / qv) for pv, qv in zip(p, q))


def sample_estimates(estimator, sample_from, n=200_000, seed=0):
    """Per-sample estimates of ``estimator`` at n tokens drawn from ``sample_from``."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.multinomial(torch.tensor(sample_from), n, replacement=True, generator=gen)
    logp = torch.tensor(PI, dtype=torch.float64).log()[tokens]
    ref = torch.tensor(PI_REF, dtype=torch.float64).log()[tokens]
    return estimator(logp.unsqueeze(0), ref.unsqueeze(0)).squeeze(0)


def assert_mean_close(values, target):
    """|mean − target| ≤ 3σ/√n."""
    tol = 3 * values.std().item() / math.sqrt(values.numel())
    assert abs(values.mean().item() - target) <= tol, (values.mean().item(), target, tol)


# --- registry and parameters -------------------------------------------------------------


@pytest.mark.parametrize("name,factory", [("k1", K1), ("k2", K2), ("k3", K3), ("exact", ExactKL)])
def test_registered(name, factory):
    assert get_registry().get("kl", name).factory is factory


def test_needs_logits():
    assert (K1.needs_logits, K2.needs_logits, K3.needs_logits, ExactKL.needs_logits) == (
        False,
        False,
        False,
        True,
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: K1(clamp=0.0),
        lambda: K2(clamp=-1.0),
        lambda: K3(direction="forward"),
        lambda: K3(clamp=0.0),
        lambda: K3(clamp_output=-10.0),
    ],
)
def test_bad_parameters(make):
    with pytest.raises(ValueError):
        make()


# --- hand values ---------------------------------------------------------------------------


def hand_pair():
    # π_θ(o) = 1/2, π_ref(o) = 1/4: log-ratio log π_θ − log π_ref = ln 2.
    return torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])


def test_k1_hand():
    logp, ref = hand_pair()
    assert K1()(logp, ref).item() == pytest.approx(LN2, rel=1e-6)


def test_k2_hand():
    logp, ref = hand_pair()
    # ½ (ln 2)² = 0.240227...
    assert K2()(logp, ref).item() == pytest.approx(0.5 * LN2**2, rel=1e-6)


def test_k3_ref_over_policy_hand():
    logp, ref = hand_pair()
    # r = π_ref/π_θ = 1/2: r − ln r − 1 = 1/2 + ln 2 − 1 = ln 2 − 1/2 = 0.193147...
    assert K3()(logp, ref).item() == pytest.approx(LN2 - 0.5, rel=1e-6)


def test_k3_policy_over_ref_hand():
    logp, ref = hand_pair()
    # r = π_θ/π_ref = 2: r − ln r − 1 = 2 − ln 2 − 1 = 1 − ln 2 = 0.306852...
    assert K3(direction="policy_over_ref")(logp, ref).item() == pytest.approx(1 - LN2, rel=1e-6)


@pytest.mark.parametrize("estimator", [K1(), K2(), K3(), K3(direction="policy_over_ref")])
def test_padding_is_zero(estimator):
    # Padding carries log-prob 0 in both tensors: the log-ratio is 0 and every estimator gives 0.
    logp = torch.tensor([[-0.3, 0.0, 0.0]])
    ref = torch.tensor([[-0.9, 0.0, 0.0]])
    out = estimator(logp, ref)
    assert out.shape == (1, 3)
    assert out[0, 1:].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("estimator", [K1(), K2(), K3()])
def test_float32_output_from_bfloat16(estimator):
    logp = torch.tensor([[-0.3, -2.0]], dtype=torch.bfloat16)
    ref = torch.tensor([[-0.9, -1.0]], dtype=torch.bfloat16)
    out = estimator(logp, ref)
    assert out.dtype == torch.float32
    expected = estimator(logp.float(), ref.float())
    torch.testing.assert_close(out, expected)


# --- clamping ------------------------------------------------------------------------------


def test_input_clamp():
    # Log-ratios 5 and −5 clamp to ±1.
    logp = torch.tensor([[0.0, -5.0]])
    ref = torch.tensor([[-5.0, 0.0]])
    assert K1(clamp=1.0)(logp, ref).tolist() == [[1.0, -1.0]]
    assert K2(clamp=1.0)(logp, ref).tolist() == [[0.5, 0.5]]
    # ref_over_policy: log r = −(log-ratio) ∈ {−1, 1} after clamping:
    # e^{−1} + 1 − 1 = e^{−1}, and e − 1 − 1 = e − 2.
    torch.testing.assert_close(K3(clamp=1.0)(logp, ref), torch.tensor([[math.exp(-1), math.e - 2]]))


def test_output_clamp():
    # ref_over_policy with log π_θ = −20, log π_ref = 0: log r = 20, k3 = e^20 − 21 ≈ 4.85e8 → 10.
    logp = torch.tensor([[-20.0, math.log(0.5)]])
    ref = torch.tensor([[0.0, math.log(0.25)]])
    out = K3(clamp_output=10.0)(logp, ref)
    assert out[0, 0].item() == 10.0
    assert out[0, 1].item() == pytest.approx(LN2 - 0.5, rel=1e-6)  # below the clamp: unchanged
    assert K3()(logp, ref)[0, 0].item() == pytest.approx(math.exp(20) - 21, rel=1e-5)


# --- expectations under sampling -----------------------------------------------------------


def test_k1_unbiased_under_policy_samples():
    assert_mean_close(sample_estimates(K1(), PI), kl_loop(PI, PI_REF))


def test_k3_unbiased_under_policy_samples():
    # r = π_ref/π_θ with o ∼ π_θ: E[r] = Σ_o π_ref(o) = 1, so E[k3] = E[−log r] = KL(π_θ ‖ π_ref).
    assert_mean_close(sample_estimates(K3(), PI), kl_loop(PI, PI_REF))


def test_k3_policy_over_ref_unbiased_under_reference_samples():
    # r = π_θ/π_ref with o ∼ π_ref: E[r] = 1, so E[k3] = E_ref[log π_ref/π_θ] = KL(π_ref ‖ π_θ).
    # Under o ∼ π_θ the same k3 would estimate E_π_θ[π_θ/π_ref] − 1 − KL(π_θ ‖ π_ref) instead.
    assert_mean_close(sample_estimates(K3(direction="policy_over_ref"), PI_REF), kl_loop(PI_REF, PI))


def test_k2_biased():
    values = sample_estimates(K2(), PI)
    assert (values >= 0).all()
    # E_π[½ log²(π/π_ref)] by enumeration = 0.5216, while KL(π ‖ π_ref) = 0.4564.
    expected_k2 = sum(p * 0.5 * math.log(p / q) ** 2 for p, q in zip(PI, PI_REF))
    kl = kl_loop(PI, PI_REF)
    assert_mean_close(values, expected_k2)
    assert abs(values.mean().item() - kl) > 10 * values.std().item() / math.sqrt(values.numel())


@pytest.mark.parametrize("direction", K3.DIRECTIONS)
def test_k3_nonnegative(direction):
    # k3 = e^{log r} − log r − 1 ≥ 0 because eˣ ≥ 1 + x.
    gen = torch.Generator().manual_seed(1)
    for scale in (1e-6, 1e-2, 1.0, 10.0):
        logp = torch.randn(64, 64, generator=gen) * scale
        ref = torch.randn(64, 64, generator=gen) * scale
        assert (K3(direction=direction)(logp, ref) >= 0).all()


# --- gradients (float64) -------------------------------------------------------------------


def grad_wrt_logprobs(estimator, logp, ref):
    logp = logp.clone().requires_grad_(True)
    estimator(logp, ref).sum().backward()
    return logp.grad


def test_gradients_match_formulas():
    gen = torch.Generator().manual_seed(2)
    logp = torch.randn(3, 5, dtype=torch.float64, generator=gen) - 2
    ref = torch.randn(3, 5, dtype=torch.float64, generator=gen) - 2
    x = logp - ref
    # ∂k1/∂log π = 1; ∂k2/∂log π = log π − log π_ref;
    # k3 (ref_over_policy) = e^{−x} + x − 1 → 1 − e^{−x} = 1 − π_ref/π;
    # k3 (policy_over_ref) = e^{x} − x − 1 → e^{x} − 1 = π/π_ref − 1.
    # Both k3 gradients agree with k2's (x) to first order in x.
    torch.testing.assert_close(grad_wrt_logprobs(K1(), logp, ref), torch.ones_like(x))
    torch.testing.assert_close(grad_wrt_logprobs(K2(), logp, ref), x)
    torch.testing.assert_close(grad_wrt_logprobs(K3(), logp, ref), 1 - torch.exp(-x))
    torch.testing.assert_close(
        grad_wrt_logprobs(K3(direction="policy_over_ref"), logp, ref), torch.exp(x) - 1
    )


def expected_loss_gradient(estimator, theta, ref_logp):
    """Σ_a π(a)·∇_θ k(a): the on-policy expected gradient of the estimator used as a loss
    (the sampling distribution is not differentiated)."""
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    per_token = estimator(logp.unsqueeze(0), ref_logp.unsqueeze(0)).squeeze(0)
    (logp.exp().detach() * per_token).sum().backward()
    return theta.grad


def test_expected_loss_gradients():
    theta = torch.tensor(PI, dtype=torch.float64).log()
    ref_logp = torch.tensor(PI_REF, dtype=torch.float64).log()

    def kl_grad(forward: bool):
        """∇_θ KL(π_ref ‖ π) when ``forward``, else ∇_θ KL(π ‖ π_ref), by autograd of the sum."""
        t = theta.clone().requires_grad_(True)
        logp = torch.log_softmax(t, -1)
        if forward:
            kl = (ref_logp.exp() * (ref_logp - logp)).sum()
        else:
            kl = (logp.exp() * (logp - ref_logp)).sum()
        kl.backward()
        return t.grad

    # k1: E_π[∇log π] = 0.
    torch.testing.assert_close(expected_loss_gradient(K1(), theta, ref_logp), torch.zeros(4, dtype=torch.float64))
    # k2: ∇ KL(π ‖ π_ref).
    torch.testing.assert_close(expected_loss_gradient(K2(), theta, ref_logp), kl_grad(forward=False))
    # k3 ref_over_policy: ∇k3 = (1 − π_ref/π)·∇log π, and E_π[∇log π] = 0, so the expectation
    # is −Σ_o π_ref(o)∇log π(o) = ∇ KL(π_ref ‖ π), the forward KL's gradient.
    torch.testing.assert_close(expected_loss_gradient(K3(), theta, ref_logp), kl_grad(forward=True))


# --- exact KL ------------------------------------------------------------------------------


def exact_loop(logits, ref_logits):
    B, T, V = logits.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            zs = [math.exp(v) for v in logits[b, t].double().tolist()]
            zr = [math.exp(v) for v in ref_logits[b, t].double().tolist()]
            p = [z / sum(zs) for z in zs]
            q = [z / sum(zr) for z in zr]
            out[b, t] = kl_loop(p, q)
    return out


def test_exact_matches_loop_across_chunks():
    gen = torch.Generator().manual_seed(3)
    # B = 11 rows: more than one chunk of 8.
    logits = torch.randn(11, 3, 6, generator=gen) * 2
    ref_logits = torch.randn(11, 3, 6, generator=gen) * 2
    out = ExactKL()(torch.zeros(11, 3), torch.zeros(11, 3), logits, ref_logits)
    assert out.dtype == torch.float32 and out.shape == (11, 3)
    torch.testing.assert_close(out.double(), exact_loop(logits, ref_logits), rtol=1e-5, atol=1e-6)


def test_exact_bfloat16_is_float32():
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(2, 3, 7, generator=gen) * 3).bfloat16()
    ref_logits = (torch.randn(2, 3, 7, generator=gen) * 3).bfloat16()
    out = ExactKL()(torch.zeros(2, 3), torch.zeros(2, 3), logits, ref_logits)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact_loop(logits.float(), ref_logits.float()), rtol=1e-5, atol=1e-6)


def test_exact_identical_is_zero_and_masked_tokens_are_finite():
    logits = torch.tensor([[[0.0, 1.0, float("-inf")]]], requires_grad=True)
    out = ExactKL()(torch.zeros(1, 1), torch.zeros(1, 1), logits, logits.detach())
    assert out.item() == pytest.approx(0.0, abs=1e-7)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_exact_gradcheck():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 2, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    ref_logits = torch.randn(2, 2, 4, dtype=torch.float64, generator=gen)
    zeros = torch.zeros(2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda lg: ExactKL()(zeros, zeros, lg, ref_logits), (logits,))


def test_exact_needs_logits():
    with pytest.raises(ValueError, match="logits"):
        ExactKL()(torch.zeros(1, 1), torch.zeros(1, 1))


# --- coefficient controllers ---------------------------------------------------------------


def test_fixed_controller():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=1000)
    assert ctl.coef == 0.05


def test_adaptive_controller_by_hand():
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    # KL 9: e = clip(9/6 − 1 = 0.5, ±0.2) = 0.2; β = 0.1·(1 + 0.2·256/10000) = 0.100512.
    ctl.update(current_kl=9.0, n_steps=256)
    assert ctl.coef == pytest.approx(0.100512, rel=1e-12)
    # KL 5.4: e = 5.4/6 − 1 = −0.1 (inside the clip); β = 0.100512·(1 − 0.1·100/10000) = 0.100411488.
    ctl.update(current_kl=5.4, n_steps=100)
    assert ctl.coef == pytest.approx(0.100411488, rel=1e-12)
    # KL 0: e = clip(−1) = −0.2; β = 0.100411488·(1 − 0.2·10000/10000) = 0.0803291904.
    ctl.update(current_kl=0.0, n_steps=10000)
    assert ctl.coef == pytest.approx(0.0803291904, rel=1e-12)


def test_controller_state_round_trip():
    ctl = AdaptiveKLController(0.1, 6.0, 10)
    ctl.update(9.0, 5)
    other = AdaptiveKLController(0.1, 6.0, 10)
    other.load_state_dict(ctl.state_dict())
    assert other.coef == ctl.coef


def test_make_kl_controller():
    fixed = make_kl_controller(0.2, None, 10000)
    assert isinstance(fixed, FixedKLController) and fixed.coef == 0.2
    adaptive = make_kl_controller(0.2, 6.0, 500)
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.coef, adaptive.target, adaptive.horizon) == (0.2, 6.0, 500)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FixedKLController(-0.1),
        lambda: AdaptiveKLController(0.1, 0.0, 100),
        lambda: AdaptiveKLController(0.1, 6.0, 0),
        lambda: AdaptiveKLController(-0.1, 6.0, 100),
    ],
)
def test_controller_bad_parameters(make):
    with pytest.raises(ValueError):
        make()
