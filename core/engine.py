"""The training engine: one loop, every algorithm component called by name through the registry.

Online RL, per step: SAMPLE → REWARD → FILTER (inside samplers that filter) → LOG-PROBS
(old, ref, values) → ADVANTAGE → UPDATE (epochs × minibatches; each optimizer step runs its
microbatches: loss terms, aggregation, backward, clip, step) → REF POLICY → LOG → CHECKPOINT.
Offline methods (SFT, DPO) run the same UPDATE on batches drawn from the task's data; which
batch a run trains on is what its policy loss ``consumes``. Preference runs get the
reference log-probs of every pair once, before training, from the initial policy
(``reference_logps``), so no reference model is held while they train.

accelerate owns devices, mixed precision and processes. Gradient accumulation is done
here: every microbatch's loss is its share of the whole step (``AggregationScope`` counts
tokens and sequences over all microbatches and processes) and is multiplied by the process
count because DDP averages gradients, so 1 process × 4 microbatches and 2 processes × 2
microbatches produce the same gradient.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from rlloom import forward as fwd
from rlloom import reference_logps
from rlloom.batch import PreferenceBatch, RolloutBatch
from rlloom.checkpoint import checkpoint_dir, latest_checkpoint, load_state, save_checkpoint
from rlloom.config import disabled_plugins, validate_config
from rlloom.data import (
    StepIndex,
    check_preference_rows,
    preference_batch,
    prompt_batch,
    require_columns,
    sft_batch,
    stacked_pairs,
)
from rlloom.errors import ConfigError, TrainingError
from rlloom.kinds import KINDS, AggregationScope
from rlloom.metrics import MetricAccumulator
from rlloom.models import PolicyWithValue, char_tokenizer, embedded_model, load_policy, save_policy, unwrap_lm
from rlloom.ops import global_max, global_sum, masked_mean
from rlloom.registry import Registry, get_plugin_manager, get_registry, split_spec
from rlloom.rewarding import RewardFunction, score
from rlloom.rollout import PromptBatch, SamplerContext
from rlloom.settings import as_plain, load_settings
from rlloom.tracking import Tracker

FINAL_MODEL = "final"


def _chunks(n: int, size: int) -> list[torch.Tensor]:
    return list(torch.arange(n).split(max(1, size)))


class Trainer:
    """Builds a pipeline from a config and runs it (``Trainer(cfg).train()``)."""

    def __init__(self, cfg: DictConfig, plugin_manager=None):
        disable = disabled_plugins(cfg)
        self.pm = plugin_manager or get_plugin_manager(disable)
        self.registry = Registry.from_plugins(plugin_manager) if plugin_manager else get_registry(disable)
        validate_config(cfg, self.registry)
        self.cfg = load_settings(cfg)
        t = self.cfg.trainer

        from accelerate import Accelerator

        self.accelerator = Accelerator(mixed_precision=t.mixed_precision)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device

        self.policy_loss = self._build("policy_loss")
        self.mode = getattr(self.policy_loss, "consumes", "rollout")
        self.aggregation = self._build("aggregation", default="token_mean")
        self.schedule = self._build("schedule", default="constant")
        self.task = self._build("task")
        self.train_data = self.task.load("train")
        self.rewards = [
            RewardFunction(self._reward_name(spec, i), self.registry.build("reward", spec, path), weight)
            for i, (spec, path, weight) in enumerate(self._reward_specs())
        ]
        if self.mode == "rollout":
            self._build_online()
        elif self.mode == "supervised":
            require_columns(self.train_data, ["prompt", "completion"], "task (train split)")
        elif self.mode == "preference":
            check_preference_rows(self.train_data, "task (train split)")
        else:
            raise ConfigError(f"policy_loss: this engine does not train on '{self.mode}' batches yet")
        self._load_model()
        if self.mode == "preference":
            self._reference_pass()

    # ------------------------------------------------------------------ building
    def _build(self, kind: str, default: str | None = None, required: bool = True) -> Any:
        spec = self.cfg[kind] if self.cfg[kind] is not None else default
        if spec is None:
            if required:
                raise ConfigError(f"{kind}: this pipeline needs a {kind} ({KINDS[kind].summary})")
            return None
        return self.registry.build(kind, spec, kind)

    def _reward_specs(self) -> list[tuple[Any, str, float]]:
        value = self.cfg.reward
        if value is None:
            return []
        items = list(value) if OmegaConf.is_list(value) else [value]
        specs = []
        for i, item in enumerate(items):
            path = f"reward[{i}]" if OmegaConf.is_list(value) else "reward"
            weight = float(item.get("weight", 1.0)) if OmegaConf.is_dict(item) else 1.0
            specs.append((item, path, weight))
        return specs

    @staticmethod
    def _reward_name(spec: Any, index: int) -> str:
        name, _ = split_spec(spec, "reward")
        return name if index == 0 else f"{name}_{index}"

    def _build_online(self) -> None:
        t = self.cfg.trainer
        require_columns(self.train_data, ["prompt"], "task (train split)")
        if not self.rewards:
            raise ConfigError("reward: online RL needs at least one reward")
        self.sampler = self._build("sampler")
        self.advantage = self._build("advantage")
        provided = getattr(self.sampler, "provides", set())
        self.needs_critic = "values" in getattr(self.advantage, "requires", set()) - provided
        self.value_loss = self._build("value_loss", required=self.needs_critic) if self.needs_critic else None
        self.use_ref = t.kl_coef > 0 or t.kl_target is not None
        self.kl = self._build("kl", required=self.use_ref) if self.use_ref else None
        self.ref_policy = self._build("ref_policy", default="frozen" if self.use_ref else "none")
        if self.use_ref and self.kl is None:
            raise ConfigError("kl: trainer.kl_coef > 0 needs a KL estimator (e.g. `kl: k3`)")
        from rlloom.plugins.kl import make_kl_controller

        self.kl_ctl = make_kl_controller(t.kl_coef, t.kl_target, t.kl_horizon)
        self.off_policy = t.epochs > 1 or t.minibatches > 1
        self.temperature = getattr(self.sampler, "temperature", 1.0)
        if t.prompts_per_step % self.world:
            raise ConfigError(
                f"trainer.prompts_per_step={t.prompts_per_step} must divide over {self.world} processes"
            )

    def _load_model(self) -> None:
        m = self.cfg.model
        value_head = m.value_head if m.value_head is not None else getattr(self, "needs_critic", False)
        if m.path:
            model, self.tokenizer = load_policy(m.path, value_head=value_head, dtype=m.dtype)
        else:
            alphabet = getattr(self.task, "alphabet", None) or "".join(
                sorted({ch for col in ("prompt", "completion", "chosen", "rejected") if col in self.train_data.column_names for s in self.train_data[col] for ch in s})
            )
            self.tokenizer = char_tokenizer(alphabet)
            model = embedded_model(self.tokenizer, seed=self.cfg.seed, **OmegaConf.to_container(m.embedded))
            if value_head:
                model = PolicyWithValue(model)
        if getattr(self, "ref_policy", None) is not None:
            self.ref_policy.setup(model)
            if self.ref_policy.model is not None:
                self.ref_policy.model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        t = self.cfg.trainer
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.adam_betas))
        total = t.max_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: self.schedule(s, total))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    @property
    def policy(self):
        """The policy module without DDP wrapping."""
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ scoring
    def score(self, batch: RolloutBatch) -> RolloutBatch:
        columns = dict(batch.columns)
        columns["completion_lengths"] = batch.mask.sum(1).tolist()
        columns["truncated"] = batch.truncated.tolist() if batch.truncated is not None else [False] * len(batch)
        total, parts = score(self.rewards, batch.prompts, batch.completions, columns)
        batch.rewards = total
        batch.columns = {**batch.columns, **{f"reward/{k}": v.tolist() for k, v in parts.items()}}
        return batch

    # ------------------------------------------------------------------ the online step
    def _prompts(self, step: int, draw: int) -> PromptBatch:
        """This process's prompts of ``step``; ``draw`` > 0 gives further, differently
        shuffled batches (for samplers that draw more). Group ids are unique within a step."""
        t = self.cfg.trainer
        index = StepIndex(len(self.train_data), t.prompts_per_step, self.cfg.seed + 7919 * draw, self.rank, self.world)
        per_process = t.prompts_per_step // self.world
        return prompt_batch(self.train_data, index.rows(step), self.tokenizer, draw * per_process)

    def _sampler_context(self, step: int) -> SamplerContext:
        draws = iter(range(1, 1 << 30))
        return SamplerContext(self.policy, self.tokenizer, self.score, lambda: self._prompts(step, next(draws)))

    def _forward_batch(self, model, batch: RolloutBatch, **want: bool) -> fwd.ForwardOutput:
        return fwd.forward_rollout(model, batch.to(self.device), self.temperature, **want)

    @torch.no_grad()
    def _no_grad_pass(self, model, batch: RolloutBatch, want_values: bool = False, want_logits: bool = False):
        """Log-probs (and values/logits) of ``batch`` under ``model`` in microbatches, on CPU."""
        outs = [
            self._forward_batch(model, batch.select(idx), want_values=want_values, want_logits=want_logits)
            for idx in _chunks(len(batch), self.cfg.trainer.micro_batch_size)
        ]
        logprobs = torch.cat([o.logprobs for o in outs]).cpu()
        values = torch.cat([o.values for o in outs]).cpu() if want_values else None
        logits = torch.cat([o.logits for o in outs]).cpu() if want_logits else None
        return logprobs, values, logits

    def online_step(self, step: int) -> dict[str, float]:
        t = self.cfg.trainer
        metrics: dict[str, float] = {}
        # SAMPLE
        start = time.perf_counter()
        self.model.eval()
        batch = self.sampler(self._sampler_context(step), self._prompts(step, 0))
        self.model.train()
        # REWARD (samplers that filter have scored already)
        if batch.rewards is None:
            batch = self.score(batch)
        metrics.update(getattr(self.sampler, "last_metrics", {}) or {})
        metrics["time/sample_s"] = time.perf_counter() - start
        self.pm.hook.rlloom_after_sample(step=step, batch=batch)
        self._last_batch = batch
        # LOG-PROBS: old (only off-policy), reference, values
        start = time.perf_counter()
        ref_logits = None
        if self.off_policy or self.needs_critic:
            old, values, _ = self._no_grad_pass(self.model, batch, want_values=self.needs_critic)
            batch.old_logprobs = old if self.off_policy else None
            if self.needs_critic:
                batch.values, batch.old_values = values * batch.mask, values * batch.mask
        if self.use_ref and self.ref_policy.model is not None:
            batch.ref_logprobs, _, ref_logits = self._no_grad_pass(
                self.ref_policy.model, batch, want_logits=self.kl.needs_logits
            )
            if t.kl_in_reward:
                behaviour = batch.old_logprobs if batch.old_logprobs is not None else batch.sample_logprobs
                kl_tok = self.kl(behaviour, batch.ref_logprobs) * batch.mask
                prior = batch.token_rewards if batch.token_rewards is not None else torch.zeros_like(kl_tok)
                batch.token_rewards = prior - self.kl_ctl.coef * kl_tok
                metrics["kl/reward_mean"] = masked_mean(kl_tok, batch.mask).item()
        # ADVANTAGE
        try:
            adv = self.advantage(batch)
        except ValueError as exc:
            raise ConfigError(f"advantage: {exc}") from None
        batch.advantages, batch.returns = adv.advantages, adv.returns
        metrics.update(adv.metrics)
        # UPDATE: epochs × minibatches, each an optimizer step over microbatches
        acc = MetricAccumulator()
        generator = torch.Generator().manual_seed(self.cfg.seed * 7 + step)
        for _ in range(t.epochs):
            order = torch.randperm(len(batch), generator=generator) if t.minibatches > 1 else torch.arange(len(batch))
            for rows in order.chunk(t.minibatches):
                mb = batch.select(rows)
                mb_ref_logits = ref_logits[rows] if ref_logits is not None else None
                self._optimizer_step(mb, lambda b, s, idx: self._rollout_loss(b, s, mb_ref_logits, idx), acc)
        metrics.update(acc.reduce())
        metrics["time/update_s"] = time.perf_counter() - start
        # REF POLICY
        metrics.update(self.ref_policy.on_step_end(step, self.policy, metrics) or {})
        if metrics.pop("ref/reset_optimizer", 0.0):
            self.optimizer.optimizer.state.clear()
        if self.use_ref:
            self.kl_ctl.update(metrics.get("kl/mean", 0.0), 1)
            metrics["kl/coef"] = self.kl_ctl.coef
        metrics.update(self._rollout_metrics(batch, metrics))
        return metrics

    def _rollout_loss(self, mb: RolloutBatch, scope: AggregationScope, ref_logits, idx) -> tuple[torch.Tensor, dict]:
        t = self.cfg.trainer
        kl_in_loss = self.use_ref and not t.kl_in_reward
        need_logits = getattr(self.policy_loss, "needs_logits", False) or (kl_in_loss and self.kl.needs_logits)
        out = self._forward_batch(self.model, mb, want_logits=need_logits, want_values=self.needs_critic, want_entropy=True)
        mb = mb.to(self.device)
        loss_out = self.policy_loss(out.logprobs, mb, logits=out.logits if self.policy_loss.needs_logits else None)
        policy_term = self.aggregation(loss_out.loss, loss_out.mask, scope)
        total = policy_term
        shares = {"loss/policy": policy_term}
        metrics = dict(loss_out.metrics)
        metrics["entropy/mean"] = masked_mean(out.entropy.detach(), mb.mask)
        if t.entropy_coef:
            entropy_term = self.aggregation(out.entropy, mb.mask, scope)
            total = total - t.entropy_coef * entropy_term
            shares["loss/entropy"] = -t.entropy_coef * entropy_term
        if kl_in_loss:
            ref = ref_logits[idx].to(self.device) if ref_logits is not None else None
            kl_tok = self.kl(out.logprobs, mb.ref_logprobs, logits=out.logits, ref_logits=ref)
            kl_term = self.aggregation(kl_tok, mb.mask, scope)
            total = total + self.kl_ctl.coef * kl_term
            shares["loss/kl"] = self.kl_ctl.coef * kl_term
            metrics["kl/mean"] = masked_mean(kl_tok.detach(), mb.mask)
        if self.needs_critic:
            value_out = self.value_loss(out.values, mb)
            value_term = self.aggregation(value_out.loss, value_out.mask, scope)
            total = total + t.value_coef * value_term
            shares["loss/value"] = t.value_coef * value_term
            metrics.update(value_out.metrics)
        shares["loss/total"] = total
        return total, {"shares": shares, "metrics": metrics, "weight": mb.mask.sum().item()}

    def _rollout_metrics(self, batch: RolloutBatch, metrics: dict) -> dict[str, float]:
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

    # ------------------------------------------------------------------ the offline step
    def sft_step(self, step: int) -> dict[str, float]:
        t = self.cfg.trainer
        start = time.perf_counter()
        index = StepIndex(len(self.train_data), t.batch_size, self.cfg.seed, self.rank, self.world)
        batch = sft_batch(self.train_data, index.rows(step), self.tokenizer, self._max_positions())
        acc = MetricAccumulator()
        self._optimizer_step(batch, self._sft_loss, acc)
        metrics = acc.reduce()
        metrics["time/update_s"] = time.perf_counter() - start
        metrics["throughput/tokens_per_s"] = global_sum(batch.attention_mask.sum()).item() / metrics["time/update_s"]
        return metrics

    def _sft_loss(self, mb, scope: AggregationScope, idx) -> tuple[torch.Tensor, dict]:
        mb = mb.to(self.device)
        needs_logits = getattr(self.policy_loss, "needs_logits", False)
        out = fwd.forward_rows(self.model, mb.input_ids, mb.attention_mask, want_logits=needs_logits)
        loss_out = self.policy_loss(out.logprobs, mb, logits=out.logits)
        total = self.aggregation(loss_out.loss, loss_out.mask, scope)
        shares = {"loss/policy": total, "loss/total": total}
        return total, {"shares": shares, "metrics": dict(loss_out.metrics), "weight": mb.loss_mask.sum().item()}

    # ------------------------------------------------------------------ the preference step
    def _reference_pass(self) -> None:
        """The held-out pairs (the first ``eval_size`` of the test split, when evaluating) and
        the reference log-probs of every train and held-out pair, from the initial policy,
        computed once and cached in ``output_dir`` (``reference_logps``); none when the loss
        is reference-free."""
        t, m = self.cfg.trainer, self.cfg.model
        self._pairs = {"train": self.train_data}
        if t.eval_every > 0 and t.eval_size > 0:
            test = self.task.load("test")
            check_preference_rows(test, "task (test split)")
            self._pairs["test"] = test.select(range(min(t.eval_size, len(test))))
        self._ref: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if getattr(self.policy_loss, "reference_free", False):
            return
        identity = reference_logps.model_identity(m.path, m.dtype, OmegaConf.to_container(m.embedded), self.cfg.seed)
        key = reference_logps.fingerprint(self._pairs, identity, self.tokenizer, self._max_positions())
        self._ref = reference_logps.cached(
            Path(self.cfg.output_dir) / reference_logps.CACHE_FILE,
            key,
            self._pairs,
            lambda data: reference_logps.compute(
                self.policy, data, self.tokenizer, self._max_positions(), t.micro_batch_size, self.device
            ),
            self.accelerator.is_main_process,
            self.accelerator.wait_for_everyone,
        )

    def _pair_batch(self, split: str, rows: list[int]) -> PreferenceBatch:
        """Pairs ``rows`` of ``split`` with their cached reference log-probs."""
        batch = preference_batch(self._pairs[split], rows, self.tokenizer, self._max_positions())
        if split in self._ref:
            chosen, rejected = self._ref[split]
            batch.ref_chosen_logps, batch.ref_rejected_logps = chosen[rows], rejected[rows]
        return batch

    def preference_step(self, step: int) -> dict[str, float]:
        t = self.cfg.trainer
        start = time.perf_counter()
        index = StepIndex(len(self.train_data), t.batch_size, self.cfg.seed, self.rank, self.world)
        batch = self._pair_batch("train", index.rows(step))
        acc = MetricAccumulator()
        self._optimizer_step(batch, self._preference_loss, acc)
        metrics = acc.reduce()
        metrics["time/update_s"] = time.perf_counter() - start
        tokens = batch.chosen_attention_mask.sum() + batch.rejected_attention_mask.sum()
        metrics["throughput/tokens_per_s"] = global_sum(tokens).item() / metrics["time/update_s"]
        return metrics

    def _preference_loss(self, mb: PreferenceBatch, scope: AggregationScope, idx) -> tuple[torch.Tensor, dict]:
        """One forward over the chosen rows stacked on the rejected rows [2N,L]; the loss is
        [N,1] with mask ones, so every aggregation averages it over the step's pairs."""
        mb = mb.to(self.device)
        needs_logits = getattr(self.policy_loss, "needs_logits", False)
        input_ids, attention_mask, _ = stacked_pairs(mb)
        out = fwd.forward_rows(self.model, input_ids, attention_mask, want_logits=needs_logits)
        loss_out = self.policy_loss(out.logprobs, mb, logits=out.logits)
        total = self.aggregation(loss_out.loss, loss_out.mask, scope)
        shares = {"loss/policy": total, "loss/total": total}
        return total, {"shares": shares, "metrics": dict(loss_out.metrics), "weight": float(len(mb))}

    @torch.no_grad()
    def _preference_eval(self) -> dict[str, float]:
        """On the held-out pairs: ``eval/preference_accuracy``, the fraction whose implicit reward
        margin h = log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x) (seed 002 "Preference
        Loss"; π_ref uniform when reference-free) is positive, and ``eval/logps_accuracy``, the
        fraction whose chosen completion the policy finds likelier, log π(y_w|x) > log π(y_l|x).
        Pairs go in the reference pass's microbatches, so while the policy is the reference h
        is exactly 0 and no pair counts."""
        if "test" not in self._pairs:
            return {}
        chunks = _chunks(len(self._pairs["test"]), self.cfg.trainer.micro_batch_size)
        model = self.policy
        was_training = model.training
        model.eval()
        counts = torch.zeros(3, dtype=torch.float64)
        for idx in chunks[self.rank :: self.world]:
            batch = self._pair_batch("test", idx.tolist())
            chosen, rejected = (x.float().cpu() for x in reference_logps.sequence_logps(model, batch.to(self.device)))
            margin = chosen - rejected
            if batch.ref_chosen_logps is not None:
                margin = margin - (batch.ref_chosen_logps - batch.ref_rejected_logps)
            counts += torch.tensor([float((margin > 0).sum()), float((chosen > rejected).sum()), float(len(idx))])
        model.train(was_training)
        counts = global_sum(counts)
        n = max(counts[2].item(), 1.0)
        return {"eval/preference_accuracy": counts[0].item() / n, "eval/logps_accuracy": counts[1].item() / n}

    def _max_positions(self) -> int | None:
        return getattr(unwrap_lm(self.policy).config, "max_position_embeddings", None)

    # ------------------------------------------------------------------ one optimizer step
    def _optimizer_step(self, rows, loss_fn: Callable, acc: MetricAccumulator) -> None:
        """Accumulate the gradient of ``rows`` over microbatches, clip, step.

        ``loss_fn(microbatch, scope, row_index)`` returns (the microbatch's share of the step
        loss, {"shares", "metrics", "weight"}).
        """
        t = self.cfg.trainer
        if isinstance(rows, PreferenceBatch):  # one loss entry per pair: loss [N,1], mask ones
            mask = torch.ones(len(rows), 1)
        else:
            mask = rows.mask if isinstance(rows, RolloutBatch) else rows.loss_mask
        totals = global_sum(torch.stack([mask.sum().double(), torch.tensor(float(len(rows)), dtype=torch.float64)]))
        scope = AggregationScope(
            total_tokens=float(totals[0]),
            total_sequences=float(totals[1]),
            max_len=getattr(getattr(self, "sampler", None), "max_new_tokens", mask.shape[1]),
        )
        # Every process runs the same number of microbatches (DDP synchronises on the last
        # backward); a process with fewer rows runs a zero-weighted copy of its first row.
        count = int(global_max(math.ceil(len(rows) / t.micro_batch_size)))
        pieces = list(torch.arange(len(rows)).tensor_split(count))
        for i, idx in enumerate(pieces):
            sync = contextlib.nullcontext() if i == len(pieces) - 1 else self.accelerator.no_sync(self.model)
            with sync:
                if len(idx) == 0:
                    loss, _ = loss_fn(rows.select([0]), scope, torch.tensor([0]))
                    self.accelerator.backward(loss * 0.0)
                    continue
                loss, info = loss_fn(rows.select(idx), scope, idx)
                if not torch.isfinite(loss):
                    self.optimizer.zero_grad(set_to_none=True)
                    raise TrainingError(
                        f"non-finite loss ({loss.item()}) at microbatch {i}: terms "
                        + ", ".join(f"{k}={v.item():.4g}" for k, v in info["shares"].items())
                        + "; lower trainer.lr or check the rewards"
                    )
                self.accelerator.backward(loss * self.world)
            for name, value in info["shares"].items():
                acc.add_sum(name, value)
            acc.add(info["metrics"], info["weight"])
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
        if not torch.isfinite(torch.as_tensor(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"non-finite gradient norm ({grad_norm}); the step was not applied")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        acc.add({"grad_norm": float(grad_norm), "lr": self.optimizer.param_groups[0]["lr"]}, 1.0)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy answers to held-out prompts: ``eval/accuracy`` is the fraction whose first
        reward is positive, ``eval/reward_mean`` the mean combined reward; preference runs add
        the held-out preference accuracy (``_preference_eval``)."""
        t = self.cfg.trainer
        metrics = self._preference_eval() if self.mode == "preference" else {}
        if not self.rewards or t.eval_size <= 0:
            return metrics
        if not hasattr(self, "_test_data"):
            test = self.task.load("test")
            require_columns(test, ["prompt"], "task (test split)")
            rows = list(range(min(t.eval_size, len(test))))
            self._test_data = test.select(rows[self.rank :: self.world])
        data = self._test_data
        budget = t.eval_max_new_tokens or getattr(getattr(self, "sampler", None), "max_new_tokens", 16)
        lm = unwrap_lm(self.policy)
        was_training = lm.training
        lm.eval()
        correct = reward_sum = 0.0
        for idx in _chunks(len(data), t.micro_batch_size):
            prompts = prompt_batch(data, idx.tolist(), self.tokenizer, 0)
            out = lm.generate(
                input_ids=prompts.input_ids.to(self.device),
                attention_mask=prompts.attention_mask.to(self.device),
                do_sample=False,
                max_new_tokens=budget,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            tokens = out[:, prompts.input_ids.shape[1]:].cpu()
            from rlloom.rollout import completion_mask

            mask, truncated = completion_mask(tokens, self.tokenizer.eos_token_id)
            completions = self.tokenizer.batch_decode(tokens.masked_fill(mask == 0, self.tokenizer.pad_token_id), skip_special_tokens=True)
            columns = {**prompts.columns, "completion_lengths": mask.sum(1).tolist(), "truncated": truncated.tolist()}
            total, parts = score(self.rewards, prompts.texts, completions, columns)
            first = parts[self.rewards[0].name]
            correct += float((first > 0).sum())
            reward_sum += float(total.sum())
        lm.train(was_training)
        sums = global_sum(torch.tensor([correct, reward_sum, float(len(data))], dtype=torch.float64))
        n = max(sums[2].item(), 1.0)
        return {**metrics, "eval/accuracy": sums[0].item() / n, "eval/reward_mean": sums[1].item() / n}

    # ------------------------------------------------------------------ checkpoints
    def _state(self, step: int, run_id: str | None) -> dict[str, Any]:
        state = {
            "step": step,
            "run_id": run_id,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        if self.mode == "rollout":
            state["kl_ctl"] = self.kl_ctl.state_dict()
            state["ref_policy"] = self.ref_policy.state_dict()
        return state

    def save(self, step: int, run_id: str | None) -> None:
        if self.accelerator.is_main_process:
            save_checkpoint(
                checkpoint_dir(self.cfg.output_dir, step),
                lambda d: save_policy(self.policy, self.tokenizer, d),
                self._state(step, run_id),
            )
        self.accelerator.wait_for_everyone()

    def restore(self) -> tuple[int, str | None]:
        """Load the newest checkpoint of ``output_dir``: returns (next step, MLflow run id)."""
        directory = latest_checkpoint(self.cfg.output_dir)
        if directory is None:
            return 0, None
        state = load_state(directory)
        from safetensors.torch import load_file

        weights = load_file(str(directory / "model.safetensors"))
        lm = unwrap_lm(self.policy)
        missing, unexpected = lm.load_state_dict(weights, strict=False)
        if unexpected or any("embed" not in m and "lm_head" not in m for m in missing):
            raise TrainingError(f"checkpoint {directory} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        if isinstance(self.policy, PolicyWithValue):
            self.policy.value_head.load_state_dict(load_file(str(directory / "value_head.safetensors")))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.mode == "rollout":
            self.kl_ctl.load_state_dict(state["kl_ctl"])
            self.ref_policy.load_state_dict(state["ref_policy"])
        return state["step"], state["run_id"]

    # ------------------------------------------------------------------ the loop
    def _tags(self) -> dict[str, str]:
        import importlib.metadata as md

        tags = {"algorithm": self.cfg.algorithm, "mode": self.mode}
        for kind in KINDS:
            if self.cfg[kind] is not None and kind != "reward":
                tags[f"component.{kind}"] = split_spec(self.cfg[kind], kind)[0]
        tags["component.reward"] = ",".join(r.name for r in self.rewards)
        for plugin in sorted({e.plugin.split(".")[0] for k in self.registry.kinds() for e in self.registry.entries(k)}):
            try:
                tags[f"plugin.{plugin}"] = md.version(plugin)
            except md.PackageNotFoundError:
                continue
        return tags

    def train(self) -> dict[str, float]:
        """Run to ``trainer.max_steps``; returns the last step's metrics (with the last eval)."""
        t = self.cfg.trainer
        set_step_seed(self.cfg.seed, -1, self.rank)
        start_step, run_id = self.restore() if self.cfg.resume else (0, None)
        tracker = Tracker(self.cfg.tracking.uri, self.cfg.tracking.experiment, self.accelerator.is_main_process)
        tr = self.cfg.tracking
        run_id = tracker.start(tr.run_name or Path(self.cfg.output_dir).name, run_id, tr.parent_run_id)
        if start_step == 0:
            tracker.log_config(as_plain(self.cfg), {**self._tags(), **{str(k): str(v) for k, v in tr.tags.items()}})
        self.pm.hook.rlloom_run_start(config=self.cfg, run_id=run_id)
        metrics: dict[str, float] = {}
        progress = _Progress(t.max_steps, start_step, self.accelerator.is_main_process)
        status = "FAILED"
        try:
            if start_step == 0 and t.eval_every > 0:
                first = self.evaluate()
                tracker.log_metrics(first, 0)
                progress.note(first)
            for step in range(start_step, t.max_steps):
                set_step_seed(self.cfg.seed, step, self.rank)
                step_fn = {"rollout": self.online_step, "supervised": self.sft_step, "preference": self.preference_step}
                metrics = step_fn[self.mode](step)
                done = step + 1
                if t.eval_every > 0 and (done % t.eval_every == 0 or done == t.max_steps):
                    metrics.update(self.evaluate())
                tracker.log_metrics(metrics, done)
                if self.mode == "rollout" and self.accelerator.is_main_process and (done % max(t.eval_every, 1) == 0 or done == t.max_steps):
                    tracker.log_table(_completion_table(self._last_batch, t.log_completions), f"completions/step_{done:06d}.json")
                if (t.checkpoint_every and done % t.checkpoint_every == 0) or done == t.max_steps:
                    self.save(done, run_id)
                self.pm.hook.rlloom_after_step(step=done, metrics=metrics)
                progress.update(metrics)
            if self.accelerator.is_main_process:
                save_policy(self.policy, self.tokenizer, Path(self.cfg.output_dir) / FINAL_MODEL)
            self.pm.hook.rlloom_run_end(step=t.max_steps, metrics=metrics)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            progress.close()
            tracker.end(status)
        return metrics


def set_step_seed(seed: int, step: int, rank: int) -> None:
    """Seed every RNG from (seed, step, rank), so a resumed run draws what an uninterrupted
    one would at the same step without restoring RNG state."""
    import random

    value = (seed * 1_000_003 + (step + 1) * 9_973 + rank * 101) % (2**31)
    random.seed(value)
    torch.manual_seed(value)


def _completion_table(batch: RolloutBatch, limit: int) -> dict[str, list]:
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


class _Progress:
    """A rich progress bar showing the key metrics (main process only)."""

    KEYS = ("reward/mean", "eval/accuracy", "loss/total", "kl/mean", "len/mean")

    def __init__(self, total: int, start: int, enabled: bool):
        self.enabled = enabled
        self.shown: dict[str, float] = {}
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def note(self, metrics: dict[str, float]) -> None:
        self.shown.update({k: v for k, v in metrics.items() if k in self.KEYS})
        if self.enabled:
            info = "  ".join(f"{k.split('/')[0] if k != 'eval/accuracy' else 'eval_acc'}={v:.3f}" for k, v in self.shown.items())
            self.bar.update(self.task, info=info)
            if "eval/accuracy" in metrics:
                self.bar.console.print(f"eval/accuracy = {metrics['eval/accuracy']:.3f}")

    def update(self, metrics: dict[str, float]) -> None:
        self.note(metrics)
        if self.enabled:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


def prepare_warm_start(cfg: DictConfig) -> DictConfig:
    """Run the warm start of ``cfg`` when one is configured; returns ``cfg`` with ``model.path`` set.

    ``warm_start.config`` (a preset name or path) runs into ``<output_dir>/warm_start`` once
    (an existing final model there is reused) and its final model becomes ``model.path``.
    Without a warm start, or with ``model.path`` given, ``cfg`` comes back unchanged.
    """
    from rlloom.config import find_config, load_config

    settings = load_settings(cfg)
    ws = settings.warm_start
    if ws.config and not settings.model.path:
        out = Path(settings.output_dir) / "warm_start"
        final = out / FINAL_MODEL
        if not final.is_dir():
            overrides = [
                *ws.overrides,
                f"output_dir={out}",
                f"seed={settings.seed}",
                f"tracking.experiment={settings.tracking.experiment}",
                f"tracking.run_name={settings.tracking.run_name or Path(settings.output_dir).name}-warm_start",
            ]
            if settings.tracking.uri:
                overrides.append(f"tracking.uri={settings.tracking.uri}")
            Trainer(load_config(find_config(ws.config), overrides)).train()
        cfg = OmegaConf.merge(cfg, {"model": {"path": str(final)}})
    return cfg


def run(cfg: DictConfig) -> dict[str, float]:
    """``rlloom train``: the warm start first when one is configured (``prepare_warm_start``),
    then the run itself; the process group (under ``accelerate launch``) is closed at the end."""
    trainer = Trainer(prepare_warm_start(cfg))
    try:
        return trainer.train()
    finally:
        trainer.accelerator.end_training()
