"""Checkpoints survive a kill -9 and a full disk mid-write: resume skips the unfinished one (and
says so), takes the newest complete one, and ends bit-identical to a run never interrupted.
SIGTERM ends a run like Ctrl-C: a message, the MLflow run KILLED, the last checkpoint intact."""
import signal
import sys
import time

import pytest
import torch
from faults import GRPO, create_store, error_lines, runs, small_disk, spawn, tiny_run, train_command  # noqa: F401  (fixture)
from safetensors.torch import load_file

from rlloom.checkpoint import COMPLETE_FILE, STATE_FILE, scan

pytestmark = pytest.mark.slow

# `rlloom train` whose process SIGKILLs itself halfway through writing the trainer state of the
# checkpoint of step $DIE_SAVING_STEP: the state file is left half-written, as by kill -9.
KILL_MID_SAVE = """
import io, os, signal, sys
import torch
from rlloom.cli import main

save = torch.save
def save_then_die(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == int(os.environ["DIE_SAVING_STEP"]):
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, f, *args, **kwargs)
torch.save = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def _finish(proc, timeout=600):
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_kill_9_mid_checkpoint_then_resume_is_exact(tmp_path):
    run = ["trainer.max_steps=4", "trainer.checkpoint_every=1", "kl.coef=0.05"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    create_store(tmp_path)
    whole = spawn(train_command(GRPO, tiny_run(tmp_path, straight, *run)), tmp_path)
    dying = spawn(
        [sys.executable, "-c", KILL_MID_SAVE, "train", GRPO, *tiny_run(tmp_path, killed, *run)], tmp_path,
        DIE_SAVING_STEP="3",
    )
    code, err = _finish(dying)
    assert code == -signal.SIGKILL, err
    code, err = _finish(whole)
    assert code == 0, err

    # what the kill left: two complete checkpoints and a half-written third
    ckpts = killed / "checkpoints"
    complete, skipped = scan(killed)
    assert [d.name for d in complete] == ["step_0000002", "step_0000001"]
    assert [d.name for d, _ in skipped] == ["step_0000003.tmp"]
    partial = ckpts / "step_0000003.tmp" / STATE_FILE
    assert 0 < partial.stat().st_size < (ckpts / "step_0000002" / STATE_FILE).stat().st_size
    assert not (ckpts / "step_0000003.tmp" / COMPLETE_FILE).exists()

    code, err = _finish(spawn(train_command(GRPO, tiny_run(tmp_path, killed, *run, "resume=true")), tmp_path))
    assert code == 0, err
    assert f"rlloom: resume: from {ckpts / 'step_0000002'}; skipped step_0000003.tmp: its write did not finish" in err
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000003", "step_0000004"]  # leftover removed

    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(killed / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    by_name = {r.info.run_name: r for r in runs(tmp_path)}
    assert len(by_name) == 2 and by_name["killed"].info.status == "FINISHED"


# A checkpoint of the tiny run takes about 212 KiB of tmpfs (its trainer state 148 KiB): 560 KiB
# holds two, and the third's model files but not its trainer state.
DISK_KIB = 560


def test_disk_full_mid_checkpoint_is_one_line_and_resume_takes_the_last_complete(tmp_path, small_disk):
    out = small_disk(tmp_path / "disk", DISK_KIB) / "run"
    run = ["trainer.max_steps=3", "trainer.checkpoint_every=1"]
    code, err = _finish(spawn(train_command(GRPO, tiny_run(tmp_path, out, *run)), tmp_path))
    ckpts = out / "checkpoints"
    line = f"rlloom: error: cannot write checkpoint {ckpts / 'step_0000003.tmp'}: No space left on device"
    assert code == 1 and error_lines(err) == [line] and "Traceback" not in err
    [failed] = runs(tmp_path)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"] == line.removeprefix("rlloom: error: ")
    complete, skipped = scan(out)
    assert [d.name for d in complete] == ["step_0000002", "step_0000001"]
    assert [d.name for d, _ in skipped] == ["step_0000003.tmp"]

    small_disk(tmp_path / "disk", 8 * 1024)  # the user frees space, then resumes
    code, err = _finish(spawn(train_command(GRPO, tiny_run(tmp_path, out, *run, "resume=true")), tmp_path))
    assert code == 0, err
    assert f"rlloom: resume: from {ckpts / 'step_0000002'}; skipped step_0000003.tmp: its write did not finish" in err
    [resumed] = runs(tmp_path)
    assert resumed.info.run_id == failed.info.run_id and resumed.info.status == "FINISHED"
    assert (out / "final" / "model.safetensors").is_file()


def test_sigterm_ends_like_ctrl_c_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    run = ["trainer.max_steps=500", "trainer.checkpoint_every=2"]
    proc = spawn(train_command(GRPO, tiny_run(tmp_path, out, *run)), tmp_path)
    deadline = time.monotonic() + 300
    # any complete checkpoint: only the newest two are kept, and a fast step rotates step 2 out
    while not scan(out)[0]:
        assert proc.poll() is None and time.monotonic() < deadline, "the run never wrote its first checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc, timeout=120)
    assert code == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == (
        "rlloom: terminated (SIGTERM); the last checkpoint is kept, resume=true continues from it"
    )
    assert "Traceback" not in err
    [killed] = runs(tmp_path)
    assert killed.info.status == "KILLED"
    assert not (out / "final").exists()
    complete, _ = scan(out)
    last = int(complete[0].name.removeprefix("step_"))

    code, err = _finish(spawn(train_command(GRPO, tiny_run(tmp_path, out, "trainer.checkpoint_every=2", f"trainer.max_steps={last + 1}", "resume=true")), tmp_path))
    assert code == 0, err
    assert f"rlloom: resume: from {complete[0]}" in err
    [resumed] = runs(tmp_path)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
