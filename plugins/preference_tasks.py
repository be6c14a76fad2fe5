"""Preference tasks: (prompt, chosen, rejected) pairs for the DPO family.

A preference task's ``load(split)`` returns a ``datasets.Dataset`` with text columns ``prompt``,
``chosen`` and ``rejected`` (the preferred and the dispreferred completion of the prompt, y_w
and y_l of DPO, Rafailov et al. 2023), and optionally ``answer`` for the verifiable rewards that
score the held-out evaluation by generation.

- ``arithmetic_pairs``: the builtin arithmetic task with its gold answer chosen and a seeded
  near-miss wrong answer rejected.
- ``preference_dataset``: any local JSONL / JSON / Parquet / CSV file or directory, a dataset
  saved with ``save_to_disk``, or a ``datasets`` dataset name, with its fields renamed.
"""
from __future__ import annotations

import random
from typing import Any

import datasets

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.data import check_preference_rows
from rlloom.plugins.tasks import ARITHMETIC_ALPHABET, ArithmeticTask, DatasetTask

WRONG_KINDS = ("mixed", "delta", "swap")


def _swap_digits(answer: str, rng: random.Random) -> str | None:
    """``answer`` with two adjacent different digits swapped (no leading zero made), or None
    when it has no such pair (one digit, or all digits equal)."""
    sign, digits = ("-", answer[1:]) if answer.startswith("-") else ("", answer)
    spots = [i for i in range(len(digits) - 1) if digits[i] != digits[i + 1] and not (i == 0 and digits[1] == "0")]
    if not spots:
        return None
    i = rng.choice(spots)
    return sign + digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]


def _offset(answer: str, rng: random.Random, max_delta: int) -> str:
    """``answer`` ± d with d drawn uniformly from 1..``max_delta``."""
    return str(int(answer) + rng.choice((-1, 1)) * rng.randint(1, max_delta))


class ArithmeticPairsTask:
    """Arithmetic preference pairs: the correct answer chosen, a seeded near-miss wrong one rejected.

    The rows of the ``arithmetic`` task built with the same parameters (``num_train``,
    ``num_test``, ``seed``, ``max_value``, ``ops``, ``num_terms``, ``multistep``: the same
    prompts and splits), with ``chosen`` the gold completion, ``rejected`` the gold completion
    whose final answer (its last line) is replaced by a wrong one, and ``answer`` kept so the
    answer accuracy of generations can be evaluated. Wrong answers (``wrong``):

    - ``delta``: the answer ± d, d uniform in 1..``max_delta`` ("19" → "17");
    - ``swap``: two adjacent different digits of the answer swapped, never making a leading
      zero ("19" → "91"); an answer with no such pair gets a ``delta`` one instead;
    - ``mixed``: ``swap`` or ``delta`` with equal probability.

    Deterministic: the wrong answers of a split are drawn from a generator seeded by ``seed``
    and the split, so the same parameters give the same pairs.
    """

    alphabet = ARITHMETIC_ALPHABET  # every character a prompt or completion can hold

    def __init__(
        self,
        num_train: int = 4000,
        num_test: int = 200,
        seed: int = 0,
        max_value: int = 50,
        ops: str = "+-",
        num_terms: int = 2,
        multistep: bool = False,
        wrong: str = "mixed",
        max_delta: int = 3,
    ):
        if wrong not in WRONG_KINDS:
            raise ParameterError(f"wrong must be one of {', '.join(WRONG_KINDS)}, got {wrong!r}")
        if max_delta < 1:
            raise ParameterError(f"max_delta must be >= 1, got {max_delta}")
        self.source = ArithmeticTask(num_train, num_test, seed, max_value, ops, num_terms, multistep)
        self.seed, self.wrong, self.max_delta = seed, wrong, max_delta

    def _wrong_answer(self, answer: str, rng: random.Random) -> str:
        if self.wrong != "delta" and (self.wrong == "swap" or rng.random() < 0.5):
            swapped = _swap_digits(answer, rng)
            if swapped is not None:
                return swapped
        return _offset(answer, rng, self.max_delta)

    def load(self, split: str) -> datasets.Dataset:
        rows = self.source.load(split)
        rng = random.Random(self.seed * 2 + (split == "test"))
        rejected = []
        for completion, answer in zip(rows["completion"], rows["answer"]):
            head, newline, _ = completion.rpartition("\n")
            rejected.append(head + newline + self._wrong_answer(answer, rng))
        columns = {"prompt": rows["prompt"], "chosen": rows["completion"], "rejected": rejected, "answer": rows["answer"]}
        features = datasets.Features({k: datasets.Value("string") for k in columns})
        return datasets.Dataset.from_dict(columns, features=features)


class PreferenceDatasetTask(DatasetTask):
    """Preference pairs from any local data file or directory, or a ``datasets`` dataset.

    Loaded as by the ``dataset`` task (``path``, ``train_split``, ``test_split``,
    ``test_size``, ``seed``, ``data_files``, ``max_rows``: see ``DatasetTask``). The fields
    ``prompt_field``, ``chosen_field`` and ``rejected_field`` are renamed to ``prompt``,
    ``chosen`` and ``rejected``, and ``answer_field`` (none by default) to ``answer``; other
    columns are kept. ``chosen`` and ``rejected`` are completions of the prompt as text; when
    the tokenizer has a chat template the engine applies it to the prompt (a user message, the
    assistant's turn opened).

    Raises ``DataError`` as ``DatasetTask`` does, and for a row whose chosen or rejected
    completion is missing or not text, whose chosen completion is empty, or whose chosen and
    rejected completions are identical (naming the row and the source's field names).
    """

    def __init__(
        self,
        path: str,
        prompt_field: str = "prompt",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        answer_field: str | None = None,
        train_split: str = "train",
        test_split: str | None = None,
        test_size: float = 0.0,
        seed: int = 0,
        data_files: Any = None,
        max_rows: int | None = None,
    ):
        super().__init__(
            path, prompt_field, answer_field, None, train_split, test_split, test_size, seed, data_files, max_rows
        )
        self.fields.update(chosen=chosen_field, rejected=rejected_field)

    def _prepare(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        ds = super()._prepare(ds, split)
        check_preference_rows(ds, f"dataset '{self.path}' split '{split}'", self.fields)
        return ds


@hookimpl
def rlloom_task():
    return {"arithmetic_pairs": ArithmeticPairsTask, "preference_dataset": PreferenceDatasetTask}
