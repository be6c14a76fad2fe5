"""Decoding through ``rlloom.layer_steps.LayerSteps`` against the model's own forward
(``ModelSteps``), interleaved, on the workloads of ``grpo_vs_trl.py``.

    python benchmarks/decode_steps.py --threads 1           # W1 and W2, fp32 and bf16 autocast
    python benchmarks/decode_steps.py --tiny                # a seconds-long smoke run

Each round decodes the workload's 64 rows (8 prompts × 8 completions, every completion to
the token budget) once each way, same seed, alternating which goes first; printed: median
seconds per decode of each, the ratio, and whether both drew the same tokens (under
bfloat16 autocast they may not: the prefill over distinct prompts rounds differently).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import grpo_vs_trl as bench
import rlloom.decoding as decoding


def timed_decode(lm, tok, enc, work, fits: bool, bf16: bool):
    """One decode of the rows ``enc`` with ``LayerSteps`` (``fits``) or the model's own
    forward; (seconds, tokens)."""
    original = decoding.layer_steps_fit
    decoding.layer_steps_fit = lambda *_: fits
    try:
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            start = time.perf_counter()
            out = decoding.decode(
                lm, enc.input_ids, enc.attention_mask, work.tokens, tok.eos_token_id, tok.pad_token_id,
                decoding.Sampling(1.0),
            )
            return time.perf_counter() - start, out.tokens
    finally:
        decoding.layer_steps_fit = original


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, two rounds: checks the script runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workloads = {"W1": bench.TINY["W1"]} if args.tiny else {k: bench.WORKLOADS[k] for k in ("W1", "W2")}
    rounds = 2 if args.tiny else args.rounds
    print("| workload | precision | layer steps s | model's forward s | ratio | same tokens |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, work in workloads.items():
            directory = Path(tmp) / name
            directory.mkdir()
            bench.build(work, directory)
            lm = AutoModelForCausalLM.from_pretrained(directory / "model").eval()
            tok = AutoTokenizer.from_pretrained(directory / "model", padding_side="left")
            prompts = [bench.PROMPTS[i % len(bench.PROMPTS)] for i in range(work.prompts)]
            enc = tok([p for p in prompts for _ in range(work.generations)], return_tensors="pt", padding=True)
            for bf16 in (False, True):
                times = {True: [], False: []}
                tokens = {}
                timed_decode(lm, tok, enc, work, True, bf16)  # warm-up
                for i in range(rounds):
                    for fits in ((True, False) if i % 2 == 0 else (False, True)):
                        seconds, tokens[fits] = timed_decode(lm, tok, enc, work, fits, bf16)
                        times[fits].append(seconds)
                mine, theirs = statistics.median(times[True]), statistics.median(times[False])
                same = torch.equal(tokens[True], tokens[False])
                print(f"| {name} | {'bf16' if bf16 else 'fp32'} | {mine:.4f} | {theirs:.4f} | {mine / theirs:.2f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
