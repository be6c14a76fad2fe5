"""Generic reward functions: answer equivalence, exact match, format, a reward model, any callable.

Every reward is built from its config parameters and then called with the TRL signature
``reward(prompts, completions, **columns) -> list[float]``, one float per completion;
``columns`` hold the dataset's other fields per row (``answer``, ...) and the sampler's
``completion_lengths`` and ``truncated``.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import re
import threading
from fractions import Fraction
from typing import Any, Callable

import torch

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.rewarding import column

# A number as written in text: optional sign (a "-" only when it does not follow a digit,
# letter or ")", so "12-7" ends in 7, not -7), thousands separators, optional decimals.
_NUMBER = re.compile(r"(?:(?<![\w.)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def _last_number(text: str) -> Fraction | None:
    numbers = _NUMBER.findall(text)
    return Fraction(numbers[-1].replace(",", "")) if numbers else None


def _plain_number(text: str) -> Fraction | None:
    """``text`` as an exact number when it is one number and nothing else."""
    match = _NUMBER.fullmatch(text.strip())
    return Fraction(match.group().replace(",", "")) if match else None


def _timeout() -> int | None:
    """math_verify times out with SIGALRM, which only the main thread may use."""
    return 5 if threading.current_thread() is threading.main_thread() else None


class AnswerEquivalence:
    """Rule-based outcome reward: +1 when the completion's answer is equivalent, else -1.

    DAPO, Yu et al. 2025, Eq. 7: ``R(ŷ, y) = 1 if is_equivalent(ŷ, y) else -1`` (``correct`` and
    ``incorrect`` set the two values). ``y`` is the row's ``answer_field`` column.

    ``is_equivalent`` is decided as follows:

    - integer answers (``"19"``, ``"-3"``): the completion's last number, compared exactly
      (``"019"``, ``" 19"`` and ``"x = 19"`` match ``"19"``; an unevaluated expression such as
      ``"12+7"`` does not, so a policy cannot earn the reward by echoing the prompt; for a
      multi-step completion the last number is on the final-answer line). When the
      completion has a ``\\boxed{}`` it goes through math_verify instead. This takes a few
      microseconds per pair; math_verify takes about 0.5-1 ms.
    - other answers: math_verify (parse both, ``verify(gold, prediction)``), which handles
      LaTeX, fractions, sets and equivalent expressions. When math_verify extracts nothing
      from the completion, its last number is compared with the answer's value; when it
      extracts nothing from the answer (free text), the stripped strings are compared.
    """

    def __init__(self, correct: float = 1.0, incorrect: float = -1.0, answer_field: str = "answer"):
        self.correct, self.incorrect, self.answer_field = float(correct), float(incorrect), answer_field

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        answers = column(columns, self.answer_field, "reward 'answer_equivalence'")
        gold_cache: dict[str, list] = {}
        return [
            self.correct if self._equivalent(c, str(a), gold_cache) else self.incorrect
            for c, a in zip(completions, answers)
        ]

    def _equivalent(self, completion: str, answer: str, gold_cache: dict[str, list]) -> bool:
        if _INTEGER.fullmatch(answer) and "\\boxed" not in completion:
            return _last_number(completion) == int(answer)
        from math_verify import parse, verify

        timeout = _timeout()
        if answer not in gold_cache:
            gold_cache[answer] = parse(answer, parsing_timeout=timeout)
        gold = gold_cache[answer]
        if not gold:
            return completion.strip() == answer.strip()
        prediction = parse(completion, parsing_timeout=timeout)
        if prediction:
            return verify(gold, prediction, timeout_seconds=timeout)
        value = _plain_number(answer)
        return value is not None and _last_number(completion) == value


class ExactMatch:
    """1.0 when the completion equals the answer exactly, else 0.0 (both stripped when strip).

    A stricter indicator for the rule-based reward of DAPO (Yu et al. 2025, Eq. 7): the string
    itself must match, not an equivalent form.
    """

    def __init__(self, answer_field: str = "answer", strip: bool = True):
        self.answer_field, self.strip = answer_field, strip

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        answers = column(columns, self.answer_field, "reward 'exact_match'")
        norm = (lambda s: s.strip()) if self.strip else (lambda s: s)
        return [float(norm(c) == norm(str(a))) for c, a in zip(completions, answers)]


class Format:
    """The reward when the whole completion matches a regex pattern, else the penalty.

    ``re.fullmatch`` with ``re.DOTALL`` (``.`` also matches newlines), e.g.
    ``"<think>.*</think>\\s*<answer>.*</answer>"``. A shaping term, added to the task reward
    before advantages are computed. ``pattern``: the regex a completion must match whole.
    ``reward``: the value of a match. ``penalty``: the value of anything else.
    """

    def __init__(self, pattern: str, reward: float = 1.0, penalty: float = 0.0):
        try:
            self.regex = re.compile(pattern, re.DOTALL)
        except re.error as exc:
            raise ParameterError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        self.reward, self.penalty = float(reward), float(penalty)

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [self.reward if self.regex.fullmatch(c) else self.penalty for c in completions]


class RewardModel:
    """A sequence-classification reward model's score of prompt + completion.

    Loads ``AutoModelForSequenceClassification`` and ``AutoTokenizer`` from ``path`` (a local
    directory or a hub id, safetensors weights only) on the first call, and returns
    ``logits[:, label_index]`` of ``prompt + completion`` (plain concatenation, no chat
    template), scored ``batch_size`` texts at a time without gradients. Texts longer than
    ``max_length`` tokens are cut from the left, so the model sees the end of the completion.
    ``device`` defaults to CUDA when available. A learned outcome reward in place of the
    rule-based reward of DAPO (Yu et al. 2025, Eq. 7), for tasks without a verifiable answer.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 16,
        label_index: int = 0,
        max_length: int = 512,
        device: str | None = None,
    ):
        if batch_size < 1 or max_length < 1 or label_index < 0:
            raise ParameterError(
                f"need batch_size >= 1, max_length >= 1 and label_index >= 0, got "
                f"{batch_size}, {max_length}, {label_index}"
            )
        self.path, self.batch_size, self.label_index, self.max_length = path, batch_size, label_index, max_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = self.tokenizer = None

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForSequenceClassification.from_pretrained(self.path, use_safetensors=True)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"reward model '{self.path}': the tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if self.label_index >= model.config.num_labels:
            raise ValueError(
                f"reward model '{self.path}' has {model.config.num_labels} labels; "
                f"label_index {self.label_index} is out of range"
            )
        tokenizer.truncation_side = "left"
        self.tokenizer, self.model = tokenizer, model.to(self.device).eval().requires_grad_(False)

    @torch.inference_mode()
    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        if self.model is None:
            self._load()
        texts = [p + c for p, c in zip(prompts, completions)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**inputs).logits
            scores.extend(logits[:, self.label_index].float().cpu().tolist())
        return scores


