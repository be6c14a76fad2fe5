import threading

import pytest
import torch

from rlloom.errors import DataError
from rlloom.plugins.rewards import AnswerEquivalence, ExactMatch, Format, Python, RewardModel
from rlloom.registry import get_registry
from rlloom.testing import check_component


def test_registered():
    registry = get_registry()
    for name, factory in [
        ("answer_equivalence", AnswerEquivalence),
        ("exact_match", ExactMatch),
        ("format", Format),
        ("reward_model", RewardModel),
        ("python", Python),
    ]:
        assert registry.get("reward", name).factory is factory


def _rewards(fn, completions, answers):
    return fn(["p"] * len(completions), completions, answer=answers)


def test_answer_equivalence_integers():
    # DAPO Eq. (7): +1 when equivalent, -1 otherwise; leading zeros, spaces and a trailing
    # period do not matter, an unevaluated expression or a wrong number is wrong.
    reward = AnswerEquivalence()
    completions = ["19", " 19", "019", "abc", "18", "12+7", "x = 19.", "-3", "7+5\n12", "7+5", ""]
    answers = ["19", "19", "19", "19", "19", "19", "19", "-3", "12", "12", "0"]
    expected = [1, 1, 1, -1, -1, -1, 1, 1, 1, -1, -1]
    assert _rewards(reward, completions, answers) == [float(v) for v in expected]


def test_answer_equivalence_minus_is_a_sign_only_at_the_start_of_a_number():
    # "12-7": the last number is 7, not -7; "\n-6" ends in -6.
    reward = AnswerEquivalence()
    assert _rewards(reward, ["12-7", "12-7", "-1-5\n-6"], ["-7", "7", "-6"]) == [-1.0, 1.0, 1.0]


def test_answer_equivalence_math_verify_forms():
    # Non-integer answers go through math_verify: 1/2 = 0.5 = \frac{1}{2}; a boxed integer
    # answer too; free text compares stripped strings.
    reward = AnswerEquivalence(correct=2.0, incorrect=0.0)
    completions = ["0.5", "$\\frac{1}{2}$", "1/3", "so \\boxed{12}. Check: 3*4", " Paris ", "Rome"]
    answers = ["1/2", "0.5", "0.5", "12", "Paris", "Paris"]
    assert _rewards(reward, completions, answers) == [2.0, 2.0, 0.0, 2.0, 2.0, 0.0]


def test_answer_equivalence_other_thread():
    # math_verify's SIGALRM timeout is only available on the main thread.
    out = []
    thread = threading.Thread(target=lambda: out.append(_rewards(AnswerEquivalence(), ["0.5"], ["1/2"])))
    thread.start()
    thread.join()
    assert out == [[1.0]]


def test_answer_equivalence_missing_column():
    with pytest.raises(DataError, match="needs the column 'solution'; columns given: answer"):
        _rewards(AnswerEquivalence(answer_field="solution"), ["1"], ["1"])


def test_exact_match():
    assert _rewards(ExactMatch(), ["19", " 19\n", "019"], ["19", "19", "19"]) == [1.0, 1.0, 0.0]
    assert _rewards(ExactMatch(strip=False), ["19", " 19"], ["19", "19"]) == [1.0, 0.0]


def test_format():
    reward = Format(r"<think>.*</think><answer>\d+</answer>", reward=0.5, penalty=-0.5)
    completions = ["<think>a\nb</think><answer>12</answer>", "<think>a</think><answer>x</answer>", "x<think></think><answer>1</answer>"]
    # DOTALL lets ".*" span the newline; the second has no digits; the third has a prefix.
    assert reward(["p"] * 3, completions) == [0.5, -0.5, -0.5]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        Format("(")


HELPER = '''
def length_reward(prompts, completions, scale=1.0, **columns):
    return [scale * len(c) + len(columns["answer"][i]) for i, c in enumerate(completions)]

def keyword_only(completions, **kwargs):
    return [float(c == "a") for c in completions]

def strict(prompts, completions):
    return [0.0] * len(completions)

class Holder:
    @staticmethod
    def nested(prompts, completions, **kw):
        return [0.0] * len(completions)

NOT_CALLABLE = 3
'''


def test_python(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    # len("ab") * 2 + len("xyz") = 7; len("") * 2 + len("q") = 1
    reward = Python("my_rewards:length_reward", kwargs={"scale": 2.0})
    assert reward(["p", "p"], ["ab", ""], answer=["xyz", "q"]) == [7.0, 1.0]
    assert Python("my_rewards.length_reward")(["p"], ["ab"], answer=[""]) == [2.0]
    # TRL-style functions that take completions by keyword only.
    assert Python("my_rewards:keyword_only")(["p", "p"], ["a", "b"]) == [1.0, 0.0]
    assert Python("my_rewards:Holder.nested")(["p"], ["a"]) == [0.0]


def test_python_errors(tmp_path, monkeypatch):
    (tmp_path / "my_rewards2.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="'no_such_module:f': cannot import 'no_such_module'"):
        Python("no_such_module:f")
    with pytest.raises(ValueError, match="'my_rewards2' has no attribute 'missing'"):
        Python("my_rewards2:missing")
    with pytest.raises(ValueError, match="not a callable"):
        Python("my_rewards2:NOT_CALLABLE")
    with pytest.raises(ValueError, match="package.module:function"):
        Python("justaname")
    with pytest.raises(ValueError, match="does not take kwargs"):
        Python("my_rewards2:strict", kwargs={"scale": 2.0})


CHARS = list("abcdefghij ")


def _save_tiny_reward_model(path):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        num_labels=2, pad_token_id=0,
    )
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model, vocab


def _own_score(model, vocab, text, label):
    # The model alone on one unpadded sequence: last token's score for ``label``.
    ids = torch.tensor([[vocab[c] for c in text]])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, label].item()


def test_reward_model(tmp_path):
    model, vocab = _save_tiny_reward_model(tmp_path / "rm")
    reward = RewardModel(str(tmp_path / "rm"), batch_size=2, label_index=1, device="cpu")
    check_component("reward", reward)
    assert reward.model is None  # loaded on the first call
    prompts = ["ab", "c", "ddd", "e j"]
    completions = ["cd", "efghij", "", " a"]
    scores = reward(prompts, completions)
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)
    # Batched with padding equals each text scored alone.
    expected = [_own_score(model, vocab, p + c, 1) for p, c in zip(prompts, completions)]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert not any(p.requires_grad for p in reward.model.parameters())
    # Texts over max_length keep their last tokens.
    short = RewardModel(str(tmp_path / "rm"), max_length=4, device="cpu")
    assert short(["abcdef"], ["ghij"]) == pytest.approx([_own_score(model, vocab, "ghij", 0)], abs=1e-5)


def test_reward_model_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        RewardModel("x", batch_size=0)
    _save_tiny_reward_model(tmp_path / "rm")
    with pytest.raises(ValueError, match="label_index 5 is out of range"):
        RewardModel(str(tmp_path / "rm"), label_index=5, device="cpu")(["a"], ["b"])
