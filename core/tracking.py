"""MLflow logging of a training run (``rlloom compare`` manages its parent and child runs
through the MLflow client itself, in ``compare.py``).

One run per training. Tracking goes to ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else an
embedded SQLite store ``mlflow.db`` in the working directory. Only the main process logs.

The store is checked before anything trains (``check_store``): an unreachable one stops the
run within seconds, in one line. Once the run exists, every call that logs to it goes through
an ``Outbox``: one background thread sends the calls in order, so a slow or unreachable store
never holds up a step; while the store is unreachable the calls wait and are retried, and the
end of the run waits at most ``tracking.flush_timeout`` seconds for them, then says in one
line what could not be logged. A resumed run logs each metric at most once per step: steps the
store already holds (logged before a kill, then run again from the last checkpoint) are not
logged twice.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from rlloom.errors import ERROR_TAG_LEN, TrackingError
from rlloom.progress import notice

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
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
"""MLflow's own HTTP retries back off for minutes; the outbox retries instead, so one request
fails within seconds (values already set in the environment are kept)."""
RETRY_S, MAX_RETRY_S = 1.0, 8.0  # the outbox's wait before retrying, doubling up to the maximum


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


def limit_http_requests() -> None:
    """Bound MLflow's HTTP requests (``HTTP_LIMITS``) unless the environment sets them."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def _reason(exc: BaseException) -> str:
    """Why a tracking call failed, in a few words: a refused connection or a timeout as such,
    else the error's text, shortened."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "Connection refused" in text or "Failed to establish a new connection" in text:
        return "connection refused"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s"
    return text if len(text) <= 160 else text[:157] + "..."


def check_store(uri: str | None, experiment: str) -> None:
    """Reach the tracking store and its experiment now, so an unreachable store stops the run
    before any training; ``TrackingError`` naming the URI otherwise."""
    from mlflow import MlflowClient

    limit_http_requests()
    uri = resolve_uri(uri)
    try:
        MlflowClient(uri).get_experiment_by_name(experiment)
    except Exception as exc:  # the store's client raises many kinds for an unreachable store
        raise TrackingError(
            f"tracking.uri {uri}: the tracking store cannot be reached ({_reason(exc)}); start it, or set "
            f"tracking.uri to a reachable store (e.g. sqlite:///mlflow.db)"
        ) from None


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


def _transient(exc: BaseException) -> bool:
    """Whether a failed tracking call may succeed later: the store unreachable, timing out or
    failing on its side (HTTP 5xx), not refusing the call itself (4xx)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.get_http_status_code() >= 500
    return isinstance(exc, (OSError, requests.exceptions.RequestException))


@dataclass
class Call:
    """One tracking call waiting in the outbox: what it logs (``what``, ``count`` of them, at
    ``step``) and the function that sends it."""

    what: str
    count: int
    step: int | None
    send: Callable[[], None]


