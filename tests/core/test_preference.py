"""The preference (DPO-family) mode of the engine: pair encoding, the reference pass and its
cache, end-to-end runs of every loss variant, resume."""
import math

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

import rlloom.reference_logps as reference_logps
from rlloom.config import PRESET_DIR, load_config
from rlloom.data import preference_batch, stacked_pairs
from rlloom.engine import Trainer
from rlloom.errors import DataError
from rlloom.models import char_tokenizer

LOSSES = ["dpo", "ipo", "hinge", "robust", "cdpo"]
NUM_TRAIN, NUM_TEST = 24, 6


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _cfg(out, tracking_uri="sqlite:///unused.db", loss="dpo", **trainer):
    settings = {"max_steps": 2, "batch_size": 8, "micro_batch_size": 4, "lr": 3e-3, "eval_every": 2, "eval_size": NUM_TEST, "eval_max_new_tokens": 3}
    settings.update(trainer)
    return OmegaConf.create(
        {
            "algorithm": "dpo",
            "seed": 0,
            "output_dir": str(out),
            "warm_start": {"config": None},
            "task": {"name": "arithmetic_pairs", "num_train": NUM_TRAIN, "num_test": NUM_TEST, "max_value": 20},
            "reward": ["answer_equivalence"],
            "policy_loss": {"name": loss, "sft_weight": 0.1} if isinstance(loss, str) else loss,
            "aggregation": "token_mean",
            "model": {"embedded": {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64}},
            "trainer": settings,
            "tracking": {"uri": tracking_uri, "experiment": "test_preference"},
        }
    )


@pytest.fixture
def count_reference_rows(monkeypatch):
    """Rows (as token tuples) that go through the reference pass's forward."""
    seen: list[tuple[int, ...]] = []
    forward = reference_logps.forward_rows

    def counting(model, input_ids, attention_mask, **want):
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            seen.append(tuple(i for i, m in zip(ids, mask) if m))
        return forward(model, input_ids, attention_mask, **want)

    monkeypatch.setattr(reference_logps, "forward_rows", counting)
    return seen


def _pair_rows(trainer, split):
    data = trainer.mode.pairs[split]
    tok = trainer.runtime.tokenizer
    rows = []
    for p, c, r in zip(data["prompt"], data["chosen"], data["rejected"]):
        for completion in (c, r):
            rows.append(tuple(tok(p + completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))
    return rows


# ---------------------------------------------------------------- encoding
def test_preference_batch_layout():
    tok = char_tokenizer("0123456789+-=")
    data = {"prompt": ["1+1=", "12+30="], "chosen": ["2", "42"], "rejected": ["11", "24"]}
    import datasets

    batch = preference_batch(datasets.Dataset.from_dict(data), [1, 0], tok)
    # Row "12+30=" + "42" + EOS is 9 tokens, the widest; every row is padded to it.
    assert batch.chosen_input_ids.shape == batch.rejected_input_ids.shape == (2, 9)
    # Loss mask: 1 on the completion and EOS only. "1+1=" then "11" + EOS: positions 4, 5, 6.
    assert batch.rejected_loss_mask[1].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert tok.decode(batch.chosen_input_ids[0][batch.chosen_attention_mask[0] == 1]) == "12+30=42<eos>"
    ids, attention, loss_mask = stacked_pairs(batch)
    assert ids.shape == (4, 9) and torch.equal(ids[2:], batch.rejected_input_ids)
    assert batch.ref_chosen_logps is None


def test_chat_template_wraps_the_prompt():
    tok = char_tokenizer("abcdefghijklmnopqrstuvwxyz:> ")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}>{% endif %}"
    import datasets

    data = datasets.Dataset.from_dict({"prompt": ["hi"], "chosen": ["yes"], "rejected": ["no"]})
    batch = preference_batch(data, [0], tok)
    prompt_len = int((batch.chosen_loss_mask[0] == 0).logical_and(batch.chosen_attention_mask[0] == 1).sum())
    assert tok.decode(batch.chosen_input_ids[0][:prompt_len]) == "user: hi >"


# ---------------------------------------------------------------- the reference pass
def test_reference_logps_computed_once_from_the_initial_policy(tmp_path, count_reference_rows):
    trainer = Trainer(_cfg(tmp_path / "run"))
    # Every train and held-out pair went through the reference forward exactly once.
    expected = _pair_rows(trainer, "train") + _pair_rows(trainer, "test")
    assert sorted(count_reference_rows) == sorted(expected)
    assert len(count_reference_rows) == 2 * (NUM_TRAIN + NUM_TEST)

    # The cached sums equal log π(y|x) = Σ_t log softmax(logits_{t-1})[y_t] of the initial policy,
    # computed here one token at a time.
    with safe_open(str(tmp_path / "run" / reference_logps.CACHE_FILE), framework="pt") as f:
        cached_chosen = f.get_tensor("train/chosen")
        cached_rejected = f.get_tensor("test/rejected")
    tok, lm = trainer.runtime.tokenizer, trainer.runtime.policy.eval()
    for split, column, cached, i in (("train", "chosen", cached_chosen, 3), ("test", "rejected", cached_rejected, 1)):
        row = trainer.mode.pairs[split][i]
        prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        ids = prompt + tok(row[column], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([ids])).logits[0].double()
        total = sum(torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(len(prompt), len(ids)))
        assert math.isclose(cached[i].item(), total, rel_tol=1e-5, abs_tol=1e-5)

    # A second run on the same data and model reads the cache: no reference forward at all.
    count_reference_rows.clear()
    again = Trainer(_cfg(tmp_path / "run"))
    assert count_reference_rows == []
    assert torch.equal(again.mode.ref["train"][0], trainer.mode.ref["train"][0])


