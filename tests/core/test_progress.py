"""What a run prints: a heading per phase, plain lines with phase and step outside a terminal,
a bar in one; and a real ``rlloom train`` with a warm start, its stdout a pipe."""
import io
import re
import subprocess
import sys

import pytest
from rich.console import Console

from conftest import TINY
from rlloom.config import PRESET_DIR
from rlloom.progress import Progress, phase_name


def _steps(progress, total, eval_every):
    for step in range(1, total + 1):
        metrics = {"loss/total": 1.0 / step, "reward/mean": 0.1 * step}
        if step % eval_every == 0:
            metrics["eval/accuracy"] = 0.01 * step
        progress.update(metrics)


def test_plain_output_has_a_heading_and_lines_with_phase_and_step():
    out = io.StringIO()
    progress = Progress(phase_name("rollout", False), "grpo from m", 40, 0, True, Console(file=out, width=30))
    progress.evaluated({"eval/accuracy": 0.24, "eval/reward_mean": -0.5})
    _steps(progress, 40, eval_every=10)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "── RL: grpo from m, 40 steps ──"
    assert lines[1].startswith("[RL] step  0/40  eval/accuracy=0.240")
    # every line parses: none is wrapped at the console's width (30)
    stepped = [int(re.match(r"\[RL\] step +(\d+)/40  ", line).group(1)) for line in lines[1:]]
    # one line every ceil(40 / 20) = 2 steps; evaluations (10, 20, ...) fall on those steps
    assert stepped == [0, *range(2, 41, 2)]
    assert "eval/accuracy=0.100" in lines[stepped.index(10) + 1]
    assert "\x1b" not in out.getvalue()  # no bar, no colour codes in a file


def test_evaluations_off_the_cadence_get_their_own_line():
    out = io.StringIO()
    progress = Progress("warm start (SFT)", "sft", 200, 0, True, Console(file=out))
    _steps(progress, 25, eval_every=25)  # lines every 10 steps, evaluation at 25
    assert re.findall(r"^\[warm start \(SFT\)\] step +(\d+)/200  ", out.getvalue(), re.M) == ["10", "20", "25"]


def test_a_terminal_gets_a_bar_and_evaluation_lines_with_the_step():
    out = io.StringIO()
    progress = Progress("RL", "grpo", 4, 0, True, Console(file=out, force_terminal=True, width=120))
    _steps(progress, 4, eval_every=2)
    progress.close()
    text = out.getvalue()
    assert "── RL: grpo, 4 steps ──" in text
    assert "[RL] step 2/4  eval/accuracy=0.020" in text and "[RL] step 4/4  eval/accuracy=0.040" in text
    assert "━" in text  # the bar


def test_resumed_and_silent_processes():
    out = io.StringIO()
    Progress("RL", "grpo", 10, 6, True, Console(file=out))
    assert out.getvalue() == "── RL: grpo, 10 steps, resuming at step 6 ──\n"
    quiet = Progress("RL", "grpo", 10, 0, False)
    _steps(quiet, 10, eval_every=5)  # a process other than the main one prints nothing
    assert quiet.step == 10 and quiet.shown["eval/accuracy"] == 0.1


@pytest.mark.slow
def test_train_with_a_warm_start_into_a_pipe(tmp_path):
    """The user's view of ``rlloom train ... | tee log`` on a fresh store: a heading per phase,
    each evaluation with its phase and step, and no MLflow INFO lines."""
    tiny = [o for o in TINY if not o.startswith("warm_start")]
    warm = ",".join(o for o in TINY if o.startswith(("model.", "task.", "trainer.")) and "=" in o)
    cmd = [
        sys.executable, "-m", "rlloom.cli", "train", str(PRESET_DIR / "grpo.yaml"), *tiny,
        "sampler.num_generations=2", "sampler.max_new_tokens=3", f"output_dir={tmp_path / 'run'}",
        "warm_start.config=sft", f"warm_start.overrides=[{warm}]",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "── warm start (SFT): sft from a new embedded model, 2 steps ──" in out
    assert f"── RL: grpo from {tmp_path / 'run' / 'warm_start' / 'final'}, 2 steps ──" in out
    evals = re.findall(r"^\[(.+?)\] step (\d)/2  .*eval/accuracy=", out, re.M)
    assert evals == [("warm start (SFT)", "0"), ("warm start (SFT)", "2"), ("RL", "0"), ("RL", "2")]
    assert (tmp_path / "mlflow.db").is_file()  # a first run: MLflow created its tables here...
    assert "INFO" not in proc.stdout + proc.stderr  # ...without saying so
