"""The warm start: another config run first, whose final model the run trains from.

``<output_dir>/warm_start/final`` is reused only when its fingerprint matches: a hash of the
warm start's resolved config (where it writes and logs left out) and of the identity of the
model it starts from (a local ``model.path``: each weight and config file's name, size and
modification time; a hub id: the id; the embedded model: its settings, in the config).
The fingerprint and that config are stored in ``<output_dir>/warm_start/fingerprint.json``.
A warm start whose fingerprint differs, or that has none, is run again (and the differing keys
are named); one that matches is reused and named.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlloom.errors import ConfigError
from rlloom.files import writing
from rlloom.progress import notice
from rlloom.settings import as_plain, load_settings

FINAL_MODEL = "final"
FINGERPRINT_FILE = "fingerprint.json"
WARM_START_TAGS = {"phase": "warm_start"}
"""The tags of a warm start's MLflow run, which tell it from the run it warm-starts."""
UNTRACKED_KEYS = ("output_dir", "tracking", "resume", "resume_fallback")  # where it writes and logs


def model_identity(path: str | None) -> Any:
    """What identifies the starting model: None (the embedded one, described by the config),
    a hub id, or for a local directory each file's (name, size, mtime)."""
    if not path:
        return None
    directory = Path(path)
    if not directory.is_dir():
        return path
    return [
        [f.name, f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(directory.iterdir())
        if f.is_file() and f.suffix in (".safetensors", ".json", ".model", ".txt")
    ]


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """``{"fingerprint": sha256, "config": {flat key: value}, "model": identity}`` of a warm
    start's loaded config."""
    from rlloom.tracking import flatten

    settings = load_settings(cfg)
    plain = {k: v for k, v in as_plain(settings).items() if k not in UNTRACKED_KEYS}
    record = {"config": flatten(plain), "model": model_identity(settings.model.path)}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": digest, **record}


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """The keys whose values differ between two fingerprints: ``a.b: 10 → 30, ...``."""
    before, after = old.get("config", {}), new["config"]
    changed = [f"{k}: {before.get(k, '(unset)')} → {after.get(k, '(unset)')}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if old.get("model") != new["model"]:
        changed.append("the starting model's files changed")
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


def prepare_warm_start(cfg: DictConfig) -> DictConfig:
    """Run the warm start of ``cfg`` when one is configured; returns ``cfg`` with ``model.path`` set.

    ``warm_start.config`` (a preset name or path) runs into ``<output_dir>/warm_start`` and its
    final model becomes ``model.path``; a final model there with the same fingerprint is reused.
    Its MLflow run is tagged ``phase: warm_start`` and is nested under ``tracking.parent_run_id``
    when ``cfg`` has one (the parent of a compare). Without a warm start, or with ``model.path`` given, ``cfg`` comes back unchanged.
    """
    from rlloom.config import load_config
    from rlloom.engine import Trainer

    settings = load_settings(cfg)
    ws = settings.warm_start
    if not ws.config or settings.model.path:
        return cfg
    out = Path(settings.output_dir) / "warm_start"
    final = out / FINAL_MODEL
    stamp = out / FINGERPRINT_FILE
    overrides = [
        *ws.overrides,
        f"output_dir={out}",
        f"seed={settings.seed}",
        f"tracking.experiment={settings.tracking.experiment}",
        f"tracking.run_name={settings.tracking.run_name or Path(settings.output_dir).name}-warm_start",
        f"tracking.tags={json.dumps(WARM_START_TAGS)}",
    ]
    if settings.tracking.uri:
        overrides.append(f"tracking.uri={settings.tracking.uri}")
    if settings.tracking.parent_run_id:
        overrides.append(f"tracking.parent_run_id={settings.tracking.parent_run_id}")
    try:
        ws_cfg = load_config(ws.config, overrides)
    except ConfigError as exc:
        raise ConfigError(f"warm_start.config: {exc}") from None
    wanted = fingerprint(ws_cfg)
    stored = _read(stamp)
    if final.is_dir() and stored.get("fingerprint") == wanted["fingerprint"]:
        notice(f"warm start: reusing {final} (fingerprint {wanted['fingerprint'][:12]})")
    else:
        if final.is_dir():
            why = f"its settings differ ({differences(stored, wanted)})" if stored else f"it has no {FINGERPRINT_FILE}"
            notice(f"warm start: {final} does not match this warm start, {why}; running it again")
        with writing("warm start", out):
            stamp.unlink(missing_ok=True)
            for stale in (final, out / "checkpoints"):
                shutil.rmtree(stale, ignore_errors=True)
        Trainer(ws_cfg, warm_start=True).train()
        with writing("warm-start fingerprint", stamp):
            stamp.write_text(json.dumps(wanted, indent=1, sort_keys=True))
    return OmegaConf.merge(cfg, {"model": {"path": str(final)}})


def _read(stamp: Path) -> dict[str, Any]:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}