def test_stale_cache_is_recomputed(tmp_path, count_reference_rows):
    Trainer(_cfg(tmp_path / "run"))
    count_reference_rows.clear()
    cfg = _cfg(tmp_path / "run")
    cfg.task.num_train = NUM_TRAIN + 2  # other pairs
    Trainer(cfg)
    assert len(count_reference_rows) == 2 * (NUM_TRAIN + 2 + NUM_TEST)
    count_reference_rows.clear()
    cfg.model.embedded.hidden_size = 16  # another initial policy
    Trainer(cfg)
    assert len(count_reference_rows) == 2 * (NUM_TRAIN + 2 + NUM_TEST)


def test_reference_free_skips_the_reference_pass(tmp_path, count_reference_rows):
    trainer = Trainer(_cfg(tmp_path / "run", loss={"name": "dpo", "reference_free": True}))
    assert count_reference_rows == [] and trainer.mode.ref == {}
    assert not (tmp_path / "run" / reference_logps.CACHE_FILE).exists()
    metrics = trainer.mode.step(0)
    assert math.isfinite(metrics["loss/total"])


def test_loss_is_a_mean_over_pairs_whatever_the_microbatches(tmp_path):
    # Gradient accumulation: 8 pairs in 4 microbatches of 2 (and 3 uneven ones) give the step's
    # loss and gradient of one microbatch of 8.
    results = []
    for micro in (8, 2, 3):
        trainer = Trainer(_cfg(tmp_path / f"run{micro}", micro_batch_size=micro, eval_every=0))
        results.append(trainer.mode.step(0))
    for other in results[1:]:
        for key in ("loss/total", "grad_norm", "dpo/accuracy", "logps/chosen"):
            assert math.isclose(other[key], results[0][key], rel_tol=1e-4, abs_tol=1e-6), key


def test_malformed_pairs_from_any_task_are_refused(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": "2+2=", "chosen": "4", "rejected": "4"}\n')
    cfg = _cfg(tmp_path / "run", eval_every=0)
    cfg.task = {"name": "preference_dataset", "path": str(path)}
    with pytest.raises(DataError, match="row 1: fields 'chosen' and 'rejected' are identical"):
        Trainer(cfg)


# ---------------------------------------------------------------- end to end
@pytest.mark.parametrize("loss", LOSSES)
def test_end_to_end(tmp_path, tracking_uri, loss):
    metrics = Trainer(_cfg(tmp_path / "run", tracking_uri, loss)).train()
    for key in (
        "loss/total", "loss/policy", "grad_norm", "lr", "time/update_s", "throughput/tokens_per_s",
        "dpo/rewards_chosen", "dpo/rewards_rejected", "dpo/margin", "dpo/accuracy", "logps/chosen", "logps/rejected",
        "eval/preference_accuracy", "eval/logps_accuracy", "eval/accuracy",
    ):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["eval/preference_accuracy"] <= 1.0
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / reference_logps.CACHE_FILE).is_file()


def test_dpo_preset_runs_end_to_end(tiny, tmp_path):
    metrics = Trainer(load_config(PRESET_DIR / "dpo.yaml", tiny)).train()
    for key in ("loss/total", "dpo/margin", "dpo/accuracy", "eval/preference_accuracy", "eval/accuracy"):
        assert math.isfinite(metrics[key]), key
    assert (tmp_path / "run" / reference_logps.CACHE_FILE).is_file()


def test_step_zero_preference_accuracy_is_zero(tmp_path):
    # The policy is the reference at step 0: every implicit reward margin is exactly 0.
    trainer = Trainer(_cfg(tmp_path / "run"))
    assert trainer.mode.pair_accuracy()["eval/preference_accuracy"] == 0.0


def test_resume_reuses_the_cache_and_matches_an_uninterrupted_run(tmp_path, tracking_uri, count_reference_rows):
    whole = Trainer(_cfg(tmp_path / "whole", tracking_uri, max_steps=3, eval_every=0))
    for step in range(3):  # the steps train() would run (a DPO step draws no random numbers)
        whole.mode.step(step)
    Trainer(_cfg(tmp_path / "cut", tracking_uri, max_steps=2, eval_every=0, checkpoint_every=1)).train()
    count_reference_rows.clear()
    resumed = Trainer(OmegaConf.merge(_cfg(tmp_path / "cut", tracking_uri, max_steps=3, eval_every=0), {"resume": True}))
    assert count_reference_rows == []
    resumed.train()
    for (name, a), b in zip(whole.runtime.policy.named_parameters(), resumed.runtime.policy.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
