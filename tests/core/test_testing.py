import torch

from rlloom.testing import rollout_batch


def test_shapes_and_default_groups():
    batch = rollout_batch([[1, 1, 0], [1, 0, 0]])
    assert len(batch) == 2
    assert batch.prompt_ids.shape == (2, 1) and batch.prompt_ids.dtype == torch.long
    assert batch.prompt_mask.shape == (2, 1) and batch.prompt_mask.eq(1).all()
    assert batch.completion_ids.shape == (2, 3) and batch.completion_ids.eq(0).all()
    assert torch.equal(batch.mask, torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert torch.equal(batch.group_ids, torch.arange(2))
    assert batch.rewards is None and batch.advantages is None


def test_group_ids_and_fields_pass_through():
    values = torch.zeros(2, 3, dtype=torch.float64)
    batch = rollout_batch([[1, 1, 0], [1, 0, 0]], [7, 7], values=values, rewards=[1.0, 0.5], prompts=["a", "b"])
    assert torch.equal(batch.group_ids, torch.tensor([7, 7]))
    assert batch.values is values and batch.values.dtype == torch.float64
    assert isinstance(batch.rewards, torch.Tensor) and batch.rewards.tolist() == [1.0, 0.5]
    assert batch.prompts == ["a", "b"]
