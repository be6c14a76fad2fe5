"""A run killed with SIGKILL and resumed logs every metric exactly once per step, into the same
run; resuming against a tracking store that lacks the run starts a new run tagged with where
it resumed from, and says so in one line."""
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from rlloom.checkpoint import scan

from conftest import TINY
from faults import GRPO

RESUMABLE = [
    *TINY,
    "trainer.eval_every=3",
    "trainer.checkpoint_every=4",
]
STEPS = 12


def train(tmp_path, uri: str, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rlloom.cli", "train", GRPO, *RESUMABLE, f"trainer.max_steps={STEPS}",
         f"output_dir={tmp_path / 'run'}", f"tracking.uri={uri}", *overrides],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def runs(uri: str):
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("rlloom")
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def kill_after_step(tmp_path, uri: str, step: int) -> str:
    """Start a run, SIGKILL it once ``reward/mean`` of ``step`` is in the store; its run id."""
    proc = train(tmp_path, uri)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            client, found = runs(uri)
            if found and max(steps(client, found[0].info.run_id, "reward/mean"), default=0) >= step:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return found[0].info.run_id
            time.sleep(0.2)
    finally:
        proc.kill()
    raise AssertionError(f"step {step} never logged: {proc.communicate()[1][-3000:]}")


@pytest.mark.slow
def test_a_resumed_run_logs_every_metric_once_per_step(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = kill_after_step(tmp_path, uri, 6)  # checkpoint at step 4: steps 5, 6 run twice
    client, _ = runs(uri)
    logged_before = steps(client, run_id, "reward/mean")
    assert max(logged_before) >= 6 and (tmp_path / "run" / "checkpoints" / "step_0000004").is_dir()
    out, err = train(tmp_path, uri, "resume=true").communicate(timeout=300)
    assert "done:" in out, err[-3000:]
    client, found = runs(uri)
    assert [r.info.run_id for r in found] == [run_id]  # the same run, no second one
    run = found[0]
    assert run.info.status == "FINISHED"
    for key in run.data.metrics:
        history = steps(client, run_id, key)
        assert len(history) == len(set(history)), f"{key} logged twice at a step: {history}"
    assert steps(client, run_id, "reward/mean") == list(range(1, STEPS + 1))
    assert steps(client, run_id, "eval/accuracy") == [0, 3, 6, 9, 12]


@pytest.mark.slow
def test_resuming_into_a_store_without_the_run_starts_a_tagged_new_run(tmp_path):
    old_uri = f"sqlite:///{tmp_path / 'old.db'}"
    old_id = kill_after_step(tmp_path, old_uri, 5)
    newest_checkpoint = scan(tmp_path / "run")[0][0]
    new_uri = f"sqlite:///{tmp_path / 'new.db'}"
    proc = train(tmp_path, new_uri, "resume=true")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    # the newest complete checkpoint when the kill landed (the store lags training a little)
    checkpoint = newest_checkpoint
    resumed_at = int(checkpoint.name.removeprefix("step_"))
    lines = [line for line in err.splitlines() if line.startswith("rlloom:")]
    assert lines == [f"rlloom: resume: from {checkpoint}", f"rlloom: run {old_id} is not in the tracking store {new_uri}; resuming from {checkpoint} "
                     f"into a new run, tagged resumed_from.run_id and resumed_from.checkpoint"]
    client, (run,) = runs(new_uri)
    assert run.info.status == "FINISHED" and run.info.run_id != old_id
    assert run.data.tags["resumed_from.run_id"] == old_id
    assert run.data.tags["resumed_from.checkpoint"] == str(checkpoint)
    assert run.data.params["trainer.max_steps"] == str(STEPS)  # the new run has its config
    assert steps(client, run.info.run_id, "reward/mean") == list(range(resumed_at + 1, STEPS + 1))
