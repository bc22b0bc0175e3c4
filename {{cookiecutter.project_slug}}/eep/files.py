"""Idempotent directories and files: read the host's state, act only on the difference."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING

from eep.manifest import HostFile, Place, render
from eep.pathstate import PathState
from eep.remote import HostError, Remote
from eep.report import Report, unified_diff

if TYPE_CHECKING:
    from eep.fleet import Fleet


def ensure_dir(remote: Remote, report: Report, path: str, want: PathState) -> bool:
    have = remote.stat(path)
    step = f"dir {path}"
    if have == want:
        report.unchanged(step)
        return False
    if have is not None and have.kind != "directory":
        raise HostError(f"{path} exists but is a {have.kind}, not a directory")
    why = "created" if have is None else f"was {have.ownership}"
    if report.change(step, f"{why} -> {want.ownership}"):
        remote.make_dir(path, want)
    return True


def file_difference(
    remote: Remote,
    host_file: HostFile,
    have: bytes | None,
    fleet: Fleet | None = None,
    place: Place | None = None,
) -> str:
    """How the host's file (its content: `have`) differs from the tree's; "" if it does not.

    Provisioning acts on it; the audit's drift check reports it. `fleet`: the inventory
    the files made from eep.hosts are rendered with; `place`: the host and its fleet, for
    the files that depend on the host.
    """
    if have is None:
        return "created"
    if have != render(host_file, fleet=fleet, place=place).encode():
        return "content differs"
    meta = remote.stat(host_file.path)
    if meta != host_file.state:
        return f"was {meta}" if meta else "not a regular file"
    return ""


def ensure_file(
    remote: Remote,
    report: Report,
    host_file: HostFile,
    *,
    validate: Callable[[str], None] | None = None,
    backup: str = "",
    fleet: Fleet | None = None,
    place: Place | None = None,
) -> bool:
    """Install one file from the tree; `validate(temp_path)` may refuse it before it goes live.

    With `backup`, the file being replaced is first copied there (mtime kept). A file
    that depends on the host is rendered for its `place` (eep/manifest.py).
    Returns True when the host's file changed (or would change, in check mode).
    """
    want = render(host_file, fleet=fleet, place=place).encode()
    have = remote.read(host_file.path)
    step = f"file {host_file.path}"
    why = file_difference(remote, host_file, have, fleet, place)
    if not why:
        report.unchanged(step)
        return False
    diff = unified_diff(host_file.path, have, want) if have != want else ""
    if not report.change(step, why, diff):
        return True
    if backup and have is not None:
        remote.run(f"cp -p {shlex.quote(host_file.path)} {shlex.quote(backup)}")
    if validate is None:
        remote.install(host_file.path, want, host_file.state)
        return True
    temp = f"{host_file.path}.eep-check"
    remote.install(temp, want, host_file.state)
    try:
        validate(temp)
    except HostError:
        remote.run(f"rm -f {shlex.quote(temp)}")
        raise
    remote.run(f"mv -f {shlex.quote(temp)} {shlex.quote(host_file.path)}")
    return True


def ensure_absent(
    remote: Remote, report: Report, path: str, why: str = "this tree no longer installs it"
) -> bool:
    """Remove a file this tree no longer installs, or one of a role this host no longer
    plays (never a directory)."""
    have = remote.stat(path)
    step = f"file {path}"
    if have is None:
        report.unchanged(step)
        return False
    if have.kind == "directory":
        raise HostError(f"{path} is a directory; this tree only ever installed a file there")
    if report.change(step, f"removed: {why}"):
        remote.run(f"rm -f {shlex.quote(path)}")
    return True
