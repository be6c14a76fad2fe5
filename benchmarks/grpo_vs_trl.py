"""rlloom's GRPO step against TRL's ``GRPOTrainer`` on identical work, interleaved.

    python benchmarks/grpo_vs_trl.py                 # W1, W1+KL, W2; fp32, bf16 and each one's defaults
    python benchmarks/grpo_vs_trl.py --workloads W1 --rounds 2 --steps 3
    python benchmarks/grpo_vs_trl.py --tiny          # a seconds-long smoke run
    python benchmarks/grpo_vs_trl.py --profile --configs fp32   # where rlloom's step spends its time

Workloads (built here from configs, nothing downloaded): a Qwen2 decoder with a
character vocabulary, 8 prompts × 8 completions a step, one optimizer step per rollout,
group-normalised advantages, PPO clip, token-mean loss (TRL's ``dapo``), and for W1+KL a k3
KL term to the frozen initial policy (β = 0.04).

- W1: hidden 128, 4 layers, 16 completion tokens (~1 M parameters)
- W2: hidden 384, 6 layers, 64 completion tokens (~12 M parameters)

The end-of-sequence token lies outside the model's output vocabulary, so every completion
runs to the token budget in both frameworks and both do exactly the same number of tokens
(checked). Each (framework, configuration) runs in its own process, in the order rlloom,
TRL, rlloom, TRL, ... (``--rounds``), so machine noise hits both; each process runs a
warm-up step and then ``--steps`` timed steps (rlloom's last one includes writing its
checkpoint). A step is sampling + rewards + update
(TRL: ``on_step_begin`` to ``on_step_end``; rlloom: one pass of the training loop, from the
end of one step to the end of the next, its metric logging included).

Configurations: ``fp32`` (rlloom ``trainer.precision=fp32``; TRL ``bf16=False``,
``gradient_checkpointing=False``: the same computation), ``bf16`` (rlloom
``trainer.precision=bf16``; TRL ``bf16=True``, ``gradient_checkpointing=False``: bfloat16
autocast in both, the same computation) and ``defaults`` (rlloom ``trainer.precision=auto``;
TRL's ``GRPOConfig`` defaults: ``bf16=True``, ``gradient_checkpointing=True``).

Printed: median s/step of each, the ratio rlloom / TRL, the floor (rlloom's update alone /
TRL's step: the ratio rlloom would reach if sampling cost nothing, so a target below it
needs a cheaper update, not faster sampling), the bound (the arithmetic every
implementation must do, ``arithmetic``, at the measured matmul rate, / TRL's step: what a
framework that samples and then updates would reach if every matmul ran at that rate and
nothing else took time), rlloom's sample / update split, the same split at the measured
matmul rate (how far each phase is from its arithmetic), and each process's peak resident
memory. Without TRL installed (``pip install -e ".[bench]"``) only rlloom runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rlloom import hookimpl

HERE = Path(__file__).resolve()
ALPHABET = "0123456789+-*=? abcdefghijklmnopqrstuvwxyz"
PROMPTS = ["3+4=", "12+7=", "9*8=", "100-1=", "what is 6*7?", "2+2=", "15-9=", "8*8*8="]


@dataclass(frozen=True)
class Workload:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    tokens: int  # completion tokens (every completion runs to this budget)
    beta: float = 0.0  # KL coefficient to the frozen initial policy
    prompts: int = 8
    generations: int = 8

    @property
    def rows(self) -> int:
        return self.prompts * self.generations


WORKLOADS = {
    "W1": Workload(hidden=128, layers=4, heads=4, intermediate=512, tokens=16),
    "W1+KL": Workload(hidden=128, layers=4, heads=4, intermediate=512, tokens=16, beta=0.04),
    "W2": Workload(hidden=384, layers=6, heads=6, intermediate=1152, tokens=64),
}
TINY = {
    "W1": Workload(hidden=16, layers=1, heads=2, intermediate=32, tokens=3, prompts=2, generations=2),
    "W1+KL": Workload(hidden=16, layers=1, heads=2, intermediate=32, tokens=3, prompts=2, generations=2, beta=0.04),
}


def digit_reward(prompts, completions, **kwargs):
    """The fraction of digits in each completion: cheap, and varied enough for non-zero advantages."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


