import pytest

from rlloom.errors import DataError
from rlloom.plugins.dapo import Overlong
from rlloom.registry import get_registry


def test_registered():
    assert get_registry().get("reward", "overlong").factory is Overlong


def test_overlong_by_hand():
    # DAPO Eq. (13) with L_max = 10, L_cache = 4, so L_max - L_cache = 6:
    #   L <= 6       -> 0
    #   6 < L <= 10  -> (6 - L) / 4: L=7 -> -0.25, L=8 -> -0.5, L=9 -> -0.75, L=10 -> -1
    #   L > 10       -> -1
    reward = Overlong(max_len=10, cache_len=4)
    lengths = [0, 5, 6, 7, 8, 9, 10, 11, 50]
    expected = [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    out = reward(["p"] * 9, ["c"] * 9, completion_lengths=lengths, truncated=[False] * 9)
    assert out == pytest.approx(expected)


def test_overlong_cache_equals_budget():
    # L_cache = L_max = 4: the penalty starts at the first token, (0 - L) / 4.
    assert Overlong(4, 4)(["p"] * 3, ["c"] * 3, completion_lengths=[0, 1, 4]) == pytest.approx([0.0, -0.25, -1.0])


def test_overlong_needs_lengths():
    with pytest.raises(DataError, match="needs the column 'completion_lengths'"):
        Overlong(10, 4)(["p"], ["c"], answer=["1"])


@pytest.mark.parametrize("max_len,cache_len", [(10, 0), (10, 11), (10, -1)])
def test_overlong_bad_parameters(max_len, cache_len):
    with pytest.raises(ValueError, match="cache_len"):
        Overlong(max_len=max_len, cache_len=cache_len)
