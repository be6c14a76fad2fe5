"""A warm start is reused only when its fingerprint (resolved config and starting model)
matches, and the run says which one it reuses; a changed warm start is run again, naming
what changed, in ``train`` and in ``compare``."""
import json

import pytest
from faults import GRPO, runs, tiny_run

from rlloom.cli import main
from rlloom.warm_start import FINGERPRINT_FILE

pytestmark = pytest.mark.slow

WARM = ("warm_start.overrides=[trainer.eval_every=0,model.embedded.hidden_size=32,model.embedded.num_layers=1,"
        "model.embedded.num_heads=2,model.embedded.intermediate_size=64,task.num_train=64,task.num_test=16,"
        "task.max_value=9,trainer.max_steps={steps}]")


def _overrides(tmp_path, steps):
    own = [o for o in tiny_run(tmp_path, tmp_path / "run", "trainer.max_steps=1") if not o.startswith("warm_start")]
    return [*own, "warm_start.config=sft", WARM.format(steps=steps)]


def test_a_stale_warm_start_is_run_again_and_a_matching_one_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    final = tmp_path / "run" / "warm_start" / "final"
    assert main(["train", GRPO, *_overrides(tmp_path, 1)]) == 0
    capsys.readouterr()
    made = (final / "model.safetensors").stat().st_mtime_ns
    stamp = json.loads((tmp_path / "run" / "warm_start" / FINGERPRINT_FILE).read_text())

    assert main(["train", GRPO, *_overrides(tmp_path, 1)]) == 0
    err = capsys.readouterr().err
    assert f"rlloom: warm start: reusing {final} (fingerprint {stamp['fingerprint'][:12]})" in err
    assert (final / "model.safetensors").stat().st_mtime_ns == made

    assert main(["train", GRPO, *_overrides(tmp_path, 2)]) == 0  # a 2-step warm start asked for
    err = capsys.readouterr().err
    assert (f"rlloom: warm start: {final} does not match this warm start, its settings differ "
            "(trainer.max_steps: 1 → 2); running it again") in err
    assert (final / "model.safetensors").stat().st_mtime_ns != made
    warm_runs = [r for r in runs(tmp_path) if r.info.run_name == "run-warm_start"]
    assert [r.data.params["trainer.max_steps"] for r in warm_runs] == ["1", "2"]


def test_compare_runs_a_stale_shared_warm_start_again(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    final = tmp_path / "run" / "warm_start" / "final"
    assert main(["train", GRPO, *_overrides(tmp_path, 1)]) == 0
    capsys.readouterr()
    code = main(["compare", GRPO, *_overrides(tmp_path, 2), "--vary", "trainer.lr=0.001,0.002"])
    err = capsys.readouterr().err
    assert code == 0
    assert (f"rlloom: warm start: {final} does not match this warm start, its settings differ "
            "(trainer.max_steps: 1 → 2); running it again") in err
    stamp = json.loads((tmp_path / "run" / "warm_start" / FINGERPRINT_FILE).read_text())
    assert stamp["config"]["trainer.max_steps"] == "2"
