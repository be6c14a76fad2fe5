"""The warm start: another config run first, whose final model the run trains from."""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlloom.settings import load_settings

FINAL_MODEL = "final"
WARM_START_TAGS = {"phase": "warm_start"}
"""The tags of a warm start's MLflow run (``rlloom compare`` finds it by them)."""


def prepare_warm_start(cfg: DictConfig) -> DictConfig:
    """Run the warm start of ``cfg`` when one is configured; returns ``cfg`` with ``model.path`` set.

    ``warm_start.config`` (a preset name or path) runs into
    ``<output_dir>/warm_start`` once (an existing final model there is reused) and its final
    model becomes ``model.path``. Its MLflow run is tagged ``phase: warm_start`` and is nested
    under ``tracking.parent_run_id`` when ``cfg`` has one (the parent of a compare). Without a
    warm start, or with ``model.path`` given, ``cfg`` comes back unchanged.
    """
    from rlloom.config import find_config, load_config
    from rlloom.engine import Trainer

    settings = load_settings(cfg)
    ws = settings.warm_start
    if not ws.config or settings.model.path:
        return cfg
    out = Path(settings.output_dir) / "warm_start"
    final = out / FINAL_MODEL
    if not final.is_dir():
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
        Trainer(load_config(find_config(ws.config), overrides), warm_start=True).train()
    return OmegaConf.merge(cfg, {"model": {"path": str(final)}})
