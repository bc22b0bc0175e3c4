"""Runs on the host: read everything provisioning (or the audit) acts on, in one round trip.

Request on stdin (JSON, every key optional):
    {"stat": [paths], "read": [paths], "commands": [shell commands that change nothing],
     "supervisor": path of supervisord.conf}
Answer: the same keys, each with one answer per item, in order:
    stat      [kind, mode in octal, owner, group] of the path itself (a link is not
              followed), or null when it does not exist
    read      the file's content in base64, or null (missing, unreadable, or a link)
    commands  [stdout, stderr, exit status], the commands run side by side with `sh -c`
    supervisor  [[program as supervisorctl names it, state], ...] asked of supervisord
              over its socket (supervisorctl itself takes ~0.4 s to start), or null
              when it does not answer there
"""

from __future__ import annotations

import base64
import configparser
import functools
import grp
import json
import os
import pwd
import stat
import subprocess
import sys

KINDS = [
    (stat.S_ISDIR, "directory"),
    (stat.S_ISREG, "regular file"),
    (stat.S_ISLNK, "symbolic link"),
    (stat.S_ISSOCK, "socket"),
]


@functools.cache  # a name lookup can cost a slow NSS round trip
def name_of(database: str, number: int) -> str:
    try:
        return (pwd.getpwuid if database == "user" else grp.getgrgid)(number)[0]
    except KeyError:
        return str(number)


def stat_path(path: str) -> list[str] | None:
    try:
        found = os.lstat(path)
    except OSError:
        return None
    kind = next((k for test, k in KINDS if test(found.st_mode)), "other")
    mode = format(stat.S_IMODE(found.st_mode), "04o")
    return [kind, mode, name_of("user", found.st_uid), name_of("group", found.st_gid)]


def read_file(path: str) -> str | None:
    # Never through a symbolic link: root would read whatever it points to.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with open(fd, "rb") as handle:
        return base64.b64encode(handle.read()).decode()


def start(command: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["sh", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen) -> list:
    out, err = process.communicate()
    return [out.decode(errors="replace"), err.decode(errors="replace"), process.returncode]


def supervisor_states(conf: str) -> list[list[str]] | None:
    # Imported here: only provisioning asks, and these cost ~40 ms to import.
    import http.client
    import socket
    import xmlrpc.client

    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    try:
        parser.read(conf)
        url = parser.get("supervisorctl", "serverurl")
    except configparser.Error:
        return None
    if not url.startswith("unix://") or "%" in url:
        return None

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(10)
            self.sock.connect(url.removeprefix("unix://"))

    class Transport(xmlrpc.client.Transport):
        def make_connection(self, host):
            return Connection("localhost")

    server = xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=Transport())
    try:
        processes: list[dict] = server.supervisor.getAllProcessInfo()  # type: ignore[assignment]
    except (OSError, xmlrpc.client.Error):
        return None
    # supervisorctl's names: "group:process", or "process" alone when both are the same.
    return [
        [p["name"] if p["group"] == p["name"] else f"{p['group']}:{p['name']}", p["statename"]]
        for p in processes
    ]


def read_facts(want: dict) -> dict:
    # The commands run while the paths are read.
    running = [start(command) for command in want.get("commands", [])]
    facts: dict = {
        "stat": [stat_path(path) for path in want.get("stat", [])],
        "read": [read_file(path) for path in want.get("read", [])],
    }
    if "supervisor" in want:
        facts["supervisor"] = supervisor_states(want["supervisor"])
    facts["commands"] = [finish(process) for process in running]
    return facts


if __name__ == "__main__":
    print(json.dumps(read_facts(json.load(sys.stdin))))
