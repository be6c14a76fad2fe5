"""The registry: builtins registered like plugins, duplicates and broken plugins kept out of
the way of everything else, unknown names explained."""
import sys
import types

import pytest

from rlloom import hookimpl, registry as registry_module
from rlloom.errors import ConfigError, PluginLoadError, RegistryError
from rlloom.kinds import KINDS
from rlloom.registry import Plugin, Registry, get_registry, make_plugin_manager


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


def test_duplicate_name_is_refused_when_used_naming_both_plugins_and_blocks_nothing_else():
    pm = make_plugin_manager()
    pm.register(_Duplicate(), name="my_dup_plugin")
    registry = Registry.from_plugins(pm)
    [listed] = [e for e in registry.entries("advantage") if e.name == "grpo"]
    assert listed.plugin == "rlloom.plugins.grpo, my_dup_plugin" and "registered twice" in listed.error
    with pytest.raises(RegistryError) as err:
        registry.get("advantage", "grpo")
    assert str(err.value) == (
        "advantage 'grpo' is registered twice: by plugin 'rlloom.plugins.grpo' and by plugin 'my_dup_plugin'. "
        "Rename one, or disable one with `plugins.disable`."
    )
    with pytest.raises(ConfigError, match=r"^advantage: advantage 'grpo' is registered twice"):
        registry.bind("advantage", "grpo", "advantage")
    assert registry.build("advantage", "rloo") is not None  # every other name still works


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


class _FakeDist:
    name = "my-plugin-dist"
    version = "0.3"


class _FakeEntryPoint:
    """Just what ``make_plugin_manager`` reads from an ``importlib.metadata.EntryPoint``."""

    def __init__(self, name, plugin):
        self.name, self.dist, self._plugin = name, _FakeDist(), plugin
        self.value = getattr(plugin, "__name__", type(plugin).__name__)

    def load(self):
        return self._plugin


def _plugin_module(name, **functions):
    """A plugin module whose functions are defined "in" it (``__module__`` is its name)."""
    module = types.ModuleType(name)
    for attr, fn in functions.items():
        fn.__module__, fn.__name__ = name, attr
        setattr(module, attr, fn)
    return module


def _load_entry_points(monkeypatch, *plugins):
    eps = [_FakeEntryPoint(name, module) for name, module in plugins]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps)
    return make_plugin_manager()


def _load_error(monkeypatch, name, plugin):
    """The error of entry-point plugin ``name``, which is left out while the builtins load."""
    pm = _load_entry_points(monkeypatch, (name, plugin))
    assert not pm.has_plugin(name) and pm.has_plugin("rlloom.plugins.grpo")
    [failed] = pm.failed
    assert (failed.name, failed.package, failed.version) == (name, "my-plugin-dist", "0.3")
    return failed.error


def test_builtins_alone_load_without_hook_errors():
    pm = make_plugin_manager()
    pm.check_pending()
    assert pm.has_plugin("rlloom.plugins.grpo")


def test_well_formed_entry_point_plugin_loads(monkeypatch):
    module = _plugin_module("my_good_plugin", rlloom_reward=hookimpl(lambda: {"always_one": lambda: 1}))
    pm = _load_entry_points(monkeypatch, ("my_plugin", module))
    registry = Registry.from_plugins(pm)
    assert registry.get("reward", "always_one").plugin == "my_plugin"
    assert registry.plugin("my_plugin") == Plugin("my_plugin", "my-plugin-dist", "0.3")
    assert registry.plugin("rlloom.plugins.grpo").package == "rlloom"


def test_misspelled_hookimpl_names_plugin_hook_and_suggestion(monkeypatch):
    module = _plugin_module("my_typo_plugin", rlloom_rewards=hookimpl(lambda: {}))
    message = _load_error(monkeypatch, "my_plugin", module)
    assert "\n" not in message
    assert message.startswith("plugin 'my_plugin' (package my-plugin-dist) implements unknown hook 'rlloom_rewards'")
    assert "(did you mean 'rlloom_reward'?)" in message
    assert "known hooks: " in message and "rlloom_advantage" in message
    assert "plugins.disable: [my_plugin]" in message and "RLLOOM_DISABLE_PLUGINS=my_plugin" in message


