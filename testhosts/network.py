"""Per-host network: a network namespace plus slirp4netns with port forwards.

The guest gets 10.0.2.100/24 with gateway 10.0.2.2 and DNS at 10.0.2.3;
nothing on the machine's own network changes. slirp4netns forwards
127.0.0.1:PORT on the machine to the guest's ports 22 and 80.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
from pathlib import Path

from . import procs
from .errors import HarnessError

NETNS_DIR = Path("/run/netns")
GUEST_DNS = "10.0.2.3"


class PortBusyError(HarnessError):
    """A forwarded port was taken between allocation and use."""


def netns_exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def list_netns(prefix: str = "eep-") -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def add_netns(netns: str) -> None:
    if netns_exists(netns):
        return
    result = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True)
    if result.returncode != 0:
        raise HarnessError(f"ip netns add {netns} failed: {result.stderr.strip()}")


def delete_netns(netns: str) -> None:
    if not netns_exists(netns):
        return
    result = subprocess.run(["ip", "netns", "delete", netns], capture_output=True, text=True)
    if result.returncode != 0 and netns_exists(netns):
        raise HarnessError(f"ip netns delete {netns} failed: {result.stderr.strip()}")


def slirp_command(netns: str, api_socket: Path, ready_fd: int) -> list[str]:
    return [
        "slirp4netns",
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        f"--api-socket={api_socket}",
        f"--ready-fd={ready_fd}",
        "--netns-type=path",
        str(NETNS_DIR / netns),
        "tap0",
    ]


def start_slirp(netns: str, api_socket: Path, log_path: Path, timeout=10.0) -> int:
    """Start a detached slirp4netns for netns and wait until it is ready."""
    api_socket.unlink(missing_ok=True)
    read_end, write_end = os.pipe()
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                slirp_command(netns, api_socket, write_end),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(write_end,),
                start_new_session=True,
                cwd="/",
            )
        os.close(write_end)
        write_end = -1
        ready, _, _ = select.select([read_end], [], [], timeout)
        data = os.read(read_end, 1) if ready else b""
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if data != b"1":
        procs.kill([proc.pid])
        proc.wait()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise HarnessError(f"slirp4netns for {netns} did not become ready: {' | '.join(tail)}")
    return proc.pid


def slirp_alive(pid: int | None, api_socket: Path) -> bool:
    return (
        bool(pid)
        and procs.is_alive(pid)
        and procs.references(procs.cmdline(pid or 0), api_socket.parent)
    )


def add_forward(api_socket: Path, host_port: int, guest_port: int) -> None:
    """Forward 127.0.0.1:host_port to the guest's guest_port (TCP)."""
    request = {
        "execute": "add_hostfwd",
        "arguments": {
            "proto": "tcp",
            "host_addr": "127.0.0.1",
            "host_port": host_port,
            "guest_port": guest_port,
        },
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(api_socket))
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    reply = json.loads(b"".join(chunks) or b"{}")
    if "error" in reply:
        message = str(reply["error"].get("desc", reply["error"]))
        if "in use" in message.lower() or "bind" in message.lower():
            raise PortBusyError(f"port {host_port} is busy: {message}")
        raise HarnessError(f"slirp4netns add_hostfwd {host_port}: {message}")


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(exclude: set[int]) -> int:
    """A loopback TCP port that is free now and not in exclude."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise HarnessError("could not find a free loopback port")


def wait_port_closed(port: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
