import pytest
import torch

from rlloom.plugins.gae import GAEAdvantage
from rlloom.plugins.reinforce import ReinforceBaselineAdvantage
from rlloom.plugins.vineppo import KStepAdvantage, VinePPOAdvantage
from rlloom.registry import get_registry
from rlloom.testing import rollout_batch

F64 = torch.float64


def make_batch(rewards, mask, values, step_ends=None, token_rewards=None):
    f64 = lambda x: None if x is None else torch.as_tensor(x, dtype=F64)  # noqa: E731
    return rollout_batch(
        mask, rewards=f64(rewards), values=f64(values), token_rewards=f64(token_rewards), step_ends=step_ends
    )


def random_batch(seed, b=6, t=7):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(t)[None, :] < torch.randint(1, t + 1, (b, 1), generator=g)).long()
    return make_batch(
        torch.randn(b, generator=g, dtype=F64),
        mask,
        torch.randn(b, t, generator=g, dtype=F64),
        token_rewards=0.1 * torch.randn(b, t, generator=g, dtype=F64),
    )


def two_step_batch():
    # row 0: steps {0,1} and {2,3} (step_ends marks both); V̂(s_0) = 0.4, V̂(s_1) = 0.7; R = 1
    # row 1: steps {0} and {1,2} (the last real token ends the last step unmarked);
    #        V̂(s_0) = 0.5, V̂(s_1) = 0.2; R = 0. Padding values (9.0) must be ignored.
    return make_batch(
        [1.0, 0.0],
        [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]],
        [[0.4, 0.4, 0.7, 0.7, 9.0], [0.5, 0.2, 0.2, 9.0, 9.0]],
        step_ends=[[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]],
    )


def test_two_steps_by_hand():
    # γ = 1. row 0: A_0 = 0 + 0.7 − 0.4 = 0.3, A_1 = 1 + 0 − 0.7 = 0.3; targets 0.7, 1.0
    #        row 1: A_0 = 0 + 0.2 − 0.5 = −0.3, A_1 = 0 + 0 − 0.2 = −0.2; targets 0.2, 0.0
    out = VinePPOAdvantage()(two_step_batch())
    expected = torch.tensor([[0.3, 0.3, 0.3, 0.3, 0.0], [-0.3, -0.2, -0.2, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(out.advantages, expected)
    returns = torch.tensor([[0.7, 0.7, 1.0, 1.0, 0.0], [0.2, 0.0, 0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(out.returns, returns)


def test_two_steps_discounted_by_hand():
    # γ = 0.9 discounts per step: row 0 A_0 = 0.9·0.7 − 0.4 = 0.23, A_1 = 1 − 0.7 = 0.3;
    # row 1 A_0 = 0.9·0.2 − 0.5 = −0.32, A_1 = −0.2
    out = VinePPOAdvantage(gamma=0.9)(two_step_batch())
    expected = torch.tensor([[0.23, 0.23, 0.3, 0.3, 0.0], [-0.32, -0.2, -0.2, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(out.advantages, expected)


def test_clip():
    out = VinePPOAdvantage(clip=0.25)(two_step_batch())
    expected = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0], [-0.25, -0.2, -0.2, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(out.advantages, expected)


def test_without_step_ends_every_token_is_a_step():
    # one-token steps: A_t = r_t + γV(s_{t+1}) − V(s_t) with R on the last token = GAE with λ = 0
    batch = random_batch(3)
    batch.token_rewards = None
    vine = VinePPOAdvantage(gamma=0.9)(batch)
    gae = GAEAdvantage(gamma=0.9, lam=0.0)(batch)
    torch.testing.assert_close(vine.advantages, gae.advantages)
    torch.testing.assert_close(vine.returns, gae.returns)


def test_kstep_by_hand():
    # r = [0.1, 0, 1] (token reward 0.1 at t=0, R = 1 at the last token), V = [0.2, 0.4, 0.6],
    # γ = 0.5, k = 2:  Â_0 = 0.1 + 0.5·0 + 0.25·V_2 − V_0 = 0.1 + 0.15 − 0.2 = 0.05
    #                  Â_1 = 0 + 0.5·1 + 0.25·0 − 0.4 = 0.1;  Â_2 = 1 + 0 − 0.6 = 0.4
    batch = make_batch([1.0], [[1, 1, 1, 0]], [[0.2, 0.4, 0.6, 5.0]], token_rewards=[[0.1, 0, 0, 0]])
    out = KStepAdvantage(k=2, gamma=0.5)(batch)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.05, 0.1, 0.4, 0.0]], dtype=F64))
    torch.testing.assert_close(out.returns, torch.tensor([[0.25, 0.5, 1.0, 0.0]], dtype=F64))


@pytest.mark.parametrize("k,gamma", [(2, 0.9), (3, 1.0), (5, 0.7)])
def test_kstep_matches_plain_loop(k, gamma):
    batch = random_batch(4)
    out = KStepAdvantage(k=k, gamma=gamma)(batch)
    expected = torch.zeros_like(out.advantages)
    for i in range(len(batch)):
        n = int(batch.mask[i].sum())
        r = [float(batch.token_rewards[i, t]) for t in range(n)]
        r[-1] += float(batch.rewards[i])
        v = [float(batch.values[i, t]) for t in range(n)]
        for t in range(n):
            s = sum(gamma**l * r[t + l] for l in range(k) if t + l < n)
            s += gamma**k * v[t + k] if t + k < n else 0.0
            expected[i, t] = s - v[t]
    torch.testing.assert_close(out.advantages, expected)


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_kstep_long_is_reinforce_baseline(gamma):
    batch = random_batch(5, t=7)
    for k in (7, 50):
        ks = KStepAdvantage(k=k, gamma=gamma)(batch)
        rb = ReinforceBaselineAdvantage(gamma=gamma)(batch)
        torch.testing.assert_close(ks.advantages, rb.advantages)
        torch.testing.assert_close(ks.returns, rb.returns)


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_kstep_one_is_gae_lambda_zero(gamma):
    batch = random_batch(6)
    ks = KStepAdvantage(k=1, gamma=gamma)(batch)
    gae = GAEAdvantage(gamma=gamma, lam=0.0)(batch)
    torch.testing.assert_close(ks.advantages, gae.advantages)
    torch.testing.assert_close(ks.returns, gae.returns)


def test_registered():
    registry = get_registry()
    assert registry.get("advantage", "vineppo").factory is VinePPOAdvantage
    assert registry.get("advantage", "kstep").factory is KStepAdvantage


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": 1.5}, {"k": True}, {"gamma": 1.2}, {"clip": 0}])
def test_kstep_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        KStepAdvantage(**kwargs)


@pytest.mark.parametrize("kwargs", [{"gamma": -0.1}, {"clip": -2.0}])
def test_vineppo_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        VinePPOAdvantage(**kwargs)
