"""Stopping on a signal: SIGTERM (what schedulers send) and SIGHUP (the terminal closed).

The handler raises ``Terminated`` (a ``KeyboardInterrupt``, so a run ends as on Ctrl-C) in the
main thread at once, and records the signal. Python drops an exception raised inside a
garbage-collection callback or a ``__del__`` ("Exception ignored in ..."), so a signal that
arrives there would be lost; ``raise_if_stopping`` raises it again where the training loop
calls it, after every step.
"""
from __future__ import annotations

import signal

_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived."""

    signum = signal.SIGTERM


class HungUp(Terminated):
    """SIGHUP arrived (the terminal closed): ended as on SIGTERM. ``rlloom compare``'s
    children run in sessions of their own, so the hangup reaches them only this way."""

    signum = signal.SIGHUP


def _exception(signum: int) -> Terminated:
    return HungUp() if signum == signal.SIGHUP else Terminated()


def _handle(signum, frame) -> None:
    _received.append(signum)
    raise _exception(signum)


def install() -> None:
    """Stop on SIGTERM and SIGHUP as on Ctrl-C (main thread only)."""
    _received.clear()
    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGHUP, _handle)


def raise_if_stopping() -> None:
    """Raise the exception of a signal received earlier (one whose first raise was dropped)."""
    if _received:
        raise _exception(_received[0])
