import json

import datasets
import pytest

from rlloom.errors import DataError
from rlloom.plugins.tasks import ARITHMETIC_ALPHABET, ArithmeticTask, DatasetTask
from rlloom.registry import get_registry


def _tokens(expr: str) -> list[str]:
    """Split "12+-3*4" style text into numbers and operators; a "-" at the start or after an
    operator is a sign."""
    out, i = [], 0
    while i < len(expr):
        j = i + 1 if expr[i] == "-" and (not out or out[-1] in "+-*") else i
        while j < len(expr) and expr[j].isdigit():
            j += 1
        if j == i:
            out.append(expr[i])
            i += 1
        else:
            out.append(expr[i:j])
            i = j
    return out


def _evaluate(expr: str) -> int:
    """Integer value of an expression: one pass folding "*", one pass left to right for +/-."""
    tokens = _tokens(expr)
    terms, ops = [int(tokens[0])], []
    for op, num in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            terms[-1] = terms[-1] * int(num)
        else:
            ops.append(op)
            terms.append(int(num))
    total = terms[0]
    for op, value in zip(ops, terms[1:]):
        total = total + value if op == "+" else total - value
    return total


def _num_ops(expr: str) -> int:
    return sum(t in "+-*" for t in _tokens(expr))


def test_registered():
    registry = get_registry()
    assert registry.get("task", "arithmetic").factory is ArithmeticTask
    assert registry.get("task", "dataset").factory is DatasetTask


def test_alphabet():
    assert sorted(ARITHMETIC_ALPHABET) == sorted("0123456789+-*= \n")


def test_evaluator_by_hand():
    # Checks the test's own evaluator: 3+4*5-6 = 3+20-6 = 17; 2*3*4-30 = 24-30 = -6.
    assert _evaluate("3+4*5-6") == 17
    assert _evaluate("2*3*4-30") == -6
    assert _evaluate("-7+2") == -5


def test_arithmetic_deterministic_and_seeded():
    a = ArithmeticTask(num_train=50, num_test=10, seed=3).load("train")
    b = ArithmeticTask(num_train=50, num_test=10, seed=3).load("train")
    c = ArithmeticTask(num_train=50, num_test=10, seed=4).load("train")
    assert a.to_dict() == b.to_dict()
    assert a["prompt"] != c["prompt"]


@pytest.mark.parametrize("ops,num_terms,multistep", [("+-", 2, False), ("+-*", 3, False), ("+-*", 4, True)])
def test_arithmetic_rows(ops, num_terms, multistep):
    task = ArithmeticTask(num_train=300, num_test=40, max_value=20, ops=ops, num_terms=num_terms, multistep=multistep)
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (300, 40)
    assert set(train["prompt"]).isdisjoint(test["prompt"])
    assert len(set(train["prompt"])) == 300
    for row in list(train) + list(test):
        prompt, completion, answer = row["prompt"], row["completion"], row["answer"]
        assert prompt.endswith("=") and prompt.count("=") == 1
        expr = prompt[:-1]
        assert _num_ops(expr) == num_terms - 1
        assert set(_tokens(expr)) - set("+-*") <= {str(v) for v in range(21)}
        assert int(answer) == _evaluate(expr)
        assert set(prompt + completion) <= set(ARITHMETIC_ALPHABET)
        lines = completion.split("\n")
        assert lines[-1] == answer
        if not multistep:
            assert completion == answer
            continue
        # One reduction per line: each line has one operation fewer, the same value as the
        # prompt, and only the last line (the answer) has no newline after it.
        assert len(lines) == num_terms - 1
        for k, line in enumerate(lines):
            assert line and not line.endswith("\n")
            assert _num_ops(line) == num_terms - 2 - k
            assert _evaluate(line) == int(answer)


def test_arithmetic_multistep_format_by_hand():
    task = ArithmeticTask(num_train=200, num_test=0, ops="+-*", num_terms=4, multistep=True)
    rows = {r["prompt"]: r["completion"] for r in task.load("train")}
    # "a*b" is reduced first, then left to right: e.g. 32+8*18-8 -> 32+144-8 -> 176-8 -> 168.
    prompt = next(p for p in rows if "*" in p and "+" in p)
    first = rows[prompt].split("\n")[0]
    assert first.count("*") == prompt.count("*") - 1


