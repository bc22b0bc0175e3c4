"""Runs on the host as postgres: replace pg_hba.conf with what provisioning decided, have
PostgreSQL check it, and reload only a file PostgreSQL accepts.

pg_hba.conf and its directory belong to postgres on Debian, so the file is written as
postgres (root does nothing in a directory another account can change).

Request on stdin (JSON): {"path": the file, "old": its content when provisioning read it,
"new": the content to install}. The file is replaced only if it still holds "old"
(nothing edited it since). The pg_hba_file_rules view parses the file on disk: on any
error the old content is put back and the script exits with one line naming the error.
Otherwise PostgreSQL reloads its configuration, and the script waits until it has.
A refusal exits non-zero with one line on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time

PSQL = ["psql", "-X", "-A", "-t", "-q", "-w", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]


def psql(query: str) -> str:
    done = subprocess.run([*PSQL, query], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        sys.exit(f"psql: {lines[-1]}")
    return done.stdout.strip()


def replace(path: str, data: str, mode: int) -> None:
    """Write a new file beside `path` (never through a link), then rename it over `path`."""
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.eep-new")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # left by a run that was cut
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "w", encoding="utf-8", newline="") as handle:
        os.fchmod(fd, mode)
        handle.write(data)
        handle.flush()
        os.fsync(fd)
    os.rename(temp, path)


def main(path: str, old: str, new: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, encoding="utf-8", newline="") as handle:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if handle.read() != old:
            sys.exit(f"{path} changed while provisioning read it; provision again")
    replace(path, new, mode)
    error = psql(
        "SELECT line_number || ': ' || error FROM pg_hba_file_rules"
        " WHERE error IS NOT NULL ORDER BY line_number LIMIT 1"
    )
    if error:
        replace(path, old, mode)
        sys.exit(f"PostgreSQL refused the new {path} (line {error}); the previous file is back")
    # The server reloads after the signal, not during the call: wait until it has.
    loaded = psql("SELECT pg_conf_load_time()")
    psql("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while psql("SELECT pg_conf_load_time()") == loaded:
        if time.monotonic() > deadline:
            sys.exit(f"PostgreSQL did not reload its configuration within 10 s ({path})")
        time.sleep(0.05)


if __name__ == "__main__":
    request = json.load(sys.stdin)
    main(request["path"], request["old"], request["new"])
