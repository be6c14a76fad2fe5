import pytest
import torch

from rlloom.plugins.grpo import GRPOAdvantage
from rlloom.plugins.rloo import RLOOAdvantage
from rlloom.registry import get_registry
from rlloom.testing import rollout_batch


def make_batch(rewards, mask, group_ids):
    return rollout_batch(mask, group_ids, rewards=torch.as_tensor(rewards, dtype=torch.float64))


def test_by_hand():
    # group 5 = rows 0,2,3 with rewards [3,2,1]: others' means (2+1)/2 = 1.5, (3+1)/2 = 2,
    # (3+2)/2 = 2.5 → [1.5, 0, −1.5]; group 1 = rows 1,4 with [0,1]: → [−1, 1]
    mask = [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]]
    batch = make_batch([3.0, 0.0, 2.0, 1.0, 1.0], mask, [5, 1, 5, 5, 1])
    out = RLOOAdvantage()(batch)
    per_row = torch.tensor([1.5, -1.0, 0.0, -1.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(out.advantages, per_row[:, None] * torch.tensor(mask))
    assert out.returns is None


def test_equals_grpo_leave_one_out_and_scaled_group_mean():
    g = torch.Generator().manual_seed(1)
    rewards = torch.rand(12, generator=g, dtype=torch.float64)
    groups = torch.randperm(12, generator=g).remainder(3)  # three groups of four
    mask = (torch.arange(6)[None, :] < torch.randint(1, 7, (12, 1), generator=g)).long()
    batch = make_batch(rewards.tolist(), mask.tolist(), groups.tolist())
    rloo = RLOOAdvantage()(batch).advantages
    torch.testing.assert_close(rloo, GRPOAdvantage(scale="none", leave_one_out=True)(batch).advantages)
    # r_i − (S − r_i)/(G−1) = G/(G−1) · (r_i − S/G): with G = 4, 4/3 × (r − group mean)
    for i in range(12):
        same = rewards[groups == groups[i]]
        assert rloo[i, 0].item() == pytest.approx(4 / 3 * (rewards[i] - same.mean()).item())


def test_group_of_one_gets_its_reward_and_is_counted():
    # group 0 = rows 1,2 with rewards [0, 1] → 0 − 1 = −1, 1 − 0 = 1; group 2 = row 0 alone:
    # no other member, baseline 0 (verl's rloo leaves a lone score unchanged) → 1
    batch = make_batch([1.0, 0.0, 1.0], [[1, 1]] * 3, [2, 0, 0])
    out = RLOOAdvantage()(batch)
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    assert out.metrics["adv/single_groups"].item() == 1


def test_clip():
    # by hand [1.5, 0, −1.5] for rewards [3,2,1] → clipped to [1, 0, −1]
    batch = make_batch([3.0, 2.0, 1.0], [[1]] * 3, [0, 0, 0])
    out = RLOOAdvantage(clip=1.0)(batch)
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64))


def test_registered_and_bad_parameters():
    assert get_registry().get("advantage", "rloo").factory is RLOOAdvantage
    with pytest.raises(ValueError):
        RLOOAdvantage(clip=0)
