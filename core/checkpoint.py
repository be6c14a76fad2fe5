"""Checkpoints: everything needed to resume, written atomically.

A checkpoint is a directory ``<output_dir>/checkpoints/step_<N>``: the policy (safetensors via
``save_pretrained``), ``trainer_state.pt`` (optimizer, schedule, RNG, step, MLflow run id,
component state such as the reference policy) loaded with ``weights_only=True`` so nothing
arbitrary is unpickled. It is written to a temporary directory and renamed into place, so a
run killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from rlloom.errors import TrainingError

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
