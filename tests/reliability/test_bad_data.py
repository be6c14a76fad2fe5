"""Data that cannot be trained on is named (file, line or row, problem) in one line before
training, never read as garbage, never cut silently; ``task.too_long: skip`` drops rows that do
not fit the model's positions and says how many."""
import json

import mlflow
import pytest

from rlloom.cli import main
from rlloom.config import PRESET_DIR
from rlloom.testing import TINY as SUITE_TINY

TINY = [o for o in SUITE_TINY if not o.startswith("task.")]  # a dataset task takes none of its task.* keys
POSITIONS = 64  # the embedded model's default


def arithmetic_rows(n: int = 24) -> list[dict]:
    return [{"prompt": f"{i % 10}+{i // 10}=", "answer": str(i % 10 + i // 10), "completion": str(i % 10 + i // 10)} for i in range(n)]


def pair_rows(n: int = 24) -> list[dict]:
    return [{"prompt": f"{i % 10}+{i // 10}=", "chosen": str(i % 10 + i // 10), "rejected": str(i % 10 + i // 10 + 1)} for i in range(n)]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_splits(directory, train_rows, test_rows) -> None:
    """A dataset directory: ``train.jsonl`` and ``test.jsonl``."""
    directory.mkdir()
    write_jsonl(directory / "train.jsonl", train_rows)
    write_jsonl(directory / "test.jsonl", test_rows)


@pytest.fixture
def train(tmp_path, monkeypatch, capsys):
    """``rlloom train PRESET`` on a dataset file, from ``tmp_path``: (exit code, stderr lines)."""
    monkeypatch.chdir(tmp_path)

    def run(preset: str, task: str, *overrides: str) -> tuple[int, list[str]]:
        code = main(["train", str(PRESET_DIR / f"{preset}.yaml"), *TINY, task, f"output_dir={tmp_path / 'run'}",
                     f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides])
        err = capsys.readouterr().err
        return code, [line for line in err.splitlines() if line.startswith("rlloom:")]

    return run


def dataset_task(path: str, name: str = "dataset", **fields) -> str:
    split = {"test_split": "test"} if "." not in path else {"test_size": 0.25}
    params = ", ".join(f"{k}: {v}" for k, v in {"path": path, **split, **fields}.items())
    return f"task={{name: {name}, {params}}}"


def test_a_byte_that_is_not_utf8_is_named_by_line(tmp_path, train):
    lines = [json.dumps(r).encode() for r in arithmetic_rows()]
    lines[5] = b'{"prompt": "5+0=\xff", "answer": "5"}'
    (tmp_path / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, err = train("grpo", dataset_task("data.jsonl"))
    assert code == 2
    assert err == ["rlloom: error: dataset 'data.jsonl', line 6: not UTF-8 text (byte 0xff at column 17)"]


def test_a_malformed_json_line_is_named_by_line(tmp_path, train):
    lines = [json.dumps(r) for r in arithmetic_rows()]
    lines[7] = '{"prompt": "7+0=", "answer": 7'
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    code, err = train("grpo", dataset_task("data.jsonl"))
    assert code == 2
    assert err == ["rlloom: error: dataset 'data.jsonl', line 8: not valid JSON (Expecting ',' delimiter at column 31)"]


def test_a_100k_character_prompt_is_refused_before_training(tmp_path, train):
    rows = arithmetic_rows()
    rows[3]["prompt"] = "1+" * 50_000 + "1="
    write_splits(tmp_path / "data", rows, arithmetic_rows(8))
    code, err = train("grpo", dataset_task("data"))
    assert code == 2 and len(err) == 1
    assert err[0].startswith("rlloom: error: task 'dataset' (data) (train split), row 3: ")
    assert f"100008 tokens (prompt '1+1+1+" in err[0] and f"do not fit the model's {POSITIONS} positions" in err[0]
    assert "task.too_long: skip" in err[0]
    assert not (tmp_path / "run" / "final").exists()


def test_a_prompt_longer_than_the_positions_is_not_run_silently(tmp_path, train):
    rows = arithmetic_rows()
    rows[0]["prompt"] = "1+" * 30 + "1="  # 62 tokens: with the 6-token budget past 64 positions
    write_splits(tmp_path / "data", rows, arithmetic_rows(8))
    code, err = train("grpo", dataset_task("data"))
    assert code == 2
    assert err[0].startswith("rlloom: error: task 'dataset' (data) (train split), row 0: 68 tokens")


@pytest.mark.slow
def test_skip_drops_too_long_rows_with_a_count_and_a_metric(tmp_path, train):
    rows = arithmetic_rows()
    for i in (1, 2):
        rows[i]["prompt"] = "1+" * 40 + "1="
    write_splits(tmp_path / "data", rows, arithmetic_rows(8))
    code, err = train("grpo", dataset_task("data"), "task.too_long=skip")
    assert (code, err) == (0, [f"rlloom: task 'dataset' (data) (train split): skipped 2 of 24 rows longer than the "
                   f"model's {POSITIONS} positions (task.too_long=skip)"])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("rlloom").experiment_id])
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "data/too_long_skipped")] == [(0, 2.0)]


def test_an_sft_row_whose_completion_would_be_cut_away_is_refused(tmp_path, train):
    rows = arithmetic_rows()
    rows[4]["prompt"] = "9" * 60 + "="  # 61 prompt tokens + "4" + EOS = 63: fits
    rows[5]["prompt"] = "9" * 63 + "="  # 64 prompt tokens: the completion would be cut away whole
    write_splits(tmp_path / "data", rows, arithmetic_rows(8))
    code, err = train("sft", dataset_task("data", completion_field="completion"))
    assert code == 2 and len(err) == 1
    assert err[0].startswith("rlloom: error: task 'dataset' (data) (train split), row 5: 66 tokens (prompt '999")


def test_a_dpo_pair_that_would_become_identical_is_refused(tmp_path, train):
    rows = pair_rows()
    rows[2]["prompt"] = "1+" * 31 + "1="  # 64 prompt tokens: cut at 64, chosen "2" and rejected "3" both vanish
    write_splits(tmp_path / "pairs", rows, pair_rows(8))
    code, err = train("dpo", dataset_task("pairs", "preference_dataset"), "reward=null")
    assert code == 2 and len(err) == 1
    assert err[0].startswith("rlloom: error: task 'preference_dataset' (pairs) (train split), row 2: 66 tokens")
    assert "task.too_long: skip" in err[0]
