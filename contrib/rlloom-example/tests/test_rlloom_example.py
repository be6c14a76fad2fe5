"""The example plugin's own tests: each component against its kind's contract and against
values worked by hand, its names through rlloom's registry, and a tiny training run."""
import pytest
import torch

import rlloom_example
from rlloom.config import load_config, validate_config
from rlloom.engine import Trainer
from rlloom.errors import ConfigError, DataError
from rlloom.registry import Registry
from rlloom.testing import check_component, plugin_manager_with, rollout_batch, tiny_run
from rlloom_example import AbsLogRatio, AnswerDistance, MedianBaseline

# the three components in a config, on top of the grpo preset
CONFIG = [
    "advantage=median_baseline",
    "kl={name: abs_log_ratio, coef: 0.02}",
    "reward=[answer_equivalence, {name: answer_distance, weight: 0.5}]",
]


def test_components_meet_their_kinds_contracts():
    # the same check the engine runs when it builds a pipeline
    assert check_component("advantage", MedianBaseline()).requires == {"rewards", "group_ids"}
    assert check_component("kl", AbsLogRatio()).needs_logits is False
    check_component("reward", AnswerDistance())


def test_median_baseline_values_by_hand():
    # group 0 rewards [0, 1, 10] -> median 1 -> [-1, 0, 9]; group 1 [2, 4] -> median 3 -> [-1, 1]
    rewards = torch.tensor([0.0, 1.0, 10.0, 2.0, 4.0])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [1, 0]])
    batch = rollout_batch(mask, group_ids=[0, 0, 0, 1, 1], rewards=rewards)
    out = MedianBaseline(scale=2.0)(batch)
    expected = 2.0 * torch.tensor([[-1.0, -1.0], [0.0, 0.0], [9.0, 9.0], [-1.0, -1.0], [1.0, 1.0]])
    assert torch.equal(out.advantages, expected * mask)
    # adv/mean over the 8 real tokens, like every builtin: 2·(-2 + 0 + 18 - 2 + 1) / 8
    assert out.metrics["adv/mean"].item() == pytest.approx(30 / 8)
    with pytest.raises(ValueError, match="scale must be > 0"):
        MedianBaseline(scale=0.0)


def test_answer_distance_values_by_hand():
    reward = AnswerDistance(scale=4.0)
    # y = 7: "7" -> 1; "so 5" -> 1 - 2/4; "12" -> max(0, 1 - 5/4); no number -> 0; last number 8 -> 1 - 1/4
    completions = ["7", "so 5", "12", "none", "3 then 8"]
    assert reward(["p"] * 5, completions, answer=["7"] * 5) == [1.0, 0.5, 0.0, 0.0, 0.75]
    with pytest.raises(DataError, match=r"reward 'answer_distance' needs the column 'answer'; columns given: solution"):
        reward(["p"], ["1"], solution=["1"])


def test_abs_log_ratio_values_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, 0.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, 0.0]])  # the last position is padding: 0 in both
    assert torch.equal(AbsLogRatio()(logprobs, ref_logprobs), torch.tensor([[0.5, 1.0, 0.0]]))
    assert torch.equal(AbsLogRatio(clamp=0.75)(logprobs, ref_logprobs), torch.tensor([[0.5, 0.75, 0.0]]))
    assert AbsLogRatio()(logprobs.half(), ref_logprobs.half()).dtype == torch.float32


def test_configs_name_the_components():
    registry = Registry.from_plugins(plugin_manager_with(rlloom_example))
    assert registry.get("kl", "abs_log_ratio").factory is AbsLogRatio
    validate_config(load_config("grpo", CONFIG), registry)
    typo = [*CONFIG[:2], "reward=[answer_equivalence, {name: answer_distance, scael: 3.0}]"]
    with pytest.raises(ConfigError, match=r"^reward\[1\]\.scael: .*\(did you mean 'scale'\?\)"):
        validate_config(load_config("grpo", typo), registry)


def test_a_tiny_run_trains_with_them(tmp_path):
    cfg = load_config("grpo", [*tiny_run(tmp_path), *CONFIG])
    metrics = Trainer(cfg, plugin_manager=plugin_manager_with(rlloom_example)).train()
    assert 0.0 <= metrics["reward/answer_distance/mean"] <= 1.0
    assert metrics["kl/mean"] >= 0.0
    assert (tmp_path / "run" / "final").is_dir()