# ---------------------------------------------------------------------------- building the work
def build(work: Workload, directory: Path) -> None:
    """A character tokenizer whose EOS is its last id, a Qwen2 model whose output vocabulary
    stops just before it, and the prompts as JSONL, under ``directory``."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {tok: i for i, tok in enumerate(["<pad>", *ALPHABET, "<eos>"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", clean_up_tokenization_spaces=False
    )
    config = Qwen2Config(
        vocab_size=len(vocab) - 1,  # EOS cannot be sampled: every completion has the full budget
        hidden_size=work.hidden, num_hidden_layers=work.layers, num_attention_heads=work.heads,
        num_key_value_heads=work.heads, intermediate_size=work.intermediate, max_position_embeddings=256,
        pad_token_id=0, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory / "model")
    tokenizer.save_pretrained(directory / "model")
    with open(directory / "prompts.jsonl", "w") as f:
        for i in range(64):
            f.write(json.dumps({"prompt": PROMPTS[i % len(PROMPTS)], "answer": ""}) + "\n")


def parameter_count(directory: Path) -> int:
    """Parameters the matmuls use: every weight matrix, with the tied output layer once."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory / "model")
    return sum(p.numel() for p in model.parameters())


def matmul_gflops(bf16: bool, size: int = 1024, repeats: int = 10) -> float:
    """This machine's measured dense matmul rate (median of ``repeats``) in GFLOP/s."""
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


# ---------------------------------------------------------------------------- one process's run
PRECISION = {"fp32": "fp32", "bf16": "bf16", "defaults": "auto"}  # rlloom's trainer.precision per configuration
TRL_MATCHED = {  # TRL's settings per configuration (none: its defaults)
    "fp32": {"bf16": False, "gradient_checkpointing": False},
    "bf16": {"bf16": True, "gradient_checkpointing": False},
    "defaults": {},
}


def run_rlloom(work: Workload, directory: Path, config: str, steps: int, *observers) -> dict:
    from omegaconf import OmegaConf

    from rlloom.engine import Trainer
    from rlloom.registry import make_plugin_manager

    kl = {"name": "k3", "coef": work.beta} if work.beta else None
    cfg = OmegaConf.create({
        "algorithm": "grpo", "seed": 0, "output_dir": str(directory / "rlloom-run"),
        "model": {"path": str(directory / "model")},
        "task": {"name": "dataset", "path": str(directory / "prompts.jsonl")},
        "reward": [{"name": "python", "function": f"{HERE.stem}:digit_reward"}],
        "sampler": {"name": "generate", "num_generations": work.generations, "temperature": 1.0, "max_new_tokens": work.tokens},
        "advantage": {"name": "grpo", "scale": "group"},
        "policy_loss": {"name": "ppo_clip", "eps": 0.2},
        "aggregation": "token_mean",
        "kl": kl,
        "ref_policy": "frozen" if kl else None,
        "trainer": {
            "max_steps": steps + 1, "prompts_per_step": work.prompts, "micro_batch_size": work.rows,
            "lr": 1e-6, "eval_every": 0, "precision": PRECISION[config],
        },
        "tracking": {"uri": f"sqlite:///{directory / 'mlflow.db'}"},
    })
    timer = StepTimer()
    pm = make_plugin_manager()
    for plugin in (timer, *observers):
        pm.register(plugin)
    Trainer(cfg, plugin_manager=pm).train()
    steps_seen = timer.metrics[1:]  # the first step warms up
    return {
        "times": timer.times[1:],
        "sample": [m["time/sample_s"] for m in steps_seen],
        "update": [m["time/update_s"] for m in steps_seen],
        "tokens": [round(m["len/mean"] * work.rows) for m in steps_seen],
    }


class StepTimer:
    """An rlloom plugin observing the run: wall time between consecutive steps' ends (the
    whole loop body: step, logging) and each step's metrics."""

    def __init__(self):
        self.times: list[float] = []
        self.metrics: list[dict] = []

    @hookimpl
    def rlloom_run_start(self, config, run_id):
        self.last = time.perf_counter()

    @hookimpl
    def rlloom_after_step(self, step, metrics):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.metrics.append(dict(metrics))
        self.last = now


