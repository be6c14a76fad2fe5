"""Held-out evaluation by generation: greedy answers to test prompts, scored by the rewards."""
from __future__ import annotations


import torch

from rlloom.data import fit_positions, prompt_batch, require_columns, row_lengths
from rlloom.decoding import Sampling, decode
from rlloom.models import unwrap_lm
from rlloom.ops import global_sum
from rlloom.pipeline import Pipeline
from rlloom.rewarding import score
from rlloom.rollout import completion_mask
from rlloom.runtime import Runtime

DEFAULT_BUDGET = 16


def chunks(n: int, size: int) -> list[torch.Tensor]:
    """Row indices 0..n−1 in consecutive pieces of at most ``size``."""
    return list(torch.arange(n).split(max(1, size)))


class GreedyEvaluation:
    """``eval/accuracy``: the fraction of held-out prompts whose greedy answer gets a positive
    score from the reward ``trainer.eval_reward`` names (the first reward when null);
    ``eval/reward_mean``: the mean combined reward; ``eval/reward/<name>``: each reward's mean.

    The held-out prompts are the first ``trainer.eval_size`` rows of the task's test split,
    loaded on first use and shared out over the processes. Answers are at most ``budget``
    tokens (``trainer.eval_max_new_tokens``, else the sampler's budget); a prompt that leaves
    no room for them in the model's positions is refused or dropped (``task.too_long``).
    """

    def __init__(self, pipeline: Pipeline, budget: int | None):
        self.task, self.rewards = pipeline.task, pipeline.rewards
        self.source, self.too_long = pipeline.source, pipeline.too_long
        self.budget = budget or DEFAULT_BUDGET
        self._data = None

    def _held_out(self, rt: Runtime):
        if self._data is None:
            test = self.task.load("test")
            require_columns(test, ["prompt"], "task (test split)")
            test = test.select(range(min(rt.cfg.trainer.eval_size, len(test))))
            lengths = row_lengths(test, rt.tokenizer, (), self.budget)
            test, _ = fit_positions(test, lengths, rt.max_positions, self.too_long, f"{self.source} (test split)")
            self._data = test.select(range(rt.rank, len(test), rt.world))
        return self._data

    @torch.no_grad()
    def __call__(self, rt: Runtime) -> dict[str, float]:
        if not self.rewards or rt.cfg.trainer.eval_size <= 0:
            return {}
        data = self._held_out(rt)
        tok = rt.tokenizer
        lm = unwrap_lm(rt.policy)
        was_training = lm.training
        lm.eval()
        judge = rt.cfg.trainer.eval_reward or self.rewards[0].name
        correct = reward_sum = 0.0
        per_reward = torch.zeros(len(self.rewards), dtype=torch.float64)
        for idx in chunks(len(data), rt.cfg.trainer.micro_batch_size):
            prompts = prompt_batch(data, idx.tolist(), tok, 0)
            out = decode(
                lm, prompts.input_ids.to(rt.device), prompts.attention_mask.to(rt.device), self.budget,
                tok.eos_token_id, tok.pad_token_id, Sampling(temperature=None),
            )
            tokens = out.tokens.cpu()
            mask, truncated = completion_mask(tokens, tok.eos_token_id)
            completions = tok.batch_decode(tokens.masked_fill(mask == 0, tok.pad_token_id), skip_special_tokens=True)
            columns = {**prompts.columns, "completion_lengths": mask.sum(1).tolist(), "truncated": truncated.tolist()}
            total, parts = score(self.rewards, prompts.texts, completions, columns)
            correct += float((parts[judge] > 0).sum())
            reward_sum += float(total.sum())
            per_reward += torch.stack([parts[r.name].double().sum() for r in self.rewards])
        lm.train(was_training)
        sums = global_sum(torch.cat([torch.tensor([correct, reward_sum, float(len(data))], dtype=torch.float64), per_reward]))
        n = max(sums[2].item(), 1.0)
        metrics = {"eval/accuracy": sums[0].item() / n, "eval/reward_mean": sums[1].item() / n}
        for reward, total_score in zip(self.rewards, sums[3:].tolist()):
            metrics[f"eval/reward/{reward.name}"] = total_score / n
        return metrics
