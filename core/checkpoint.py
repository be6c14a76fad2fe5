"""Checkpoints: everything needed to resume, written atomically.

A checkpoint is a directory ``<output_dir>/checkpoints/step_<N>``: the policy (safetensors via
``save_pretrained``), ``trainer_state.pt`` (optimizer, schedule, step, MLflow run id, the
training mode's component state such as the reference policy) loaded with
``weights_only=True`` so nothing arbitrary is unpickled. RNG state is not saved: every step
reseeds from (seed, step, rank). A checkpoint is written to a temporary directory and renamed
into place, so a run killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rlloom.errors import TrainingError
from rlloom.models import PolicyWithValue, save_policy, unwrap_lm
from rlloom.runtime import Runtime, TrainingMode

STATE_FILE = "trainer_state.pt"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:07d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, or None."""
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(directory: Path, write_model, state: dict[str, Any], keep: int = 2) -> None:
    """``write_model(tmp_dir)`` and ``state`` into ``directory`` atomically; keeps the newest
    ``keep`` checkpoints next to it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_model(tmp)
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    old = sorted(p for p in directory.parent.glob("step_*") if not p.name.endswith(".tmp"))
    for stale in old[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)


def load_state(directory: Path) -> dict[str, Any]:
    try:
        return torch.load(directory / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as exc:  # a truncated or foreign file: say which
        raise TrainingError(f"checkpoint {directory} cannot be read ({type(exc).__name__}: {exc})") from None


def save(rt: Runtime, mode: TrainingMode, step: int, run_id: str | None) -> None:
    """Checkpoint the run after ``step`` steps (main process writes; all wait)."""
    if rt.accelerator.is_main_process:
        state = {
            "step": step,
            "run_id": run_id,
            "optimizer": rt.optimizer.state_dict(),
            "scheduler": rt.scheduler.state_dict(),
            "mode": mode.state_dict(),
        }
        save_checkpoint(checkpoint_dir(rt.cfg.output_dir, step), lambda d: save_policy(rt.policy, rt.tokenizer, d), state)
    rt.accelerator.wait_for_everyone()


def restore(rt: Runtime, mode: TrainingMode) -> tuple[int, str | None]:
    """Load the newest checkpoint of ``output_dir``: returns (next step, MLflow run id), or
    (0, None) when there is none."""
    directory = latest_checkpoint(rt.cfg.output_dir)
    if directory is None:
        return 0, None
    state = load_state(directory)
    from safetensors.torch import load_file

    weights = load_file(str(directory / "model.safetensors"))
    missing, unexpected = unwrap_lm(rt.policy).load_state_dict(weights, strict=False)
    if unexpected or any("embed" not in m and "lm_head" not in m for m in missing):
        raise TrainingError(f"checkpoint {directory} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if isinstance(rt.policy, PolicyWithValue):
        rt.policy.value_head.load_state_dict(load_file(str(directory / "value_head.safetensors")))
    rt.optimizer.load_state_dict(state["optimizer"])
    rt.scheduler.load_state_dict(state["scheduler"])
    mode.load_state_dict(state["mode"])
    return state["step"], state["run_id"]