def run_trl(work: Workload, directory: Path, config: str, steps: int) -> dict:
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    matched = TRL_MATCHED[config]
    args = GRPOConfig(
        output_dir=str(directory / "trl-run"), use_cpu=True, seed=0, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, max_steps=steps + 1, learning_rate=1e-6,
        per_device_train_batch_size=work.rows, num_generations=work.generations,
        max_completion_length=work.tokens, temperature=1.0, beta=work.beta, loss_type="dapo", **matched,
    )
    data = datasets.load_dataset("json", data_files=str(directory / "prompts.jsonl"), split="train")
    tokenizer = AutoTokenizer.from_pretrained(directory / "model")
    timer = StepTimes()
    trainer = GRPOTrainer(
        model=str(directory / "model"), reward_funcs=digit_reward, args=args, train_dataset=data,
        processing_class=tokenizer, callbacks=[timer],
    )
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"times": timer.times[1:], "tokens": [round(n * work.rows) for n in lengths[1:]]}


OP_KINDS = {  # torch profiler op names → what they are in these models
    "aten::mm": "matmul", "aten::addmm": "matmul",
    "aten::bmm": "attention", "aten::baddbmm": "attention",
}


def op_kind(name: str) -> str:
    if name in OP_KINDS:
        return OP_KINDS[name]
    return "attention" if "scaled_dot_product" in name else "other ops"


class PhaseProfile:
    """An rlloom plugin that profiles step ``step`` (0-based) in two windows: sampling (with
    rewards) and the rest (log-probs, update, logging), each split into the self time of
    matmul ops, attention ops and other ops, and time outside any op (Python, framework)."""

    def __init__(self, step: int):
        self.step, self.phases, self.open = step, {}, None

    def _start(self, phase: str) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.open = (phase, profile(activities=[ProfilerActivity.CPU]), time.perf_counter())
        self.open[1].__enter__()

    def _stop(self) -> None:
        phase, prof, start = self.open
        prof.__exit__(None, None, None)
        wall = time.perf_counter() - start
        split = {"matmul": 0.0, "attention": 0.0, "other ops": 0.0}
        for event in prof.key_averages():
            if event.key.startswith("aten::"):
                split[op_kind(event.key)] += event.self_cpu_time_total / 1e6
        self.phases[phase] = {"wall": wall, **split, "outside ops": wall - sum(split.values())}

    @hookimpl
    def rlloom_after_step(self, step, metrics):
        if step == self.step:  # ``step`` here counts steps done: step ``self.step`` starts now
            self._start("sample")
        elif step == self.step + 1:
            self._stop()

    @hookimpl
    def rlloom_after_sample(self, step, batch):
        if step == self.step:
            self._stop()
            self._start("update")


