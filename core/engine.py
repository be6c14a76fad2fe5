"""The training engine: build a run from a config, then one loop over its steps.

``Trainer(cfg)`` builds the pipeline (``pipeline.py``: every component by name, checked
against its kind), the runtime (``runtime.py``: accelerator, policy, optimizer) and the
training mode the policy loss consumes (``online.py``, ``supervised.py``,
``preference.py``). ``Trainer.train`` runs the loop: EVALUATE at step 0 → per step: SEED →
STEP (the mode's) → EVALUATE → LOG → CHECKPOINT → HOOKS; at the end the final model. STEP and
EVALUATE run in the runtime's precision (``trainer.precision``).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from omegaconf import DictConfig

from rlloom import checkpoint
from rlloom.config import disabled_plugins, validate_config
from rlloom.data import TARGETS, fit_positions, row_lengths
from rlloom.errors import one_line
from rlloom.files import check_output_dir, writing
from rlloom.online import OnlineMode
from rlloom.pipeline import Pipeline, build_pipeline
from rlloom.preference import PreferenceMode
from rlloom.progress import Progress, notice, phase_name
from rlloom.registry import Registry, get_plugin_manager, get_registry
from rlloom.runtime import Runtime, TrainingMode, build_runtime
from rlloom.settings import as_plain, load_settings
from rlloom.stopping import raise_if_stopping
from rlloom.supervised import SupervisedMode
from rlloom.tracking import Tracker, check_store, run_tags
from rlloom.models import save_policy
from rlloom.warm_start import FINAL_MODEL, prepare_warm_start

MODES = {"rollout": OnlineMode, "supervised": SupervisedMode, "preference": PreferenceMode}


class Trainer:
    """Builds a run from a config (``Trainer(cfg)``) and runs it (``.train()``).
    ``warm_start`` marks the warm start of another run (its progress lines say so)."""

    def __init__(self, cfg: DictConfig, plugin_manager=None, warm_start: bool = False):
        disable = disabled_plugins(cfg)
        self.pm = plugin_manager or get_plugin_manager(disable)
        self.registry = Registry.from_plugins(plugin_manager) if plugin_manager else get_registry(disable)
        validate_config(cfg, self.registry)
        self.cfg = load_settings(cfg)
        check_output_dir(self.cfg.output_dir)
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision="no")  # precision is the runtime's (trainer.precision)
        self.pipeline = build_pipeline(self.cfg, self.registry, accelerator.num_processes)
        self.runtime = build_runtime(self.cfg, self.pipeline, accelerator)
        self.skipped = fit_train_data(self.pipeline, self.runtime)
        self.mode: TrainingMode = MODES[self.pipeline.mode](self.pipeline, self.runtime, self.pm.hook)
        self.phase = phase_name(self.pipeline.mode, warm_start)  # what the progress lines call this run

    def train(self) -> dict[str, float]:
        """Run to ``trainer.max_steps``; returns the last step's metrics (with the last eval)."""
        cfg, rt, mode, hooks = self.cfg, self.runtime, self.mode, self.pm.hook
        t, tr = cfg.trainer, cfg.tracking
        main = rt.accelerator.is_main_process
        set_step_seed(cfg.seed, -1, rt.rank)
        start_step, run_id = checkpoint.restore(rt, mode) if cfg.resume else (0, None)
        tracker = Tracker(tr.uri, tr.experiment, main, tr.flush_timeout)
        resumed_from = checkpoint.checkpoint_dir(cfg.output_dir, start_step) if start_step else None
        run_id = tracker.start(tr.run_name or Path(cfg.output_dir).name, run_id, tr.parent_run_id, resumed_from)
        if not tracker.resumed:
            tags = run_tags(cfg, self.pipeline.mode, [r.name for r in self.pipeline.rewards], self.registry)
            tracker.log_config(as_plain(cfg), {**tags, **{str(k): str(v) for k, v in tr.tags.items()}})
        hooks.rlloom_run_start(config=cfg, run_id=run_id)
        metrics: dict[str, float] = {}
        source = f"from {cfg.model.path}" if cfg.model.path else "from a new embedded model"
        progress = Progress(self.phase, f"{cfg.algorithm} {source}", t.max_steps, start_step, main)
        status, error = "FAILED", None
        try:
            if start_step == 0 and self.skipped:
                tracker.log_metrics({"data/too_long_skipped": self.skipped}, 0)
            # EVALUATE where the policy begins
            if start_step == 0 and t.eval_every > 0:
                with rt.autocast():
                    first = mode.evaluate()
                tracker.log_metrics(first, 0)
                progress.evaluated(first)
            for step in range(start_step, t.max_steps):
                done = step + 1
                # SEED, STEP
                set_step_seed(cfg.seed, step, rt.rank)
                with rt.autocast():
                    metrics = mode.step(step)
                # EVALUATE
                if t.eval_every > 0 and (done % t.eval_every == 0 or done == t.max_steps):
                    with rt.autocast():
                        metrics.update(mode.evaluate())
                # LOG
                tracker.log_metrics(metrics, done)
                if main and logs_completions(t, done):
                    table = mode.completion_table(t.log_completions)
                    if table is not None:
                        tracker.log_table(table, f"completions/step_{done:06d}.json", done)
                # CHECKPOINT
                if (t.checkpoint_every and done % t.checkpoint_every == 0) or done == t.max_steps:
                    checkpoint.save(rt, mode, done, run_id)
                # HOOKS
                hooks.rlloom_after_step(step=done, metrics=metrics)
                progress.update(metrics)
                raise_if_stopping()  # a SIGTERM whose first raise Python dropped
            if main:
                final = Path(cfg.output_dir) / FINAL_MODEL
                with writing("the final model", final):
                    save_policy(rt.policy, rt.tokenizer, final)
            hooks.rlloom_run_end(step=t.max_steps, metrics=metrics)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except Exception as exc:
            error = one_line(exc)
            raise
        finally:
            progress.close()
            tracker.end(status, error)
        return metrics


