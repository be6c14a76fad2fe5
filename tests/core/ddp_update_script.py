"""One optimizer step on a fixed rollout batch, each process taking its share of the rows.

Run as ``python ddp_update_script.py OUT_FILE key=value ...`` (one process) or under
``accelerate launch --num_processes 2 --cpu`` (two). Writes the gradient the optimizer saw
the parameters after the step, and the step's metrics from the main process.
"""
import os
import sys

import torch

from rlloom.batch import RolloutBatch
from rlloom.config import PRESET_DIR, load_config
from rlloom.engine import Trainer
from rlloom.metrics import MetricAccumulator
from rlloom.update import optimizer_step
from rlloom.rollout import completion_mask, encode_prompts


def fixed_batch(trainer: Trainer, groups: int = 4, group_size: int = 4) -> RolloutBatch:
    tok = trainer.runtime.tokenizer
    data = trainer.pipeline.train_data.select(range(groups))
    prompts = encode_prompts(tok, data["prompt"], list(range(groups)), {"answer": data["answer"]})
    g = torch.Generator().manual_seed(1234)
    n, t = groups * group_size, 5
    alphabet = tok("0123456789", add_special_tokens=False)["input_ids"]
    tokens = torch.tensor(alphabet)[torch.randint(len(alphabet), (n, t), generator=g)]
    ends = torch.randint(1, t, (n,), generator=g)
    tokens[torch.arange(n), ends] = tok.eos_token_id
    mask, truncated = completion_mask(tokens, tok.eos_token_id)
    batch = RolloutBatch(
        prompt_ids=prompts.input_ids.repeat_interleave(group_size, 0),
        prompt_mask=prompts.attention_mask.repeat_interleave(group_size, 0),
        completion_ids=tokens.masked_fill(mask == 0, tok.pad_token_id),
        mask=mask,
        group_ids=torch.arange(groups).repeat_interleave(group_size),
        prompts=[p for p in prompts.texts for _ in range(group_size)],
        completions=tok.batch_decode(tokens.masked_fill(mask == 0, tok.pad_token_id), skip_special_tokens=True),
        columns={"answer": [a for a in data["answer"] for _ in range(group_size)]},
        truncated=truncated,
    )
    batch.rewards = torch.randn(n, generator=g)
    online = trainer.pipeline.online
    if online.ref_policy is not None:
        batch.ref_logprobs, _, _ = trainer.mode._no_grad_pass(online.ref_policy.model, batch)
        with torch.no_grad():
            batch.ref_logprobs -= 0.1 * torch.rand(batch.ref_logprobs.shape, generator=g) * batch.mask
    old_logits = None
    if online.off_policy:
        batch.old_logprobs, _, old_logits = trainer.mode._no_grad_pass(
            trainer.runtime.model, batch, want_logits=online.old_policy == "logits"
        )
    batch.advantages = trainer.pipeline.online.advantage(batch).advantages
    return batch, old_logits


def main() -> None:
    out, overrides = sys.argv[1], sys.argv[2:]
    trainer = Trainer(load_config(PRESET_DIR / "grpo.yaml", overrides))
    batch, old_logits = fixed_batch(trainer)
    rt = trainer.runtime
    rows = torch.arange(len(batch)).chunk(rt.world)[rt.rank]
    grads = {}
    step = rt.optimizer.step

    def record_then_step(*args, **kwargs):
        for name, p in rt.policy.named_parameters():
            if p.grad is not None:
                grads[name] = p.grad.detach().clone()
        return step(*args, **kwargs)

    rt.optimizer.step = record_then_step
    acc = MetricAccumulator()
    mine = batch.select(rows)
    max_len = trainer.pipeline.online.max_new_tokens
    mine_old = old_logits[rows] if old_logits is not None else None
    optimizer_step(rt, mine, mine.mask, max_len, lambda b, s, idx: trainer.mode.loss(b, s, None, idx, mine_old), acc)
    metrics = {**acc.reduce(), "world": rt.world}
    params = {name: p.detach().clone() for name, p in rt.policy.named_parameters()}
    if rt.accelerator.is_main_process:
        torch.save({"grads": grads, "params": params, "metrics": metrics}, out)
    rt.accelerator.wait_for_everyone()
    rt.accelerator.end_training()


if __name__ == "__main__":
    main()
    # Leave without interpreter finalisation: about one exit in ten of a two-process gloo run
    # aborts in a native thread's destructor after all work is done, which would fail the
    # launcher for reasons unrelated to the update under test.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