def worker(argv: list[str]) -> None:
    """One framework's timed steps on one workload (``rlloom-profile``: one profiled rlloom
    step after a warm-up); prints one JSON line."""
    framework, name, config, steps, directory, tiny = argv[0], argv[1], argv[2], int(argv[3]), Path(argv[4]), argv[5] == "1"
    sys.path.insert(0, str(HERE.parent))
    work = (TINY if tiny else WORKLOADS)[name]
    if framework == "rlloom-profile":
        profile = PhaseProfile(step=1)
        run_rlloom(work, directory, config, 2, profile)
        result = {"phases": profile.phases}
    else:
        result = (run_rlloom if framework == "rlloom" else run_trl)(work, directory, config, steps)
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def spawn(framework: str, name: str, config: str, steps: int, directory: Path, tiny: bool, threads: int) -> dict:
    cmd = [sys.executable, str(HERE), "--worker", framework, name, config, str(steps), str(directory), str(int(tiny))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=directory)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{framework} on {name} ({config}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------- the comparison
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--configs", nargs="+", default=["fp32", "bf16", "defaults"], choices=list(PRECISION))
    parser.add_argument("--rounds", type=int, default=3, help="rlloom, TRL pairs per workload and configuration")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (after one warm-up step)")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="CPU threads per process for both frameworks (0: torch's default); on a machine shared "
        "with other work, 1 avoids threads waiting on each other",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, one round: checks the script runs")
    parser.add_argument(
        "--profile", action="store_true",
        help="instead of comparing, profile one rlloom step per workload and configuration: where "
        "each phase's time goes (matmuls, attention, other ops, outside ops) against its arithmetic",
    )
    args = parser.parse_args()
    workloads = {k: v for k, v in (TINY if args.tiny else WORKLOADS).items() if k in args.workloads}
    rounds, steps = (1, 1) if args.tiny else (args.rounds, args.steps)
    has_trl = importlib.util.find_spec("trl") is not None
    if not has_trl:
        print("TRL is not installed (pip install -e '.[bench]'): its column is skipped, rlloom runs alone")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rate = {bf16: matmul_gflops(bf16) for bf16 in (False, True)}
    threads = args.threads or "torch's default"
    print(f"matmul {rate[False]:.0f} GFLOP/s fp32, {rate[True]:.0f} GFLOP/s bf16 (1024³, median of 10); threads per process: {threads}")
    header = (
        "| workload | config | rlloom s/step | TRL s/step | rlloom / TRL | floor | bound | rlloom sample / update s "
        "| at matmul rate s | peak MiB rlloom / TRL |"
    )
    if args.profile:
        header = (
            "| workload | config | rlloom phase | s (profiled) | matmul s | attention s | other ops s "
            "| outside ops s | at matmul rate s |"
        )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, work in workloads.items():
            directory = Path(tmp) / name.replace("+", "_")
            directory.mkdir()
            build(work, directory)
            params = parameter_count(directory)
            for config in args.configs:
                if args.profile:
                    phases = spawn("rlloom-profile", name, config, 0, directory, args.tiny, args.threads)["phases"]
                    rows.extend(profile_rows(name, config, work, params, phases, rate[config != "fp32"]))
                    print("\n".join(rows[-2:]), flush=True)
                    continue
                results: dict[str, list[dict]] = {"rlloom": [], "trl": []}
                for _ in range(rounds):
                    for framework in ("rlloom", "trl") if has_trl else ("rlloom",):
                        results[framework].append(spawn(framework, name, config, steps, directory, args.tiny, args.threads))
                rows.append(table_row(name, config, work, params, results, rate[config != "fp32"]))
                print(rows[-1], flush=True)
    print("\n".join(["", *rows]))


def _median(results: list[dict], key: str) -> float:
    return statistics.median(v for r in results for v in r[key])


def arithmetic(work: Workload, params: int) -> tuple[float, float]:
    """FLOPs every implementation of the step must do, as (sampling, update): 2·N per sampled
    token to decode it, 6·N per completion token for the update's forward and backward, and
    2·N more for the reference forward when there is a KL term (N parameters; prompt
    positions and attention left out, so a lower bound)."""
    tokens = work.rows * work.tokens
    return 2 * params * tokens, (6 + (2 if work.beta else 0)) * params * tokens


def profile_rows(name: str, config: str, work: Workload, params: int, phases: dict, rate: float) -> list[str]:
    """The profiled step's two phases, each beside its arithmetic at the measured matmul rate."""
    rows = []
    for (phase, split), flops in zip(phases.items(), arithmetic(work, params)):
        cells = " | ".join(f"{split[k]:.3f}" for k in ("wall", "matmul", "attention", "other ops", "outside ops"))
        rows.append(f"| {name} | {config} | {phase} | {cells} | {flops / rate / 1e9:.3f} |")
    return rows


def table_row(name: str, config: str, work: Workload, params: int, results: dict, rate: float) -> str:
    mine = results["rlloom"]
    tokens = {t for r in mine for t in r["tokens"]}
    step, sample, update = (_median(mine, k) for k in ("times", "sample", "update"))
    at_rate = [flops / rate / 1e9 for flops in arithmetic(work, params)]
    peak = max(r["peak_mib"] for r in mine)
    if results["trl"]:
        theirs = results["trl"]
        their_tokens = {t for r in theirs for t in r["tokens"]}
        if tokens != their_tokens:
            raise SystemExit(f"{name} ({config}): token counts differ: rlloom {sorted(tokens)}, TRL {sorted(their_tokens)}")
        trl_step = _median(theirs, "times")
        trl_cols = f"{trl_step:.3f} | {step / trl_step:.2f} | {update / trl_step:.2f} | {sum(at_rate) / trl_step:.2f}"
        trl_peak = f"{max(r['peak_mib'] for r in theirs):.0f}"
    else:
        trl_cols, trl_peak = "— | — | — | —", "—"
    return (
        f"| {name} | {config} | {step:.3f} | {trl_cols} | {sample:.3f} / {update:.3f} | "
        f"{at_rate[0]:.3f} / {at_rate[1]:.3f} | {peak:.0f} / {trl_peak} |"
    )


if __name__ == "__main__":
    main()
