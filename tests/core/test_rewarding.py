import math

import pytest
import torch

from rlloom.errors import DataError, RewardError
from rlloom.rewarding import RewardFunction, column, score

PROMPTS = ["1+1=", "2+2=", "3+3="]
COMPLETIONS = ["2", "5", "6"]
COLUMNS = {"answer": ["2", "4", "6"], "completion_lengths": [1, 1, 1], "truncated": [False, False, False]}


def correct(prompts, completions, answer, **_):
    return [1.0 if c == a else -1.0 for c, a in zip(completions, answer)]


def length(prompts, completions, completion_lengths, **_):
    return [float(n) for n in completion_lengths]


def test_weighted_sum_by_hand():
    # correct = [1, -1, 1], length = [1, 1, 1]; total = 2*correct + 0.5*length = [2.5, -1.5, 2.5]
    total, parts = score(
        [RewardFunction("correct", correct, 2.0), RewardFunction("length", length, 0.5)],
        PROMPTS, COMPLETIONS, COLUMNS,
    )
    assert total.dtype == torch.float32 and total.shape == (3,)
    assert total.tolist() == [2.5, -1.5, 2.5]
    assert parts["correct"].tolist() == [1.0, -1.0, 1.0]
    assert parts["length"].tolist() == [1.0, 1.0, 1.0]


def test_tensor_columns_and_results():
    def tensor_reward(prompts, completions, completion_lengths, **_):
        assert completion_lengths == [3, 4, 5]  # tensors arrive as lists
        return torch.tensor([0.5, 1.5, 2.5])

    columns = {"completion_lengths": torch.tensor([3, 4, 5])}
    total, _ = score([RewardFunction("t", tensor_reward)], PROMPTS, COMPLETIONS, columns)
    assert total.tolist() == [0.5, 1.5, 2.5]


def test_function_raising_names_the_failing_sample():
    def fails_on_five(prompts, completions, **_):
        return [1.0 / (c != "5") for c in completions]

    with pytest.raises(RewardError) as info:
        score([RewardFunction("picky", fails_on_five)], PROMPTS, COMPLETIONS, COLUMNS)
    message = str(info.value)
    assert "reward 'picky' raised ZeroDivisionError" in message
    assert "sample 1: prompt '2+2=', completion '5'" in message


def test_long_texts_are_truncated_in_messages():
    def boom(prompts, completions, **_):
        raise RuntimeError("bad")

    with pytest.raises(RewardError) as info:
        score([RewardFunction("boom", boom)], ["p" * 500], ["c" * 500], {})
    message = str(info.value)
    assert "raised RuntimeError: bad" in message and "sample 0" in message
    assert "'" + "p" * 80 + "...'" in message and "p" * 81 not in message


def test_wrong_length():
    def short(prompts, completions, **_):
        return [0.0] * (len(completions) + 1)

    with pytest.raises(RewardError, match=r"reward 'x' returned 4 values for 3 completions"):
        score([RewardFunction("x", short)], PROMPTS, COMPLETIONS, COLUMNS)


@pytest.mark.parametrize("bad,what", [(None, "NoneType None"), ("1", "str '1'")])
def test_non_number(bad, what):
    def returns_bad(prompts, completions, **_):
        return [0.0, bad, 0.0]

    with pytest.raises(RewardError) as info:
        score([RewardFunction("odd", returns_bad)], PROMPTS, COMPLETIONS, COLUMNS)
    assert f"reward 'odd' returned {what} at index 1" in str(info.value)
    assert "prompt '2+2=', completion '5'" in str(info.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite(bad):
    def returns_bad(prompts, completions, **_):
        return [0.0, 0.0, bad]

    with pytest.raises(RewardError) as info:
        score([RewardFunction("nan", returns_bad)], PROMPTS, COMPLETIONS, COLUMNS)
    assert f"reward 'nan' returned the non-finite value {bad} at index 2" in str(info.value)
    assert "prompt '3+3=', completion '6'" in str(info.value)


def test_not_a_list():
    with pytest.raises(RewardError, match="returned float, expected a list of floats"):
        score([RewardFunction("scalar", lambda p, c, **_: 1.0)], PROMPTS, COMPLETIONS, COLUMNS)


def test_missing_column_is_reported():
    def needs(prompts, completions, **columns):
        return column(columns, "solution", "reward 'needs'")

    with pytest.raises(RewardError, match="needs the column 'solution'; columns given: answer, completion_lengths"):
        score([RewardFunction("needs", needs)], PROMPTS, COMPLETIONS, COLUMNS)
    with pytest.raises(DataError):
        column({}, "solution", "x")


def test_bad_arguments():
    with pytest.raises(RewardError, match="no reward functions"):
        score([], PROMPTS, COMPLETIONS, COLUMNS)
    with pytest.raises(ValueError, match="unique"):
        score([RewardFunction("a", length), RewardFunction("a", length)], PROMPTS, COMPLETIONS, COLUMNS)
    with pytest.raises(ValueError, match="column 'answer' has 2 rows for 3 completions"):
        score([RewardFunction("a", length)], PROMPTS, COMPLETIONS, {**COLUMNS, "answer": ["1", "2"]})
    with pytest.raises(ValueError, match="weight must be finite"):
        RewardFunction("a", length, math.nan)
