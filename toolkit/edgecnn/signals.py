"""Ctrl-C and SIGTERM that are never lost during long work.

Python raises KeyboardInterrupt wherever the main thread happens to be when the signal arrives; inside a
callback that swallows exceptions (jax's garbage-collection callback, run during exports) it vanished, and the
export went on to install its files and exit 0. Here the signal is also remembered, and `check()` between steps
raises it again.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interruptible() -> Iterator[Callable[[], None]]:
    """Yield `check()`: raises KeyboardInterrupt if SIGINT or SIGTERM arrived since entering, even when the
    exception raised at that moment was swallowed."""
    received: list[int] = []

    def handler(signum, frame) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    def check() -> None:
        if received:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield check
        return
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield check
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
