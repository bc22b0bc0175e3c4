"""Keeps one test host's systemd-nspawn running; started detached per host.

Usage: python -m testhosts.runner HOST_DIR

It holds HOST_DIR/runner.lock while alive (that is how "running" is told),
moves itself into the host's own cgroup, and boots the guest again whenever
systemd-nspawn exits with 133 (the guest asked for a reboot). SIGTERM stops
the guest cleanly (nspawn turns it into a guest shutdown) and ends the runner.
When the guest is down for good, the runner unplugs the host from its LAN.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import aptcache, cgroups, lan
from .errors import HarnessError
from .paths import state_dir

REBOOT_EXIT_CODE = 133


def nspawn_command(state: dict, host_dir: Path, apt_cache: Path) -> list[str]:
    return [
        "systemd-nspawn",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--machine={state['name']}",
        "--console=read-only",
        f"--network-namespace-path=/run/netns/{state['netns']}",
        # Firewall rules (nftables) of the guest's own network namespace: eep's broker
        # host loads some. Its netns is its own, so nothing of the machine's is reached.
        "--capability=CAP_NET_ADMIN",
        "--resolv-conf=off",
        f"--overlay={apt_cache}:{host_dir / 'apt-upper'}:/var/cache/apt/archives",
        "-D",
        str(host_dir / "root"),
    ]


def _say(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[testhosts runner {stamp}] {message}", flush=True)


def _leave_lan(state: dict) -> None:
    """A guest that is down must not answer on its LAN, however it went down
    (a poweroff inside it, too); starting the host plugs it in again."""
    if state.get("lan") and state.get("lan_ip"):
        try:
            lan.detach(state["lan"], state["lan_ip"])
        except HarnessError as exc:
            _say(f"could not unplug from LAN {state['lan']}: {exc}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m testhosts.runner HOST_DIR", file=sys.stderr)
        return 2
    host_dir = Path(argv[0])
    lock_fd = os.open(host_dir / "runner.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _say("another runner is active for this host")
        return 1
    state = json.loads((host_dir / "state.json").read_text())
    name = state["name"]
    apt_cache = state_dir().apt_cache
    (host_dir / "runner.pid").write_text(str(os.getpid()))

    previous = cgroups.own_paths()
    cgroups.join(name)
    stray = [pid for pid in cgroups.pids(name) if pid != os.getpid()]
    if stray:
        _say(f"killing {len(stray)} stray processes of an earlier run")
        for pid in stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    command = nspawn_command(state, host_dir, apt_cache)
    boots = 0
    rc = 0
    while not stopping:
        boots += 1
        _say(f"boot {boots}: {' '.join(command)}")
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        if stopping:
            child.send_signal(signal.SIGTERM)
        rc = child.wait()
        child = None
        moved = aptcache.harvest(host_dir / "apt-upper", apt_cache)
        _say(f"systemd-nspawn exited with {rc}; {moved} .deb files cached")
        (host_dir / "last-exit").write_text(f"{rc}\n")
        if rc != REBOOT_EXIT_CODE:
            break

    _leave_lan(state)
    cgroups.leave(previous)
    try:
        cgroups.kill(name, timeout=5)
    except Exception as exc:
        _say(f"could not kill leftovers: {exc}")
    cgroups.remove(name)
    _say("stopped")
    return 0 if stopping or rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