def logs_completions(t, done: int) -> bool:
    """Whether step ``done`` logs a completions table: every ``trainer.completions_every``
    steps (null: at each evaluation, ``trainer.eval_every``), and at the last step."""
    every = t.eval_every if t.completions_every is None else t.completions_every
    return done == t.max_steps or (every > 0 and done % every == 0)


def fit_train_data(pipeline: Pipeline, rt: Runtime) -> int:
    """Keep the train rows that fit the model's positions (``task.too_long``: a longer row
    stops the run, or is dropped with one line saying how many); the number dropped."""
    data = pipeline.train_data
    budget = pipeline.online.max_new_tokens if pipeline.online else 0
    lengths = row_lengths(data, rt.tokenizer, TARGETS[pipeline.mode], budget)
    where = f"{pipeline.source} (train split)"
    pipeline.train_data, skipped = fit_positions(data, lengths, rt.max_positions, pipeline.too_long, where)
    if skipped and rt.accelerator.is_main_process:
        notice(f"{where}: skipped {skipped} of {len(data)} rows longer than the model's "
               f"{rt.max_positions} positions (task.too_long=skip)")
    return skipped


def set_step_seed(seed: int, step: int, rank: int) -> None:
    """Seed every RNG from (seed, step, rank), so a resumed run draws what an uninterrupted
    one would at the same step without restoring RNG state."""
    value = (seed * 1_000_003 + (step + 1) * 9_973 + rank * 101) % (2**31)
    random.seed(value)
    torch.manual_seed(value)


def run(cfg: DictConfig) -> dict[str, float]:
    """``rlloom train``: the config validated whole, ``output_dir`` checked and the tracking
    store reached, the warm start first when one is configured, then the run itself; the
    process group (under ``accelerate launch``) is closed at the end."""
    validate_config(cfg, get_registry(disabled_plugins(cfg)))
    settings = load_settings(cfg)
    check_output_dir(settings.output_dir)
    check_store(settings.tracking.uri, settings.tracking.experiment)
    trainer = Trainer(prepare_warm_start(cfg))
    try:
        return trainer.train()
    finally:
        trainer.runtime.accelerator.end_training()
