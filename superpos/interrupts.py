"""Ctrl-C at safe points, and crash points for tests.

Python raises KeyboardInterrupt at whatever bytecode runs when SIGINT arrives, including inside a
weakref callback or a destructor, where it is reported as "Exception ignored" and lost. Inside
``deferred()`` SIGINT only sets a flag, and the long loops (harvest batches, training steps) call
``check()`` where stopping is safe. A second Ctrl-C raises at once.

``crash_point(name, n)`` marks a place where a test may want the process to die (or stop, or be
interrupted): with ``SUPERPOS_CRASH_AT=name:n`` the process sends itself SIGKILL there, so a crash test lands
its kill on a chosen step or row under any machine load (docs/reliability.md lists the points).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

_pending = False


def _handler(signum, frame):
    global _pending
    if _pending:  # pressed twice: stop now
        raise KeyboardInterrupt
    _pending = True


@contextlib.contextmanager
def deferred():
    """Within the block, Ctrl-C is delivered by ``check()``; a no-op outside the main thread."""
    global _pending
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _pending = False
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:  # a Ctrl-C after the last check() comes too late to matter: the work is done
        signal.signal(signal.SIGINT, previous)
        _pending = False


def check() -> None:
    """Raise KeyboardInterrupt here if Ctrl-C was pressed since the last check."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


CRASH_ENV = "SUPERPOS_CRASH_AT"


def _parse_crash_points(spec: str) -> dict[tuple[str, int], signal.Signals]:
    """``name:n[:SIGNAL]`` items, comma-separated → {(name, n): signal}; the signal defaults to SIGKILL."""
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, *rest = item.split(":")
        try:
            n, sig = (*rest, "KILL") if len(rest) == 1 else rest
            points[(name, int(n))] = signal.Signals["SIG" + sig.upper().removeprefix("SIG")]
        except (KeyError, ValueError):
            raise ValueError(f"{CRASH_ENV}: {item!r} is not name:n or name:n:SIGNAL (e.g. fit.step:40:SIGSTOP)") \
                from None
    return points


_CRASH_POINTS = _parse_crash_points(os.environ.get(CRASH_ENV, ""))  # read once: crash_point costs nothing unset
_crash_counts: dict[str, int] = {}


def crash_point(name: str, n: int | None = None) -> None:
    """A testing hook: if ``SUPERPOS_CRASH_AT`` names ``name:n``, send this process that item's signal here.

    ``n`` is the point's own count (a step, a row count); without it, the calls to ``name`` are counted
    (1, 2, ... in this process). The signal is SIGKILL unless the item names another (``name:n:SIGSTOP`` pauses
    the process until SIGCONT, ``name:n:SIGINT`` is a Ctrl-C arriving exactly there). Unset, this returns at once.
    """
    if not _CRASH_POINTS:
        return
    if n is None:
        n = _crash_counts[name] = _crash_counts.get(name, 0) + 1
    sig = _CRASH_POINTS.get((name, n))
    if sig is not None:
        os.kill(os.getpid(), sig)
