"""Component contracts: every builtin satisfies its kind; a component that breaks its kind's
contract, or reads a field nothing fills, is refused by name when the pipeline is built."""
import pytest
from omegaconf import OmegaConf

from rlloom import hookimpl
from rlloom.algos import FrozenCopy
from rlloom.config import PRESET_DIR, load_config, validate_config
from rlloom.engine import Trainer
from rlloom.errors import ConfigError, TrainingError
from rlloom.kinds import KINDS, RefUpdate, conform
from rlloom.plugins.samplers import GenerateSampler
from rlloom.registry import get_registry, make_plugin_manager
from rlloom.testing import check_component

# Factories whose parameters have no defaults: the smallest valid parameters.
REQUIRED_PARAMS = {
    ("reward", "overlong"): {"max_len": 8, "cache_len": 2},
    ("reward", "format"): {"pattern": "[0-9]+"},
    ("reward", "python"): {"function": "builtins:len"},
    ("reward", "reward_model"): None,  # needs a saved model: checked in its own tests
    ("sampler", "dynamic"): {"base": "generate"},
    ("sampler", "vine"): {"base": "generate"},
    ("task", "dataset"): {"path": "rows.jsonl"},  # read on load(), not when built
    ("task", "preference_dataset"): {"path": "pairs.jsonl"},
}
ENGINE_KEYS = {"kl": {"coef": 0.1}}  # keys beside `name` that belong to the engine


def _buildable():
    registry = get_registry()
    for kind in KINDS:
        for name in registry.names(kind):
            params = REQUIRED_PARAMS.get((kind, name), {})
            if params is not None:
                yield kind, name, {**params, **ENGINE_KEYS.get(kind, {})}


@pytest.mark.parametrize("kind,name,params", list(_buildable()))
def test_every_builtin_satisfies_its_kind(kind, name, params):
    registry = get_registry()
    component = registry.build(kind, {"name": name, **params})
    declared = check_component(kind, component)
    for attr in KINDS[kind].attributes:
        assert hasattr(declared, attr.name)


def test_every_builtin_is_buildable_with_listed_parameters():
    # Every factory with required parameters has them listed, so the test above builds it.
    import inspect

    registry = get_registry()
    for kind in KINDS:
        for name in registry.names(kind):
            factory = registry.get(kind, name).factory
            required = [p for p in inspect.signature(factory).parameters.values()
                        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            assert not required or (kind, name) in REQUIRED_PARAMS, (kind, name)


def test_defaults_fill_what_a_component_omits():
    class Minimal:
        def __call__(self, batch):
            return None

    declared = check_component("advantage", Minimal())
    assert declared.requires == frozenset()
    assert check_component("sampler", GenerateSampler(temperature=0.7)).temperature == 0.7


@pytest.mark.parametrize(
    "kind,component,message",
    [
        ("sampler", type("NoTemperature", (), {"__call__": lambda self, ctx, p, n=None: None, "max_new_tokens": 4})(),
         "does not declare `temperature`"),
        ("policy_loss", type("Weird", (), {"__call__": lambda self, lp, b, logits=None: None, "consumes": "video"})(),
         "`consumes` must be one of rollout, supervised, preference"),
        ("kl", type("Flag", (), {"__call__": lambda self, a, b, logits=None, ref_logits=None: None, "needs_logits": 1})(),
         "`needs_logits` must be bool"),
        ("ref_policy", type("NoSetup", (), {"model": None})(), "has no method `setup`"),
        ("task", object(), "has no method `load`"),
        ("reward", object(), "is not callable"),
    ],
)
def test_a_broken_contract_is_named(kind, component, message):
    with pytest.raises(ConfigError, match=message):
        conform(kind, component, "where")


class _BrokenSamplerPlugin:
    class Sampler(GenerateSampler):
        """A sampler hiding its temperature."""

        def __getattribute__(self, name):
            if name == "temperature":
                raise AttributeError(name)
            return super().__getattribute__(name)

    @hookimpl
    def rlloom_sampler(self):
        return {"hidden_temperature": self.Sampler}


def test_a_sampler_without_temperature_is_refused_when_the_pipeline_is_built(tiny):
    pm = make_plugin_manager()
    pm.register(_BrokenSamplerPlugin())
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "sampler=hidden_temperature"])
    with pytest.raises(ConfigError, match=r"sampler \('hidden_temperature' from plugin .*\): .* does not declare `temperature`"):
        Trainer(cfg, plugin_manager=pm)


class _NeedsStepEnds:
    class Loss:
        """A policy loss that reads step boundaries."""

        requires = {"advantages", "step_ends"}

        def __call__(self, logprobs, batch, logits=None):
            raise AssertionError("never called: the pipeline is refused first")

    @hookimpl
    def rlloom_policy_loss(self):
        return {"needs_step_ends": self.Loss}


