"""Preference tasks: arithmetic pairs built from the arithmetic task, and pairs from data files."""
import json
import random

import datasets
import pytest

from rlloom.errors import DataError
from rlloom.plugins.preference_tasks import (
    ArithmeticPairsTask,
    PreferenceDatasetTask,
    _offset,
    _swap_digits,
)
from rlloom.plugins.tasks import ARITHMETIC_ALPHABET, ArithmeticTask
from rlloom.registry import get_registry


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_registered():
    registry = get_registry()
    assert registry.get("task", "arithmetic_pairs").factory is ArithmeticPairsTask
    assert registry.get("task", "preference_dataset").factory is PreferenceDatasetTask


def test_arithmetic_pairs_follow_the_arithmetic_task():
    params = dict(num_train=60, num_test=10, seed=3, max_value=30)
    pairs, source = ArithmeticPairsTask(**params), ArithmeticTask(**params)
    for split in ("train", "test"):
        rows, gold = pairs.load(split), source.load(split)
        assert rows.column_names == ["prompt", "chosen", "rejected", "answer"]
        assert rows["prompt"] == gold["prompt"] and rows["answer"] == gold["answer"]
        assert rows["chosen"] == gold["completion"]
        for chosen, rejected in zip(rows["chosen"], rows["rejected"]):
            assert int(rejected) != int(chosen)  # a wrong answer, as a number, not only as text
            assert set(rejected) <= set(ARITHMETIC_ALPHABET)


def test_arithmetic_pairs_are_seeded():
    a = ArithmeticPairsTask(num_train=40, num_test=5, seed=1).load("train")
    b = ArithmeticPairsTask(num_train=40, num_test=5, seed=1).load("train")
    c = ArithmeticPairsTask(num_train=40, num_test=5, seed=2).load("train")
    assert a["rejected"] == b["rejected"]
    assert a["prompt"] != c["prompt"]


def test_delta_answers_are_near_misses():
    rows = ArithmeticPairsTask(num_train=80, num_test=5, wrong="delta", max_delta=2).load("train")
    for chosen, rejected in zip(rows["chosen"], rows["rejected"]):
        assert 1 <= abs(int(rejected) - int(chosen)) <= 2


def test_swap_answers_by_hand():
    rng = random.Random(0)
    # One pair of different adjacent digits: the swap is forced. "19" → "91"; "-12" → "-21".
    assert _swap_digits("19", rng) == "91"
    assert _swap_digits("-12", rng) == "-21"
    # "10" would become "01" (a leading zero), "7" and "55" have no different neighbours.
    assert _swap_digits("10", rng) is None and _swap_digits("7", rng) is None and _swap_digits("55", rng) is None
    # "105": swapping 1,0 makes a leading zero, so only 0,5 may swap → "150".
    assert _swap_digits("105", rng) == "150"
    assert all(_offset("10", rng, 3) in {"7", "8", "9", "11", "12", "13"} for _ in range(50))


def test_swap_kind_swaps_when_it_can():
    rows = ArithmeticPairsTask(num_train=80, num_test=5, wrong="swap").load("train")
    for chosen, rejected in zip(rows["chosen"], rows["rejected"]):
        if _swap_digits(chosen, random.Random(0)) is not None:
            assert sorted(rejected) == sorted(chosen) and rejected != chosen


def test_multistep_pairs_change_only_the_final_answer():
    rows = ArithmeticPairsTask(num_train=30, num_test=5, ops="+-*", num_terms=3, multistep=True).load("test")
    for chosen, rejected, answer in zip(rows["chosen"], rows["rejected"], rows["answer"]):
        steps, last = chosen.rsplit("\n", 1)
        assert last == answer
        assert rejected.startswith(steps + "\n") and rejected.rsplit("\n", 1)[1] != answer


def test_arithmetic_pairs_bad_parameters():
    with pytest.raises(ValueError, match="wrong"):
        ArithmeticPairsTask(wrong="random")
    with pytest.raises(ValueError, match="max_delta"):
        ArithmeticPairsTask(max_delta=0)
    with pytest.raises(ValueError, match="ops"):
        ArithmeticPairsTask(ops="/")
    with pytest.raises(ValueError, match="split"):
        ArithmeticPairsTask(num_train=5, num_test=1).load("validation")


PAIRS = [{"question": f"q{i}", "good": f"yes {i}", "bad": f"no {i}", "gold": i, "meta": i} for i in range(10)]


def test_jsonl_with_custom_field_names(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    task = PreferenceDatasetTask(path, prompt_field="question", chosen_field="good", rejected_field="bad", answer_field="gold", test_size=0.2)
    train, test = task.load("train"), task.load("test")
    assert set(train.column_names) == {"prompt", "chosen", "rejected", "answer", "meta"}
    assert (len(train), len(test)) == (8, 2)
    row = train[0]
    i = int(row["prompt"][1:])
    assert (row["chosen"], row["rejected"], row["answer"], row["meta"]) == (f"yes {i}", f"no {i}", str(i), i)


def test_parquet_with_default_field_names(tmp_path):
    path = tmp_path / "pairs.parquet"
    rows = [{"prompt": p["question"], "chosen": p["good"], "rejected": p["bad"]} for p in PAIRS]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    train = PreferenceDatasetTask(str(path), max_rows=3).load("train")
    assert train["chosen"] == ["yes 0", "yes 1", "yes 2"] and "answer" not in train.column_names


def test_missing_field_lists_columns(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    with pytest.raises(DataError) as info:
        PreferenceDatasetTask(path, prompt_field="question", chosen_field="goood", rejected_field="bad").load("train")
    message = str(info.value)
    assert "no field 'goood' (the chosen field)" in message and "did you mean 'good'" in message


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"good": None}, "row 2: field 'good' is missing"),
        ({"bad": None}, "row 2: field 'bad' is missing"),
        ({"good": "  "}, "row 2: field 'good' is empty"),
        ({"question": ""}, "row 2: field 'question' is empty"),
        ({"bad": "yes 2"}, "row 2: fields 'good' and 'bad' are identical"),
        ({"good": ["a", "list"]}, "row 2: field 'good' holds list, expected text"),
    ],
)
def test_malformed_rows_are_named(tmp_path, change, problem):
    rows = [dict(r) for r in PAIRS]
    rows[2].update(change)
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    task = PreferenceDatasetTask(path, prompt_field="question", chosen_field="good", rejected_field="bad")
    with pytest.raises(DataError) as info:
        task.load("train")
    assert problem in str(info.value) and "pairs.jsonl" in str(info.value)


def test_empty_rejected_completion_is_allowed(tmp_path):
    rows = [dict(r) for r in PAIRS]
    rows[0]["bad"] = ""
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    train = PreferenceDatasetTask(path, prompt_field="question", chosen_field="good", rejected_field="bad").load("train")
    assert train["rejected"][0] == ""


def test_no_test_split_is_explained(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    task = PreferenceDatasetTask(path, prompt_field="question", chosen_field="good", rejected_field="bad")
    with pytest.raises(DataError, match="no test split"):
        task.load("test")


def test_dataset_bad_parameters():
    with pytest.raises(ValueError, match="test_size"):
        PreferenceDatasetTask("x.jsonl", test_size=1.5)
