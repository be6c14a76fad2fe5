"""Supervised fine-tuning (supervised mode): the policy loss on (prompt, completion) rows."""
from __future__ import annotations

from typing import Any

from rlloom import forward as fwd
from rlloom.batch import SFTBatch
from rlloom.data import StepIndex, sft_batch
from rlloom.evaluation import GreedyEvaluation
from rlloom.kinds import AggregationScope
from rlloom.pipeline import Pipeline
from rlloom.runtime import OfflineMode, Runtime
from rlloom.update import LossShare, offline_step


class SupervisedMode(OfflineMode):
    """Each step: ``trainer.batch_size`` rows of the task's data, one optimizer step of the
    policy loss (completion tokens only); evaluation by greedy generation."""

    def __init__(self, pipeline: Pipeline, rt: Runtime, hooks: Any):
        self.p, self.rt = pipeline, rt
        t = rt.cfg.trainer
        self.index = StepIndex(len(pipeline.train_data), t.batch_size, rt.cfg.seed, rt.rank, rt.world)
        self.evaluation = GreedyEvaluation(pipeline, t.eval_max_new_tokens)

    def step(self, step: int) -> dict[str, float]:
        batch = sft_batch(self.p.train_data, self.index.rows(step), self.rt.tokenizer, self.rt.max_positions)
        return offline_step(self.rt, batch, batch.loss_mask, self.loss, batch.attention_mask.sum())

    def loss(self, mb: SFTBatch, scope: AggregationScope, idx) -> LossShare:
        mb = mb.to(self.rt.device)
        out = fwd.forward_rows(self.rt.model, mb.input_ids, mb.attention_mask, want_logits=self.p.loss_needs_logits)
        loss_out = self.p.policy_loss(out.logprobs, mb, logits=out.logits)
        total = self.p.aggregation(loss_out.loss, loss_out.mask, scope)
        return LossShare(total, {"loss/policy": total, "loss/total": total}, dict(loss_out.metrics), mb.loss_mask.sum().item())

    def evaluate(self) -> dict[str, float]:
        return self.evaluation(self.rt)
