"""Progress lines and the final summary: every step says ok, changed (and why), or failed."""

from __future__ import annotations

import difflib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_print_lock = threading.Lock()


def say(line: str, *, err: bool = False, end: str = "\n") -> None:
    # Several hosts are provisioned in parallel: print whole lines, one at a time.
    stream = sys.stderr if err else sys.stdout
    with _print_lock:
        try:
            stream.write(line + end)
            stream.flush()
        except BrokenPipeError:
            # The reader went away (`invoke status | head`): finish the work, quietly.
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


PROGRESS_EVERY = 10  # seconds between "still running" lines of a long step


@contextmanager
def progress(line: Callable[[float], str]) -> Iterator[None]:
    """While the `with` body runs, say `line(seconds so far)` every PROGRESS_EVERY
    seconds, so a step of minutes (apt, pip) never looks stuck."""
    started, done = time.monotonic(), threading.Event()

    def tick() -> None:
        while not done.wait(PROGRESS_EVERY):
            say(line(time.monotonic() - started))

    threading.Thread(target=tick, daemon=True).start()
    try:
        yield
    finally:
        done.set()


def unified_diff(path: str, old: bytes | None, new: bytes) -> str:
    before = (old or b"").decode(errors="replace").splitlines(keepends=True)
    after = new.decode(errors="replace").splitlines(keepends=True)
    label = path if old is not None else "/dev/null"
    return "".join(difflib.unified_diff(before, after, label, path))


@dataclass
class Report:
    """What happened on one host. In check mode nothing is applied; changes are 'would change'."""

    host: str
    check: bool = False
    changed: int = 0
    ok: int = 0
    failed: str = ""

    def _line(self, status: str, step: str, detail: str) -> None:
        say(f"[{self.host}] {status:<12} {step}" + (f": {detail}" if detail else ""))

    def unchanged(self, step: str, detail: str = "") -> None:
        self.ok += 1
        self._line("ok", step, detail)

    def change(self, step: str, why: str, diff: str = "") -> bool:
        """Record a change; return True when it must be applied (False in check mode)."""
        self.changed += 1
        self._line("would change" if self.check else "changed", step, why)
        if diff and self.check:
            say("".join(f"    {line}" for line in diff.splitlines(keepends=True)).rstrip())
        return not self.check

    def fail(self, message: str) -> None:
        self.failed = message
        say(f"[{self.host}] FAILED: {message}", err=True)

    def summary(self) -> str:
        verb = "would change" if self.check else "changed"
        state = f"FAILED ({self.failed})" if self.failed else "done"
        return f"[{self.host}] {state}: {self.changed} {verb}, {self.ok} ok"