def test_a_required_field_nothing_fills_is_refused_by_component(tiny):
    pm = make_plugin_manager()
    pm.register(_NeedsStepEnds())
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "policy_loss=needs_step_ends"])
    with pytest.raises(ConfigError, match="policy_loss: Loss requires batch field.*step_ends"):
        Trainer(cfg, plugin_manager=pm)


class _DictRefPolicy:
    class Manager(FrozenCopy):
        """A reference manager returning a bare dict from on_step_end."""

        def on_step_end(self, step, policy, metrics):
            return {"ref/reset": 1.0}

    @hookimpl
    def rlloom_ref_policy(self):
        return {"dict_ref": self.Manager}


def test_a_reference_manager_must_say_what_it_did_with_a_ref_update(tiny):
    pm = make_plugin_manager()
    pm.register(_DictRefPolicy())
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "ref_policy=dict_ref", "sampler.num_generations=2",
                                                 "sampler.max_new_tokens=3", "trainer.eval_every=0"])
    with pytest.raises(TrainingError, match="on_step_end returned dict, not a RefUpdate"):
        Trainer(cfg, plugin_manager=pm).train()


def test_a_reset_request_clears_the_optimizer_state(tiny):
    cfg = load_config(PRESET_DIR / "prorl.yaml", [*tiny, "ref_policy.every=1", "sampler.num_generations=2",
                                                  "sampler.max_new_tokens=3", "trainer.eval_every=0", "trainer.max_steps=1"])
    trainer = Trainer(cfg)
    metrics = trainer.mode.step(0)
    assert metrics["ref/reset"] == 1.0
    assert len(trainer.runtime.optimizer.state) == 0  # AdamW's moments were dropped
    cfg = load_config(PRESET_DIR / "prorl.yaml", [*tiny, "ref_policy.every=1", "ref_policy.reset_optimizer=false",
                                                  "sampler.num_generations=2", "sampler.max_new_tokens=3",
                                                  "trainer.eval_every=0", "trainer.max_steps=1"])
    trainer = Trainer(cfg)
    trainer.mode.step(0)
    assert len(trainer.runtime.optimizer.state) > 0


# ------------------------------------------------------------------ the KL term in one place


def test_kl_needs_its_coefficient(tiny):
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "kl=k3"])
    cfg.kl = "k3"  # a bare name: no β anywhere
    with pytest.raises(ConfigError, match=r"kl\.coef: the KL term needs its coefficient β"):
        validate_config(cfg)


@pytest.mark.parametrize("override,message", [
    ("kl.coef=abc", r"kl\.coef: expected float or None, got 'abc'"),
    ("kl.coef=-1", r"kl\.coef: β must be >= 0"),
    ("kl.in_reward=3", r"kl\.in_reward: expected bool"),
    ("kl.target=0.5", None),
])
def test_kl_keys_are_checked_at_validate_time(tiny, override, message):
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, override])
    if message is None:
        validate_config(cfg)
    else:
        with pytest.raises(ConfigError, match=message):
            validate_config(cfg)


def test_old_kl_keys_point_to_the_new_place(tiny):
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "trainer.kl_coef=0.1"])
    with pytest.raises(ConfigError, match=r"trainer\.kl_coef: moved to `kl\.coef`"):
        validate_config(cfg)


def test_swapping_the_estimator_keeps_the_kl_settings():
    cfg = load_config(PRESET_DIR / "grpo.yaml", ["kl=k1"])
    assert OmegaConf.to_container(cfg.kl) == {"name": "k1", "coef": 0.02}


def test_beta_zero_builds_no_reference(tiny):
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "kl.coef=0"])
    trainer = Trainer(cfg)
    assert trainer.pipeline.online.kl is None and trainer.pipeline.online.ref_policy is None


def test_kl_in_reward_moves_the_term_out_of_the_loss(tiny):
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "kl.in_reward=true", "sampler.num_generations=2",
                                                 "sampler.max_new_tokens=3", "trainer.eval_every=0"])
    metrics = Trainer(cfg).mode.step(0)
    assert "kl/reward_mean" in metrics and "loss/kl" not in metrics


def test_ref_update_defaults():
    assert RefUpdate() == RefUpdate({}, False)


class _NoModelPlugin:
    class Manager(FrozenCopy):
        """A reference manager that never builds its model."""

        def setup(self, policy):
            pass

    @hookimpl
    def rlloom_ref_policy(self):
        return {"no_model": self.Manager}


def test_a_kl_term_without_a_reference_model_is_refused(tiny):
    pm = make_plugin_manager()
    pm.register(_NoModelPlugin())
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "ref_policy=no_model"])
    with pytest.raises(ConfigError, match="ref_policy: Manager holds no reference model after setup"):
        Trainer(cfg, plugin_manager=pm)
