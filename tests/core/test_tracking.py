"""What a run records: reward metrics and tags named by the rewards, not their positions, and
the plugins whose components it uses."""
import mlflow
import pytest

from rlloom.config import load_config, validate_config
from rlloom.engine import run
from rlloom.errors import ConfigError
from rlloom.pipeline import reward_specs

REWARDS = ["answer_equivalence", "{name: format, pattern: '-?[0-9]+', weight: 0.1}"]


def test_reward_metrics_and_tags_keep_their_names_when_rewards_are_reordered(tiny, tmp_path):
    for i, rewards in enumerate([REWARDS, REWARDS[::-1]]):
        run(load_config("grpo", [*tiny, f"reward=[{', '.join(rewards)}]", f"tracking.run_name=order{i}"]))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rlloom").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["order0", "order1"]
    for r in runs:
        rewards = {k for k in r.data.metrics if k.startswith("reward/") and k.count("/") == 2}
        assert rewards == {"reward/answer_equivalence/mean", "reward/format/mean"}, r.info.run_name
        assert r.data.tags["component.reward"] == "answer_equivalence,format"
        assert r.data.tags["plugin.rlloom"] == "0.1.0"
        assert not any(k.startswith("plugin.") and k != "plugin.rlloom" for k in r.data.tags)


def test_the_same_reward_twice_needs_an_alias():
    twice = ["reward=[answer_equivalence, {name: format, pattern: '-?[0-9]+'}, {name: format, pattern: '[0-9]+', weight: 0.1}]"]
    with pytest.raises(ConfigError) as err:
        validate_config(load_config("grpo", twice))
    assert str(err.value) == (
        "reward[2]: reward 'format' is already configured as reward[1]; give one of them an `alias:` to "
        "name its metrics (e.g. {name: format, alias: format_2})"
    )
    aliased = load_config("grpo", [twice[0].replace("weight: 0.1", "weight: 0.1, alias: digits_only")])
    validate_config(aliased)
    assert [r.name for r in reward_specs(aliased)] == ["answer_equivalence", "format", "digits_only"]
    assert [r.path for r in reward_specs(aliased)] == ["reward[0]", "reward[1]", "reward[2]"]


def test_an_alias_must_be_a_plain_name():
    for alias, problem in [("a/b", "without '/'"), ("''", "non-empty"), ("3", "expected str")]:
        with pytest.raises(ConfigError, match=rf"^reward\[1\]\.alias: .*{problem}"):
            validate_config(load_config("grpo", [f"reward=[answer_equivalence, {{name: format, pattern: x, alias: {alias}}}]"]))
