"""Preference training (preference mode): a DPO-family loss on (prompt, chosen, rejected) pairs.

The reference log-probs of every train and held-out pair are computed once, from the initial
policy, before training (``reference_logps``, cached in ``output_dir``), so no reference
model is held while training; none are computed for reference-free losses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rlloom import forward as fwd
from rlloom import reference_logps
from rlloom.batch import PreferenceBatch
from rlloom.data import TARGETS, StepIndex, check_preference_rows, fit_positions, preference_batch, row_lengths, stacked_pairs
from rlloom.evaluation import GreedyEvaluation, chunks
from rlloom.kinds import AggregationScope
from rlloom.ops import global_sum
from rlloom.pipeline import Pipeline
from rlloom.runtime import OfflineMode, Runtime
from rlloom.update import LossShare, offline_step


class PreferenceMode(OfflineMode):
    """Each step: ``trainer.batch_size`` pairs, one optimizer step of the preference loss;
    evaluation on held-out pairs (and by greedy generation when rewards are configured)."""

    def __init__(self, pipeline: Pipeline, rt: Runtime, hooks: Any):
        self.p, self.rt = pipeline, rt
        t = rt.cfg.trainer
        self.index = StepIndex(len(pipeline.train_data), t.batch_size, rt.cfg.seed, rt.rank, rt.world)
        self.evaluation = GreedyEvaluation(pipeline, t.eval_max_new_tokens)
        self.pairs = {"train": pipeline.train_data}
        if t.eval_every > 0 and t.eval_size > 0:
            test = pipeline.task.load("test")
            check_preference_rows(test, "task (test split)")
            test = test.select(range(min(t.eval_size, len(test))))
            lengths = row_lengths(test, rt.tokenizer, TARGETS["preference"])
            self.pairs["test"], _ = fit_positions(test, lengths, rt.max_positions, pipeline.too_long,
                                                  f"{pipeline.source} (test split)")
        self.ref = {} if pipeline.reference_free else self._reference_pass()

    def _reference_pass(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Summed completion log-probs of the chosen and rejected side of every pair, per
        split, under the initial policy; read from the cache when its fingerprint matches."""
        rt, m = self.rt, self.rt.cfg.model
        identity = reference_logps.model_identity(m.path, m.dtype, OmegaConf.to_container(m.embedded), rt.cfg.seed)
        key = reference_logps.fingerprint(self.pairs, identity, rt.tokenizer, rt.max_positions)
        return reference_logps.cached(
            Path(rt.cfg.output_dir) / reference_logps.CACHE_FILE,
            key,
            self.pairs,
            lambda data: reference_logps.compute(
                rt.policy, data, rt.tokenizer, rt.max_positions, rt.cfg.trainer.micro_batch_size, rt.device
            ),
            rt.accelerator.is_main_process,
            rt.accelerator.wait_for_everyone,
        )

    def pair_batch(self, split: str, rows: list[int]) -> PreferenceBatch:
        """Pairs ``rows`` of ``split`` with their reference log-probs."""
        batch = preference_batch(self.pairs[split], rows, self.rt.tokenizer, self.rt.max_positions)
        if split in self.ref:
            chosen, rejected = self.ref[split]
            batch.ref_chosen_logps, batch.ref_rejected_logps = chosen[rows], rejected[rows]
        return batch

    def step(self, step: int) -> dict[str, float]:
        batch = self.pair_batch("train", self.index.rows(step))
        tokens = batch.chosen_attention_mask.sum() + batch.rejected_attention_mask.sum()
        return offline_step(self.rt, batch, torch.ones(len(batch), 1), self.loss, tokens)

    def loss(self, mb: PreferenceBatch, scope: AggregationScope, idx) -> LossShare:
        """One forward over the chosen rows stacked on the rejected rows [2N,L]; the loss is
        [N,1] with mask ones, so every aggregation averages it over the step's pairs."""
        mb = mb.to(self.rt.device)
        input_ids, attention_mask, _ = stacked_pairs(mb)
        out = fwd.forward_rows(self.rt.model, input_ids, attention_mask, want_logits=self.p.loss_needs_logits)
        loss_out = self.p.policy_loss(out.logprobs, mb, logits=out.logits)
        total = self.p.aggregation(loss_out.loss, loss_out.mask, scope)
        return LossShare(total, {"loss/policy": total, "loss/total": total}, dict(loss_out.metrics), float(len(mb)))

    def evaluate(self) -> dict[str, float]:
        return {**self.pair_accuracy(), **self.evaluation(self.rt)}

    @torch.no_grad()
    def pair_accuracy(self) -> dict[str, float]:
        """On the held-out pairs: ``eval/preference_accuracy``, the fraction whose implicit
        reward margin h = log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x) (Rafailov et
        al. 2023; π_ref uniform when reference-free) is positive, and ``eval/logps_accuracy``,
        the fraction whose chosen completion the policy finds likelier. Pairs go in the
        reference pass's microbatches, so while the policy is the reference h is exactly 0
        and no pair counts."""
        if "test" not in self.pairs:
            return {}
        rt = self.rt
        model = rt.policy
        was_training = model.training
        model.eval()
        counts = torch.zeros(3, dtype=torch.float64)
        for idx in chunks(len(self.pairs["test"]), rt.cfg.trainer.micro_batch_size)[rt.rank :: rt.world]:
            batch = self.pair_batch("test", idx.tolist())
            chosen, rejected = (x.float().cpu() for x in reference_logps.sequence_logps(model, batch.to(rt.device)))
            margin = chosen - rejected
            if batch.ref_chosen_logps is not None:
                margin = margin - (batch.ref_chosen_logps - batch.ref_rejected_logps)
            counts += torch.tensor([float((margin > 0).sum()), float((chosen > rejected).sum()), float(len(idx))])
        model.train(was_training)
        counts = global_sum(counts)
        n = max(counts[2].item(), 1.0)
        return {"eval/preference_accuracy": counts[0].item() / n, "eval/logps_accuracy": counts[1].item() / n}
