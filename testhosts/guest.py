"""Writing into a guest's root filesystem from the machine, without following
symlinks the guest may have planted."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from .errors import HarnessError

HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")


def _parent_fd(root: Path, rel: str, create: bool) -> tuple[int, str]:
    """Open the parent directory of root/rel, refusing symlinked components."""
    parts = [p for p in rel.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise HarnessError(f"bad guest path {rel!r}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(
                    part,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=fd,
                )
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(
                    part,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=fd,
                )
            except OSError as exc:
                raise HarnessError(
                    f"guest path {rel!r}: {part!r} is not a plain directory"
                ) from exc
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def write_file(root: Path, rel: str, data: bytes | str, mode: int = 0o644) -> None:
    """Replace root/rel with data (owned by root), never writing through a symlink."""
    payload = data.encode() if isinstance(data, str) else data
    dir_fd, leaf = _parent_fd(root, rel, create=True)
    try:
        try:
            st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise HarnessError(f"guest path {rel!r} is a directory")
            os.unlink(leaf, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(leaf, flags, mode, dir_fd=dir_fd)
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, mode)
            os.write(fd, payload)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def read_file(root: Path, rel: str) -> bytes | None:
    """Content of root/rel if it is a regular file (symlinks are not followed)."""
    try:
        dir_fd, leaf = _parent_fd(root, rel, create=False)
    except (FileNotFoundError, HarnessError):
        return None
    try:
        fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        return handle.read()


def ensure_dir(root: Path, rel: str, mode: int) -> None:
    dir_fd, leaf = _parent_fd(root, f"{rel}/x", create=True)
    try:
        os.fchmod(dir_fd, mode)
    finally:
        os.close(dir_fd)


def remove_files(root: Path, rel_dir: str, prefix: str) -> None:
    dir_fd, _ = _parent_fd(root, f"{rel_dir}/x", create=True)
    try:
        for entry in os.listdir(dir_fd):
            if entry.startswith(prefix):
                os.unlink(entry, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


class HostKeyJob:
    """Generates a fresh set of ssh host keys in the background."""

    def __init__(self, comment: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="eep-hostkeys-"))
        self.procs = [
            subprocess.Popen(
                [
                    "ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment,
                    "-f", str(self.tmp / f"ssh_host_{kind}_key"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for kind in HOST_KEY_TYPES
        ]  # fmt: skip

    def install(self, root: Path) -> str:
        """Wait for the keys, put them into root/etc/ssh; return the ed25519 line."""
        try:
            for proc in self.procs:
                _, err = proc.communicate(timeout=60)
                if proc.returncode != 0:
                    raise HarnessError(f"ssh-keygen failed: {err.decode().strip()}")
            remove_files(root, "etc/ssh", "ssh_host_")
            for kind in HOST_KEY_TYPES:
                base = f"ssh_host_{kind}_key"
                private = (self.tmp / base).read_bytes()
                public = (self.tmp / f"{base}.pub").read_bytes()
                write_file(root, f"etc/ssh/{base}", private, 0o600)
                write_file(root, f"etc/ssh/{base}.pub", public, 0o644)
            pub = (self.tmp / "ssh_host_ed25519_key.pub").read_text().split()
            return f"{pub[0]} {pub[1]}"
        finally:
            self.cancel()

    def cancel(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def etc_hosts(name: str) -> str:
    return (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{name}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n"
    )


def personalize(root: Path, name: str, root_pubkey: str) -> None:
    """Give a guest tree its identity: hostname, /etc/hosts, machine-id, root key."""
    write_file(root, "etc/hostname", f"{name}\n")
    write_file(root, "etc/hosts", etc_hosts(name))
    write_file(root, "etc/machine-id", "", 0o444)
    ensure_dir(root, "root/.ssh", 0o700)
    current = (read_file(root, "root/.ssh/authorized_keys") or b"").decode()
    lines = [line for line in current.splitlines() if line.strip()]
    if root_pubkey.strip() not in (line.strip() for line in lines):
        lines.append(root_pubkey.strip())
    write_file(root, "root/.ssh/authorized_keys", "\n".join(lines) + "\n", 0o600)
