import pytest
import torch

from rlloom.plugins.gae import GAEAdvantage
from rlloom.plugins.reinforce import ReinforceBaselineAdvantage
from rlloom.registry import get_registry
from rlloom.testing import rollout_batch

F64 = torch.float64


def make_batch(rewards, mask, values, token_rewards=None):
    f64 = lambda x: None if x is None else torch.as_tensor(x, dtype=F64)  # noqa: E731
    return rollout_batch(mask, rewards=f64(rewards), values=f64(values), token_rewards=f64(token_rewards))


def random_batch(seed, b=6, t=7):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(t)[None, :] < torch.randint(1, t + 1, (b, 1), generator=g)).long()
    return make_batch(
        torch.randn(b, generator=g, dtype=F64),
        mask,
        torch.randn(b, t, generator=g, dtype=F64),  # nonzero on padding on purpose
        token_rewards=0.1 * torch.randn(b, t, generator=g, dtype=F64),
    )


def loop_gae(batch, gamma, lam):
    """Â_t = Σ_l (γλ)^l δ_{t+l} as an explicit double sum over Python floats, row by row."""
    out = []
    for i in range(len(batch)):
        n = int(batch.mask[i].sum())
        r = [float(batch.token_rewards[i, t]) for t in range(n)]
        r[-1] += float(batch.rewards[i])
        v = [float(batch.values[i, t]) for t in range(n)] + [0.0]
        delta = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        adv = [sum((gamma * lam) ** l * delta[t + l] for l in range(n - t)) for t in range(n)]
        out.append(adv + [0.0] * (batch.mask.shape[1] - n))
    return torch.tensor(out, dtype=F64)


def test_by_hand():
    # V = [0.5, 0.8], R = 1 on the last token, γ = 0.9, λ = 0.5:
    # δ_1 = 1 + 0.9·0 − 0.8 = 0.2, δ_0 = 0 + 0.9·0.8 − 0.5 = 0.22
    # Â_1 = 0.2, Â_0 = 0.22 + 0.45·0.2 = 0.31; returns = Â + V = [0.81, 1.0]
    out = GAEAdvantage(gamma=0.9, lam=0.5)(make_batch([1.0], [[1, 1, 0]], [[0.5, 0.8, 3.0]]))
    torch.testing.assert_close(out.advantages, torch.tensor([[0.31, 0.2, 0.0]], dtype=F64))
    torch.testing.assert_close(out.returns, torch.tensor([[0.81, 1.0, 0.0]], dtype=F64))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 0.0), (0.7, 1.0)])
def test_matches_plain_loop(gamma, lam):
    batch = random_batch(0)
    out = GAEAdvantage(gamma=gamma, lam=lam)(batch)
    expected = loop_gae(batch, gamma, lam)
    torch.testing.assert_close(out.advantages, expected)
    torch.testing.assert_close(out.returns, (expected + batch.values) * batch.mask)


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_lambda_one_is_reinforce_with_baseline(gamma):
    batch = random_batch(1)
    gae = GAEAdvantage(gamma=gamma, lam=1.0)(batch)
    rb = ReinforceBaselineAdvantage(gamma=gamma)(batch)
    torch.testing.assert_close(gae.advantages, rb.advantages)
    torch.testing.assert_close(gae.returns, rb.returns)


def test_whiten():
    batch = random_batch(2)
    plain = GAEAdvantage(gamma=0.9, lam=0.9)(batch)
    white = GAEAdvantage(gamma=0.9, lam=0.9, whiten=True)(batch)
    valid = batch.mask.bool()
    a = plain.advantages[valid]
    torch.testing.assert_close(white.advantages[valid], (a - a.mean()) / a.std(), atol=1e-6, rtol=1e-6)
    assert (white.advantages[~valid] == 0).all()
    torch.testing.assert_close(white.returns, plain.returns)


def test_clip_and_padding():
    # by hand (test_by_hand) advantages [0.31, 0.2] → clip 0.25 → [0.25, 0.2]
    out = GAEAdvantage(gamma=0.9, lam=0.5, clip=0.25)(make_batch([1.0], [[1, 1, 0]], [[0.5, 0.8, 3.0]]))
    torch.testing.assert_close(out.advantages, torch.tensor([[0.25, 0.2, 0.0]], dtype=F64))
    torch.testing.assert_close(out.returns, torch.tensor([[0.81, 1.0, 0.0]], dtype=F64))


def test_needs_values():
    batch = make_batch([1.0], [[1]], [[0.0]])
    batch.values = None
    with pytest.raises(ValueError, match="batch.values"):
        GAEAdvantage()(batch)


def test_registered():
    assert get_registry().get("advantage", "gae").factory is GAEAdvantage


@pytest.mark.parametrize("kwargs", [{"lam": 1.1}, {"lam": -0.5}, {"gamma": 2.0}, {"clip": -1.0}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        GAEAdvantage(**kwargs)
