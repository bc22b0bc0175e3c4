"""Runs on the host as root: make a directory, create a file or install one, then set its
owner and mode, never following a symbolic link.

Root changes owners and modes under directories that other accounts own (the deploy
account owns the app root, the app owns shared/). A plain `chown path` would follow a
symlink swapped in meanwhile, onto /etc/shadow or /root. So every component is opened
without following links (O_NOFOLLOW, relative to the descriptor of its parent), and
owner and mode are set on the open file descriptor.

Request on stdin: ["mkdir" | "touch" | "install", path, owner, group, mode, base64 data].
A refusal exits non-zero with one line on stderr.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import json
import os
import pwd
import sys

DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def open_dir(name: str, parent: int, create: int | None, refusal: str) -> int:
    """Open directory `name` of `parent` without following a link; with `create`, made
    with that mode first when missing. Exits with `refusal` when it is anything else."""
    if create is not None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, create, dir_fd=parent)
    try:
        return os.open(name, DIR, dir_fd=parent)
    except OSError:
        sys.exit(refusal)


def open_parent(path: str, create: bool) -> int:
    """A descriptor of the directory holding `path`, reached from / without following links."""
    fd = os.open("/", DIR)
    for part in [p for p in path.split("/") if p][:-1]:
        refusal = f"{part} is not a directory (or is a symbolic link)"
        try:
            new = open_dir(part, fd, 0o755 if create else None, refusal)
        finally:
            os.close(fd)
        fd = new
    return fd


def apply(op: str, path: str, owner: str, group: str, mode: int, data: str) -> None:
    uid, gid = pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    name = os.path.basename(path)
    parent = open_parent(path, create=op == "mkdir")
    if op == "mkdir":
        refusal = "exists and is not a directory (or is a symbolic link)"
        fd = open_dir(name, parent, 0o700, refusal)
    else:
        # Nothing in it may be plantable (a link at our name): the directory may only be root's.
        st = os.fstat(parent)
        if st.st_uid != 0 or st.st_mode & 0o022:
            sys.exit("refused: its directory is writable by an account other than root")
    if op == "touch":
        # Created if missing, content left alone (a log file).
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        fd = os.open(name, flags, 0o600, dir_fd=parent)
    elif op == "install":
        temp = f".{name}.eep-new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=parent)  # left by a run that was cut
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(temp, flags, 0o600, dir_fd=parent)
        with open(fd, "wb", closefd=False) as handle:
            handle.write(base64.b64decode(data))
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)
    if op == "install":
        os.fsync(fd)
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)


if __name__ == "__main__":
    apply(*json.load(sys.stdin))
