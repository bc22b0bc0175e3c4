"""One cgroup per test host, so each guest's processes stay apart.

systemd-nspawn keeps the guest in the cgroup it is started from
(--keep-unit). Each host gets `eep-testhosts/NAME` in the cgroup v2 hierarchy
and, on hybrid machines, in the v1 name=systemd hierarchy as well.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from . import procs
from .errors import HarnessError

GROUP = "eep-testhosts"


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append((parts[1], parts[2], parts[3]))
    return out


def unified_root() -> Path | None:
    """Mount point of the cgroup v2 hierarchy, if any."""
    for mountpoint, fstype, _ in _mounts():
        if fstype == "cgroup2":
            return Path(mountpoint)
    return None


def systemd_v1_root() -> Path | None:
    """Mount point of the v1 name=systemd hierarchy (hybrid machines), if any."""
    for mountpoint, fstype, options in _mounts():
        if fstype == "cgroup" and "name=systemd" in options.split(","):
            return Path(mountpoint)
    return None


def hierarchies() -> list[Path]:
    roots = [unified_root(), systemd_v1_root()]
    return [root for root in roots if root is not None]


def check_available() -> None:
    root = unified_root()
    if root is None:
        raise HarnessError("no cgroup v2 hierarchy is mounted (need cgroup2)")
    try:
        (root / GROUP).mkdir(exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot create a cgroup under {root}: {exc}") from exc


def host_paths(name: str) -> list[Path]:
    return [root / GROUP / name for root in hierarchies()]


def names() -> set[str]:
    found: set[str] = set()
    for root in hierarchies():
        group = root / GROUP
        if group.is_dir():
            found.update(p.name for p in group.iterdir() if p.is_dir())
    return found


def own_paths() -> dict[Path, str]:
    """This process's cgroup path in each hierarchy the harness uses."""
    v2, v1 = unified_root(), systemd_v1_root()
    result: dict[Path, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        ident, controllers, path = line.split(":", 2)
        if ident == "0" and v2 is not None:
            result[v2] = path
        elif "name=systemd" in controllers.split(",") and v1 is not None:
            result[v1] = path
    return result


def join(name: str) -> None:
    """Move the calling process into the host's cgroups."""
    for path in host_paths(name):
        path.mkdir(parents=True, exist_ok=True)
        (path / "cgroup.procs").write_text(str(os.getpid()))


def leave(previous: dict[Path, str]) -> None:
    """Move the calling process back to the cgroups recorded by own_paths()."""
    for root, rel in previous.items():
        target = root / rel.lstrip("/")
        (target / "cgroup.procs").write_text(str(os.getpid()))


def pids(name: str) -> list[int]:
    found: set[int] = set()
    for path in host_paths(name):
        if not path.is_dir():
            continue
        for procs_file in path.rglob("cgroup.procs"):
            try:
                found.update(int(x) for x in procs_file.read_text().split())
            except (FileNotFoundError, OSError):
                continue
    return sorted(found)


def kill(name: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in the host's cgroups and wait until they are gone."""
    for path in host_paths(name):
        kill_file = path / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
    deadline = time.monotonic() + timeout
    while True:
        remaining = [pid for pid in pids(name) if pid != os.getpid()]
        remaining = [pid for pid in remaining if procs.is_alive(pid)]
        if not remaining:
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"processes {remaining[:5]} of host {name} survive SIGKILL")
        procs.kill(remaining, signal.SIGKILL)
        time.sleep(0.05)


def remove(name: str) -> None:
    """Remove the host's cgroup directories (they must be empty of processes)."""
    for path in host_paths(name):
        if not path.is_dir():
            continue
        subdirs = sorted(
            (p for p in path.rglob("*") if p.is_dir()),
            key=lambda p: len(p.parts),
            reverse=True,
        )
        for sub in [*subdirs, path]:
            for _ in range(50):
                try:
                    sub.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def set_frozen(name: str, frozen: bool, timeout: float = 10.0) -> bool:
    """Freeze or thaw the host's v2 cgroup; False if freezing is unsupported."""
    root = unified_root()
    if root is None:
        return False
    path = root / GROUP / name
    freeze_file = path / "cgroup.freeze"
    if not freeze_file.exists():
        return False
    freeze_file.write_text("1" if frozen else "0")
    want = f"frozen {1 if frozen else 0}"
    deadline = time.monotonic() + timeout
    while want not in (path / "cgroup.events").read_text().splitlines():
        if time.monotonic() > deadline:
            raise HarnessError(f"host {name}: cgroup did not become '{want}'")
        time.sleep(0.02)
    return True
