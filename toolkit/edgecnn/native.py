"""Keep converters' native chatter (C++ logs, progress lines) off the user's terminal unless they fail."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_native_output() -> Iterator[None]:
    """Send fds 1 and 2 to a temp file for the block; re-print its tail if the block raises."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            if os.environ.get("EDGECNN_DEBUG"):
                sink.seek(0)
                sys.stderr.write(sink.read()[-4000:].decode(errors="replace"))
            raise
        else:
            _restore(saved)


def _restore(saved: tuple[int, int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])
