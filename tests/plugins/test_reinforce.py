import statistics

import pytest
import torch

from rlloom.plugins.reinforce import (
    ReinforceAdvantage,
    ReinforceBaselineAdvantage,
    ReinforcePPAdvantage,
)
from rlloom.registry import get_registry
from rlloom.testing import rollout_batch

F64 = torch.float64


def make_batch(rewards, mask, group_ids=None, values=None, token_rewards=None):
    f64 = lambda x: None if x is None else torch.as_tensor(x, dtype=F64)  # noqa: E731
    return rollout_batch(
        mask, group_ids, rewards=f64(rewards), values=f64(values), token_rewards=f64(token_rewards)
    )


def test_return_to_go_by_hand():
    # row 0: token rewards [0.1, 0, 0.2] + R = 1 on the last real token → r = [0.1, 0, 1.2]
    #   (the 5.0 sits on padding and is ignored); γ = 0.5:
    #   G_2 = 1.2, G_1 = 0 + 0.5·1.2 = 0.6, G_0 = 0.1 + 0.5·0.6 = 0.4
    # row 1: one real token, R = 2 → G = [2, 0, 0, 0]
    batch = make_batch(
        [1.0, 2.0],
        [[1, 1, 1, 0], [1, 0, 0, 0]],
        token_rewards=[[0.1, 0.0, 0.2, 5.0], [0.0, 0.0, 0.0, 0.0]],
    )
    out = ReinforceAdvantage(gamma=0.5)(batch)
    expected = torch.tensor([[0.4, 0.6, 1.2, 0.0], [2.0, 0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(out.advantages, expected)
    torch.testing.assert_close(out.returns, expected)


def test_undiscounted_sequence_reward_reaches_every_token():
    batch = make_batch([3.0, -1.0], [[1, 1, 1], [1, 1, 0]])
    out = ReinforceAdvantage()(batch)
    torch.testing.assert_close(out.advantages, torch.tensor([[3.0, 3.0, 3.0], [-1.0, -1.0, 0.0]], dtype=F64))


def test_baseline_by_hand():
    # r = [0, 1] (R = 1), γ = 0.9: G = [0.9, 1]; V = [0.5, 0.8] → A = [0.4, 0.2];
    # the 7.0 value on padding is ignored
    batch = make_batch([1.0], [[1, 1, 0]], values=[[0.5, 0.8, 7.0]])
    out = ReinforceBaselineAdvantage(gamma=0.9)(batch)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.4, 0.2, 0.0]], dtype=F64))
    torch.testing.assert_close(out.returns, torch.tensor([[0.9, 1.0, 0.0]], dtype=F64))


def test_baseline_needs_values():
    with pytest.raises(ValueError, match="batch.values"):
        ReinforceBaselineAdvantage()(make_batch([1.0], [[1]]))


def test_reinforce_pp_by_hand():
    # γ = 1, no token rewards: G_{i,t} = R_i. Groups 0 = rows 0,1 (R 1, 0; mean 0.5),
    # 1 = rows 2,3 (R 2, 2; mean 2). Lengths 2,1,3,1 → the 7 valid token values of G − mean are
    # [.5, .5, −.5, 0, 0, 0, 0]; whitened with their mean and unbiased std (statistics module).
    mask = [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]
    batch = make_batch([1.0, 0.0, 2.0, 2.0], mask, group_ids=[0, 0, 1, 1])
    out = ReinforcePPAdvantage()(batch)
    tokens = [0.5, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0]
    mu, sd = statistics.mean(tokens), statistics.stdev(tokens)
    w = lambda x: (x - mu) / sd  # noqa: E731
    expected = torch.tensor(
        [[w(0.5), w(0.5), 0.0], [w(-0.5), 0.0, 0.0], [w(0.0)] * 3, [w(0.0), 0.0, 0.0]], dtype=F64
    )
    torch.testing.assert_close(out.advantages, expected, atol=1e-6, rtol=1e-6)
    returns = torch.tensor([[1.0, 1.0, 0], [0, 0, 0], [2.0] * 3, [2.0, 0, 0]], dtype=F64)
    torch.testing.assert_close(out.returns, returns)


