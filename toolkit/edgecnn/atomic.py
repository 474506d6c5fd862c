"""Writes that are all-or-nothing: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.formats import model_files
from edgecnn.runtime.integrity import sidecar_path, sidecar_text

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # reading the umask means setting it: put it back at once (import time, one thread)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically, on failure it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise EdgeCNNError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the final file follows the umask like any other
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def scratch_beside(path: Path) -> Iterator[Path]:
    """A hidden folder beside `path` (same filesystem, so what is built there can be renamed onto `path`),
    removed afterwards with whatever is left in it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise EdgeCNNError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry is on disk (power loss on an SD card).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:  # a full or read-only disk: the old file (if any) is untouched
        raise EdgeCNNError(f"cannot write {path}: {e.strerror or e}") from None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextmanager
def exclusive_folder(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder` for one writer: a second edgecnn process writing there is refused with one line instead of
    both finishing and one report describing the other's files. The lock is on the folder itself (flock on its
    descriptor, so no lock file is left behind) and goes with the process; a filesystem without flock (some
    network shares) goes unlocked."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise EdgeCNNError(f"cannot write to output folder {folder}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EdgeCNNError(f"{folder}: another {what} is writing to this folder; wait for it to finish or "
                               "give another --out") from None
        except OSError:
            pass  # no locking here: behave as before rather than refuse to write
        yield
    finally:
        os.close(fd)


def install_model(work: Path, final: Path, sidecar: bool) -> str:
    """Give the verified model its final name (atomic and durable per file; the entry file last, so a reader
    never finds it beside old weights); returns the sha256 of what was verified (all its files, in order),
    hashed before the rename. An old sidecar goes first: a stale one beside the new file would call it corrupt,
    while a missing one only leaves the embedded hash to check."""
    pairs = list(zip(model_files(work), model_files(final), strict=True))
    parts = {target: source.read_bytes() for source, target in pairs}
    sidecar_path(final).unlink(missing_ok=True)
    for source, target in reversed(pairs):
        with open(source, "rb+") as f:
            os.fsync(f.fileno())
        source.replace(target)
    fsync_dir(final.parent)
    if sidecar:
        write_bytes(sidecar_path(final), sidecar_text(parts).encode())
    return hashlib.sha256(b"".join(parts.values())).hexdigest()
