"""A reward: graded closeness of a numeric answer (``reward: [{name: answer_distance}]``)."""
from __future__ import annotations

import re
from typing import Any

from rlloom.algos import check_positive
from rlloom.rewarding import column

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class AnswerDistance:
    """max(0, 1 − |ŷ − y| / scale): partial credit for a numeric answer close to the reference.

    ŷ is the last number in the completion, y the row's reference answer; a completion without
    a number scores 0. A dense companion to the ±1 ``answer_equivalence`` reward (weight it
    below 1 so an exact answer still dominates). ``scale``: the distance at which the reward
    reaches 0. ``answer_field``: the dataset column that holds y.
    """

    def __init__(self, scale: float = 10.0, answer_field: str = "answer"):
        self.scale = check_positive("scale", scale)
        self.answer_field = answer_field

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        answers = column(columns, self.answer_field, "reward 'answer_distance'")
        scores = []
        for completion, answer in zip(completions, answers):
            numbers = _NUMBER.findall(completion)
            distance = abs(float(numbers[-1]) - float(answer)) if numbers else float("inf")
            scores.append(max(0.0, 1.0 - distance / self.scale))
        return scores
