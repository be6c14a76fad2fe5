"""The ``vine`` sampler: Monte Carlo values of every reasoning step's start (VinePPO §3, Eq. 5–7)."""
import pytest
import torch

from rlloom.batch import RolloutBatch
from rlloom.errors import ConfigError, TrainingError
from rlloom.models import char_tokenizer, embedded_model
from rlloom.plugins.samplers import GenerateSampler
from rlloom.plugins.tasks import ARITHMETIC_ALPHABET
from rlloom.plugins.vineppo import VinePPOAdvantage, VineSampler, reasoning_step_ends
from rlloom.registry import get_registry
from rlloom.rollout import SamplerContext, encode_prompts
from rlloom.testing import check_component

TOK = char_tokenizer(ARITHMETIC_ALPHABET)


class FakeBase:
    """A deterministic sampler. Its first call (the rollout) answers prompt text p with the
    completions ``rollouts[p]`` (one row each); later calls (continuations) answer the state
    text (prompt + prefix, decoded from the left-padded input tokens) with
    ``continuations[state]``, cycled over the ``num_generations`` rows. Records every call."""

    temperature = 0.7
    max_new_tokens = 16

    def __init__(self, rollouts, continuations, provides=frozenset(), drop_last=False):
        self.rollouts, self.continuations, self.provides = rollouts, continuations, provides
        self.drop_last = drop_last
        self.calls = []  # (number of prompts, num_generations, state texts)

    def __call__(self, ctx, prompts, num_generations=None):
        states = [TOK.decode(ids[m > 0].tolist()) for ids, m in zip(prompts.input_ids, prompts.attention_mask)]
        self.calls.append((len(prompts), num_generations, states))
        first = len(self.calls) == 1
        rows, texts = [], []
        for i, state in enumerate(states):
            options = self.rollouts[state] if first else self.continuations[state]
            g = len(options) if first else num_generations
            rows += [i] * g
            texts += [options[j % len(options)] for j in range(g)]
        if self.drop_last and not first:
            rows, texts = rows[:-1], texts[:-1]
        tokens = [TOK(t, add_special_tokens=False)["input_ids"] + [TOK.eos_token_id] for t in texts]
        width = max(len(t) for t in tokens)
        ids = torch.full((len(tokens), width), TOK.pad_token_id)
        mask = torch.zeros((len(tokens), width), dtype=torch.long)
        for r, t in enumerate(tokens):
            ids[r, : len(t)], mask[r, : len(t)] = torch.tensor(t), 1
        idx = torch.tensor(rows)
        return RolloutBatch(
            prompt_ids=prompts.input_ids[idx],
            prompt_mask=prompts.attention_mask[idx],
            completion_ids=ids,
            mask=mask,
            group_ids=prompts.group_ids[idx],
            prompts=[prompts.texts[i] for i in rows],
            completions=texts,
            columns={k: [v[i] for i in rows] for k, v in prompts.columns.items()},
            truncated=torch.zeros(len(rows), dtype=torch.bool),
            metrics={"base/metric": 1.0},
        )


class Scorer:
    """``ctx.score``: reward 1 when the completion's last line is the row's ``answer``, else 0;
    records what every reward call saw."""

    def __init__(self):
        self.seen = []  # (prompts, completions, answers)

    def __call__(self, batch):
        self.seen.append((list(batch.prompts), list(batch.completions), list(batch.columns["answer"])))
        batch.rewards = torch.tensor(
            [float(c.split("\n")[-1] == a) for c, a in zip(batch.completions, batch.columns["answer"])]
        )
        return batch


def run(sampler, prompts, answers, groups=None):
    scorer = Scorer()
    ctx = SamplerContext(model=None, tokenizer=TOK, score=scorer, next_prompts=None)
    groups = list(range(len(prompts))) if groups is None else groups
    batch = sampler(ctx, encode_prompts(TOK, prompts, groups, {"answer": answers}))
    return batch, scorer


def test_registered():
    assert get_registry().get("sampler", "vine").factory is VineSampler


