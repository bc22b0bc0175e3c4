"""Cross-process locks on files in the state directory."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_held: dict[Path, tuple[int, int]] = {}
_guard = threading.RLock()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on path; re-entrant within this process."""
    with _guard:
        fd, depth = _held.get(path, (-1, 0))
        if depth == 0:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _held[path] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[path]
            if depth == 1:
                del _held[path]
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            else:
                _held[path] = (fd, depth - 1)


def is_locked(path: Path) -> bool:
    """True if another open file description holds an flock on path."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
