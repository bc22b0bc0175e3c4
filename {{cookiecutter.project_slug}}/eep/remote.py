"""One SSH connection to one host, with verified host keys and root commands.

Everything the steps do on a host goes through `Remote`: run a command as root
(directly when logged in as root, through sudo otherwise), read a file, stat a
path, install a file atomically with its owner and mode.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import paramiko
from fabric import Connection

from eep.manifest import TREE
from eep.pathstate import PathState


@dataclass(frozen=True)
class Result:
    """What a remote command printed, and its exit status."""

    stdout: str
    stderr: str
    exited: int


class HostError(Exception):
    """Something on or about one host went wrong; the message is one line for the user."""


@dataclass(frozen=True)
class Target:
    """Where to connect: user@host:port as the user typed it."""

    user: str
    host: str
    port: int | None

    @classmethod
    def parse(cls, spec: str, default_user: str) -> Target:
        user, _, rest = spec.rpartition("@")
        host, port = rest, None
        if rest.count(":") == 1:
            host, port_text = rest.split(":")
            if not port_text.isdigit():
                raise HostError(f"{spec}: port must be a number")
            port = int(port_text)
        if not host:
            raise HostError(f"{spec!r}: no host name")
        return cls(user or default_user, host, port)

    def __str__(self) -> str:
        return f"{self.user}@{self.host}" + (f":{self.port}" if self.port else "")


_KNOWN_HOSTS = [TREE / "known_hosts"]


def use_known_hosts(path: str) -> None:
    """Pin host keys in `path` (eep.known_hosts in invoke.yaml; relative to this tree)."""
    _KNOWN_HOSTS[0] = TREE / path


def known_hosts_path() -> Path:
    return _KNOWN_HOSTS[0]


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown host key: refuse, or record it in the tree when the user said to trust it."""

    def __init__(self, trust_new: bool) -> None:
        self.trust_new = trust_new

    def missing_host_key(self, client, hostname, key) -> None:
        fingerprint = key.fingerprint
        if not self.trust_new:
            raise HostError(
                f"unknown host key for {hostname} ({key.get_name()} {fingerprint}): verify it,"
                " then re-run with --trust-new-host-key (or add it to known_hosts)"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        path = known_hosts_path()
        with path.open("a") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        print(f"[{hostname}] trusted new host key {fingerprint}, recorded in known_hosts")


def _fingerprint_error(error: paramiko.BadHostKeyException) -> str:
    return (
        f"host key of {error.hostname} CHANGED: known {error.expected_key.fingerprint}, offered"
        f" {error.key.fingerprint}; refusing to connect (fix known_hosts if this is expected)"
    )


class Conversation:
    """A command on the host that reads requests and writes answers, a line each."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.answers = channel.makefile("rb")

    def ask(self, line: str) -> str:
        """Send one line, return the answer ("" if the command has ended)."""
        self.channel.sendall(line.encode() + b"\n")
        return self.answers.readline().decode(errors="replace")

    def last_error(self) -> str:
        """The last line the ended command wrote on stderr."""
        lines = self.channel.makefile_stderr("rb").read().decode(errors="replace").splitlines()
        return lines[-1] if lines else f"exit {self.channel.recv_exit_status()}"

    def close(self) -> None:
        self.channel.shutdown_write()
        self.channel.close()


class Remote:
    """Commands and files on one host: as root (provisioning) or as the login user (deploy)."""

    def __init__(
        self,
        target: Target,
        *,
        identity: str = "",
        trust_new_host_key: bool = False,
        sudo_password: str | None = None,
        become_root: bool = True,
    ) -> None:
        self.target = target
        self.become_root = become_root
        connect_kwargs = {"key_filename": [identity]} if identity else {}
        self.conn = Connection(
            target.host,
            user=target.user,
            port=target.port,
            connect_timeout=15,
            connect_kwargs=connect_kwargs,
        )
        # Host keys are verified against the tree's known_hosts and the user's own;
        # fabric's default would silently accept any unknown key.
        client = self.conn.client
        client.load_system_host_keys()
        if known_hosts_path().exists():
            client.load_host_keys(str(known_hosts_path()))
        client.set_missing_host_key_policy(_HostKeyPolicy(trust_new_host_key))
        self._sudo_password = sudo_password
        self._prefix = ""
        self._forget()

    def open(self) -> None:
        """Connect, then find out how to become root (root login, sudo, sudo with password)."""
        try:
            self.conn.open()
        except paramiko.BadHostKeyException as error:
            raise HostError(_fingerprint_error(error)) from None
        except paramiko.AuthenticationException:
            raise HostError(
                f"SSH login as {self.target} was refused (wrong key or user?)"
            ) from None
        except (paramiko.SSHException, OSError) as error:
            raise HostError(
                f"cannot reach {self.target}: {error or type(error).__name__}"
            ) from None
        if self.target.user == "root" or not self.become_root:
            return
        if self._raw("sudo -n true", check=False).exited == 0:
            self._prefix = "sudo -n "
            return
        if self._sudo_password is None:
            self._sudo_password = getpass.getpass(f"[sudo] password for {self.target}: ")
        # -k: always ask, so the password line on stdin is always consumed.
        self._prefix = "sudo -k -S -p '' "
        if self.run("true", check=False).exited != 0:
            raise HostError(f"sudo as {self.target} failed: wrong password or not allowed")

    def close(self) -> None:
        self.conn.close()

    def _forget(self) -> None:
        """Drop what prefetch() read: the host may have changed since."""
        self._stats: dict[str, PathState | None] = {}
        self._reads: dict[str, bytes | None] = {}
        self._answers: dict[str, Result] = {}
        self._programs: list[list[str]] | None = None

    def _raw(self, command: str, *, check: bool = True, stdin: bytes = b"") -> Result:
        # One SSH channel per command, fed straight through paramiko: invoke's stdin
        # pump sends a byte every 10 ms, far too slow for uploading config files.
        channel = self.conn.client.get_transport().open_session()
        try:
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            out = channel.makefile("rb").read().decode(errors="replace")
            err = channel.makefile_stderr("rb").read().decode(errors="replace")
            result = Result(out, err, channel.recv_exit_status())
        finally:
            channel.close()
        return _checked(command, result, check)

    def stream(self, command: str, out: BinaryIO, *, stdin: bytes = b"") -> tuple[int, str]:
        """Run a command as the login user, its output written to `out` as it comes
        (a backup may be larger than memory); (exit status, stderr)."""
        channel = self.conn.client.get_transport().open_session()
        try:
            channel.exec_command(command)
            channel.sendall(stdin)
            channel.shutdown_write()
            while chunk := channel.recv(1 << 20):
                out.write(chunk)
            err = channel.makefile_stderr("rb").read().decode(errors="replace")
            return channel.recv_exit_status(), err
        finally:
            channel.close()

    def converse(self, command: str) -> Conversation:
        """Start a command that answers each line sent to it with one line."""
        channel = self.conn.client.get_transport().open_session()
        channel.exec_command(command)
        return Conversation(channel)

    def run(self, command: str, *, check: bool = True, stdin: bytes = b"", changes: bool = True):
        """Run a shell command as root (or as the login user); return its Result.

        A command that may change the host (`changes`) drops what prefetch() read; one
        that does not is answered from it when prefetch() ran it.
        """
        if changes:
            self._forget()
        elif command in self._answers and not stdin:
            return _checked(command, self._answers[command], check)
        full = f"{self._prefix}sh -c {shlex.quote(command)}"
        if self._prefix.startswith("sudo -k -S"):
            stdin = (self._sudo_password or "").encode() + b"\n" + stdin
        try:
            return self._raw(full, check=check, stdin=stdin)
        except HostError as error:
            raise HostError(str(error).replace(full[:80], command[:80])) from None

    def put(self, local: str, remote: str, *, mode: int) -> None:
        """Upload a file over SFTP as the login user (no root involved), with `mode`
        whatever the local file's mode and umask are.

        The data goes to a new file beside `remote`, which gets its mode before any
        byte is written, then is renamed over `remote`: no handle opened on the old
        file writes the new one. Until that chmod the new file has the SFTP server's
        umask, so `remote` should be in a directory no other account can open.
        """
        sftp = self.conn.sftp()
        temp = f"{remote}.eep-new"
        with contextlib.suppress(OSError):
            sftp.remove(temp)  # left by an upload that was cut
        try:
            with sftp.open(temp, "wx") as handle, open(local, "rb") as source:
                handle.chmod(mode)
                handle.set_pipelined(True)
                shutil.copyfileobj(source, handle, 32768)
            sftp.posix_rename(temp, remote)
        except OSError as error:
            raise HostError(f"upload to {remote} failed: {error}") from None

    def prefetch(
        self,
        stat_paths: list[str],
        read_paths: list[str],
        commands: list[str] | None = None,
        supervisor_conf: str = "",
    ) -> bool:
        """Read the state of many paths, the output of read-only `commands` and the states of
        supervisor's programs, in ONE round trip (eep/host/facts.py); stat(), read(), run()
        and supervisor_states() answer from it until the next command that may change the host.

        Returns False, reading nothing, when the host has no python3 yet.
        """
        want: dict = {"stat": stat_paths, "read": read_paths, "commands": commands or []}
        if supervisor_conf:
            want["supervisor"] = supervisor_conf
        result = self.run_script("facts", want, changes=False)
        if result.exited == 127:
            return False
        if result.exited != 0:
            lines = result.stderr.strip().splitlines() or [f"exit {result.exited}"]
            raise HostError(f"reading the host's state failed: {lines[-1]}")
        facts = json.loads(result.stdout)
        self._stats = {
            p: PathState.observed(v) if v else None
            for p, v in zip(stat_paths, facts["stat"], strict=True)
        }
        self._reads = {
            p: base64.b64decode(v) if v is not None else None
            for p, v in zip(read_paths, facts["read"], strict=True)
        }
        self._answers = {
            c: Result(*answer)
            for c, answer in zip(want["commands"], facts["commands"], strict=True)
        }
        self._programs = facts.get("supervisor")
        return True

    def is_known(self, path: str) -> bool:
        """Whether stat() answers `path` from what prefetch() read."""
        return path in self._stats

    def has_facts(self) -> bool:
        """Whether what prefetch() read still stands (no command since may have changed the host)."""
        return bool(self._stats or self._reads or self._answers)

    def supervisor_states(self) -> list[list[str]] | None:
        """[[program, state], ...] as prefetch() read them, or None (not read, or since changed)."""
        return self._programs

    def run_script(self, name: str, request: object, *, changes: bool = True) -> Result:
        """Run eep/host/<name>.py with the host's python3 (as root, or as the login user),
        `request` as JSON on its stdin; never raises on its exit status."""
        source = (Path(__file__).parent / "host" / f"{name}.py").read_text(encoding="utf-8")
        return self.run(
            f"python3 -c {shlex.quote(source)}",
            stdin=json.dumps(request).encode(),
            check=False,
            changes=changes,
        )

    def read(self, path: str) -> bytes | None:
        """The content of a file, or None when it does not exist."""
        if path in self._reads:
            return self._reads[path]
        result = self.run(
            f"cat {shlex.quote(path)} 2>/dev/null || echo -n MISSING >&2",
            check=False,
            changes=False,
        )
        if result.stderr == "MISSING":
            return None
        return result.stdout.encode()

    def stat(self, path: str) -> PathState | None:
        """Kind, owner, group and mode of a path without following links, or None."""
        if path in self._stats:
            return self._stats[path]
        out = self.run(
            f"stat -c '%F|%a|%U|%G' {shlex.quote(path)} 2>/dev/null", check=False, changes=False
        )
        if out.exited != 0:
            return None
        return PathState.observed(out.stdout.strip().split("|"))

    def install(self, path: str, data: bytes, want: PathState) -> None:
        """Write a file atomically (a temporary file beside it, renamed over it), as root."""
        self._safe("install", path, want, base64.b64encode(data).decode())

    def touch_file(self, path: str, want: PathState) -> None:
        """Create a file if missing (content kept) and set its owner and mode, as root."""
        self._safe("touch", path, want, "")

    def make_dir(self, path: str, want: PathState) -> None:
        """Create a directory (and missing parents, root 0755) and set its owner and mode."""
        self._safe("mkdir", path, want, "")

    def _safe(self, verb: str, path: str, want: PathState, data: str) -> None:
        # The root-side file helper: never follows a link (see eep/host/safe_fs.py).
        request = [verb, path, want.owner, want.group, want.mode, data]
        result = self.run_script("safe_fs", request)
        if result.exited != 0:
            lines = result.stderr.strip().splitlines() or [f"exit {result.exited}"]
            raise HostError(f"{request[0]} {request[1]}: {lines[-1]}")


def _checked(command: str, result: Result, check: bool) -> Result:
    """`result`, or a HostError naming the command when `check` and it failed."""
    if check and result.exited != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise HostError(f"`{command[:80]}` failed: {detail[-1] if detail else result.exited}")
    return result
