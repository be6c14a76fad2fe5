"""A tracking store that cannot be reached stops a run within seconds, in one line; a store
that goes away mid-run never blocks or stops training: what is logged meanwhile is kept and
sent when it is back, and the run ends FINISHED with every step logged once."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

from rlloom.cli import main
from conftest import TINY
from faults import GRPO



def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1:``port`` with a SQLite store in ``root``, started
    in its own process group so ``stop`` ends it and every process it spawned."""

    def __init__(self, root, port: int):
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, wait_s: float = 90.0) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}", "--artifacts-destination", str(self.root / "artifacts")],
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path, free_port())
    srv.start()
    yield srv
    srv.stop()


def only_run(uri: str):
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("rlloom").experiment_id])
    return client, run


def logged_steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_closed_port_fails_within_seconds_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    port = free_port()
    start = time.monotonic()
    code = main(["train", GRPO, f"tracking.uri=http://127.0.0.1:{port}", f"output_dir={tmp_path / 'run'}"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"rlloom: error: tracking.uri http://127.0.0.1:{port}: the tracking store cannot be reached "
                   f"(connection refused); start it, or set tracking.uri to a reachable store (e.g. sqlite:///mlflow.db)"]
    assert elapsed < 30
    assert not (tmp_path / "run" / "warm_start").exists()  # checked before the warm start: nothing trained


def train_process(tmp_path, uri: str, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rlloom.cli", "train", GRPO, *TINY, f"output_dir={tmp_path / 'run'}",
         f"tracking.uri={uri}", *overrides],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_step(uri: str, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until the run's ``reward/mean`` reaches ``step`` in the store."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            client, run = only_run(uri)
            if max(logged_steps(client, run.info.run_id, "reward/mean"), default=0) >= step:
                return
        except (ValueError, AttributeError, mlflow.exceptions.MlflowException):
            pass  # the experiment or run does not exist yet
        time.sleep(0.5)
    raise AssertionError(f"step {step} never logged: {proc.communicate()[1][-3000:] if proc.poll() is not None else 'timeout'}")


@pytest.mark.slow
def test_a_server_that_dies_mid_run_neither_blocks_nor_loses_metrics(tmp_path, server):
    steps = 30
    proc = train_process(tmp_path, server.uri, f"trainer.max_steps={steps}", "trainer.eval_every=5")
    try:
        wait_for_step(server.uri, 3, proc)
        server.stop()
        down = time.time() * 1000
        time.sleep(8)  # training goes on while the store is gone
        server.start()
        up = time.time() * 1000
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("rlloom:")]
    assert lines[0].startswith(f"rlloom: tracking store {server.uri} unreachable (connection refused); training goes on")
    assert lines[1].startswith(f"rlloom: tracking store {server.uri} is back after ")
    assert len(lines) == 2 and "done:" in out
    client, run = only_run(server.uri)
    assert run.info.status == "FINISHED"
    for key in run.data.metrics:  # every metric once per step
        history = logged_steps(client, run.info.run_id, key)
        assert len(history) == len(set(history)), key
    assert logged_steps(client, run.info.run_id, "reward/mean") == list(range(1, steps + 1))
    assert logged_steps(client, run.info.run_id, "eval/accuracy") == list(range(0, steps + 1, 5))
    stamps = [m.timestamp for m in client.get_metric_history(run.info.run_id, "reward/mean")]
    assert any(down < t < up for t in stamps)  # steps trained while the store was down
    tables = [f.path for f in client.list_artifacts(run.info.run_id, "completions")]
    assert tables == [f"completions/step_{s:06d}.json" for s in range(5, steps + 1, 5)]


@pytest.mark.slow
def test_a_server_gone_at_the_end_finishes_training_and_says_what_was_not_logged(tmp_path, server):
    proc = train_process(tmp_path, server.uri, "trainer.max_steps=12", "trainer.eval_every=4",
                         "tracking.flush_timeout=3")
    try:
        wait_for_step(server.uri, 2, proc)
        server.stop()
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()  # the trained model is kept
    lines = [line for line in err.splitlines() if line.startswith("rlloom:")]
    assert len(lines) == 2
    assert lines[1].startswith(f"rlloom: tracking store {server.uri} unreachable for 3 s at the end of the run; "
                               f"not logged to run ")
    assert "metric values (steps " in lines[1] and "-12)" in lines[1] and "tables" in lines[1]
    assert lines[1].endswith("1 run end (the run stays RUNNING there until `resume=true` ends it)")
