import math

import pytest
import torch

from rlloom.plugins.grpo import GroupMeanAdvantage, GRPOAdvantage
from rlloom.registry import get_registry
from rlloom.testing import rollout_batch


def make_batch(rewards, mask, group_ids):
    return rollout_batch(mask, group_ids, rewards=torch.as_tensor(rewards, dtype=torch.float64))


def test_one_group_by_hand():
    # rewards [1,0,0,1]: mean 0.5; unbiased var = 4·0.25/3 = 1/3, std = 0.57735;
    # advantages ±0.5/0.57735 = ±0.866025
    batch = make_batch([1.0, 0.0, 0.0, 1.0], [[1, 1]] * 4, [0, 0, 0, 0])
    out = GRPOAdvantage()(batch)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    expected = torch.tensor([[a, a], [-a, -a], [-a, -a], [a, a]], dtype=torch.float64)
    torch.testing.assert_close(out.advantages, expected)
    assert abs(a - 0.866025) < 1e-5
    assert out.returns is None


def test_shuffled_groups_of_different_sizes_and_padding():
    # group 7 = rows 0,2: rewards [1,0], mean 0.5, unbiased std sqrt(2·0.25/1) = 0.70711 → ±0.70711
    # group 3 = rows 1,3,4: rewards [2,4,0], mean 2, unbiased std sqrt((0+4+4)/2) = 2 → [0, 1, −1]
    mask = [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]]
    batch = make_batch([1.0, 2.0, 0.0, 4.0, 0.0], mask, [7, 3, 7, 3, 3])
    out = GRPOAdvantage(eps=0.0)(batch)
    s = math.sqrt(0.5)
    per_row = torch.tensor([s, 0.0, -s, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(out.advantages, per_row[:, None] * torch.tensor(mask))
    assert (out.advantages[torch.tensor(mask) == 0] == 0).all()


def test_batch_scale_by_hand():
    # all rewards [1,2,0,4,0]: mean 1.4, squared deviations .16+.36+1.96+6.76+1.96 = 11.2,
    # unbiased var 11.2/4 = 2.8; centred by group means (7: 0.5, 3: 2) → [.5, 0, −.5, 2, −2]
    batch = make_batch([1.0, 2.0, 0.0, 4.0, 0.0], [[1]] * 5, [7, 3, 7, 3, 3])
    out = GRPOAdvantage(scale="batch", eps=0.0)(batch)
    expected = torch.tensor([0.5, 0.0, -0.5, 2.0, -2.0], dtype=torch.float64) / math.sqrt(2.8)
    torch.testing.assert_close(out.advantages[:, 0], expected)


def test_scale_none_equals_group_mean():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=g, dtype=torch.float64).tolist()
    groups = torch.randperm(12, generator=g).remainder(4).tolist()
    mask = (torch.arange(5)[None, :] < torch.randint(1, 6, (12, 1), generator=g)).long().tolist()
    batch = make_batch(rewards, mask, groups)
    a = GRPOAdvantage(scale="none")(batch).advantages
    b = GroupMeanAdvantage()(batch).advantages
    torch.testing.assert_close(a, b)
    # and both are r − group mean, by an independent loop
    for i in range(12):
        same = [rewards[j] for j in range(12) if groups[j] == groups[i]]
        assert a[i, 0].item() == pytest.approx(rewards[i] - sum(same) / len(same))


def test_leave_one_out_by_hand():
    # rewards [1,0,0,1]: mean of the other three is 1/3 for a 1 and 2/3 for a 0 → ±2/3;
    # with scale=group divided by the group std sqrt(1/3): ±(2/3)/0.57735 = ±1.154701
    batch = make_batch([1.0, 0.0, 0.0, 1.0], [[1]] * 4, [0, 0, 0, 0])
    out = GRPOAdvantage(scale="none", leave_one_out=True)(batch)
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([2, -2, -2, 2], dtype=torch.float64) / 3)
    out = GRPOAdvantage(scale="group", eps=0.0, leave_one_out=True)(batch)
    expected = torch.tensor([1.154701, -1.154701, -1.154701, 1.154701], dtype=torch.float64)
    torch.testing.assert_close(out.advantages[:, 0], expected, atol=1e-6, rtol=0)


