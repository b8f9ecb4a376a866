"""Ctrl-C at safe points.

Python raises KeyboardInterrupt at whatever bytecode runs when SIGINT arrives, including inside a
weakref callback or a destructor, where it is reported as "Exception ignored" and lost. Inside
``deferred()`` SIGINT only sets a flag, and the long loops (harvest batches, training steps) call
``check()`` where stopping is safe. A second Ctrl-C raises at once.
"""
from __future__ import annotations

import contextlib
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
