"""Tasks: where prompts, answers and gold completions come from.

A task's ``load(split)`` returns a ``datasets.Dataset`` for ``split`` ``"train"`` or ``"test"``
with a ``prompt`` column (text), an ``answer`` column (text) for the verifiable rewards (DAPO,
Yu et al. 2025, Eq. 7: the reward compares the completion's answer with ``answer``), and a
``completion`` column (the gold completion, for an SFT warm start) where the task has one.
Every other column travels with each row to the reward functions.

- ``arithmetic``: procedurally generated integer arithmetic for a character-level policy;
  its multi-step variant writes one reduction per line, the reasoning steps VinePPO's Monte
  Carlo values are estimated at (VinePPO, Kazemnejad et al. 2024, Eq. 5–7).
- ``dataset``: any local JSONL / JSON / Parquet / CSV file or directory, a dataset saved with
  ``save_to_disk``, or a ``datasets`` dataset name, with its fields renamed to the above.
"""
from __future__ import annotations

import difflib
import json
import os
import random
from pathlib import Path
from typing import Any

import datasets

from rlloom import hookimpl
from rlloom.errors import DataError, ParameterError

SPLITS = ("train", "test")

ARITHMETIC_ALPHABET = "0123456789+-*= \n"
"""Every character an ``arithmetic`` prompt or completion can contain (digits, the three
operators, ``=``, space and newline); a character-level tokenizer built from it covers the task."""

_OPS = "+-*"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ParameterError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def _reduce_once(terms: list[int], ops: list[str]) -> None:
    """Apply the next operation by precedence, in place: the leftmost ``*``, else the leftmost
    ``+``/``-``."""
    i = ops.index("*") if "*" in ops else 0
    a, b, op = terms[i], terms[i + 1], ops[i]
    terms[i : i + 2] = [a * b if op == "*" else a + b if op == "+" else a - b]
    del ops[i]


def _expression(terms: list[int], ops: list[str]) -> str:
    return "".join(f"{t}{o}" for t, o in zip(terms, ops)) + str(terms[-1])


class ArithmeticTask:
    """Procedural integer arithmetic ("12+7=" → "19"); multi-step variant for VinePPO.

    Each problem draws ``num_terms`` operands uniformly from ``0..max_value`` and
    ``num_terms - 1`` operators from ``ops`` (a subset of ``"+-*"``). The prompt is the
    expression followed by ``=``; ``answer`` is its value under the usual precedence (``*``
    before ``+``/``-``, then left to right), as a decimal string with a leading ``-`` when
    negative.

    Completion format:

    - single step (``multistep=False``): the answer alone, ``"12+7="`` → ``"19"``.
    - multi-step (``multistep=True``, ``num_terms >= 3``): one line per reduction, each line
      the expression after applying the next operation (the leftmost ``*``, else the
      leftmost ``+``/``-``). Every reasoning step ends with ``"\\n"``; the last line, with no
      newline after it, is the final answer: ``"3+4*5-6="`` → ``"3+20-6\\n23-6\\n17"``.
      Intermediate values may be negative (``"3-10+2="`` → ``"-7+2\\n-5"``).

    Prompts and completions use only the characters of ``ARITHMETIC_ALPHABET``. Generation
    is seeded and deterministic: the same ``seed`` gives the same rows, and ``train`` and
    ``test`` are drawn without repetition from one stream, so no test prompt is in train.
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
    ):
        if num_train < 1 or num_test < 0:
            raise ParameterError(f"need num_train >= 1 and num_test >= 0, got {num_train}, {num_test}")
        if max_value < 1:
            raise ParameterError(f"max_value must be >= 1, got {max_value}")
        if not ops or any(op not in _OPS for op in ops):
            raise ParameterError(f"ops must be a non-empty string of characters from {_OPS!r}, got {ops!r}")
        if num_terms < 2:
            raise ParameterError(f"num_terms must be >= 2, got {num_terms}")
        if multistep and num_terms < 3:
            raise ParameterError(f"multistep needs num_terms >= 3 (two or more steps), got {num_terms}")
        ops = "".join(sorted(set(ops), key=_OPS.index))
        distinct = (max_value + 1) ** num_terms * len(ops) ** (num_terms - 1)
        if num_train + num_test > distinct:
            raise ParameterError(
                f"num_train + num_test = {num_train + num_test} exceeds the {distinct} distinct "
                f"problems with max_value={max_value}, ops={ops!r}, num_terms={num_terms}"
            )
        self.num_train, self.num_test, self.seed = num_train, num_test, seed
        self.max_value, self.ops, self.num_terms, self.multistep = max_value, ops, num_terms, multistep
        self._rows: dict[str, dict[str, list[str]]] | None = None

    def _problem(self, rng: random.Random) -> tuple[str, str, str]:
        terms = [rng.randint(0, self.max_value) for _ in range(self.num_terms)]
        ops = [rng.choice(self.ops) for _ in range(self.num_terms - 1)]
        prompt = _expression(terms, ops) + "="
        lines = []
        while ops:
            _reduce_once(terms, ops)
            lines.append(_expression(terms, ops))
        completion = "\n".join(lines) if self.multistep else lines[-1]
        return prompt, completion, lines[-1]

    def _generate(self) -> dict[str, dict[str, list[str]]]:
        rng = random.Random(self.seed)
        seen: set[str] = set()
        rows: list[tuple[str, str, str]] = []
        while len(rows) < self.num_test + self.num_train:
            problem = self._problem(rng)
            if problem[0] not in seen:
                seen.add(problem[0])
                rows.append(problem)
        parts = {"test": rows[: self.num_test], "train": rows[self.num_test :]}
        return {
            split: {
                "prompt": [p for p, _, _ in part],
                "completion": [c for _, c, _ in part],
                "answer": [a for _, _, a in part],
            }
            for split, part in parts.items()
        }

    def load(self, split: str) -> datasets.Dataset:
        _check_split(split)
        if self._rows is None:
            self._rows = self._generate()
        features = datasets.Features({k: datasets.Value("string") for k in ("prompt", "completion", "answer")})
        return datasets.Dataset.from_dict(self._rows[split], features=features)


_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def _builder(path: str) -> str | None:
    """The packaged ``datasets`` builder for a data file, from its extension."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return _BUILDERS.get(suffixes[-1]) if suffixes else None


