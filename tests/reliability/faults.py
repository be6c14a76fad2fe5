"""What the reliability tests share: a tiny ``rlloom train`` as the user runs it (a real
subprocess, or ``main`` in-process where no process is killed), its MLflow runs, and disks that
fail: a read-only directory and a small full filesystem."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import TINY

from rlloom.config import PRESET_DIR

GRPO = str(PRESET_DIR / "grpo.yaml")
ROLLOUT = ["sampler.num_generations=2", "sampler.max_new_tokens=3", "trainer.eval_every=0"]


def tiny_run(tmp_path: Path, output_dir: Path | str, *extra: str) -> list[str]:
    """Overrides for a tiny GRPO run into ``output_dir``, tracked in ``tmp_path/mlflow.db``."""
    return [*TINY, *ROLLOUT, f"output_dir={output_dir}", f"tracking.uri={tracking_uri(tmp_path)}", *extra]


def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def train_command(config: str, overrides: list[str], *options: str) -> list[str]:
    return [sys.executable, "-m", "rlloom.cli", "train", *options, config, *overrides]


def spawn(command: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """Start ``command`` as the user would (``env`` added to the environment), its stderr
    captured as text."""
    environment = {k: v for k, v in os.environ.items() if k != "RLLOOM_DEBUG"}
    environment.update(PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def create_store(tmp_path: Path, experiment: str = "rlloom") -> None:
    """Create the MLflow store and experiment first, so runs started at once do not race to."""
    mlflow.MlflowClient(tracking_uri(tmp_path)).create_experiment(experiment)


def runs(tmp_path: Path, experiment: str = "rlloom") -> list:
    """The MLflow runs of ``experiment`` in ``tmp_path/mlflow.db``, oldest first."""
    client = mlflow.MlflowClient(tracking_uri(tmp_path))
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else list(reversed(client.search_runs([exp.experiment_id])))


def error_lines(stderr: str) -> list[str]:
    """The ``rlloom: error:`` lines of a run's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("rlloom: error:")]


@pytest.fixture
def small_disk(tmp_path):
    """``mount(directory, kib)``: a tmpfs of ``kib`` KiB at ``directory`` (remount to resize),
    unmounted at the end. Skips where mounting is not allowed (not root)."""
    mounted: list[Path] = []

    def mount(directory: Path, kib: int) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        opts = f"size={kib}k" + (",remount" if directory in mounted else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(directory)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        if directory not in mounted:
            mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        subprocess.run(["umount", str(directory)], check=False)


@pytest.fixture
def read_only_dir(tmp_path, small_disk):
    """An existing directory nothing can be written to: mode 0555 for a normal user; for root,
    whom modes do not stop, a read-only tmpfs."""
    directory = tmp_path / "read_only"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    small_disk(directory, 64)
    subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
    yield directory
