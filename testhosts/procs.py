"""Finding, checking and ending processes through /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) is in parentheses and may contain spaces.
    return raw[raw.rfind(")") + 2 :].split()


def is_alive(pid: int | None) -> bool:
    """True if pid exists and is not a zombie."""
    if not pid or pid <= 0:
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """Start time of pid in clock ticks since boot (tells reused pids apart)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def iter_processes() -> Iterator[tuple[int, list[str]]]:
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            argv = cmdline(int(entry.name))
            if argv:
                yield int(entry.name), argv


def references(argv: Iterable[str], path: Path) -> bool:
    """True if a command line names path itself or anything below it."""
    text = str(path)
    return any(arg == text or f"{text}/" in arg for arg in argv)


def pids_referencing(path: Path) -> list[int]:
    me = os.getpid()
    return [
        pid
        for pid, argv in iter_processes()
        if pid != me and is_alive(pid) and references(argv, path)
    ]


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pending = [pid for pid in pids if is_alive(pid)]
    while pending:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
        pending = [pid for pid in pending if is_alive(pid)]
    return True


def kill(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def memory_pss(pids_: list[int]) -> int:
    """Sum of the proportional set size (bytes) of the given processes."""
    total = 0
    for pid in pids_:
        try:
            text = (PROC / str(pid) / "smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total