def _resolve(path: str) -> Callable:
    """The object ``"package.module:attr"`` (or ``"package.module.attr"``) names."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ParameterError(f"function '{path}' must be given as 'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code
        raise ParameterError(f"function '{path}': cannot import '{module_name}': {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ParameterError(f"function '{path}': '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ParameterError(f"function '{path}' is a {type(obj).__name__}, not a callable")
    return obj


class Python:
    """Any Python callable with the TRL reward signature, imported from package.module:function.

    The function is called with keywords, as TRL calls reward functions:
    ``fn(prompts=..., completions=..., **columns, **kwargs)``, and returns one float per
    completion; ``kwargs`` are fixed extra arguments from the config.
    """

    def __init__(self, function: str, kwargs: dict[str, Any] | None = None):
        fn = _resolve(function)
        kwargs = dict(kwargs or {})
        try:
            inspect.signature(fn).bind_partial(**kwargs)
        except TypeError as exc:
            raise ParameterError(f"function '{function}' does not take kwargs {sorted(kwargs)}: {exc}") from None
        except ValueError:  # no signature to check (some builtins)
            pass
        self.function = function
        self.fn = functools.partial(fn, **kwargs) if kwargs else fn

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return self.fn(prompts=prompts, completions=completions, **columns)


@hookimpl
def rlloom_reward():
    return {
        "answer_equivalence": AnswerEquivalence,
        "exact_match": ExactMatch,
        "format": Format,
        "reward_model": RewardModel,
        "python": Python,
    }
