"""Deterministic data order and collation for every kind of batch.

Which rows a step uses is a function of (seed, step) alone: the rows are a seeded
permutation of the dataset per epoch, cut into consecutive windows of the global batch
size, each process taking every ``world``-th row of the window. A resumed run therefore
sees exactly the rows an uninterrupted one would.
"""
from __future__ import annotations

import torch

from rlloom.batch import PreferenceBatch, SFTBatch
from rlloom.errors import DataError
from rlloom.rollout import PromptBatch, encode_prompts


def require_columns(dataset, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{where}: the dataset has no field {', '.join(repr(m) for m in missing)}; "
            f"its fields are {', '.join(dataset.column_names)}"
        )
    if len(dataset) == 0:
        raise DataError(f"{where}: the dataset is empty")


class StepIndex:
    """Row indices of step ``s`` for process ``rank`` of ``world``, ``per_step`` rows a step."""

    def __init__(self, num_rows: int, per_step: int, seed: int, rank: int = 0, world: int = 1):
        if per_step % world:
            raise DataError(f"{per_step} rows per step cannot be split evenly over {world} processes")
        self.num_rows, self.per_step, self.seed, self.rank, self.world = num_rows, per_step, seed, rank, world
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perms = {epoch: torch.randperm(self.num_rows, generator=g).tolist()}
        return self._perms[epoch]

    def rows(self, step: int) -> list[int]:
        start = step * self.per_step
        window = [self._perm((start + i) // self.num_rows)[(start + i) % self.num_rows] for i in range(self.per_step)]
        return window[self.rank :: self.world]


def chat_prompts(tokenizer, prompts: list[str]) -> list[str]:
    """Each prompt as a user message through the tokenizer's chat template, ending with the
    assistant's turn (``add_generation_prompt``); the prompts unchanged when it has none."""
    if not getattr(tokenizer, "chat_template", None):
        return list(prompts)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


TARGETS = {"rollout": (), "supervised": ("completion",), "preference": ("chosen", "rejected")}
"""The columns a training mode trains towards, after the prompt (see ``row_lengths``)."""


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """The number of tokens of each text (no special tokens added)."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []


def row_lengths(dataset, tokenizer, targets: tuple[str, ...], budget: int = 0) -> list[int]:
    """Positions each row occupies: its prompt (through the chat template) followed by the
    longest of its ``targets`` columns plus EOS (``completion``; ``chosen``, ``rejected``),
    or, with no targets, by ``budget`` generated tokens."""
    prompts = token_lengths(tokenizer, chat_prompts(tokenizer, dataset["prompt"]))
    if not targets:
        return [p + budget for p in prompts]
    longest = [max(sizes) + 1 for sizes in zip(*(token_lengths(tokenizer, dataset[c]) for c in targets))]
    return [p + t for p, t in zip(prompts, longest)]


def fit_positions(dataset, lengths: list[int], limit: int | None, too_long: str, where: str):
    """The rows of ``dataset`` whose ``lengths`` fit the model's ``limit`` positions, and how
    many were dropped.

    A longer row is never cut (a cut row may lose its whole completion): with
    ``too_long="error"`` it raises ``DataError`` naming the first such row; with ``"skip"``
    the rows are dropped. Every row when ``limit`` is None (a model that states no limit).
    """
    long_rows = [i for i, n in enumerate(lengths) if limit is not None and n > limit]
    if not long_rows:
        return dataset, 0
    first = long_rows[0]
    if too_long == "error" or len(long_rows) == len(lengths):
        start = str(dataset[first]["prompt"])[:30]
        also = f" ({len(long_rows)} of {len(lengths)} rows are)" if len(long_rows) > 1 else ""
        fix = "shorten them or" if too_long == "skip" else "set `task.too_long: skip` to drop such rows, or"
        raise DataError(
            f"{where}, row {first}: {lengths[first]} tokens (prompt {start!r}...) do not fit the model's "
            f"{limit} positions{also}; {fix} use a model with more positions"
        )
    kept = sorted(set(range(len(lengths))) - set(long_rows))
    return dataset.select(kept), len(long_rows)


def prompt_batch(dataset, rows: list[int], tokenizer, first_group_id: int) -> PromptBatch:
    """Rows of a task dataset as a ``PromptBatch`` (prompts through the chat template when the
    tokenizer has one); other fields travel as ``columns``."""
    picked = dataset.select(rows)
    columns = {c: picked[c] for c in picked.column_names if c != "prompt"}
    group_ids = list(range(first_group_id, first_group_id + len(rows)))
    batch = encode_prompts(tokenizer, chat_prompts(tokenizer, picked["prompt"]), group_ids, columns)
    batch.texts = list(picked["prompt"])  # rewards and tables see the prompt as written
    return batch


def _right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def encode_pairs(tokenizer, prompts: list[str], completions: list[str], max_length: int | None = None):
    """Token rows prompt + completion + EOS and loss masks (1 on completion and EOS)."""
    rows, loss_rows = [], []
    for prompt, completion in zip(prompts, completions):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        row, loss = p + c, [0] * len(p) + [1] * len(c)
        if max_length is not None:
            row, loss = row[:max_length], loss[:max_length]
        rows.append(row)
        loss_rows.append(loss)
    ids, attention = _right_pad(rows, tokenizer.pad_token_id)
    loss_mask, _ = _right_pad(loss_rows, 0)
    return ids, attention, loss_mask * attention


def sft_batch(dataset, rows: list[int], tokenizer, max_length: int | None = None) -> SFTBatch:
    """Rows with ``prompt`` and ``completion`` as an ``SFTBatch`` (completion-only loss; the
    prompt through the chat template when the tokenizer has one)."""
    picked = dataset.select(rows)
    prompts = chat_prompts(tokenizer, picked["prompt"])
    ids, attention, loss_mask = encode_pairs(tokenizer, prompts, picked["completion"], max_length)
    return SFTBatch(ids, attention, loss_mask)


def check_preference_rows(dataset, where: str, names: dict[str, str | None] | None = None) -> None:
    """Every row of a preference dataset holds a text ``prompt``, a non-empty ``chosen`` and a
    ``rejected`` completion different from ``chosen``; ``DataError`` names the first bad row.

    ``names`` maps ``prompt``/``chosen``/``rejected`` to the fields as the source calls them,
    for the message.
    """
    require_columns(dataset, ["prompt", "chosen", "rejected"], where)
    named = {c: (names or {}).get(c) or c for c in ("prompt", "chosen", "rejected")}
    for index, row in enumerate(zip(dataset["prompt"], dataset["chosen"], dataset["rejected"])):
        values = dict(zip(("prompt", "chosen", "rejected"), row))
        for column, value in values.items():
            if value is None:
                raise DataError(f"{where}, row {index}: field '{named[column]}' is missing")
            if not isinstance(value, str):
                raise DataError(
                    f"{where}, row {index}: field '{named[column]}' holds {type(value).__name__}, expected text"
                )
        for column in ("prompt", "chosen"):
            if not values[column].strip():
                raise DataError(f"{where}, row {index}: field '{named[column]}' is empty")
        if values["chosen"] == values["rejected"]:
            raise DataError(
                f"{where}, row {index}: fields '{named['chosen']}' and '{named['rejected']}' are identical "
                f"({values['chosen'][:40]!r}); a preference pair needs two different completions"
            )


def preference_batch(dataset, rows: list[int], tokenizer, max_length: int | None = None) -> PreferenceBatch:
    """Rows with ``prompt``, ``chosen`` and ``rejected`` as a ``PreferenceBatch`` of N pairs.

    Chosen and rejected rows are encoded together (``encode_pairs``), so both are [N,L] with one
    width L; the prompt goes through the chat template when the tokenizer has one. The
    reference log-probs are left unset.
    """
    picked = dataset.select(rows)
    prompts = chat_prompts(tokenizer, picked["prompt"])
    n = len(prompts)
    ids, attention, loss_mask = encode_pairs(
        tokenizer, prompts + prompts, list(picked["chosen"]) + list(picked["rejected"]), max_length
    )
    return PreferenceBatch(ids[:n], attention[:n], loss_mask[:n], ids[n:], attention[n:], loss_mask[n:])


def stacked_pairs(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chosen rows over the rejected rows: ``input_ids``, ``attention_mask``, ``loss_mask``
    [2N,L], the layout the DPO-family losses take their log-probs in."""
    return (
        torch.cat([batch.chosen_input_ids, batch.rejected_input_ids]),
        torch.cat([batch.chosen_attention_mask, batch.rejected_attention_mask]),
        torch.cat([batch.chosen_loss_mask, batch.rejected_loss_mask]),
    )
