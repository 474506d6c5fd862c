"""Ctrl-C and SIGTERM that are never lost during long work.

Python raises KeyboardInterrupt wherever the main thread happens to be when the signal arrives; inside a
callback that swallows exceptions (jax's garbage-collection callback, run during exports) it vanished, and the
export went on to install its files and exit 0. Here the signal is also remembered, and `check()` between steps
raises it again. Inside an import it waits for the import to end: the converters import native modules lazily, and
jaxlib's (nanobind) segfault when their initialisation is cut (`nb_module_free`, seen on Ctrl-C early in an export).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
_waiting: set[int] = set()  # signals waiting for the main thread's import to end (one resend each)


class Interrupts:
    """What `interruptible()` yields: `check()` between steps, `deferred()` around a step that must not be cut."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def check(self) -> None:
        """Raise KeyboardInterrupt if SIGINT or SIGTERM arrived, even when the exception raised at that moment
        was swallowed."""
        if self.received:
            raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals wait (blocked) until the block is done: renames that install several files happen all or none
        for a signal; it is honoured right after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextmanager
def interruptible() -> Iterator[Interrupts]:
    """SIGINT and SIGTERM raise KeyboardInterrupt as usual within the block, and are remembered for
    `Interrupts.check()`; the previous handlers come back at the end."""
    interrupts = Interrupts()

    def handler(signum, frame) -> None:
        interrupts.received.append(signum)
        if importing(frame):
            redeliver_after_import(signum)
            return
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield interrupts
        return
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield interrupts
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # no signal between the two restores
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: a handler set outside Python
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def importing(frame: types.FrameType | None) -> bool:
    """Whether `frame` runs inside an import."""
    while frame is not None:
        if frame.f_code.co_filename in IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False


def redeliver_after_import(signum: int) -> None:
    """Send `signum` to the main thread again once it has left the import it is in (once, however often it came)."""
    if signum in _waiting:
        return
    _waiting.add(signum)
    main = threading.main_thread().ident

    def wait() -> None:
        while importing(sys._current_frames().get(main)):
            time.sleep(0.01)
        _waiting.discard(signum)
        signal.pthread_kill(main, signum)

    threading.Thread(target=wait, name="edgecnn-signal-after-import", daemon=True).start()