def test_hook_without_hookimpl_marker_is_refused(monkeypatch):
    module = _plugin_module("my_unmarked_plugin", rlloom_reward=lambda: {"never": lambda: 0})
    message = _load_error(monkeypatch, "my_plugin", module)
    assert "\n" not in message
    assert "plugin 'my_plugin' (package my-plugin-dist) defines rlloom_reward() without @hookimpl" in message
    assert "decorate it with @hookimpl (from rlloom import hookimpl)" in message
    assert "plugins.disable: [my_plugin]" in message


def test_misspelled_hook_without_hookimpl_marker_suggests_the_name(monkeypatch):
    module = _plugin_module("my_unmarked_typo", rlloom_advantages=lambda: {})
    message = _load_error(monkeypatch, "my_plugin", module)
    assert "defines rlloom_advantages() without @hookimpl" in message
    assert "rename it to 'rlloom_advantage'" in message


def test_both_mistakes_in_one_plugin_are_reported(monkeypatch):
    module = _plugin_module(
        "my_bad_plugin",
        rlloom_rewards=hookimpl(lambda: {}),
        rlloom_advantage=lambda: {},
    )
    assert "implements unknown hook 'rlloom_rewards'" in _load_error(monkeypatch, "my_plugin", module)
    del module.rlloom_rewards
    assert "defines rlloom_advantage() without @hookimpl" in _load_error(monkeypatch, "my_plugin", module)


def test_imported_and_unrelated_functions_are_not_flagged(monkeypatch):
    module = _plugin_module(
        "my_helper_plugin",
        rlloom_reward=hookimpl(lambda: {}),
        rlloom_plugin_version=lambda: "1",  # its own, but named like no hook
    )
    module.rlloom_advantage = lambda: {}  # unmarked, but defined elsewhere (imported)
    pm = _load_entry_points(monkeypatch, ("my_plugin", module))
    assert pm.has_plugin("my_plugin")


class _UnmarkedMethodPlugin:
    def rlloom_reward(self):
        return {}


def test_class_plugin_method_without_hookimpl_is_refused(monkeypatch):
    message = _load_error(monkeypatch, "cls_plugin", _UnmarkedMethodPlugin())
    assert message.startswith("plugin 'cls_plugin' (package my-plugin-dist) defines rlloom_reward()")


def test_plugin_registered_by_hand_with_unknown_hook_is_refused_without_disable_hint(monkeypatch):
    builtin = _plugin_module("rlloom.plugins.fake", rlloom_rewards=hookimpl(lambda: {}))
    monkeypatch.setattr(registry_module, "_builtin_modules", lambda: ["rlloom.plugins.fake"])
    monkeypatch.setitem(sys.modules, "rlloom.plugins.fake", builtin)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [])
    with pytest.raises(PluginLoadError) as err:
        make_plugin_manager()
    message = str(err.value)
    assert message.startswith("plugin 'rlloom.plugins.fake' implements unknown hook 'rlloom_rewards'")
    assert "RLLOOM_DISABLE_PLUGINS" not in message


def test_plugin_whose_hook_raises_is_left_out_and_named_when_a_config_needs_it(monkeypatch):
    def rlloom_reward():
        raise RuntimeError("reward model weights missing")

    module = _plugin_module("my_raising_plugin", rlloom_reward=hookimpl(rlloom_reward))
    registry = Registry.from_plugins(_load_entry_points(monkeypatch, ("my_plugin", module)))
    [failed] = registry.failed
    assert failed.error.startswith("plugin 'my_plugin' (package my-plugin-dist) failed in its hook rlloom_reward: "
                                   "RuntimeError: reward model weights missing.")
    reward = registry.build("reward", "answer_equivalence")  # the builtins still load
    assert reward(["12+7=", "12+7="], ["19", "12+7"], answer=["19", "19"]) == [1.0, -1.0]
    with pytest.raises(RegistryError) as err:
        registry.get("reward", "learned_judge")
    message = str(err.value)
    assert message.startswith("unknown reward 'learned_judge'; known: ")
    assert message.endswith("; not loaded: " + failed.error) and "\n" not in message
