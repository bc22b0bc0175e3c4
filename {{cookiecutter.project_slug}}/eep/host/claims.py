"""Runs on the host (as root, or as the deploy account for the audit): the facts about
the app's names that eep/host/facts.py does not read, for eep/claims.py to decide on.

Request on stdin (JSON): {"accounts": [names], "group": name, "link": path,
"supervisor": [glob patterns], "nginx": [glob patterns]}. Answer (JSON):
    accounts   {name: [GECOS, primary gid, home] or null}
    group      [gid, [members]] or null; primary: accounts whose primary group it is
    link       where the path links to, or null
    supervisor, nginx  [[path, text], ...] of every readable file the patterns match
    tmpfiles   `systemd-tmpfiles --cat-config` (every tmpfiles.d line and its file)
"""

from __future__ import annotations

import glob
import grp
import json
import os
import pwd
import subprocess
import sys


def account(name: str) -> list | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return [entry.pw_gecos, entry.pw_gid, entry.pw_dir]


def texts(pattern: str) -> list[list[str]]:
    found = []
    for path in sorted(glob.glob(pattern)):
        try:
            with open(path, errors="replace") as handle:
                found.append([path, handle.read()])
        except OSError:
            pass
    return found


def answer(want: dict) -> dict:
    try:
        group = grp.getgrnam(want["group"])
    except KeyError:
        group = None
    try:
        tmpfiles = subprocess.run(
            ["systemd-tmpfiles", "--cat-config"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        tmpfiles = ""
    return {
        "accounts": {name: account(name) for name in want["accounts"]},
        "group": group and [group.gr_gid, group.gr_mem],
        "primary": group and sorted(e.pw_name for e in pwd.getpwall() if e.pw_gid == group.gr_gid),
        "link": os.readlink(want["link"]) if os.path.islink(want["link"]) else None,
        "supervisor": [found for p in want["supervisor"] for found in texts(p)],
        "nginx": [found for p in want["nginx"] for found in texts(p)],
        "tmpfiles": tmpfiles,
    }


if __name__ == "__main__":
    print(json.dumps(answer(json.load(sys.stdin))))
