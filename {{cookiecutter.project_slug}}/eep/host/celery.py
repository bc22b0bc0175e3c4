"""Runs on the host as the deploy account: the Celery workers the app's uWSGI master runs
(not its beat), and whether each started after the restart trigger was last touched.

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


# Celery's options before its subcommand that take a value (`-A app.worker` is no worker).
VALUE_OPTIONS = {"-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config"}
VALUE_OPTIONS |= {"--workdir"}


def subcommand(args: list[str]) -> str:
    """'worker', 'beat', ... of a celery command line ('' when it is not celery):
    the first word after the celery program that is neither an option nor its value.
    The beat is attached like the worker; the two must never be mistaken."""
    for at, word in enumerate(args):
        if word.rsplit("/", 1)[-1] == "celery":
            break
    else:
        return ""
    rest = iter(args[at + 1 :])
    for word in rest:
        if word in VALUE_OPTIONS:
            next(rest, None)
        elif not word.startswith("-"):
            return word
    return ""


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
                command = handle.read().decode(errors="replace").split("\0")
            ago = started_ago(pid, uptime, ticks)
        except OSError:
            continue
        if subcommand(command) == "worker":
            kids = sum(1 for p in tree.values() if p == pid)
            found.append([int(pid), round(touched_ago - ago, 3), kids])
    return found


if __name__ == "__main__":
    want = json.load(sys.stdin)
    print(json.dumps(workers(want["master_pidfile"], want["trigger"])))
