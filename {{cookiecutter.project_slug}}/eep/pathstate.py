"""What a path on the host is and who may change it: one type for what a step expects
and what `stat` observed, so the two are compared with `==` and printed one way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PathState:
    kind: str  # as stat(1) names it: "directory", "regular file", "symbolic link", "socket"
    owner: str
    group: str
    mode: int  # permission bits, e.g. 0o750

    @classmethod
    def observed(cls, fields: Sequence[str]) -> PathState:
        """From [kind, mode in octal, owner, group], as eep/host/facts.py and stat(1) say it."""
        kind, mode, owner, group = fields
        return cls(kind.replace("regular empty file", "regular file"), owner, group, int(mode, 8))

    @property
    def ownership(self) -> str:
        return f"{self.owner}:{self.group} {self.mode:04o}"

    def open_to(self, bits: int) -> bool:
        """Whether any of the permission `bits` (e.g. 0o022: group or others write) is set."""
        return bool(self.mode & bits)

    def __str__(self) -> str:
        return f"{self.kind} {self.ownership}"


def directory(owner: str, group: str, mode: int) -> PathState:
    return PathState("directory", owner, group, mode)


def regular_file(owner: str, group: str, mode: int) -> PathState:
    return PathState("regular file", owner, group, mode)
