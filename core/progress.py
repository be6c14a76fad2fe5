"""The progress bar of a run (main process only)."""
from __future__ import annotations


class Progress:
    """A rich progress bar showing the key metrics (main process only)."""

    KEYS = ("reward/mean", "eval/accuracy", "loss/total", "kl/mean", "len/mean")

    def __init__(self, total: int, start: int, enabled: bool):
        self.enabled = enabled
        self.shown: dict[str, float] = {}
        if enabled:
            from rich import progress as rp

            self.bar = rp.Progress(
                rp.TextColumn("[bold]train"), rp.BarColumn(), rp.MofNCompleteColumn(), rp.TimeRemainingColumn(),
                rp.TextColumn("{task.fields[info]}"),
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


def notice(message: str) -> None:
    """One line about the run on stderr (``rlloom: <message>``), outside the progress bar."""
    import sys

    print(f"rlloom: {message}", file=sys.stderr, flush=True)