def test_group_of_one_has_a_defined_advantage_and_is_counted():
    # Group 4 = rows 0,1 with rewards [1, 0]: mean 0.5, unbiased std sqrt(0.5) = 0.70711.
    # Group 9 = row 2 alone with reward 5.
    batch = make_batch([1.0, 0.0, 5.0], [[1, 1]] * 3, [4, 4, 9])
    s = math.sqrt(0.5)
    # scale=group: the lone row takes baseline 0 and std 1 (verl's convention) → 5/(1 + eps).
    out = GRPOAdvantage()(batch)
    expected = torch.tensor([0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 5.0 / (1 + 1e-6)], dtype=torch.float64)
    torch.testing.assert_close(out.advantages[:, 0], expected)
    assert out.metrics["adv/single_groups"].item() == 1
    # leave-one-out: the pair gives 1 − 0 = 1 and 0 − 1 = −1; the lone row has no other member,
    # baseline 0 → 5; with scale=group (eps 0) the pair is divided by 0.70711 and the lone row by 1.
    out = GRPOAdvantage(scale="none", leave_one_out=True)(batch)
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([1.0, -1.0, 5.0], dtype=torch.float64))
    out = GRPOAdvantage(scale="group", eps=0.0, leave_one_out=True)(batch)
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([1 / s, -1 / s, 5.0], dtype=torch.float64))
    # the lone row's baseline is 0 whatever the scale: none → 5; batch → 5 / (std of all rewards
    # + eps), rewards [1, 0, 5]: mean 2, squared deviations 1 + 4 + 9 = 14, unbiased var 7
    assert GRPOAdvantage(scale="none")(batch).advantages[2, 0] == 5
    torch.testing.assert_close(GRPOAdvantage(scale="batch")(batch).advantages[2, 0],
                               torch.tensor(5 / (math.sqrt(7) + 1e-6), dtype=torch.float64))
    assert GroupMeanAdvantage()(batch).metrics["adv/single_groups"].item() == 1


def test_single_groups_metric_counts_groups_of_one():
    # groups: 0 → rows 0,3; 1 → row 1 alone; 2 → row 2 alone; 5 → row 4 alone: three groups of one
    batch = make_batch([1.0, 2.0, 3.0, 0.0, 4.0], [[1]] * 5, [0, 1, 2, 0, 5])
    assert GRPOAdvantage()(batch).metrics["adv/single_groups"].item() == 3
    batch = make_batch([1.0, 0.0, 0.0, 1.0], [[1]] * 4, [0, 0, 0, 0])
    assert GRPOAdvantage()(batch).metrics["adv/single_groups"].item() == 0


def test_equal_rewards_give_zero_not_nan():
    batch = make_batch([1.0, 1.0, 1.0], [[1, 1]] * 3, [0, 0, 0])
    out = GRPOAdvantage()(batch)
    assert torch.equal(out.advantages, torch.zeros(3, 2, dtype=torch.float64))


def test_clip():
    # unclipped ±0.866 (see test_one_group_by_hand) → ±0.5
    batch = make_batch([1.0, 0.0, 0.0, 1.0], [[1, 0]] * 4, [0, 0, 0, 0])
    out = GRPOAdvantage(clip=0.5)(batch)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64)
    torch.testing.assert_close(out.advantages[:, 0], expected)
    assert (out.advantages[:, 1] == 0).all()


def test_metrics():
    # group 0 rewards [1,1]: std 0, all equal; group 1 rewards [1,0]: unbiased std sqrt(0.5)
    batch = make_batch([1.0, 1.0, 1.0, 0.0], [[1, 1], [1, 0], [1, 1], [1, 1]], [0, 0, 1, 1])
    m = GRPOAdvantage()(batch).metrics
    assert m["reward/group_std_mean"].item() == pytest.approx(math.sqrt(0.5) / 2)
    assert m["reward/zero_std_frac"].item() == pytest.approx(0.5)
    # token advantages: group 0 → 0 (3 tokens); group 1 → ±0.5/0.70711 = ±0.70711 (2 tokens each)
    assert m["adv/mean"].item() == pytest.approx(0.0, abs=1e-9)
    assert m["adv/max"].item() == pytest.approx(math.sqrt(0.5), rel=1e-5)
    assert m["adv/min"].item() == pytest.approx(-math.sqrt(0.5), rel=1e-5)


def test_registered():
    registry = get_registry()
    assert registry.get("advantage", "grpo").factory is GRPOAdvantage
    assert registry.get("advantage", "group_mean").factory is GroupMeanAdvantage


@pytest.mark.parametrize(
    "kwargs", [{"scale": "std"}, {"eps": -1.0}, {"clip": 0.0}, {"clip": -1.0}]
)
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        GRPOAdvantage(**kwargs)
