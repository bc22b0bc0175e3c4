"""Removing what crashed or abandoned runs left behind."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from . import cgroups, image, lan, locks, network, procs, snapshots
from .host import teardown
from .paths import netns_name, state_dir

log = logging.getLogger("testhosts")


def _state(host_dir: Path) -> dict | None:
    try:
        return json.loads((host_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _owner_gone(state: dict) -> bool:
    pid = state.get("owner_pid")
    if pid is None:
        return False
    return not procs.is_alive(pid) or procs.start_time(pid) != state.get("owner_start")


def _leftover_reason(host_dir: Path) -> str | None:
    """Why host_dir is a leftover, or None if it is a live or parked host."""
    state = _state(host_dir)
    runner_alive = locks.is_locked(host_dir / "runner.lock")
    if state is None:
        return None if runner_alive else "incomplete host directory"
    if _owner_gone(state):
        return f"its owner process {state['owner_pid']} is gone"
    if state.get("desired") == "running" and not runner_alive:
        return "its systemd-nspawn runner is gone"
    return None


def cleanup_leftovers() -> list[str]:
    """Tear down hosts of crashed runs and stray processes, mounts, netns,
    LANs, cgroups and old bases. Live hosts and deliberately stopped ones are kept,
    so this is safe at the start of every test session. Returns what it did.
    """
    layout = state_dir()
    done: list[str] = []
    with locks.file_lock(layout.lock_file):
        kept: set[str] = set()
        for host_dir in sorted(layout.hosts_dir.iterdir()):
            reason = _leftover_reason(host_dir)
            if reason is None:
                kept.add(host_dir.name)
                continue
            log.info("cleanup: removing host %s (%s)", host_dir.name, reason)
            teardown(host_dir, host_dir.name)
            done.append(f"host {host_dir.name}: {reason}")

        for pid, argv in procs.iter_processes():
            for candidate in _host_dirs_named(argv, layout.hosts_dir):
                if candidate.name not in kept and procs.is_alive(pid):
                    log.info("cleanup: killing stray process %d (%s)", pid, argv[0])
                    procs.kill([pid])
                    done.append(f"process {pid} {argv[0]}")
                    break

        for name in sorted(cgroups.names() - kept):
            cgroups.kill(name)
            cgroups.remove(name)
            done.append(f"cgroup {name}")

        wanted = {netns_name(name) for name in kept}
        for netns in network.list_netns():
            if netns not in wanted:
                network.delete_netns(netns)
                done.append(f"netns {netns}")
        done.extend(_remove_unused_lans(kept))

        for leftover in layout.image_dir.glob("*.tmp"):
            if not locks.is_locked(layout.image_lock_file):
                leftover.unlink(missing_ok=True)
        for leftover in layout.snapshots_dir.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        week_ago = time.time() - 7 * 86400
        for old_log in layout.logs_dir.glob("*.failed-*.log"):
            if old_log.stat().st_mtime < week_ago:
                old_log.unlink(missing_ok=True)

        for path in snapshots.remove_unused_layers():
            done.append(f"layer {path.name}")
        keep_bases = {Path(s["base"]) for s in snapshots.list_snapshots()}
        for name in kept:
            state = _state(layout.host_dir(name))
            if state:
                keep_bases.add(Path(state["base"]))
        if not locks.is_locked(layout.image_lock_file):
            for path in image.remove_unused_bases(keep_bases):
                done.append(f"base {path.name}")
    for line in done:
        log.debug("cleanup: %s", line)
    return done


def _remove_unused_lans(kept: set[str]) -> list[str]:
    """Remove the LAN netns no kept host is on (their hosts crashed or were removed)."""
    layout = state_dir()
    wanted = set()
    for name in kept:
        state = _state(layout.host_dir(name))
        if state and state.get("lan"):
            wanted.add(state["lan"])
    done = []
    for name in lan.list_lans():
        if name not in wanted:
            lan.remove_lan(name)
            done.append(f"LAN {name}")
    return done


def _host_dirs_named(argv: list[str], hosts_dir: Path) -> list[Path]:
    prefix = f"{hosts_dir}/"
    found = []
    for arg in argv:
        start = arg.find(prefix)
        if start >= 0:
            rest = arg[start + len(prefix) :]
            name = rest.split("/", 1)[0].split(":", 1)[0]
            if name:
                found.append(hosts_dir / name)
    return found


def remove_all_state() -> None:
    """Tear down every host (used by `cleanup --all`); keeps image and snapshots."""
    layout = state_dir()
    with locks.file_lock(layout.lock_file):
        for host_dir in sorted(layout.hosts_dir.iterdir()):
            teardown(host_dir, host_dir.name)
    shutil.rmtree(layout.logs_dir, ignore_errors=True)
    layout.logs_dir.mkdir(mode=0o700, exist_ok=True)
