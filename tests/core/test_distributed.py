"""Two processes under `accelerate launch` on CPU make the same update as one process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY

SCRIPT = Path(__file__).with_name("ddp_update_script.py")


def _one_and_two(tmp_path, overrides):
    """Run the script in one process (4 microbatches of 4 rows) and in two (2 each)."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, str(SCRIPT), str(one), *overrides, "trainer.micro_batch_size=4"],
                   check=True, cwd=tmp_path, capture_output=True)
    # accelerate's multi-process launcher (torchrun) with ACCELERATE_USE_CPU: gloo on CPU
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(SCRIPT), str(two), *overrides, "trainer.micro_batch_size=4"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "ACCELERATE_USE_CPU": "true"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    assert b["metrics"]["world"] == 2 and a["metrics"]["world"] == 1
    return a, b


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean"])
def test_two_processes_match_one(tmp_path, aggregation):
    overrides = [
        *TINY, f"output_dir={tmp_path}", "kl.coef=0.1", "trainer.max_grad_norm=1e6",
        f"aggregation={aggregation}", "tracking.uri=sqlite:///" + str(tmp_path / "m.db"),
    ]
    a, b = _one_and_two(tmp_path, overrides)
    assert a["grads"].keys() == b["grads"].keys() and a["grads"]
    for name in a["grads"]:
        torch.testing.assert_close(a["grads"][name], b["grads"][name], rtol=1e-4, atol=1e-6, msg=name)
    for key in ("loss/total", "loss/policy", "loss/kl", "grad_norm", "kl/mean", "entropy/mean"):
        assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-4, abs=1e-6), key


def test_two_processes_take_the_same_trust_region_step(tmp_path):
    # TRPO's Fisher-vector products and line search sum over microbatches and processes, so
    # the natural-gradient step of 2 processes × 2 microbatches is the one of 1 × 4.
    overrides = [
        *TINY, f"output_dir={tmp_path}", "update=natural_gradient", "policy_loss=trpo_surrogate",
        "kl=null", "ref_policy=none", "tracking.uri=sqlite:///" + str(tmp_path / "m.db"),
    ]
    a, b = _one_and_two(tmp_path, overrides)
    assert a["metrics"]["trpo/accepted"] == b["metrics"]["trpo/accepted"] == 1.0
    for key in ("trpo/kl", "trpo/expected_improve", "trpo/actual_improve", "trpo/backtracks", "grad_norm"):
        assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-3, abs=1e-7), key
    for name in a["params"]:
        torch.testing.assert_close(a["params"][name], b["params"][name], rtol=1e-4, atol=1e-6, msg=name)