def _check_text(path: Path, builder: str) -> None:
    """``DataError`` naming the first line of an uncompressed JSON Lines / JSON / CSV file that
    is not UTF-8 text, or not JSON (each line of JSON Lines; a ``.json`` file that is one
    document, as a whole). The loader would read such a line as garbage or fail without
    saying where."""
    if builder == "parquet" or path.suffix.lower() in _COMPRESSION:
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            raise DataError(f"dataset '{path}', line {number}: {problem}") from None
    if builder != "json":
        return
    if data.lstrip()[:1] == b"[":
        try:
            json.loads(data)
        except json.JSONDecodeError as exc:
            raise DataError(f"dataset '{path}', line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        return
    for number, raw in enumerate(lines, 1):
        try:
            if raw.strip():
                json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"dataset '{path}', line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


class DatasetTask:
    """Any local data file or directory, or a ``datasets`` dataset, with fields renamed.

    ``path`` is a JSONL / JSON / Parquet / CSV file (the loader is chosen from the extension,
    optionally compressed), a directory of such files, a directory written by
    ``save_to_disk``, or a ``datasets`` dataset name (with ``data_files`` passed through).
    The columns ``prompt_field``, ``answer_field`` and ``completion_field`` are renamed to
    ``prompt``, ``answer`` and ``completion`` (``answer_field=None`` or
    ``completion_field=None`` skips one); every other column is kept for the rewards.
    Answers are cast to text.

    Splits: ``train`` is ``train_split``. ``test`` is ``test_split`` when given; otherwise,
    with ``test_size > 0``, a seeded ``train_test_split`` of ``train_split`` (and ``train`` is
    then the rest); otherwise asking for ``test`` is an error. ``max_rows`` keeps the first
    rows of each returned split.

    Raises ``DataError`` for a missing file, an unknown split or field (listing what exists),
    an empty dataset, and a row whose prompt is empty or whose answer/completion is missing
    (naming the row).
    """

    def __init__(
        self,
        path: str,
        prompt_field: str = "prompt",
        answer_field: str | None = "answer",
        completion_field: str | None = None,
        train_split: str = "train",
        test_split: str | None = None,
        test_size: float = 0.0,
        seed: int = 0,
        data_files: Any = None,
        max_rows: int | None = None,
    ):
        if not path:
            raise ParameterError("path must name a data file, a directory or a datasets dataset")
        if not 0.0 <= test_size < 1.0:
            raise ParameterError(f"test_size must be in [0, 1), got {test_size}")
        if max_rows is not None and max_rows < 1:
            raise ParameterError(f"max_rows must be >= 1 or null, got {max_rows}")
        self.path = str(path)
        self.fields = {"prompt": prompt_field, "answer": answer_field, "completion": completion_field}
        self.train_split, self.test_split = train_split, test_split
        self.test_size, self.seed = test_size, seed
        self.data_files, self.max_rows = data_files, max_rows
        self._splits: dict[str, datasets.Dataset] | None = None

    def _load_source(self) -> dict[str, datasets.Dataset]:
        local = Path(os.path.expanduser(self.path))
        try:
            if local.is_file():
                builder = _builder(self.path)
                if builder is None:
                    raise DataError(
                        f"dataset '{self.path}': unknown file type; use one of "
                        f"{', '.join(sorted(_BUILDERS))} (optionally compressed)"
                    )
                if local.stat().st_size == 0:
                    raise DataError(f"dataset '{self.path}' is empty (the file has no rows)")
                _check_text(local, builder)
                loaded = datasets.load_dataset(builder, data_files=str(local))
            elif local.is_dir() and _is_saved_dataset(local):
                loaded = datasets.load_from_disk(str(local))
            elif local.is_dir():
                loaded = datasets.load_dataset(str(local), data_files=self.data_files)
            elif _builder(self.path) is not None or self.path.startswith((".", "/", "~")):
                raise DataError(f"dataset '{self.path}': file or directory not found")
            else:
                loaded = datasets.load_dataset(self.path, data_files=self.data_files)
        except DataError:
            raise
        except Exception as exc:  # datasets raises many types for unreadable or unreachable data
            raise DataError(f"dataset '{self.path}' could not be loaded: {type(exc).__name__}: {exc}") from exc
        if isinstance(loaded, datasets.Dataset):
            loaded = {self.train_split: loaded}
        return dict(loaded)

    def _split(self, source: dict[str, datasets.Dataset], name: str) -> datasets.Dataset:
        if name not in source:
            raise DataError(
                f"dataset '{self.path}' has no split '{name}'; splits: {', '.join(sorted(source))}"
            )
        return self._prepare(source[name], name)

    def _prepare(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        where = f"dataset '{self.path}' split '{split}'"
        if len(ds) == 0:
            raise DataError(f"{where} is empty")
        renames = {}
        for target, field in self.fields.items():
            if field is None:
                continue
            if field not in ds.column_names:
                close = difflib.get_close_matches(field, ds.column_names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise DataError(
                    f"{where} has no field '{field}' (the {target} field){hint}; "
                    f"columns: {', '.join(ds.column_names)}"
                )
            if field != target:
                if target in ds.column_names:
                    raise DataError(
                        f"{where}: cannot use field '{field}' as '{target}', the dataset already has "
                        f"a column '{target}'; name that column as {target}_field instead"
                    )
                renames[field] = target
        ds = ds.rename_columns(renames) if renames else ds
        for target in ("prompt", "answer", "completion"):
            if self.fields[target] is not None:
                _check_rows(ds, target, self.fields[target], where)
        if "answer" in ds.column_names and ds.features["answer"] != datasets.Value("string"):
            if not isinstance(ds.features["answer"], datasets.Value):
                raise DataError(f"{where}: field '{self.fields['answer']}' must hold text or numbers")
            ds = ds.cast_column("answer", datasets.Value("string"))
        return ds

    def _load_splits(self) -> dict[str, datasets.Dataset]:
        source = self._load_source()
        train = self._split(source, self.train_split)
        if self.test_split is not None:
            return {"train": train, "test": self._split(source, self.test_split)}
        if self.test_size > 0:
            try:
                parts = train.train_test_split(test_size=self.test_size, seed=self.seed)
            except ValueError as exc:
                raise DataError(f"dataset '{self.path}': cannot hold out test_size={self.test_size}: {exc}") from exc
            return {"train": parts["train"], "test": parts["test"]}
        return {"train": train}

    def load(self, split: str) -> datasets.Dataset:
        _check_split(split)
        if self._splits is None:
            self._splits = self._load_splits()
        if split not in self._splits:
            raise DataError(
                f"dataset '{self.path}' has no test split: set test_split to one of its splits "
                f"or test_size to hold out a fraction of '{self.train_split}'"
            )
        ds = self._splits[split]
        if self.max_rows is not None and len(ds) > self.max_rows:
            ds = ds.select(range(self.max_rows))
        return ds


def _check_rows(ds: datasets.Dataset, column: str, field: str, where: str) -> None:
    """Name the first row whose ``column`` is missing, not text (answers may be numbers), or,
    for prompts, empty."""
    kinds = (str, int, float) if column == "answer" else (str,)
    for index, value in enumerate(ds[column]):
        if value is None:
            problem = "is missing"
        elif not isinstance(value, kinds):
            problem = f"holds {type(value).__name__}, expected text"
        elif column == "prompt" and not value.strip():
            problem = "is empty"
        else:
            continue
        raise DataError(f"{where}, row {index}: field '{field}' {problem}")


@hookimpl
def rlloom_task():
    return {"arithmetic": ArithmeticTask, "dataset": DatasetTask}