def test_reinforce_pp_is_whitened():
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(7)[None, :] < torch.randint(1, 8, (8, 1), generator=g)).long()
    batch = make_batch(
        torch.rand(8, generator=g).tolist(),
        mask.tolist(),
        group_ids=[0, 1, 0, 1, 2, 2, 3, 3],
        token_rewards=(0.1 * torch.rand(8, 7, generator=g)).tolist(),
    )
    adv = ReinforcePPAdvantage(gamma=0.9)(batch).advantages
    valid = adv[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-7)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-6)
    assert (adv[~mask.bool()] == 0).all()


def test_reinforce_pp_without_baseline_by_hand():
    # Plain REINFORCE++: whiten the return-to-go itself, no group mean. Returns as in
    # test_return_to_go_by_hand (γ = 0.5): row 0 [0.4, 0.6, 1.2], row 1 [2.0]. The 4 valid
    # tokens have mean 4.2/4 = 1.05, deviations [−0.65, −0.45, 0.15, 0.95], squares summing to
    # 1.55, unbiased var 1.55/3 = 0.516667, std 0.718795 → [−0.904291, −0.626048, 0.208683, 1.321656].
    batch = make_batch(
        [1.0, 2.0],
        [[1, 1, 1, 0], [1, 0, 0, 0]],
        token_rewards=[[0.1, 0.0, 0.2, 5.0], [0.0, 0.0, 0.0, 0.0]],
    )
    out = ReinforcePPAdvantage(gamma=0.5, baseline="none")(batch)
    expected = torch.tensor(
        [[-0.904291, -0.626048, 0.208683, 0.0], [1.321656, 0.0, 0.0, 0.0]], dtype=F64
    )
    torch.testing.assert_close(out.advantages, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.returns, torch.tensor([[0.4, 0.6, 1.2, 0.0], [2.0, 0.0, 0.0, 0.0]], dtype=F64))
    # group_ids are not needed (None here) and no group metrics are reported
    assert "adv/single_groups" not in out.metrics


def test_reinforce_pp_baseline_none_ignores_groups_and_group_subtracts_them():
    # One sequence reward per row, γ = 1: G = R on every token. Rows 0,1 share group 0 (R 3, 1;
    # mean 2), row 2 is alone (R 0). "none" whitens [3, 3, 1, 0] (row lengths 2, 1, 1);
    # "group" whitens [1, 1, −1, 0] (the lone row is its own mean).
    batch = make_batch([3.0, 1.0, 0.0], [[1, 1], [1, 0], [1, 0]], group_ids=[0, 0, 7])
    none = ReinforcePPAdvantage(baseline="none")(batch)
    group = ReinforcePPAdvantage(baseline="group")(batch)
    for out, tokens in ((none, [3.0, 3.0, 1.0, 0.0]), (group, [1.0, 1.0, -1.0, 0.0])):
        mu, sd = statistics.mean(tokens), statistics.stdev(tokens)
        w = [(x - mu) / sd for x in tokens]
        expected = torch.tensor([[w[0], w[1]], [w[2], 0.0], [w[3], 0.0]], dtype=F64)
        torch.testing.assert_close(out.advantages, expected, atol=1e-6, rtol=1e-6)
    assert group.metrics["adv/single_groups"].item() == 1


def test_reinforce_pp_bad_baseline():
    with pytest.raises(ValueError, match=r"baseline must be one of group, none.*got 'mean'"):
        ReinforcePPAdvantage(baseline="mean")


def test_clip():
    batch = make_batch([3.0, -3.0], [[1, 1], [1, 0]])
    out = ReinforceAdvantage(clip=2.0)(batch)
    torch.testing.assert_close(out.advantages, torch.tensor([[2.0, 2.0], [-2.0, 0.0]], dtype=F64))
    torch.testing.assert_close(out.returns, torch.tensor([[3.0, 3.0], [-3.0, 0.0]], dtype=F64))


def test_registered():
    registry = get_registry()
    assert registry.get("advantage", "reinforce").factory is ReinforceAdvantage
    assert registry.get("advantage", "reinforce_baseline").factory is ReinforceBaselineAdvantage
    assert registry.get("advantage", "reinforce_pp").factory is ReinforcePPAdvantage


@pytest.mark.parametrize("factory", [ReinforceAdvantage, ReinforceBaselineAdvantage, ReinforcePPAdvantage])
@pytest.mark.parametrize("kwargs", [{"gamma": 1.5}, {"gamma": -0.1}, {"clip": 0.0}])
def test_bad_parameters(factory, kwargs):
    with pytest.raises(ValueError):
        factory(**kwargs)