class Outbox:
    """Tracking calls sent in order by one background thread.

    A call that fails for a transient reason (``_transient``) stays first in line and is
    retried after ``RETRY_S`` seconds, doubling to ``MAX_RETRY_S``; the first failure and the
    store's return are each said in one line (``say``). A call the store refuses is dropped
    and counted in ``refused``. ``close(timeout)`` waits at most ``timeout`` seconds for the
    line to empty and returns the calls that could not be sent.
    """

    def __init__(self, uri: str, say: Callable[[str], None]):
        self.uri, self.say = uri, say
        self.refused: list[str] = []
        self._calls: deque[Call] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rlloom-tracking", daemon=True)
        self._thread.start()

    def put(self, call: Call) -> None:
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()

    def _run(self) -> None:
        delay, outage_since = RETRY_S, None
        while True:
            with self._cond:
                while not self._calls and not self._closed:
                    self._cond.wait()
                if not self._calls:
                    return
                call = self._calls[0]
            try:
                call.send()
            except Exception as exc:  # any failure of the store's client, sorted by _transient
                if not _transient(exc):
                    self.refused.append(f"{call.what}: {_reason(exc)}")
                    self._done()
                    continue
                if outage_since is None:
                    outage_since = time.monotonic()
                    self.say(f"tracking store {self.uri} unreachable ({_reason(exc)}); training goes on, "
                             f"what it logs is kept and sent when the store is back")
                with self._cond:
                    self._cond.wait(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            self._done()
            if outage_since is not None:
                self.say(f"tracking store {self.uri} is back after {time.monotonic() - outage_since:.0f} s; "
                         f"sending what was kept")
                delay, outage_since = RETRY_S, None

    def _done(self) -> None:
        with self._cond:
            self._calls.popleft()
            self._cond.notify_all()

    def close(self, timeout: float) -> list[Call]:
        """Wait at most ``timeout`` seconds for every call to be sent; the calls left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while self._calls and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return list(self._calls)


def _unsent_summary(calls: list[Call]) -> str:
    """``"58 metric values (steps 3-7), 1 table, the run's end"``: what ``calls`` would have logged."""
    parts = []
    for what in dict.fromkeys(c.what for c in calls):
        group = [c for c in calls if c.what == what]
        steps = [c.step for c in group if c.step is not None]
        span = f" (steps {min(steps)}-{max(steps)})" if steps and min(steps) != max(steps) else (f" (step {steps[0]})" if steps else "")
        parts.append(f"{sum(c.count for c in group)} {what}{span}")
    return ", ".join(parts)


class Tracker:
    """Starts or resumes a run and logs params, tags, metrics and artifacts to it through an
    ``Outbox`` (``enabled=False``: a process that does not log)."""

    def __init__(self, uri: str | None, experiment: str, enabled: bool = True, flush_timeout: float = 60.0):
        self.enabled = enabled
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        self.flush_timeout = flush_timeout
        self.run_id: str | None = None
        self.resumed = False  # continuing a run the store holds (its params are there already)
        self._last_step: dict[str, int] = {}  # a resumed run: the last step the store holds per metric
        self._client: Any = None
        self._outbox: Outbox | None = None

    def start(self, run_name: str | None, run_id: str | None = None, parent_run_id: str | None = None,
              resumed_from: str | None = None) -> str | None:
        """Continue run ``run_id`` when the store holds it, else create a run (tagged
        ``resumed_from.run_id`` and ``resumed_from.checkpoint`` when resuming from checkpoint
        ``resumed_from`` into a store that lacks ``run_id``); returns its id."""
        if not self.enabled:
            return None
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        from mlflow.tracking.context.registry import resolve_tags

        limit_http_requests()
        try:
            self._client = client = MlflowClient(self.uri)
            if run_id is not None:
                try:
                    client.get_run(run_id)
                except MlflowException as exc:
                    if _transient(exc):
                        raise
                    notice(f"run {run_id} is not in the tracking store {self.uri}; resuming from {resumed_from} "
                           f"into a new run, tagged resumed_from.run_id and resumed_from.checkpoint")
                else:
                    client.update_run(run_id, status="RUNNING")
                    self.run_id, self.resumed = run_id, True
                    self._last_step = self._logged_steps(run_id)
            if not self.resumed:
                tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
                if run_id is not None:
                    tags.update({"resumed_from.run_id": run_id, "resumed_from.checkpoint": str(resumed_from)})
                run = client.create_run(experiment_id(client, self.experiment), tags=resolve_tags(tags), run_name=run_name)
                self.run_id = run.info.run_id
        except Exception as exc:  # the store failed while the run was being set up
            raise TrackingError(f"tracking.uri {self.uri}: cannot start the run ({_reason(exc)})") from None
        self._outbox = Outbox(self.uri, notice)
        return self.run_id

    def _logged_steps(self, run_id: str) -> dict[str, int]:
        """The last step the store holds of each metric of run ``run_id``."""
        keys = self._client.get_run(run_id).data.metrics
        return {key: max(m.step for m in self._client.get_metric_history(run_id, key)) for key in keys}

    def _put(self, what: str, count: int, step: int | None, send: Callable[[], None]) -> None:
        self._outbox.put(Call(what, count, step, send))

    def log_config(self, config: dict[str, Any], tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param, RunTag

        client, run_id = self._client, self.run_id
        params = flatten(config)
        keys = sorted(params)
        for i in range(0, len(keys), 100):
            chunk = [Param(k, params[k]) for k in keys[i : i + 100]]
            self._put("params", len(chunk), None, lambda chunk=chunk: client.log_batch(run_id, params=chunk))
        run_tags = [RunTag(k, str(v)) for k, v in tags.items()]
        self._put("tags", len(run_tags), None, lambda: client.log_batch(run_id, tags=run_tags))
        text = OmegaConf.to_yaml(OmegaConf.create(config))
        self._put("artifacts", 1, None, lambda: client.log_text(run_id, text, "config.yaml"))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log ``metrics`` at ``step``, leaving out those a resumed run's store already holds
        at that step."""
        if not (self.enabled and metrics):
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if step > self._last_step.get(k, -1)]
        if batch:
            client, run_id = self._client, self.run_id
            self._put("metric values", len(batch), step, lambda: client.log_batch(run_id, metrics=batch))

    def log_table(self, rows: dict[str, list], artifact_file: str, step: int) -> None:
        """Columns of equal length as an MLflow table artifact (``artifact_file`` ends .json),
        logged with the metrics of ``step`` (not again when a resumed run's store holds them)."""
        if not self.enabled or step <= max(self._last_step.values(), default=-1):
            return
        client, run_id = self._client, self.run_id

        def send() -> None:
            import warnings

            with warnings.catch_warnings():  # MLflow's own pandas usage warns about deprecations
                warnings.simplefilter("ignore")
                client.log_table(run_id, data=rows, artifact_file=artifact_file)

        self._put("tables", 1, step, send)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            client, run_id = self._client, self.run_id
            self._put("artifacts", 1, None, lambda: client.log_artifact(run_id, str(path), artifact_path))

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the run with ``status`` (a failed run tagged ``error`` with its one-line reason)
        once what was logged is sent; when the store stays unreachable for ``flush_timeout``
        seconds, say in one line what could not be logged."""
        if not self.enabled or self._outbox is None:
            return
        client, run_id = self._client, self.run_id
        if error:
            self._put("tags", 1, None, lambda: client.set_tag(run_id, "error", error[:ERROR_TAG_LEN]))
        self._put("run end", 1, None, lambda: client.set_terminated(run_id, status))
        unsent = self._outbox.close(self.flush_timeout)
        if unsent:
            still = " (the run stays RUNNING there until `resume=true` ends it)" if any(c.what == "run end" for c in unsent) else ""
            notice(f"tracking store {self.uri} unreachable for {self.flush_timeout:g} s at the end of the run; "
                   f"not logged to run {run_id}: {_unsent_summary(unsent)}{still}")
        if self._outbox.refused:
            notice(f"tracking store {self.uri} refused {len(self._outbox.refused)} call(s), first: {self._outbox.refused[0]}")


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
