"""The registry: builtins registered like plugins, duplicates refused, unknown names explained."""
import pytest

from rlloom import hookimpl
from rlloom.errors import ConfigError, RegistryError
from rlloom.kinds import KINDS
from rlloom.registry import Registry, get_registry, make_plugin_manager


def test_every_kind_has_builtins_with_summaries():
    registry = get_registry()
    for kind in KINDS:
        entries = registry.entries(kind)
        assert entries, f"no builtin {kind}"
        for entry in entries:
            assert entry.plugin.startswith("rlloom.plugins."), entry
            assert entry.summary, f"{kind} '{entry.name}' has no docstring summary"


def test_builtin_names_resolve_to_their_modules():
    registry = get_registry()
    assert registry.get("advantage", "grpo").plugin == "rlloom.plugins.grpo"
    assert registry.get("policy_loss", "ppo_clip").plugin == "rlloom.plugins.ppo"
    assert registry.get("sampler", "generate").plugin == "rlloom.plugins.samplers"


class _Duplicate:
    @hookimpl
    def rlloom_advantage(self):
        return {"grpo": lambda: None}


def test_duplicate_name_names_both_plugins():
    pm = make_plugin_manager()
    pm.register(_Duplicate(), name="my_dup_plugin")
    with pytest.raises(RegistryError) as err:
        Registry.from_plugins(pm)
    message = str(err.value)
    assert "advantage 'grpo'" in message
    assert "rlloom.plugins.grpo" in message and "my_dup_plugin" in message


def test_unknown_name_lists_names_and_closest_match():
    registry = get_registry()
    with pytest.raises(RegistryError) as err:
        registry.get("advantage", "grpp")
    message = str(err.value)
    assert "did you mean 'grpo'" in message
    assert ", ".join(registry.names("advantage")) in message


def test_bind_rejects_misspelled_parameter_with_accepted_keys():
    registry = get_registry()
    with pytest.raises(ConfigError) as err:
        registry.bind("policy_loss", {"name": "ppo_clip", "eps_hgih": 0.3}, "policy_loss")
    message = str(err.value)
    assert message.startswith("policy_loss.eps_hgih:")
    assert "did you mean 'eps_high'" in message
    assert "accepted keys: eps, eps_low, eps_high, dual_clip" in message


def test_bind_drops_reserved_keys_and_build_passes_params():
    registry = get_registry()
    entry, params = registry.bind("reward", {"name": "exact_match", "weight": 0.5}, "reward[0]")
    assert entry.name == "exact_match" and "weight" not in params
    loss = registry.build("policy_loss", {"name": "ppo_clip", "eps": 0.3})
    assert loss.eps_low == pytest.approx(0.3) and loss.eps_high == pytest.approx(0.3)


def test_factory_value_error_becomes_config_error_with_path():
    with pytest.raises(ConfigError, match=r"^policy_loss: policy_loss 'ppo_clip'"):
        get_registry().build("policy_loss", {"name": "ppo_clip", "eps": -1.0}, "policy_loss")


class _NewKind:
    @hookimpl
    def rlloom_kinds(self):
        return {"curriculum": {"easy_first": lambda: "built"}}


def test_plugin_can_add_a_kind():
    pm = make_plugin_manager()
    pm.register(_NewKind(), name="curriculum_plugin")
    registry = Registry.from_plugins(pm)
    assert registry.names("curriculum") == ["easy_first"]
    assert registry.build("curriculum", "easy_first") == "built"
