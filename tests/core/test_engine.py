"""The engine end to end: every preset runs, resume is exact, bad input is refused clearly."""
import json
import math

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from rlloom import hookimpl
from rlloom.cli import main
from rlloom.config import PRESET_DIR, load_config
from rlloom.engine import Trainer, run, set_step_seed
from rlloom.errors import DataError, RewardError, TrainingError
from rlloom.registry import get_plugin_manager, make_plugin_manager

RL_PRESETS = [
    "grpo", "dapo", "dr_grpo", "rloo", "prorl", "ppo", "reinforce", "reinforce_baseline", "quickstart", "vineppo",
    "trpo",
]


def _sampler(name):
    # dynamic sampling (dapo) and the Monte Carlo value sampler (vineppo) wrap the generate
    # sampler under `base`
    return "sampler.base" if name in ("dapo", "vineppo") else "sampler"


@pytest.mark.parametrize("preset", RL_PRESETS)
def test_rl_preset_runs_end_to_end(preset, tiny, tmp_path):
    s = _sampler(preset)
    cfg = load_config(PRESET_DIR / f"{preset}.yaml", [*tiny, f"{s}.num_generations=2", f"{s}.max_new_tokens=3"])
    metrics = Trainer(cfg).train()
    for key in ("reward/mean", "loss/total", "grad_norm", "lr", "len/mean", "eval/accuracy", "entropy/mean"):
        assert math.isfinite(metrics[key]), key
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "rlloom" or e.name == "quickstart"]
    [run_info] = client.search_runs([exp.experiment_id])
    assert run_info.data.tags["algorithm"] == cfg.algorithm
    assert run_info.data.tags["component.advantage"] == cfg.advantage.name
    steps = [m.step for m in client.get_metric_history(run_info.info.run_id, "eval/accuracy")]
    assert steps == [0, 2]  # evaluation at step 0, so every curve starts where the policy began


def test_sft_preset_runs_and_lowers_loss(tiny):
    cfg = load_config(PRESET_DIR / "sft.yaml", [*tiny, "trainer.max_steps=12", "trainer.eval_every=0", "trainer.lr=3e-3"])
    trainer = Trainer(cfg)
    first = trainer.mode.step(0)["loss/policy"]
    for step in range(1, 12):
        last = trainer.mode.step(step)["loss/policy"]
    assert last < first


def test_warm_start_runs_once_and_feeds_model_path(tiny, tmp_path):
    overrides = [o for o in tiny if not o.startswith("warm_start")] + [
        "warm_start.config=sft", "warm_start.overrides=[trainer.max_steps=1,trainer.eval_every=0,"
        "model.embedded.hidden_size=32,model.embedded.num_layers=1,model.embedded.num_heads=2,"
        "model.embedded.intermediate_size=64,task.num_train=64,task.num_test=16,task.max_value=9]",
        "sampler.num_generations=2", "sampler.max_new_tokens=3",
    ]
    run(load_config(PRESET_DIR / "grpo.yaml", overrides))
    warm = tmp_path / "run" / "warm_start" / "final" / "model.safetensors"
    assert warm.is_file()
    stamp = warm.stat().st_mtime_ns
    run(load_config(PRESET_DIR / "grpo.yaml", overrides))
    assert warm.stat().st_mtime_ns == stamp  # reused, not retrained


class _Kill:
    """Stops a run after its checkpoint at step 2, like a killed process."""

    @hookimpl
    def rlloom_after_step(self, step, metrics):
        if step == 2:
            raise KeyboardInterrupt


def _history(db, name):
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("rlloom")
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{name}'")
    assert len(runs) == 1, "a resumed run must continue the same MLflow run"
    run_id = runs[0].info.run_id
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in ("reward/mean", "loss/total", "eval/accuracy", "kl/mean")}


def test_killed_and_resumed_run_matches_uninterrupted(tiny, tmp_path):
    base = [*tiny, "trainer.max_steps=4", "trainer.checkpoint_every=2", "sampler.num_generations=2",
            "sampler.max_new_tokens=3", "trainer.epochs=2", "kl.coef=0.05"]
    straight = [*base, f"output_dir={tmp_path / 'straight'}"]
    Trainer(load_config(PRESET_DIR / "grpo.yaml", straight)).train()

    killed = [*base, f"output_dir={tmp_path / 'killed'}"]
    pm = get_plugin_manager()
    killer = _Kill()
    pm.register(killer)
    try:
        with pytest.raises(KeyboardInterrupt):
            Trainer(load_config(PRESET_DIR / "grpo.yaml", killed)).train()
    finally:
        pm.unregister(killer)
    assert (tmp_path / "killed" / "checkpoints" / "step_0000002").is_dir()
    assert not (tmp_path / "killed" / "final").exists()
    Trainer(load_config(PRESET_DIR / "grpo.yaml", [*killed, "resume=true"])).train()

    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert _history(tmp_path / "mlflow.db", "straight") == _history(tmp_path / "mlflow.db", "killed")


def _no_task(overrides):
    return [o for o in overrides if not o.startswith("task.")]


def test_unknown_dataset_field_is_named(tiny, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(8)))
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*_no_task(tiny), "task={name: dataset, path: " + str(data) + ", prompt_field: prompt}"])
    with pytest.raises(DataError, match="question"):
        Trainer(cfg)


def test_empty_dataset_is_refused(tiny, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*_no_task(tiny), "task={name: dataset, path: " + str(data) + "}"])
    with pytest.raises(DataError, match="empty"):
        Trainer(cfg)


