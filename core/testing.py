"""Helpers for testing components: the contract check of a kind, a RolloutBatch from just
the fields a component reads, a plugin manager holding a plugin that is not installed, the
overrides that turn any preset into a seconds-long CPU run, and a real ``mlflow server`` on
loopback."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from rlloom.batch import RolloutBatch
from rlloom.kinds import conform
from rlloom.registry import PluginManager, make_plugin_manager, register_checked

_NOT_TENSORS = ("prompts", "completions", "columns")


def rollout_batch(mask: Any, group_ids: Any = None, **fields: Any) -> RolloutBatch:
    """A RolloutBatch of B rows around ``mask`` [B,T] (1 on real completion tokens).

    ``prompt_ids`` [B,1] zeros, ``prompt_mask`` [B,1] ones, ``completion_ids`` [B,T] zeros
    (all long); ``group_ids`` [B] defaults to ``arange(B)`` (each row its own group).
    ``fields`` (``rewards`` [B], ``values``/``advantages``/``old_logprobs``/... [B,T]) pass
    through: lists and numbers via ``torch.as_tensor``, tensors as they are (dtype kept).
    """
    mask = torch.as_tensor(mask)
    B, T = mask.shape
    for name, value in fields.items():
        if value is not None and not isinstance(value, Tensor) and name not in _NOT_TENSORS:
            fields[name] = torch.as_tensor(value)
    return RolloutBatch(
        prompt_ids=torch.zeros(B, 1, dtype=torch.long),
        prompt_mask=torch.ones(B, 1, dtype=torch.long),
        completion_ids=torch.zeros(B, T, dtype=torch.long),
        mask=mask,
        group_ids=torch.arange(B) if group_ids is None else torch.as_tensor(group_ids),
        **fields,
    )


def check_component(kind: str, component: Any) -> Any:
    """Check ``component`` against the contract of ``kind`` exactly as the engine does when it
    builds a pipeline (its methods, and the type of every attribute the engine reads); returns
    the declared attributes with the kind's defaults filled in. Raises ``ConfigError`` saying
    what is missing or wrong.

    In a plugin's tests: ``assert check_component("advantage", MyAdvantage()).requires == {"rewards"}``.
    """
    return conform(kind, component, kind)


def plugin_manager_with(*plugins: Any) -> PluginManager:
    """The builtins and installed plugins plus ``plugins`` (modules or objects with
    ``@hookimpl`` functions), each checked like an installed plugin (a misspelled hook raises
    ``PluginLoadError``). For a plugin's tests before it is installed:
    ``Registry.from_plugins(pm)`` resolves its names, ``validate_config(cfg, registry)`` checks a
    config using them, and ``Trainer(cfg, plugin_manager=pm).train()`` runs one."""
    pm = make_plugin_manager()
    for plugin in plugins:
        if not pm.is_registered(plugin):  # else installed as well
            register_checked(pm, plugin)
    return pm


TINY = [
    "warm_start.config=null",
    "model.embedded.hidden_size=32",
    "model.embedded.num_layers=1",
    "model.embedded.num_heads=2",
    "model.embedded.intermediate_size=64",
    "task.num_train=64",
    "task.num_test=16",
    "task.max_value=9",
    "trainer.max_steps=2",
    "trainer.prompts_per_step=4",
    "trainer.micro_batch_size=8",
    "trainer.batch_size=8",
    "trainer.eval_every=2",
    "trainer.eval_size=8",
]
"""Overrides that turn any preset into a seconds-long CPU run: no warm start, a one-layer
embedded model, a small task, two steps."""


def tiny_run(directory: str | Path) -> list[str]:
    """``TINY`` writing its outputs and its MLflow store into ``directory``."""
    directory = Path(directory)
    return [*TINY, f"output_dir={directory / 'run'}", f"tracking.uri=sqlite:///{directory / 'mlflow.db'}"]


SERVER_START_S = 120
"""How long ``mlflow_server`` waits for a new server to answer."""


@contextlib.contextmanager
def mlflow_server(store_dir: str | Path, log: str | Path | None = None) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port; yields its URI once ``/health`` answers
    and stops it (and its workers) on exit.

    Its store is ``store_dir/mlflow.db`` (SQLite, made when missing), the artifacts it proxies go
    to ``store_dir/artifacts``, and its output to ``log`` (default ``store_dir/server.log``).
    When it does not answer within ``SERVER_START_S`` seconds it is stopped and ``RuntimeError``
    names its URI, its log and the log's last lines.

    ``with mlflow_server(tmp_path) as uri: main(["train", preset, *TINY, f"tracking.uri={uri}"])``.
    """
    store_dir = Path(store_dir)
    log = Path(log) if log else store_dir / "server.log"
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = _start_server(store_dir, port, out)
        try:
            if not _wait_until_healthy(uri, proc):
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow server did not answer on {uri}/health; its log ({log}) ends:\n{tail}")
            yield uri
        finally:
            _stop(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(store_dir: Path, port: int, out: Any) -> subprocess.Popen:
    """``python -m mlflow server`` on loopback ``port``, in its own process group (it forks workers)."""
    # the server's background job runner is not needed here and slows its start a lot
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{store_dir / 'mlflow.db'}",
         "--artifacts-destination", str(store_dir / "artifacts")],
        stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def _wait_until_healthy(uri: str, proc: subprocess.Popen) -> bool:
    """True once ``uri/health`` answers 200; False when the server exits or ``SERVER_START_S`` passes."""
    deadline = time.monotonic() + SERVER_START_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL when it has not exited after 15 s."""
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
