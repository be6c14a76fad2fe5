"""The command line: list and validate, errors as one message and a non-zero exit."""
import json
import subprocess
import sys

from rlloom.cli import main
from rlloom.config import PRESET_DIR


def test_list_json_shows_builtins_with_plugin_and_summary(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_key = {(r["kind"], r["name"]): r for r in rows}
    assert by_key[("advantage", "grpo")]["plugin"] == "rlloom.plugins.grpo"
    assert by_key[("kl", "k3")]["summary"]
    assert {r["kind"] for r in rows} >= {"advantage", "policy_loss", "kl", "reward", "sampler", "ref_policy",
                                        "aggregation", "schedule", "task", "value_loss"}


def test_list_one_kind_table(capsys):
    assert main(["list", "aggregation"]) == 0
    out = capsys.readouterr().out
    assert "token_mean" in out and "seq_mean_token_sum_norm" in out
    assert "grpo" not in out


def test_validate_accepts_preset(capsys):
    assert main(["validate", str(PRESET_DIR / "grpo.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_validate_rejects_typos_with_exit_2_and_no_traceback():
    for override, needle in [("advantage=grpoo", "did you mean 'grpo'"), ("policy_loss.epss=0.1", "accepted keys")]:
        proc = subprocess.run(
            [sys.executable, "-m", "rlloom.cli", "validate", str(PRESET_DIR / "grpo.yaml"), override],
            capture_output=True, text=True,
        )
        assert proc.returncode == 2
        assert needle in proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_kind_for_list(capsys):
    assert main(["list", "advantages"]) == 2
    assert "did you mean 'advantage'" in capsys.readouterr().err
