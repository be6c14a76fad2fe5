"""What the pipeline resolves from a config without a model: which parameters can act."""
import pytest
import torch

from rlloom.config import PRESET_DIR, load_config
from rlloom.pipeline import inert_parameters
from rlloom.registry import get_registry
from rlloom.settings import load_settings
from rlloom.testing import rollout_batch


def _inert(preset, *overrides):
    return inert_parameters(load_settings(load_config(PRESET_DIR / f"{preset}.yaml", overrides)), get_registry())


def test_clip_ranges_are_inert_with_one_on_policy_step_per_rollout():
    assert set(_inert("grpo")) == {
        "policy_loss.eps", "policy_loss.eps_low", "policy_loss.eps_high", "policy_loss.dual_clip"
    }
    assert set(_inert("grpo", "policy_loss=gspo")) == {"policy_loss.eps_low", "policy_loss.eps_high"}
    assert "ppo_clip" in _inert("grpo")["policy_loss.eps_high"] and "trainer.epochs=1" in _inert("grpo")["policy_loss.eps_high"]
    # the PPO value clip too, once its epochs and minibatches are 1
    assert "value_loss.eps" in _inert("ppo", "trainer.epochs=1", "trainer.minibatches=1")


@pytest.mark.parametrize("preset, overrides", [
    ("grpo", ["trainer.epochs=2"]),
    ("grpo", ["trainer.minibatches=2"]),
    ("ppo", []),  # 2 epochs × 2 minibatches
    ("trpo", []),  # the natural-gradient step re-evaluates the loss away from θ_old
    ("rloo", []),  # vanilla policy gradient: no clip
    ("sft", []),
])
def test_nothing_is_inert_off_policy_or_without_a_clip(preset, overrides):
    assert _inert(preset, *overrides) == {}


def test_an_inert_clip_range_changes_neither_loss_nor_gradient():
    """The claim behind the warning: on-policy (no old log-probs) r = 1, so ε_high = 0.2 and 0.28
    give the same loss and the same gradient A·∇log π."""
    registry = get_registry()
    torch.manual_seed(0)
    logits = torch.randn(4, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    batch = rollout_batch(mask, advantages=torch.randn(4, 5))
    results = []
    for eps_high in (0.2, 0.28):
        loss_fn = registry.build("policy_loss", {"name": "ppo_clip", "eps_high": eps_high})
        logprobs = torch.nn.functional.logsigmoid(logits)
        out = loss_fn(logprobs, batch)
        (grad,) = torch.autograd.grad(out.loss.sum(), logits)
        results.append((out.loss.detach(), grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