def test_arithmetic_negative_answers():
    rows = ArithmeticTask(num_train=200, num_test=0, ops="-", num_terms=2).load("train")
    negatives = [r for r in rows if r["answer"].startswith("-")]
    assert negatives
    for r in negatives:
        a, b = r["prompt"][:-1].split("-")
        assert int(r["answer"]) == int(a) - int(b)


def test_arithmetic_bad_parameters():
    with pytest.raises(ValueError, match="ops"):
        ArithmeticTask(ops="/")
    with pytest.raises(ValueError, match="num_terms"):
        ArithmeticTask(num_terms=2, multistep=True)
    with pytest.raises(ValueError, match="distinct"):
        ArithmeticTask(num_train=100, num_test=100, max_value=2, ops="+")
    with pytest.raises(ValueError, match="split"):
        ArithmeticTask(num_train=5, num_test=1).load("validation")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = [{"question": f"q{i}", "solution": i, "gold": f"c{i}", "meta": i * 10} for i in range(10)]


def test_dataset_jsonl_renames_fields(tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", ROWS)
    task = DatasetTask(path, prompt_field="question", answer_field="solution", completion_field="gold")
    train = task.load("train")
    assert set(train.column_names) == {"prompt", "answer", "completion", "meta"}
    assert train["prompt"] == [f"q{i}" for i in range(10)]
    assert train["answer"] == [str(i) for i in range(10)]
    assert train["completion"][3] == "c3" and train["meta"][3] == 30
    with pytest.raises(DataError, match="no test split"):
        task.load("test")


def test_dataset_parquet_and_max_rows(tmp_path):
    path = tmp_path / "data.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    train = DatasetTask(str(path), prompt_field="question", answer_field="solution", max_rows=4).load("train")
    assert train["prompt"] == ["q0", "q1", "q2", "q3"]


def test_dataset_test_size_split(tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", ROWS)
    task = DatasetTask(path, prompt_field="question", answer_field="solution", test_size=0.3, seed=1)
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (7, 3)
    assert sorted(list(train["prompt"]) + list(test["prompt"])) == sorted(r["question"] for r in ROWS)
    again = DatasetTask(path, prompt_field="question", answer_field="solution", test_size=0.3, seed=1)
    assert again.load("test")["prompt"] == test["prompt"]


def test_dataset_saved_to_disk_with_named_test_split(tmp_path):
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:6]), "validation": datasets.Dataset.from_list(ROWS[6:])}
    )
    splits.save_to_disk(str(tmp_path / "saved"))
    task = DatasetTask(str(tmp_path / "saved"), prompt_field="question", answer_field="solution", test_split="validation")
    assert task.load("test")["prompt"] == ["q6", "q7", "q8", "q9"]
    bad = DatasetTask(str(tmp_path / "saved"), prompt_field="question", answer_field="solution", test_split="dev")
    with pytest.raises(DataError, match="no split 'dev'; splits: train, validation"):
        bad.load("test")


def test_dataset_unknown_field_lists_columns(tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", ROWS)
    with pytest.raises(DataError) as info:
        DatasetTask(path, prompt_field="questoin", answer_field="solution").load("train")
    message = str(info.value)
    assert "data.jsonl" in message and "'questoin'" in message
    assert "columns: question, solution, gold, meta" in message
    assert "did you mean 'question'" in message


def test_dataset_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        DatasetTask(str(tmp_path / "nope.jsonl")).load("train")


def test_dataset_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        DatasetTask(str(tmp_path / "empty.jsonl")).load("train")


def test_dataset_empty_prompt_row(tmp_path):
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}, {"prompt": "  ", "answer": "3"}]
    with pytest.raises(DataError, match="row 2: field 'prompt' is empty"):
        DatasetTask(_jsonl(tmp_path / "d.jsonl", rows)).load("train")
    rows[2]["prompt"] = None
    with pytest.raises(DataError, match="row 2: field 'prompt' is missing"):
        DatasetTask(_jsonl(tmp_path / "d2.jsonl", rows)).load("train")


def test_dataset_csv_without_answer(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nhello,1\nworld,0\n")
    train = DatasetTask(str(tmp_path / "d.csv"), prompt_field="text", answer_field=None).load("train")
    assert train["prompt"] == ["hello", "world"] and train["label"] == [1, 0]


def test_dataset_bad_parameters():
    with pytest.raises(ValueError, match="test_size"):
        DatasetTask("x.jsonl", test_size=1.5)
    with pytest.raises(ValueError, match="max_rows"):
        DatasetTask("x.jsonl", max_rows=0)
