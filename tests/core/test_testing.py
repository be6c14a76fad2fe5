import pytest
import torch

from rlloom import hookimpl
from rlloom.errors import PluginLoadError
from rlloom.registry import Registry
from rlloom.testing import plugin_manager_with, rollout_batch


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


class _Typo:
    @hookimpl
    def rlloom_rewards(self):
        return {}


class _Good:
    @hookimpl
    def rlloom_reward(self):
        return {"always_one": lambda: (lambda prompts, completions, **columns: [1.0] * len(completions))}


def test_plugin_manager_with_registers_and_checks_an_uninstalled_plugin():
    registry = Registry.from_plugins(plugin_manager_with(_Good()))
    assert registry.get("reward", "always_one") and registry.get("advantage", "grpo")
    with pytest.raises(PluginLoadError, match=r"implements unknown hook 'rlloom_rewards' \(did you mean 'rlloom_reward'\?\)"):
        plugin_manager_with(_Typo())

