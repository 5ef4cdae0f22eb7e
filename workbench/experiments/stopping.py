"""Stopping a run cleanly: the one home of signal handling and stop requests in the experiments layer.

Three places must stop a training run without losing work, and each uses one function here:

* a process that trains (the command line, a main-job worker) wraps ``trainer.fit()`` in
  :func:`stop_on_signals`: SIGINT / SIGTERM ask the trainer to checkpoint and stop after the
  current step, and the previous handlers come back at once, so a second Ctrl-C interrupts
  immediately;
* the main job's parent process wraps its wait for the workers in :func:`sigterm_as_interrupt`:
  SIGTERM raises KeyboardInterrupt there, so ``kill`` stops the job exactly like Ctrl-C;
* a worker process calls :func:`init_worker_stop` once (from the pool's initialiser): SIGINT is
  ignored outside training (a Ctrl-C in the terminal reaches every process of the group; the
  parent decides), and :func:`stop_requested` says why the worker should stop: the parent set the
  shared stop event, or the parent process is gone.

The exit code of a process stopped by a signal is :func:`signal_exit_code` (128 + its number).
This module imports nothing from the rest of the experiments layer.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "STOP_SIGNALS",
    "StopEvent",
    "Stoppable",
    "init_worker_stop",
    "signal_exit_code",
    "sigterm_as_interrupt",
    "stop_on_signals",
    "stop_requested",
]

#: the signals that ask a run to checkpoint and stop
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


@runtime_checkable
class Stoppable(Protocol):
    """What :func:`stop_on_signals` needs: ``request_stop(reason)``, safe to call from a signal
    handler (``workbench.training.Trainer`` has it)."""

    def request_stop(self, reason: str = ...) -> None: ...


@runtime_checkable
class StopEvent(Protocol):
    """The parent's stop flag as a worker sees it (``multiprocessing.Event``, ``threading.Event``)."""

    def is_set(self) -> bool: ...


def signal_exit_code(signum: int) -> int:
    """The conventional exit status of a process stopped by signal ``signum``: 128 + signum."""
    return 128 + int(signum)


@contextlib.contextmanager
def stop_on_signals(trainer: Stoppable) -> Iterator[list[int]]:
    """While active, SIGINT / SIGTERM call ``trainer.request_stop`` (checkpoint, then stop after the
    current step) and put the previous handlers back at once; the previous handlers are restored on
    exit in every case. Yields the list of signals received. Call it from the main thread."""
    if not isinstance(trainer, Stoppable):
        raise TypeError(f"trainer must have a request_stop(reason) method, got {type(trainer).__name__}")
    received: list[int] = []
    previous: dict[int, Any] = {}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        trainer.request_stop(f"received {signal.Signals(signum).name}")
        restore()

    for s in STOP_SIGNALS:
        previous[s] = signal.signal(s, handler)
    try:
        yield received
    finally:
        restore()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises KeyboardInterrupt (the main job's parent stops its workers the
    same way for ``kill`` as for Ctrl-C); the previous SIGTERM handler is restored on exit."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- worker processes ----------------------------------------------------------------------------------
_STOP: StopEvent | None = None  # the parent's stop event
_PARENT: int | None = None  # the parent's pid when the worker started


def init_worker_stop(stop: StopEvent | None = None) -> None:
    """In a worker process: remember the parent's stop event (anything with ``is_set()``, or None)
    and the parent's pid, and ignore SIGINT (training installs :func:`stop_on_signals` itself)."""
    global _STOP, _PARENT
    if stop is not None and not isinstance(stop, StopEvent):
        raise TypeError(f"stop must be an event with is_set() (multiprocessing.Event) or None, got {type(stop).__name__}")
    _STOP, _PARENT = stop, os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_requested() -> str | None:
    """Why this worker should stop (the parent set the stop event, or the parent is gone), or None."""
    if _STOP is not None and _STOP.is_set():
        return "stop requested by the main job"
    if _PARENT is not None and os.getppid() != _PARENT:
        return "the main job's process is gone"
    return None
