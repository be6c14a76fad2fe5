"""Data order and collation: deterministic steps, chat templates, completion-only masks."""
import datasets

from rlloom.data import StepIndex, prompt_batch, sft_batch
from rlloom.models import char_tokenizer

TEMPLATE = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}{% if add_generation_prompt %}A:{% endif %}"


def _data():
    return datasets.Dataset.from_dict({"prompt": ["1+2=", "3+4="], "completion": ["3", "7"], "answer": ["3", "7"]})


def test_step_index_is_a_function_of_step_and_splits_over_processes():
    one = StepIndex(10, 4, seed=5)
    again = StepIndex(10, 4, seed=5)
    assert [one.rows(s) for s in range(6)] == [again.rows(s) for s in range(6)]
    # every row once per epoch: steps 0..4 cover 20 rows = two epochs of 10
    seen = [r for s in range(5) for r in one.rows(s)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    # two processes take alternate rows of the same window
    r0, r1 = StepIndex(10, 4, 5, rank=0, world=2), StepIndex(10, 4, 5, rank=1, world=2)
    for s in range(5):
        window = one.rows(s)
        assert r0.rows(s) == window[0::2] and r1.rows(s) == window[1::2]


def test_prompts_go_through_the_chat_template_when_there_is_one():
    tok = char_tokenizer("0123456789+-=<>A:")
    plain = prompt_batch(_data(), [0], tok, 0)
    assert tok.decode(plain.input_ids[0], skip_special_tokens=True) == "1+2="
    tok.chat_template = TEMPLATE
    templated = prompt_batch(_data(), [0, 1], tok, 0)
    assert tok.decode(templated.input_ids[0], skip_special_tokens=True) == "<1+2=>A:"
    assert templated.texts == ["1+2=", "3+4="]  # rewards see the prompt as written
    assert templated.columns["answer"] == ["3", "7"]


def test_sft_rows_train_only_the_completion_and_eos():
    tok = char_tokenizer("0123456789+-=<>A:")
    batch = sft_batch(_data(), [0, 1], tok)
    # "1+2=" (4 prompt tokens) + "3" + EOS: loss on the last two positions only
    assert batch.loss_mask[0].tolist() == [0, 0, 0, 0, 1, 1]
    assert batch.input_ids[0, -1].item() == tok.eos_token_id
    tok.chat_template = TEMPLATE
    templated = sft_batch(_data(), [0], tok)
    # "<1+2=>A:" is 8 prompt tokens
    assert templated.loss_mask[0].tolist() == [0] * 8 + [1, 1]
