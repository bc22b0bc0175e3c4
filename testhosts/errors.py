"""Exceptions raised by the test-host harness."""

from __future__ import annotations

import subprocess


class HarnessError(Exception):
    """A precondition or a harness step failed; the message is one clear line."""


class CommandError(subprocess.CalledProcessError):
    """A command run over ssh on a test host exited with a non-zero status."""

    def __init__(self, host: str, cmd: str, returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(returncode, cmd, output=stdout, stderr=stderr)
        self.host = host

    def __str__(self) -> str:
        detail = (self.stderr or self.stdout or "").strip().splitlines()[-5:]
        tail = " | ".join(detail) if detail else "no output"
        return f"{self.host}: {self.cmd!r} exited with {self.returncode}: {tail}"
