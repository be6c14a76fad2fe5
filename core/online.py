"""Online RL (rollout mode): sample, score, estimate advantages, update.

One step: SAMPLE → REWARD (samplers that filter score as they go) → LOG-PROBS (old when the
update is off-policy, reference when there is a KL term, values when there is a critic) →
ADVANTAGE → UPDATE (epochs × minibatches, each one optimizer step) → REFERENCE POLICY.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from rlloom import forward as fwd
from rlloom.batch import RolloutBatch
from rlloom.data import StepIndex, prompt_batch
from rlloom.errors import ConfigError, TrainingError, component_call
from rlloom.evaluation import GreedyEvaluation, chunks
from rlloom.kinds import AggregationScope, RefUpdate
from rlloom.metrics import MetricAccumulator
from rlloom.ops import global_sum, masked_mean
from rlloom.pipeline import Pipeline
from rlloom.rewarding import score
from rlloom.rollout import PromptBatch, SamplerContext
from rlloom.runtime import Runtime
from rlloom.update import LossShare, optimizer_step


class OnlineMode:
    """Online RL on the pipeline's sampler, rewards, advantage and losses."""

    def __init__(self, pipeline: Pipeline, rt: Runtime, hooks: Any):
        self.p, self.parts, self.rt, self.hooks = pipeline, pipeline.online, rt, hooks
        ref = self.parts.ref_policy
        if ref is not None:
            ref.setup(rt.policy)
            if ref.model is None:
                raise ConfigError(
                    f"ref_policy: {type(ref).__name__} holds no reference model after setup, but the KL "
                    f"term needs one (kl.coef > 0); set `kl: null` to train without a KL term"
                )
            ref.model.to(rt.device)
        budget = rt.cfg.trainer.eval_max_new_tokens or self.parts.max_new_tokens
        self.evaluation = GreedyEvaluation(pipeline, budget)
        self.last_batch: RolloutBatch | None = None

    # ------------------------------------------------------------------ the step
    def step(self, step: int) -> dict[str, float]:
        t, parts, rt = self.rt.cfg.trainer, self.parts, self.rt
        metrics: dict[str, float] = {}
        # SAMPLE
        start = time.perf_counter()
        rt.model.eval()
        batch = parts.sampler(self._sampler_context(step), self._prompts(step, 0))
        rt.model.train()
        # REWARD (samplers that filter have scored already)
        if batch.rewards is None:
            batch = self.score(batch)
        metrics.update(batch.metrics)
        metrics["time/sample_s"] = time.perf_counter() - start
        self.hooks.rlloom_after_sample(step=step, batch=batch)
        self.last_batch = batch
        # LOG-PROBS: old (only off-policy), reference, values
        start = time.perf_counter()
        ref_logits = old_logits = None
        if parts.off_policy or parts.needs_critic:
            old, values, old_logits = self._no_grad_pass(
                rt.model, batch, want_values=parts.needs_critic, want_logits=parts.old_policy == "logits"
            )
            batch.old_logprobs = old if parts.off_policy else None
            if parts.needs_critic:
                batch.values, batch.old_values = values * batch.mask, values * batch.mask
        kl = parts.kl
        if kl is not None:
            batch.ref_logprobs, _, ref_logits = self._no_grad_pass(
                parts.ref_policy.model, batch, want_logits=kl.needs_logits
            )
            if kl.in_reward:
                behaviour = batch.old_logprobs if batch.old_logprobs is not None else batch.sample_logprobs
                kl_tok = kl.estimator(behaviour, batch.ref_logprobs) * batch.mask
                prior = batch.token_rewards if batch.token_rewards is not None else torch.zeros_like(kl_tok)
                batch.token_rewards = prior - kl.control.coef * kl_tok
                metrics["kl/reward_mean"] = masked_mean(kl_tok, batch.mask).item()
        # ADVANTAGE
        with component_call(parts.advantage_label):
            adv = parts.advantage(batch)
        batch.advantages, batch.returns = adv.advantages, adv.returns
        metrics.update(adv.metrics)
        # UPDATE: epochs × minibatches, each an optimizer step over microbatches
        acc = MetricAccumulator()
        generator = torch.Generator().manual_seed(rt.cfg.seed * 7 + step)
        for _ in range(t.epochs):
            order = torch.randperm(len(batch), generator=generator) if t.minibatches > 1 else torch.arange(len(batch))
            for rows in order.chunk(t.minibatches):
                mb = batch.select(rows)
                mb_ref = ref_logits[rows] if ref_logits is not None else None
                mb_old = old_logits[rows] if old_logits is not None else None
                optimizer_step(
                    rt, mb, mb.mask, parts.max_new_tokens,
                    lambda b, s, idx: self.loss(b, s, mb_ref, idx, mb_old), acc,
                )
        metrics.update(acc.reduce())
        metrics["time/update_s"] = time.perf_counter() - start
        # REFERENCE POLICY
        if parts.ref_policy is not None:
            update = parts.ref_policy.on_step_end(step, rt.policy, metrics)
            if not isinstance(update, RefUpdate):
                raise TrainingError(
                    f"ref_policy {type(parts.ref_policy).__name__}.on_step_end returned "
                    f"{type(update).__name__}, not a RefUpdate"
                )
            metrics.update(update.metrics)
            if update.reset_optimizer:
                rt.reset_optimizer_state()
        if kl is not None:
            kl.control.update(metrics.get("kl/mean", 0.0), 1)
            metrics["kl/coef"] = kl.control.coef
        metrics.update(self._batch_metrics(batch, metrics))
        return metrics

    def loss(self, mb: RolloutBatch, scope: AggregationScope, ref_logits, idx, old_logits=None) -> LossShare:
        """The microbatch's share: policy loss + β·KL (in the loss) − c₂·entropy + c₁·value loss,
        and, for an update rule that bounds it, its share of the mean KL(π_old ‖ π_θ): exact
        over the vocabulary from ``old_logits`` [b,T,V] (rows of the step's, indexed by
        ``idx``) when the rule keeps them, else the k3 estimate on the sampled tokens
        (Schulman 2020)."""
        t, parts, p = self.rt.cfg.trainer, self.parts, self.p
        kl = parts.kl
        kl_in_loss = kl is not None and not kl.in_reward
        need_logits = p.loss_needs_logits or (kl_in_loss and kl.needs_logits) or old_logits is not None
        out = self._forward(
            self.rt.model, mb, want_logits=need_logits, want_values=parts.needs_critic, want_entropy=True,
            entropy_grad=bool(t.entropy_coef),
        )
        mb = mb.to(self.rt.device)
        loss_out = p.policy_loss(out.logprobs, mb, logits=out.logits if p.loss_needs_logits else None)
        policy_term = p.aggregation(loss_out.loss, loss_out.mask, scope)
        total = policy_term
        terms = {"loss/policy": policy_term}
        metrics = dict(loss_out.metrics)
        metrics["entropy/mean"] = masked_mean(out.entropy.detach(), mb.mask)
        if t.entropy_coef:
            entropy_term = p.aggregation(out.entropy, mb.mask, scope)
            total = total - t.entropy_coef * entropy_term
            terms["loss/entropy"] = -t.entropy_coef * entropy_term
        if kl_in_loss:
            ref = ref_logits[idx].to(self.rt.device) if ref_logits is not None else None
            kl_tok = kl.estimator(out.logprobs, mb.ref_logprobs, logits=out.logits, ref_logits=ref)
            kl_term = p.aggregation(kl_tok, mb.mask, scope)
            total = total + kl.control.coef * kl_term
            terms["loss/kl"] = kl.control.coef * kl_term
            metrics["kl/mean"] = masked_mean(kl_tok.detach(), mb.mask)
        if parts.needs_critic:
            value_out = parts.value_loss(out.values, mb)
            value_term = p.aggregation(value_out.loss, value_out.mask, scope)
            total = total + t.value_coef * value_term
            terms["loss/value"] = t.value_coef * value_term
            metrics.update(value_out.metrics)
        terms["loss/total"] = total
        kl_old = None
        if parts.old_policy == "logits":
            old_logp = torch.log_softmax(old_logits[idx].to(self.rt.device).float(), -1)
            new_logp = torch.log_softmax(out.logits.float(), -1)
            kl_tok = (old_logp.exp() * (old_logp - new_logp)).sum(-1)
            kl_old = (kl_tok * mb.mask).sum() / scope.total_tokens
        elif parts.old_policy == "logprobs":
            log_r = (out.logprobs.float() - mb.old_logprobs.float()) * mb.mask
            kl_old = ((torch.expm1(log_r) - log_r) * mb.mask).sum() / scope.total_tokens
        return LossShare(total, terms, metrics, mb.mask.sum().item(), kl_old)

    # ------------------------------------------------------------------ pieces of the step
    def score(self, batch: RolloutBatch) -> RolloutBatch:
        """Fill ``batch.rewards`` (and a ``reward/<name>`` column per reward function)."""
        columns = dict(batch.columns)
        columns["completion_lengths"] = batch.mask.sum(1).tolist()
        columns["truncated"] = batch.truncated.tolist() if batch.truncated is not None else [False] * len(batch)
        total, parts = score(self.p.rewards, batch.prompts, batch.completions, columns)
        batch.rewards = total
        batch.columns = {**batch.columns, **{f"reward/{k}": v.tolist() for k, v in parts.items()}}
        return batch

    def _prompts(self, step: int, draw: int) -> PromptBatch:
        """This process's prompts of ``step``; ``draw`` > 0 gives further, differently
        shuffled batches (for samplers that draw more). Group ids are unique within a step."""
        t, rt = self.rt.cfg.trainer, self.rt
        index = StepIndex(len(self.p.train_data), t.prompts_per_step, rt.cfg.seed + 7919 * draw, rt.rank, rt.world)
        per_process = t.prompts_per_step // rt.world
        return prompt_batch(self.p.train_data, index.rows(step), rt.tokenizer, draw * per_process)

    def _sampler_context(self, step: int) -> SamplerContext:
        draws = iter(range(1, 1 << 30))
        return SamplerContext(self.rt.policy, self.rt.tokenizer, self.score, lambda: self._prompts(step, next(draws)))

    def _forward(self, model, batch: RolloutBatch, **want: bool) -> fwd.ForwardOutput:
        return fwd.forward_rollout(model, batch.to(self.rt.device), self.parts.temperature, **want)

    @torch.no_grad()
    def _no_grad_pass(self, model, batch: RolloutBatch, want_values: bool = False, want_logits: bool = False):
        """Log-probs (and values/logits) of ``batch`` under ``model`` in microbatches, on CPU."""
        outs = [
            self._forward(model, batch.select(idx), want_values=want_values, want_logits=want_logits)
            for idx in chunks(len(batch), self.rt.cfg.trainer.micro_batch_size)
        ]
        logprobs = torch.cat([o.logprobs for o in outs]).cpu()
        values = torch.cat([o.values for o in outs]).cpu() if want_values else None
        logits = torch.cat([o.logits for o in outs]).cpu() if want_logits else None
        return logprobs, values, logits

    def _batch_metrics(self, batch: RolloutBatch, metrics: dict) -> dict[str, float]:
        """Reward, advantage and length statistics of the step's batch, over all processes."""
        lengths = batch.mask.sum(1).double()
        n = float(len(batch))
        sums = {
            "reward/mean": batch.rewards.double().sum(),
            "reward/sq": (batch.rewards.double() ** 2).sum(),
            "len/mean": lengths.sum(),
            "len/truncated_frac": batch.truncated.double().sum() if batch.truncated is not None else 0.0,
            "adv/mean": (batch.advantages.double() * batch.mask).sum(),
            "tokens": batch.mask.sum().double(),
            "n": n,
        }
        for key in batch.columns:
            if key.startswith("reward/"):
                sums[f"{key}/mean"] = torch.tensor(batch.columns[key], dtype=torch.float64).sum()
        keys = sorted(sums)
        totals = dict(zip(keys, global_sum(torch.stack([torch.as_tensor(sums[k], dtype=torch.float64) for k in keys])).tolist()))
        count, tokens = totals.pop("n"), totals.pop("tokens")
        out = {k: v / count for k, v in totals.items() if k not in ("adv/mean", "reward/sq")}
        out["reward/std"] = math.sqrt(max(totals["reward/sq"] / count - out["reward/mean"] ** 2, 0.0))
        out["adv/mean"] = totals["adv/mean"] / max(tokens, 1.0)
        elapsed = metrics.get("time/sample_s", 0.0) + metrics.get("time/update_s", 0.0)
        out["throughput/tokens_per_s"] = tokens / elapsed if elapsed else 0.0
        return out

    # ------------------------------------------------------------------ evaluation, tables, state
    def evaluate(self) -> dict[str, float]:
        return self.evaluation(self.rt)

    def completion_table(self, limit: int) -> dict[str, list] | None:
        batch = self.last_batch
        if batch is None:
            return None
        n = min(limit, len(batch))
        table = {
            "prompt": batch.prompts[:n],
            "completion": batch.completions[:n],
            "reward": batch.rewards[:n].tolist(),
            "length": batch.mask[:n].sum(1).tolist(),
        }
        for key, values in batch.columns.items():
            if key.startswith("reward/") or key == "answer":
                table[key] = list(values[:n])
        return table

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.parts.kl is not None:
            state["kl_control"] = self.parts.kl.control.state_dict()
        if self.parts.ref_policy is not None:
            state["ref_policy"] = self.parts.ref_policy.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.parts.kl is not None:
            self.parts.kl.control.load_state_dict(state["kl_control"])
        if self.parts.ref_policy is not None:
            self.parts.ref_policy.load_state_dict(state["ref_policy"])
