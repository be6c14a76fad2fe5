"""Checkpoints: everything needed to resume, written atomically, verified when read.

A checkpoint is a directory ``<output_dir>/checkpoints/step_<N>``: the policy (safetensors via
``save_pretrained``), ``trainer_state.pt`` (optimizer, schedule, step, MLflow run id, the
training mode's component state such as the reference policy) loaded with
``weights_only=True`` so nothing arbitrary is unpickled, and ``complete.json``. RNG state is
not saved: every step reseeds from (seed, step, rank).

It is written into ``step_<N>.tmp``; every file is flushed to disk, then ``complete.json``
(each file's size) is written last and the directory renamed into place. A checkpoint is
complete only with its ``complete.json``, so a run killed or out of disk mid-write leaves an
incomplete directory that resume skips (and says so) for the newest complete one. Resume then
verifies what it loads (every file there with the size written, the weights readable, fitting
the model and finite); a bad newest checkpoint stops the run with one line naming the file, or
with ``resume_fallback: true`` is skipped for the one before it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from rlloom.errors import TrainingError
from rlloom.files import fsync_dir, fsync_file, writing
from rlloom.models import VALUE_HEAD_FILE, PolicyWithValue, save_policy, unwrap_lm
from rlloom.progress import notice
from rlloom.runtime import Runtime, TrainingMode
from rlloom.weights import read_weights

STATE_FILE = "trainer_state.pt"
MODEL_FILE = "model.safetensors"
COMPLETE_FILE = "complete.json"
TMP_SUFFIX = ".tmp"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:07d}"


def incomplete(directory: Path) -> str | None:
    """Why ``directory`` is not a complete checkpoint (its write did not finish), or None."""
    if directory.name.endswith(TMP_SUFFIX) or not (directory / COMPLETE_FILE).is_file():
        return "its write did not finish"
    return None


def check_files(directory: Path) -> None:
    """``TrainingError`` naming the file of the complete checkpoint ``directory`` that is
    missing or changed size since it was written."""
    try:
        sizes = json.loads((directory / COMPLETE_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{directory / COMPLETE_FILE} cannot be read ({exc})") from exc
    for name, size in sizes.items():
        file = directory / name
        if not file.is_file():
            raise TrainingError(f"{file} is missing")
        if file.stat().st_size != size:
            raise TrainingError(f"{file} has {file.stat().st_size} bytes, {size} were written (truncated or replaced)")


def scan(output_dir: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The complete checkpoints under ``output_dir`` (their write finished), newest first, and
    the incomplete ones with the reason each is not complete."""
    root = Path(output_dir) / "checkpoints"
    complete, skipped = [], []
    for directory in sorted(root.glob("step_*"), reverse=True) if root.is_dir() else []:
        why = incomplete(directory)
        if why is None:
            complete.append(directory)
        else:
            skipped.append((directory, why))
    return complete, skipped


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, or None."""
    complete, _ = scan(output_dir)
    return complete[0] if complete else None


def save_checkpoint(directory: Path, write_model: Callable[[Path], None], state: dict[str, Any], keep: int = 2) -> None:
    """``write_model(tmp_dir)`` and ``state`` into ``directory`` atomically (see the module
    docstring); keeps the newest ``keep`` complete checkpoints next to it and drops leftovers
    of unfinished writes. A write failure is an ``OutputError`` naming the directory; the
    checkpoints before it stay intact."""
    tmp = directory.with_name(directory.name + TMP_SUFFIX)
    with writing("checkpoint", tmp):
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write_model(tmp)
        with open(tmp / STATE_FILE, "wb") as f:  # a Python file: write errors surface as OSError
            torch.save(state, f)
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        for file in files:
            fsync_file(file)
        (tmp / COMPLETE_FILE).write_text(json.dumps({"step": state.get("step"), "files": {p.name: p.stat().st_size for p in files}}))
        fsync_file(tmp / COMPLETE_FILE)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
        fsync_dir(directory.parent)
    complete, skipped = scan(directory.parent.parent)
    for stale in [*complete[keep:], *(d for d, _ in skipped if d.name.endswith(TMP_SUFFIX))]:
        shutil.rmtree(stale, ignore_errors=True)


def load_state(directory: Path) -> dict[str, Any]:
    try:
        return torch.load(directory / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as exc:  # a truncated or foreign file: say which
        raise TrainingError(f"{directory / STATE_FILE} cannot be read ({type(exc).__name__}: {exc})") from exc


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


def read_checkpoint(directory: Path, policy: torch.nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The trainer state, the language model's weights and the value head's (None without
    one) of ``directory``, each verified against ``policy``; nothing is loaded into it."""
    check_files(directory)
    state = load_state(directory)
    weights = read_weights(directory / MODEL_FILE, unwrap_lm(policy))
    head = read_weights(directory / VALUE_HEAD_FILE, policy.value_head) if isinstance(policy, PolicyWithValue) else None
    return state, weights, head


def restore(rt: Runtime, mode: TrainingMode) -> tuple[int, str | None]:
    """Load the newest complete, verified checkpoint of ``output_dir``: returns (next step,
    MLflow run id), or (0, None) when there is none. Says which checkpoint it took and which
    it skipped."""
    complete, skipped = scan(rt.cfg.output_dir)
    main = rt.accelerator.is_main_process
    for directory in complete:
        try:
            state, weights, head = read_checkpoint(directory, rt.policy)
        except TrainingError as exc:
            if not rt.cfg.resume_fallback:
                raise TrainingError(f"{exc} (resume_fallback=true resumes from the checkpoint before it)") from exc
            skipped.append((directory, str(exc)))
            continue
        unwrap_lm(rt.policy).load_state_dict(weights, strict=False)
        if head is not None:
            rt.policy.value_head.load_state_dict(head)
        rt.optimizer.load_state_dict(state["optimizer"])
        rt.scheduler.load_state_dict(state["scheduler"])
        mode.load_state_dict(state["mode"])
        if main:
            notice(f"resume: from {directory}{_skipped(skipped)}")
        return state["step"], state["run_id"]
    if main:
        notice(f"resume: no complete checkpoint in {Path(rt.cfg.output_dir) / 'checkpoints'}, starting at step 0{_skipped(skipped)}")
    return 0, None


def _skipped(skipped: list[tuple[Path, str]]) -> str:
    return "".join(f"; skipped {d.name}: {why}" for d, why in skipped)
