"""The command line: list and validate, errors as one message and a non-zero exit."""
import json
import subprocess
import sys

import pytest

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


def test_presets_lists_every_preset_with_its_description(capsys):
    assert main(["presets", "--json"]) == 0
    rows = {r["name"]: r["description"] for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {p.stem for p in PRESET_DIR.glob("*.yaml")}
    assert rows["grpo"] == "GRPO: group-normalised advantages, PPO clip, k3 KL to a frozen reference."
    for path in PRESET_DIR.glob("*.yaml"):
        command, description = path.read_text().splitlines()[:2]
        assert command == f"# rlloom train {path.stem}"  # each preset names the command that runs it
        assert description == f"# {rows[path.stem]}" and len(rows[path.stem]) > 20
    assert main(["presets"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == len(rows)
    assert any(line.startswith("dapo ") and line.endswith(rows["dapo"]) for line in table)


def test_validate_and_train_a_preset_by_name_from_an_empty_directory(tiny, tmp_path, capsys):
    assert list(tmp_path.iterdir()) == []  # the working directory has no configs/
    assert main(["validate", "rloo"]) == 0
    assert main(["train", "rloo", *tiny]) == 0
    assert "done:" in capsys.readouterr().out
    assert (tmp_path / "run").is_dir()


def test_unknown_preset_name_is_one_line_with_suggestion(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlloom.cli", "train", "grop"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("rlloom: error: config 'grop' is neither a file")
    assert "(did you mean 'grpo'?)" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_path_still_wins_over_a_preset_of_the_same_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grpo.yaml").write_text("defaults: [rloo]\ntrainer: {max_steps: 7}\n")
    from rlloom.config import load_config

    assert load_config("grpo").trainer.max_steps == 7  # ./grpo.yaml, built on the rloo preset
    assert load_config("grpo").advantage == load_config(PRESET_DIR / "rloo.yaml").advantage
    assert load_config(PRESET_DIR / "grpo.yaml").trainer.max_steps != 7


def test_help_is_plain_text_and_explains_config(capsys):
    for argv in (["--help"], ["train", "--help"], ["validate", "--help"], ["compare", "--help"]):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "``" not in out
        if argv != ["--help"]:
            assert "a preset name" in out and "path of a YAML config" in out


@pytest.mark.parametrize("command", [["presets"], ["list", "advantage"], ["list", "--json"]])
def test_output_into_a_pipe_whose_reader_has_gone_ends_quietly(command):
    """``rlloom presets | head -1`` and the like, with the reader gone before rlloom writes:
    status 1 and nothing on stderr (no traceback, no error line)."""
    proc = subprocess.Popen([sys.executable, "-m", "rlloom.cli", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # closed while rlloom still imports
    stderr = proc.stderr.read()
    assert (proc.wait(timeout=60), stderr) == (1, "")


def test_a_broken_pipe_that_is_not_stdout_is_reported(monkeypatch, capfd):
    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("rlloom.cli._cmd_presets", broken)
    assert main(["presets"]) == 1
    assert capfd.readouterr().err == "rlloom: error: BrokenPipeError: [Errno 32] Broken pipe (--traceback shows where)\n"