def _reward_module(tmp_path, monkeypatch, name, body):
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_reward_that_raises_names_function_and_sample(tiny, tmp_path, monkeypatch):
    _reward_module(tmp_path, monkeypatch, "raising_rewards", "def bad(prompts, completions, **kw):\n    raise RuntimeError('boom')\n")
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "reward=[{name: python, function: 'raising_rewards:bad'}]",
                                                  "sampler.num_generations=2", "trainer.eval_every=0"])
    with pytest.raises(RewardError, match=r"python.*boom.*prompt"):
        Trainer(cfg).train()


def test_reward_with_wrong_length_is_named(tiny, tmp_path, monkeypatch):
    _reward_module(tmp_path, monkeypatch, "short_rewards", "def short(prompts, completions, **kw):\n    return [1.0]\n")
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "reward=[{name: python, function: 'short_rewards:short'}]",
                                                  "sampler.num_generations=2", "trainer.eval_every=0"])
    with pytest.raises(RewardError, match=r"returned 1 values? for 8 completions"):
        Trainer(cfg).train()


def _table_steps(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "rlloom"]
    [run_info] = client.search_runs([exp.experiment_id])
    return sorted(a.path for a in client.list_artifacts(run_info.info.run_id, "completions"))


@pytest.mark.parametrize(
    ("settings", "tables"),
    [
        # no evaluations: one table, at the last step (not one per step)
        (["trainer.eval_every=0"], ["completions/step_000004.json"]),
        # at each evaluation
        (["trainer.eval_every=2"], ["completions/step_000002.json", "completions/step_000004.json"]),
        # an interval of its own
        (["trainer.eval_every=0", "trainer.completions_every=3"], ["completions/step_000003.json", "completions/step_000004.json"]),
    ],
)
def test_completion_tables_are_logged_at_evaluations_or_their_interval(tiny, tmp_path, settings, tables):
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "sampler.num_generations=2", "sampler.max_new_tokens=3",
                                                  "trainer.max_steps=4", *settings])
    Trainer(cfg).train()
    assert _table_steps(tmp_path) == tables


def test_group_size_one_with_group_normalisation_trains_and_counts_groups_of_one(tiny):
    # One completion per prompt: every group is a group of one, which gets mean 0 and std 1
    # (verl's convention) instead of an error; adv/single_groups counts them (4 prompts a step).
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "sampler.num_generations=1", "trainer.eval_every=0"])
    metrics = Trainer(cfg).train()
    assert metrics["adv/single_groups"] == 4
    assert math.isfinite(metrics["loss/total"])


class _NaNLoss:
    """A policy loss that returns NaN, to check the engine stops the step."""

    requires = {"advantages"}
    needs_logits = False

    def __call__(self, logprobs, batch, logits=None):
        from rlloom.kinds import LossOutput

        return LossOutput(logprobs * float("nan"), batch.mask)


class _NaNPlugin:
    @hookimpl
    def rlloom_policy_loss(self):
        return {"nan_loss": _NaNLoss}


def test_non_finite_loss_stops_the_step(tiny):
    pm = make_plugin_manager()
    pm.register(_NaNPlugin())
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "policy_loss=nan_loss", "sampler.num_generations=2", "trainer.eval_every=0"])
    with pytest.raises(TrainingError, match="non-finite loss"):
        Trainer(cfg, plugin_manager=pm).train()


def test_cli_train_reports_bad_input_without_traceback(tiny, capsys):
    code = main(["train", str(PRESET_DIR / "grpo.yaml"), *tiny, "advantage.scale=std", "trainer.eval_every=0"])
    err = capsys.readouterr().err
    assert code == 2 and "scale must be one of group, batch, none" in err and "Traceback" not in err


def test_the_trpo_preset_bounds_the_exact_kl_over_the_vocabulary(tiny):
    # One real step of configs/trpo.yaml on a tiny model: the KL it reports is the exact
    # Σ_v π_old(v)(log π_old(v) − log π_θ(v)) averaged over the step's completion tokens,
    # recomputed here from a copy of the policy taken before the step, and it is ≤ δ.
    import copy

    from rlloom.forward import forward_rollout

    cfg = load_config(PRESET_DIR / "trpo.yaml", [*tiny, "sampler.num_generations=4", "sampler.max_new_tokens=3",
                                                 "trainer.eval_every=0", "update.max_kl=0.05",
                                                 # an untrained model's answers are all wrong; this reward varies
                                                 "reward=[{name: format, pattern: '[0-9]*'}]"])
    trainer = Trainer(cfg)
    before = copy.deepcopy(trainer.runtime.policy)
    set_step_seed(cfg.seed, 0, 0)  # as the engine does before each step: the same draws every run
    metrics = trainer.mode.step(0)
    assert metrics["adv/std"] > 0  # some group's rewards differ, so the step has a direction
    batch = trainer.mode.last_batch
    with torch.no_grad():
        old = forward_rollout(before, batch, 1.0, want_logits=True).logits.log_softmax(-1)
        new = forward_rollout(trainer.runtime.policy, batch, 1.0, want_logits=True).logits.log_softmax(-1)
    per_token = (old.exp() * (old - new)).sum(-1)
    kl = (per_token * batch.mask).sum() / batch.mask.sum()
    assert metrics["trpo/accepted"] == 1.0
    assert metrics["trpo/kl"] == pytest.approx(kl.item(), rel=1e-4, abs=1e-7)
    assert 0 < metrics["trpo/kl"] <= 0.05
