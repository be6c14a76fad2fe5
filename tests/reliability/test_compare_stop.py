"""SIGTERM (or SIGHUP) to ``rlloom compare`` stops everything: the running children end their runs KILLED
and keep their checkpoints, no further child starts, the parent run is KILLED, one line names
the children stopped and their logs, and no process is left behind; exit status 143."""
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
from faults import GRPO, create_store, runs, spawn, tiny_run

from rlloom.checkpoint import COMPLETE_FILE, scan

pytestmark = pytest.mark.slow

VALUES = ("0.01", "0.02", "0.03")  # two run at once; the third must never start
STEP_LINE = re.compile(r"^\[RL\] step +[1-9]\d*/", re.MULTILINE)


def compare_command(tmp_path: Path, output_dir: Path) -> list[str]:
    run = ["trainer.max_steps=100000", "trainer.eval_every=2", "trainer.checkpoint_every=2"]
    overrides = tiny_run(tmp_path, output_dir, *run)
    return [sys.executable, "-m", "rlloom.cli", "compare", GRPO, *overrides,
            "--vary", f"kl.coef={','.join(VALUES)}", "--parallel", "2"]


def processes_under(directory: Path) -> dict[int, str]:
    """The live processes whose command line names ``directory`` (pid → command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # it ended while being read
            continue
        if str(directory) in cmdline and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def wait_until_training(children: list[Path], proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until every child has a step line in its log and a complete checkpoint."""
    deadline = time.monotonic() + timeout
    while True:
        logs = [d / "compare.log" for d in children]
        if all(
            log.exists() and STEP_LINE.search(log.read_text(errors="replace"))
            and any((c / COMPLETE_FILE).exists() for c in (d / "checkpoints").glob("step_*"))
            for d, log in zip(children, logs)
        ):
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the children never trained"
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: the terminal closed
def test_sigterm_stops_the_running_children_and_ends_every_run_killed(tmp_path, signum):
    create_store(tmp_path)
    out = tmp_path / "cmp"
    root = out / "compare"
    children = [root / f"kl.coef={v}" for v in VALUES]
    proc = spawn(compare_command(tmp_path, out), tmp_path)
    try:
        wait_until_training(children[:2], proc)
        pids = processes_under(root)
        assert len(pids) == 2, pids  # one process per running child
        proc.send_signal(signum)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=120)
        stopped_in = time.monotonic() - sent
        left = processes_under(root)
    finally:  # nothing outlives the test, whatever failed
        proc.kill()
        for pid in processes_under(root):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    assert proc.returncode == 128 + signum, err
    assert stopped_in < 60
    line = err.strip().splitlines()[-1]
    assert line.startswith(
        f"rlloom: terminated ({signal.Signals(signum).name}); compare stopped with 0/3 children done; stopped the running ones, their "
        "MLflow runs KILLED and their last checkpoints kept (resume=true on a child continues it): "
    ), err
    for child in children[:2]:
        assert f"{child.name} (log: {child / 'compare.log'})" in line
    assert children[2].name not in line and not children[2].exists()
    assert "Traceback" not in err

    assert left == {}  # the children seen running before (pids) included
    for child in children[:2]:
        log = (child / "compare.log").read_text()
        assert "rlloom: terminated (SIGTERM); the last checkpoint is kept" in log  # each ended itself
        complete, _ = scan(child)
        assert complete and not (child / "final").exists()

    by_name = {r.info.run_name: r for r in runs(tmp_path)}
    assert set(by_name) == {"cmp-compare", "kl.coef=0.01", "kl.coef=0.02"}
    assert {name: r.info.status for name, r in by_name.items()} == dict.fromkeys(by_name, "KILLED")
    parent_id = by_name["cmp-compare"].info.run_id
    assert by_name["kl.coef=0.01"].data.tags["compare.parent"] == parent_id
    assert by_name["kl.coef=0.02"].data.tags["compare.parent"] == parent_id
