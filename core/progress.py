"""What a run prints while it trains (main process only).

Each phase of a run (a warm start, then the run itself) opens with a heading naming the
phase, the algorithm and its steps. In a terminal a progress bar follows, with the key
metrics; each evaluation prints a line above it. Anywhere else (a pipe, a log file, a
``rlloom compare`` child) there is no bar: one plain line every ``ceil(total / LINES)``
steps and one per evaluation, each with the phase and the step, so a log read later (or
tailed) says where the run was.
"""
from __future__ import annotations

import math
import time

KEYS = ("reward/mean", "eval/accuracy", "loss/total", "kl/mean", "len/mean")
"""The metrics a progress line shows, in this order, when the step has them."""
LINES = 20
"""Plain-output lines per phase, besides the evaluations."""
MODES = {"rollout": "RL", "supervised": "SFT", "preference": "preference"}
"""The phase of a run, named by its training mode."""


def phase_name(mode: str, warm_start: bool) -> str:
    """``"warm start (SFT)"``, ``"RL"``, ...: what the run is, in a word or two."""
    name = MODES.get(mode, mode)
    return f"warm start ({name})" if warm_start else name


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={metrics[k]:.3f}" for k in KEYS if k in metrics)


class Progress:
    """The heading, progress lines and evaluation lines of one phase.

    ``heading`` says what runs (algorithm, starting model). ``console`` is a rich Console (stdout by default); whether it is a terminal decides
    between the bar and plain lines. Nothing is printed when ``enabled`` is false (processes
    other than the main one)."""

    def __init__(self, phase: str, heading: str, total: int, start: int, enabled: bool, console=None):
        self.phase, self.total, self.enabled = phase, total, enabled
        self.step = start
        self.every = max(1, math.ceil(total / LINES))
        self.shown: dict[str, float] = {}
        self.started = time.perf_counter()
        self.bar = None
        if not enabled:
            return
        from rich.console import Console

        self.console = console or Console()
        resumed = f", resuming at step {start}" if start else ""
        self.console.print(f"── {phase}: {heading}, {total} steps{resumed} ──", markup=False, highlight=False, soft_wrap=True)
        if self.console.is_terminal:
            from rich import progress as rp

            self.bar = rp.Progress(
                rp.TextColumn(f"[bold]{phase}"), rp.BarColumn(), rp.MofNCompleteColumn(), rp.TimeRemainingColumn(),
                rp.TextColumn("{task.fields[info]}"), console=self.console,
            )
            self.task = self.bar.add_task(phase, total=total, completed=start, info="")
            self.bar.start()

    def evaluated(self, metrics: dict[str, float]) -> None:
        """The evaluation before the first step (step 0: where the policy begins)."""
        self._show(metrics)
        if self.enabled and "eval/accuracy" in metrics:
            self._line(_format(metrics))

    def update(self, metrics: dict[str, float]) -> None:
        """Step ``self.step + 1`` finished with ``metrics`` (its evaluation included)."""
        self.step += 1
        self._show(metrics)
        if not self.enabled:
            return
        evaluated = "eval/accuracy" in metrics
        if self.bar is not None:
            self.bar.advance(self.task)
            if evaluated:
                self._line(f"eval/accuracy={metrics['eval/accuracy']:.3f}")
        elif evaluated or self.step % self.every == 0 or self.step == self.total:
            self._line(_format(metrics))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    # ------------------------------------------------------------------ pieces
    def _show(self, metrics: dict[str, float]) -> None:
        self.shown.update({k: v for k, v in metrics.items() if k in KEYS})
        if self.bar is not None:
            info = "  ".join(f"{k.split('/')[0] if k != 'eval/accuracy' else 'eval_acc'}={v:.3f}" for k, v in self.shown.items())
            self.bar.update(self.task, info=info)

    def _line(self, text: str) -> None:
        """``[phase] step k/N  text`` (with the elapsed time in plain output)."""
        width = len(str(self.total))
        head = f"[{self.phase}] step {self.step:>{width}}/{self.total}"
        if self.bar is None:
            text = f"{text}  ({time.perf_counter() - self.started:.0f} s)".lstrip()
        self.console.print(f"{head}  {text}", markup=False, highlight=False, soft_wrap=True)


def notice(message: str) -> None:
    """One line about the run on stderr (``rlloom: <message>``), outside the progress bar."""
    import sys

    print(f"rlloom: {message}", file=sys.stderr, flush=True)
