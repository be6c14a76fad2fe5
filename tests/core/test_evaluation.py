"""Held-out evaluation: which reward decides ``eval/accuracy``, and every reward's mean."""
import pytest

from rlloom.config import PRESET_DIR, load_config, validate_config
from rlloom.engine import Trainer
from rlloom.errors import ConfigError

REWARDS = "reward=[answer_equivalence, {name: format, pattern: '.*', penalty: -1.0}]"  # ±1 twice: wrong answers, any text


def _evaluate(tiny, *overrides):
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, REWARDS, "trainer.eval_size=16", *overrides])
    return Trainer(cfg).mode.evaluate()


def test_accuracy_is_the_positive_fraction_of_the_named_reward(tiny):
    first = _evaluate(tiny)
    by_format = _evaluate(tiny, "trainer.eval_reward=format")
    # the same greedy answers: each reward's mean is the same in both
    for name in ("answer_equivalence", "format"):
        assert first[f"eval/reward/{name}"] == by_format[f"eval/reward/{name}"]
    # a ±1 reward is positive on (mean + 1) / 2 of the prompts
    for result, name in ((first, "answer_equivalence"), (by_format, "format")):
        assert result["eval/accuracy"] == pytest.approx((result[f"eval/reward/{name}"] + 1) / 2)
    # an untrained model answers wrong, in text the format accepts
    assert (first["eval/accuracy"], by_format["eval/accuracy"]) == (0.0, 1.0)
    assert first["eval/reward_mean"] == pytest.approx(first["eval/reward/answer_equivalence"] + first["eval/reward/format"])


def test_an_eval_reward_that_is_not_configured_is_named(tiny):
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, REWARDS, "trainer.eval_reward=formatt"])
    with pytest.raises(ConfigError, match=r"trainer.eval_reward: 'formatt' is not one of the configured rewards \(answer_equivalence, format\)"):
        validate_config(cfg)
