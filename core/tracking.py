"""MLflow logging of a training run (``rlloom compare`` manages its parent and child runs
through the MLflow client itself, in ``compare.py``).

One run per training. Tracking goes to ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else an
embedded SQLite store ``mlflow.db`` in the working directory. Only the main process logs;
metrics are logged asynchronously so logging never blocks a step.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlloom.errors import ERROR_TAG_LEN

DEFAULT_URI = "sqlite:///mlflow.db"
MAX_PARAM_LEN = 500
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
"""The experiment kind MLflow's UI calls "Machine learning". A UI that takes its landing page
from the kind opens such an experiment on its runs and charts, not on the GenAI overview of
traces; one with a GenAI / model-training switch (MLflow 3.17) follows the switch instead,
which a page address can set (``experiment_url``)."""
UI_ADDRESS = "http://127.0.0.1:5000"
"""Where ``mlflow ui`` serves by default (the UI of a local store)."""


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def experiment_id(client: Any, name: str) -> str:
    """The id of experiment ``name``, created when missing. Under MLflow 3 an experiment
    without a kind is marked a model-training one (``EXPERIMENT_KIND_TAG``); a kind already
    set (by a user, in the UI) stays."""
    import mlflow

    experiment = client.get_experiment_by_name(name)
    exp_id = experiment.experiment_id if experiment else client.create_experiment(name)
    tags = experiment.tags if experiment else {}
    if int(mlflow.__version__.split(".")[0]) >= 3 and EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return exp_id


def experiment_url(uri: str, experiment_id: str, **query: str) -> str:
    """The UI page of an experiment's runs: on the tracking server itself, or where ``mlflow ui``
    serves a local store. ``workflowType=machine_learning`` opens the model-training views of
    MLflow UIs that have a GenAI / model-training switch (which otherwise decides the landing
    page); ``query`` adds the page's other parameters (``searchFilter``, ``orderByKey``, ...)."""
    from urllib.parse import quote, urlencode

    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS
    params = urlencode({"workflowType": "machine_learning", **query}, quote_via=quote)
    return f"{base}/#/experiments/{experiment_id}/runs?{params}"


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists → {"a.b.0.c": "value"} with values as strings (MLflow params)."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: str(tree)[:MAX_PARAM_LEN]}
    flat: dict[str, str] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class Tracker:
    """Starts or resumes a run and logs params, tags, metrics and artifacts to it."""

    def __init__(self, uri: str | None, experiment: str, enabled: bool = True):
        self.enabled = enabled
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        self.run_id: str | None = None

    def start(self, run_name: str | None, run_id: str | None = None, parent_run_id: str | None = None) -> str | None:
        if not self.enabled:
            return None
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment_id=experiment_id(mlflow.MlflowClient(self.uri), self.experiment))
        tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags)
        self.run_id = run.info.run_id
        return self.run_id

    def log_config(self, config: dict[str, Any], tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        import mlflow

        params = flatten(config)
        keys = sorted(params)
        for i in range(0, len(keys), 100):
            mlflow.log_params({k: params[k] for k in keys[i : i + 100]})
        mlflow.set_tags(tags)
        mlflow.log_text(OmegaConf.to_yaml(OmegaConf.create(config)), "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled and metrics:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, synchronous=False)

    def log_table(self, rows: dict[str, list], artifact_file: str) -> None:
        """Columns of equal length as an MLflow table artifact (``artifact_file`` ends .json)."""
        if self.enabled:
            import warnings

            import mlflow

            with warnings.catch_warnings():  # MLflow's own pandas usage warns about deprecations
                warnings.simplefilter("ignore")
                mlflow.log_table(data=rows, artifact_file=artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifact(str(path), artifact_path)

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the run with ``status``; a failed run gets its one-line reason as tag ``error``."""
        if self.enabled:
            import mlflow

            mlflow.flush_async_logging()
            if error:
                mlflow.set_tag("error", error[:ERROR_TAG_LEN])
            mlflow.end_run(status=status)


def run_tags(cfg: Any, mode: str, reward_names: list[str], registry: Any) -> dict[str, str]:
    """The tags of a run: its algorithm and mode, each component's name (the rewards' sorted,
    so reordering them changes nothing), and ``plugin.<package>`` = version for rlloom and for
    the package of every plugin whose component the run uses (nested components included)."""
    from rlloom.config import component_specs
    from rlloom.kinds import KINDS
    from rlloom.registry import Plugin, package_version, split_spec

    tags = {"algorithm": cfg.algorithm, "mode": mode}
    for kind in KINDS:
        if cfg[kind] is not None and kind != "reward":
            tags[f"component.{kind}"] = split_spec(cfg[kind], kind)[0]
    tags["component.reward"] = ",".join(sorted(reward_names))
    used = {registry.plugin(entry.plugin)
            for kind, path, spec in component_specs(cfg, registry)
            for entry in registry.entries_of(kind, spec, path)}
    for plugin in sorted(used | {Plugin("rlloom", "rlloom", package_version("rlloom"))}, key=lambda p: p.name):
        tags[f"plugin.{plugin.package or plugin.name}"] = plugin.version or "unknown"
    return tags
