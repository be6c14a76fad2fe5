"""Named variants (``--variant "NAME: K=V K=V"``): sets of values that go together."""
from __future__ import annotations

import pytest

from rlloom.compare import Comparison, expand, parse_variant
from rlloom.errors import ConfigError
from rlloom.config import PRESET_DIR

PPO_SAMPLER = "sampler={name: generate, num_generations: 4, max_new_tokens: 10}"


def test_a_variant_is_a_name_and_its_values_with_flow_maps_unquoted():
    name, pairs = parse_variant(f"ppo: {PPO_SAMPLER}  advantage={{name: gae, lam: 0.95}} trainer.max_steps=600")
    assert name == "ppo"
    assert pairs == (
        ("sampler", "{name: generate, num_generations: 4, max_new_tokens: 10}"),
        ("advantage", "{name: gae, lam: 0.95}"),
        ("trainer.max_steps", "600"),
    )


@pytest.mark.parametrize("spec, needle", [
    ("advantage=gae", "expected 'NAME: KEY=VALUE"),
    (": advantage=gae", "expected 'NAME: KEY=VALUE"),
    ("a b: advantage=gae", "expected 'NAME: KEY=VALUE"),
    ("ppo:", "no KEY=VALUE given"),
    ("ppo: advantage", "'advantage' is not KEY=VALUE"),
    ("ppo: advantage=gae advantage=grpo", "'advantage' is set twice"),
    ("ppo: sampler={name: generate", "cannot read value"),
])
def test_bad_variant_specs_name_the_problem(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_variant(spec)


def test_variants_cross_with_vary_and_seeds_and_set_their_values_first():
    children = expand(["kl.coef=0,0.02"], seeds=2, variants=["vine: advantage=vineppo", "ppo: advantage=gae value_loss=clipped_mse"])
    assert [c.name for c in children] == [
        "vine,kl.coef=0,seed=0", "vine,kl.coef=0,seed=1", "vine,kl.coef=0.02,seed=0", "vine,kl.coef=0.02,seed=1",
        "ppo,kl.coef=0,seed=0", "ppo,kl.coef=0,seed=1", "ppo,kl.coef=0.02,seed=0", "ppo,kl.coef=0.02,seed=1",
    ]
    ppo = children[6]
    assert ppo.variant == "ppo,kl.coef=0.02"
    assert ppo.values == (("advantage", "gae"), ("value_loss", "clipped_mse"), ("kl.coef", "0.02"))
    assert ppo.tags("p") == {"vary.variant": "ppo", "vary.kl.coef": "0.02", "vary.seed": "0", "compare.parent": "p"}
    assert [c.name for c in expand([], variants=["a: x=1", "b: x=2"])] == ["a", "b"]


@pytest.mark.parametrize("varies, variants, needle", [
    ([], ["a: x=1", "a: x=2"], "a name is given twice"),
    (["x=1,2"], ["a: x=3"], "also set by --variant a"),
])
def test_bad_variant_combinations_are_config_errors(varies, variants, needle):
    with pytest.raises(ConfigError, match=needle):
        expand(varies, variants=variants)


def test_each_variant_is_validated_and_its_values_override_the_shared_ones(tmp_path):
    good = f"ppo: {PPO_SAMPLER} advantage={{name: gae, gamma: 1.0}} value_loss=clipped_mse trainer.max_steps=7"
    comparison = Comparison(
        PRESET_DIR / "vineppo.yaml", [], [f"output_dir={tmp_path}"], steps=3, variants=["vine: trainer.lr=1e-4", good],
    )
    vine, ppo = comparison.children
    overrides = comparison.child_overrides(ppo)
    # --steps is shared, the variant's own step count comes after it and wins
    assert overrides.index("trainer.max_steps=3") < overrides.index("trainer.max_steps=7")
    assert "value_loss=clipped_mse" in overrides and "value_loss=clipped_mse" not in comparison.child_overrides(vine)
    assert comparison.varied == ["variant"]
    with pytest.raises(ConfigError, match="variant ppo: .*nosuch"):
        Comparison(PRESET_DIR / "vineppo.yaml", [], [f"output_dir={tmp_path}"], variants=["ppo: advantage=nosuch"])