def test_contract_provides_values_and_step_ends():
    attrs = check_component("sampler", VineSampler(base=GenerateSampler(temperature=0.7, max_new_tokens=9)))
    assert {"values", "step_ends"} <= attrs.provides
    assert attrs.temperature == 0.7 and attrs.max_new_tokens == 9
    wrapped = check_component("sampler", VineSampler(base=FakeBase({}, {}, provides=frozenset({"token_rewards"}))))
    assert wrapped.provides == {"values", "step_ends", "token_rewards"}  # base's fields kept


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_rollouts": 0}, "num_rollouts"),
        ({"num_rollouts": 2.5}, "num_rollouts"),
        ({"num_rollouts": True}, "num_rollouts"),
        ({"delimiter": ""}, "delimiter"),
        ({"max_states_per_call": 0}, "max_states_per_call"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VineSampler(base=GenerateSampler(), **kwargs)


def test_step_ends_at_delimiters_and_last_token():
    pad = 0
    ids = torch.tensor([[1, 5, 6, 2, 5, 6, 3], [5, 6, 4, pad, pad, pad, pad], [1, 5, pad, pad, pad, pad, pad]])
    mask = (ids != pad).long()
    # delimiter of two tokens (5, 6): a step ends at the 6 of every occurrence, and at the last real token
    expected = torch.tensor([[0, 0, 1, 0, 0, 1, 1], [0, 1, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0]])
    assert torch.equal(reasoning_step_ends(ids, mask, [5, 6]), expected)
    # one-token delimiter 5
    expected = torch.tensor([[0, 1, 0, 0, 1, 0, 1], [1, 0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0]])
    assert torch.equal(reasoning_step_ends(ids, mask, [5]), expected)


def test_deterministic_continuations_value_is_their_reward():
    # "7+8-9=" → "15-9\n6": steps "15-9\n" and "6<eos>". From s_0 (the prompt) the base always
    # continues with the wrong "15-9\n5" (R = 0); from s_1 = prompt + "15-9\n" always with "6" (R = 1).
    base = FakeBase({"7+8-9=": ["15-9\n6"]}, {"7+8-9=": ["15-9\n5"], "7+8-9=15-9\n": ["6"]})
    batch, scorer = run(VineSampler(base, num_rollouts=3), ["7+8-9="], ["6"])
    assert batch.values.tolist() == [[0.0] * 5 + [1.0] * 2]  # V̂(s_0) = 0 on step 0, V̂(s_1) = 1 on step 1
    assert batch.rewards.tolist() == [1.0]
    # the reward saw the whole completion (prefix + continuation), the prompt and the row's answer
    prompts, completions, answers = scorer.seen[1]
    assert completions == ["15-9\n5"] * 3 + ["15-9\n6"] * 3
    assert prompts == ["7+8-9="] * 6 and answers == ["6"] * 6
    assert batch.metrics["vine/continuations"] == 6.0 and batch.metrics["base/metric"] == 1.0


def test_values_constant_within_steps_and_step_ends_mark_delimiters():
    prompts = ["1+2+3=", "9-4+1=", "5+5+5="]
    rollouts = {"1+2+3=": ["3+3\n6"], "9-4+1=": ["5+1\n6\n"], "5+5+5=": ["15"]}  # row 1 ends "\n", row 2 one step
    conts = {"1+2+3=": ["6"], "1+2+3=3+3\n": ["0"], "9-4+1=": ["6"], "9-4+1=5+1\n": ["6"], "9-4+1=5+1\n6\n": ["7"],
             "5+5+5=": ["15"]}
    batch, _ = run(VineSampler(FakeBase(rollouts, conts), num_rollouts=2), prompts, ["6", "6", "15"])
    nl = TOK("\n", add_special_tokens=False)["input_ids"][0]
    real = batch.mask > 0
    # step_ends: 1 on every "\n" and on the last real token (EOS), nothing on padding
    last = torch.arange(batch.mask.shape[1]) == batch.mask.sum(1, keepdim=True) - 1
    expected_ends = ((batch.completion_ids == nl) & real) | last
    assert torch.equal(batch.step_ends, expected_ends.long())
    assert batch.step_ends.sum(1).tolist() == [2, 3, 1]
    for b in range(len(batch)):
        step = (batch.step_ends[b].cumsum(0) - batch.step_ends[b])[real[b]]
        vals = batch.values[b][real[b]]
        for k in step.unique():
            assert vals[step == k].unique().numel() == 1  # constant within a step
    assert (batch.values[~real] == 0).all()
    # row 0: V̂(s_0) = 1 ("6"), V̂(s_1) = 0 ("3+3\n0"); row 1: 1, 1 ("5+1\n6"), 0 ("5+1\n6\n7"); row 2: 1
    assert batch.values[0][real[0]].tolist() == [1, 1, 1, 1, 0, 0]
    assert batch.values[1][real[1]].tolist() == [1, 1, 1, 1, 1, 1, 0]
    assert batch.values[2][real[2]].tolist() == [1, 1, 1]
    assert batch.metrics["vine/steps_mean"] == pytest.approx(2.0)


def _three_step_sampler(**kwargs):
    # Prompt "2+3*4-5=" (answer 9), two rollouts of one prompt (one group):
    #   row 0 "2+12-5\n14-5\n9"  (right,  R = 1): steps "2+12-5\n" | "14-5\n" | "9<eos>"
    #   row 1 "2+12-5\n17-5\n12" (wrong, R = 0): steps "2+12-5\n" | "17-5\n" | "12<eos>"
    # The states s_0 (prompt) and s_1 (prompt + "2+12-5\n") are the same for both rows, so they
    # are estimated once: 4 distinct states. K = 4 continuations each, reward 1 for answer 9:
    #   s_0: 1 of 4 right → V̂ = 0.25;  s_1: 3 of 4 → 0.75;
    #   s_2 of row 0 (…"14-5\n"): 4 of 4 → 1.0;  s_2 of row 1 (…"17-5\n"): 0 of 4 → 0.0
    p = "2+3*4-5="
    rollouts = {p: ["2+12-5\n14-5\n9", "2+12-5\n17-5\n12"]}
    conts = {
        p: ["2+12-5\n14-5\n9", "2+12-5\n17-5\n12", "2+15-5\n10-5\n5", "2+12-5\n14-5\n8"],
        p + "2+12-5\n": ["14-5\n9", "14-5\n9", "17-5\n12", "14-5\n9"],
        p + "2+12-5\n14-5\n": ["9"],
        p + "2+12-5\n17-5\n": ["12"],
    }
    base = FakeBase(rollouts, conts)
    return base, VineSampler(base, num_rollouts=4, **kwargs), p


def test_k_continuations_per_state_in_one_batched_call():
    base, sampler, p = _three_step_sampler()
    batch, scorer = run(sampler, [p], ["9"])
    assert len(base.calls) == 2  # the rollout, then ONE call holding every state
    assert base.calls[0][:2] == (1, None)
    n_states, k, states = base.calls[1]
    assert (n_states, k) == (4, 4)
    assert states == [p, p + "2+12-5\n", p + "2+12-5\n14-5\n", p + "2+12-5\n17-5\n"]  # prompt + prefix tokens
    assert len(scorer.seen) == 2 and len(scorer.seen[1][1]) == 16  # one reward call for all continuations
    assert batch.metrics["vine/continuations"] == 16.0 and batch.metrics["vine/states"] == 4.0
    assert batch.metrics["vine/value_mean"] == pytest.approx((0.25 + 0.75 + 1.0 + 0.0) / 4)
    assert batch.metrics["vine/time_s"] >= 0
    # continuation tokens: each state's K = 4 continuations, one token per character plus EOS
    options = [base.continuations[state] for state in states]
    expected = sum(len(TOK(o[j % len(o)], add_special_tokens=False)["input_ids"]) + 1 for o in options for j in range(4))
    assert batch.metrics["vine/continuation_tokens"] == expected


def test_max_states_per_call_chunks_the_states():
    base, sampler, p = _three_step_sampler(max_states_per_call=3)
    chunked, _ = run(sampler, [p], ["9"])
    assert [(n, k) for n, k, _ in base.calls[1:]] == [(3, 4), (1, 4)]
    base, sampler, p = _three_step_sampler()
    whole, _ = run(sampler, [p], ["9"])
    torch.testing.assert_close(chunked.values, whole.values)


def test_vineppo_advantage_on_three_steps_by_hand():
    _, sampler, p = _three_step_sampler()
    batch, _ = run(sampler, [p], ["9"])
    # VinePPO Eq. 5–7 with γ = 1: Â(s_k, a_k) = r_k + V̂(s_{k+1}) − V̂(s_k), r_k = R on the last step,
    # V̂ = 0 after the last step.
    #   row 0 (R = 1): Â_0 = 0 + 0.75 − 0.25 = 0.5;  Â_1 = 0 + 1.0 − 0.75 = 0.25;  Â_2 = 1 + 0 − 1.0 = 0
    #   row 1 (R = 0): Â_0 = 0 + 0.75 − 0.25 = 0.5;  Â_1 = 0 + 0.0 − 0.75 = −0.75; Â_2 = 0 + 0 − 0.0 = 0
    # The mistaken step "17-5" (2 + 12 is 14, not 17) is the one blamed; the right steps get credit.
    # Tokens per step (one per character, EOS ends the last step): row 0: 7, 5, 2; row 1: 7, 5, 3.
    row0 = [0.25] * 7 + [0.75] * 5 + [1.0] * 2 + [0.0]
    row1 = [0.25] * 7 + [0.75] * 5 + [0.0] * 3
    assert batch.values.tolist() == [row0, row1]
    out = VinePPOAdvantage()(batch)
    expected = torch.tensor([[0.5] * 7 + [0.25] * 5 + [0.0] * 2 + [0.0], [0.5] * 7 + [-0.75] * 5 + [0.0] * 3])
    torch.testing.assert_close(out.advantages, expected)


def test_base_that_drops_continuations_is_refused():
    p = "1+2+3="
    base = FakeBase({p: ["3+3\n6"]}, {p: ["6"], p + "3+3\n": ["6"]}, drop_last=True)
    with pytest.raises(TrainingError, match="num_generations completions per prompt"):
        run(VineSampler(base, num_rollouts=2), [p], ["6"])


def test_delimiter_outside_the_vocabulary_is_refused():
    p = "1+2+3="
    base = FakeBase({p: ["3+3\n6"]}, {})
    with pytest.raises(ConfigError, match="delimiter"):
        run(VineSampler(base, delimiter="\n\n#"), [p], ["6"])


class Recording(GenerateSampler):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def __call__(self, ctx, prompts, num_generations=None):
        self.calls.append((len(prompts), num_generations))
        return super().__call__(ctx, prompts, num_generations)


def test_with_generate_on_a_tiny_model():
    torch.manual_seed(0)
    model = embedded_model(TOK, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    base = Recording(num_generations=3, max_new_tokens=8)
    scorer = Scorer()
    ctx = SamplerContext(model=model, tokenizer=TOK, score=scorer, next_prompts=None)
    prompts = encode_prompts(TOK, ["1+2+3=", "40-4*5="], [0, 1], {"answer": ["6", "20"]})
    batch = VineSampler(base, num_rollouts=2)(ctx, prompts)
    assert base.calls == [(2, None), (int(batch.metrics["vine/states"]), 2)]
    assert batch.values.shape == batch.mask.shape == batch.step_ends.shape
    assert ((batch.values >= 0) & (batch.values <= 1)).all()
    assert (batch.values[batch.mask == 0] == 0).all()
    assert batch.metrics["vine/continuations"] == 2 * batch.metrics["vine/states"]
    assert batch.metrics["vine/states"] >= 2  # at least the two prompt states
    # every continuation was scored as prompt text + a completion of at least the prefix
    assert all(p in ("1+2+3=", "40-4*5=") for p in scorer.seen[1][0])
