"""Reference log-probs of preference pairs: computed once from the initial policy, cached with the run.

The DPO family (DPO, Rafailov et al. 2023, Eq. 7) compares the policy with a reference π_ref through
the sequence log-probs log π_ref(y|x) = Σ_t log π_ref(y_t | x, y_<t) of every pair's chosen and
rejected completions. π_ref is the policy the run starts from (``model.path``, the warm start,
or the embedded model), which never changes, so the sums are computed once before training
in batched passes without gradients and saved as ``<output_dir>/reference_logps.safetensors``:
no reference model is held in memory while training. The file carries a fingerprint of the
data, the tokenization and the model it was computed from; a cache whose fingerprint does not
match is recomputed, never reused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from rlloom.batch import PreferenceBatch
from rlloom.data import preference_batch, stacked_pairs
from rlloom.errors import TrainingError
from rlloom.forward import forward_rows

CACHE_FILE = "reference_logps.safetensors"


def sequence_logps(model, batch: PreferenceBatch) -> tuple[Tensor, Tensor]:
    """log π(y|x) = Σ_t log π(y_t|·) over the completion tokens of the chosen and the rejected
    rows of ``batch`` (on ``model``'s device): two [N] tensors, one forward over [2N,L]."""
    ids, attention, loss_mask = stacked_pairs(batch)
    logprobs = forward_rows(model, ids, attention).logprobs
    sums = (logprobs * loss_mask.to(logprobs.dtype)).sum(-1)
    return sums[: len(batch)], sums[len(batch) :]


@torch.no_grad()
def compute(model, dataset, tokenizer, max_length: int | None, micro_batch_size: int, device) -> tuple[Tensor, Tensor]:
    """Summed log-probs [N], [N] (chosen, rejected) of every row of ``dataset``, ``micro_batch_size``
    consecutive pairs per forward, the model in eval mode; float32 on CPU."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for idx in torch.arange(len(dataset)).split(max(1, micro_batch_size)):
        batch = preference_batch(dataset, idx.tolist(), tokenizer, max_length).to(device)
        c, r = sequence_logps(model, batch)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def model_identity(path: str | None, dtype: str, embedded: dict[str, Any], seed: int) -> dict[str, Any]:
    """What identifies the initial policy: its path with the size and modification time of its
    weight files (a re-run warm start writes new ones), or the embedded model's settings and seed."""
    if not path:
        return {"embedded": embedded, "seed": seed}
    local = Path(os.path.expanduser(path))
    files = sorted(local.glob("*.safetensors")) if local.is_dir() else []
    return {"path": path, "dtype": dtype, "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def fingerprint(splits: dict[str, Any], model: dict[str, Any], tokenizer, max_length: int | None) -> str:
    """SHA-256 of the pairs' texts per split, the model identity, the chat template and ``max_length``."""
    h = hashlib.sha256()
    setup = {"model": model, "max_length": max_length, "chat_template": getattr(tokenizer, "chat_template", None)}
    h.update(json.dumps(setup, sort_keys=True, default=str).encode())
    for name in sorted(splits):
        h.update(f"\0split:{name}:{len(splits[name])}".encode())
        for column in ("prompt", "chosen", "rejected"):
            for text in splits[name][column]:
                h.update(text.encode())
                h.update(b"\0")
    return h.hexdigest()


def _read(path: Path, key: str, names: list[str]) -> dict[str, tuple[Tensor, Tensor]] | None:
    """The cached sums when ``path`` holds every split under fingerprint ``key``; else None."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") != key:
                return None
            stored = set(f.keys())
            if any(f"{n}/{side}" not in stored for n in names for side in ("chosen", "rejected")):
                return None
            return {n: (f.get_tensor(f"{n}/chosen"), f.get_tensor(f"{n}/rejected")) for n in names}
    except Exception:  # a truncated or foreign file is recomputed like a stale one
        return None


def _write(path: Path, key: str, sums: dict[str, tuple[Tensor, Tensor]]) -> None:
    from safetensors.torch import save_file

    tensors = {f"{n}/{side}": t.contiguous() for n, pair in sums.items() for side, t in zip(("chosen", "rejected"), pair)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"fingerprint": key})
    os.replace(tmp, path)


def cached(
    path: str | Path,
    key: str,
    splits: dict[str, Any],
    compute_split: Callable[[Any], tuple[Tensor, Tensor]],
    main_process: bool = True,
    wait: Callable[[], None] = lambda: None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """{split: (chosen [N], rejected [N])} for every dataset of ``splits``, read from ``path``
    when its fingerprint is ``key``, otherwise ``compute_split(dataset)`` for each split and
    written there (atomically) by the main process; the others ``wait()`` and read it."""
    path = Path(path)
    names = sorted(splits)
    sums = _read(path, key, names)
    if sums is None and main_process:
        sums = {n: compute_split(splits[n]) for n in names}
        _write(path, key, sums)
    wait()
    if sums is None:
        sums = _read(path, key, names)
    if sums is None:
        raise TrainingError(f"{path}: the main process wrote no reference log-probs for this run")
    return sums
