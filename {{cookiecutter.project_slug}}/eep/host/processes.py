"""Runs on the host for the audit: every process that belongs to the app, with all its uids
and gids.

A process belongs to the app when it runs as the app's user (any of its uids), when its
command line names one of the app's paths, or when it descends from such a process.

Request on stdin: [[path marks], uid]. They are not passed as arguments: this process
would match its own marks. Answer: JSON [[pid, uids, gids, command line], ...].
"""

from __future__ import annotations

import json
import os
import sys

Process = tuple[int, list[int], list[int], str]  # parent pid, uids, gids, command line


def read_processes(proc: str = "/proc") -> dict[int, Process]:
    found = {}
    for pid in filter(str.isdigit, os.listdir(proc)):
        try:
            with open(f"{proc}/{pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status)
            with open(f"{proc}/{pid}/cmdline", "rb") as cmdline:
                cmd = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue  # exited meanwhile
        uids = [int(u) for u in fields["Uid"].split()]
        gids = [int(g) for g in fields["Gid"].split()]
        found[int(pid)] = (int(fields["PPid"]), uids, gids, cmd.strip())
    return found


def app_processes(marks: list[str], uid: int, proc: str = "/proc") -> list[list]:
    procs = read_processes(proc)
    app = {
        pid
        for pid, (_, uids, _, cmd) in procs.items()
        if uid in uids or any(mark in cmd for mark in marks)
    }
    while more := {pid for pid, (ppid, *_) in procs.items() if ppid in app} - app:
        app |= more
    return [[pid, *procs[pid][1:]] for pid in sorted(app)]


if __name__ == "__main__":
    print(json.dumps(app_processes(*json.load(sys.stdin))))
