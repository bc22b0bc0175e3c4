"""Runs on the host as the deploy account: the Celery workers the app's uWSGI master runs,
and whether each started after the restart trigger was last touched.

Request on stdin (JSON): {"master_pidfile": path, "trigger": path}. Answer (JSON):
[[pid, seconds from the trigger's touch to the worker's start (negative: started
before it), its child processes (the prefork pool)], ...].
"""

from __future__ import annotations

import json
import os
import sys
import time


def started_ago(pid: str, uptime: float, ticks: int) -> float:
    """How many seconds ago `pid` started (field 22 of /proc/PID/stat: its start in clock
    ticks since boot; /proc/stat's btime is whole seconds, too coarse here)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return uptime - int(fields[19]) / ticks


def parents() -> dict[str, str]:
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                found[pid] = stat.read().rpartition(")")[2].split()[1]
        except OSError:
            continue  # exited meanwhile
    return found


def workers(master_pidfile: str, trigger: str) -> list[list[float]]:
    try:
        with open(master_pidfile) as handle:
            master = handle.read().strip()
        touched_ago = time.time() - os.stat(trigger).st_mtime
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
    except OSError:
        return []
    ticks = os.sysconf("SC_CLK_TCK")
    tree = parents()
    found = []
    for pid, parent in tree.items():
        if parent != master:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().split(b"\0")
            ago = started_ago(pid, uptime, ticks)
        except OSError:
            continue
        if any(b"celery" in part for part in command) and b"worker" in command:
            kids = sum(1 for p in tree.values() if p == pid)
            found.append([int(pid), round(touched_ago - ago, 3), kids])
    return found


if __name__ == "__main__":
    want = json.load(sys.stdin)
    print(json.dumps(workers(want["master_pidfile"], want["trigger"])))
