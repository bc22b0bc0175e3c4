#!/usr/bin/python3
"""eep: run {{ cookiecutter.project_slug }}'s own code AS THE APP USER, with the app's environment and settings.

Installed as {{ cookiecutter.__conf_dir }}/as-app (root:root 0755). Two ways in:

    sudo -n -u {{ cookiecutter.project_slug }} {{ cookiecutter.__conf_dir }}/as-app VERB
        The deploy account, through its literal sudo rules (config/sudoers). What varies
        (a release id, a command, a setting's value) comes as one JSON object on stdin,
        never as an argument: nothing shows in `ps`, and no sudo rule needs a wildcard.
    {{ cookiecutter.__conf_dir }}/as-app exec PROGRAM [ARGS...]
        uWSGI's attached processes (the Celery worker), already the app user: the
        program gets the settings too, then this process becomes it.

Verbs (stdin, then what it does):
    check   {"release": ID}   import the WSGI callable, load the Celery app (if any)
    steps   {"release": ID}   run eep.toml's pre_activate steps in order (migrations)
    health  {"release": ID, "path": "/health/", "host": "www.example.com"}
                              call the release's WSGI app once, as nginx would, and
                              require a 2xx answer
    run     {"command": "..."}  run a shell command in the current release
    shell   (nothing)         an interactive shell in the current release
    env     {"op": "list" | "show"}  or  {"op": "set", "values": {NAME: VALUE}}
            (list: the names, and a SHA-256 of each value to compare hosts by)
            or {"op": "unset", "names": [NAME]}      the settings file (eep_env.py)
With the database (PostgreSQL, peer authentication as this user):
    backup    {"label": "..."}  pg_dump (custom format) into shared/backups, keep the
                                newest {{ cookiecutter.keep_backups }}
    backups   (nothing)         list them
    restore   {"name": "..."}   pg_restore one, in one transaction (the app is stopped)
    download  {"name": "..."}   write one to stdout

The environment is the same for all: a clean one, the release's virtualenv first in
PATH, the `env` lines of the release's uwsgi.ini, then eep's (config/uwsgi-base.ini),
then the settings. Working directory: the release. Errors: one line on stderr, exit 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, "{{ cookiecutter.__conf_dir }}/python")
import eep_env  # beside this script on the host (the line above)

ROOT = Path("{{ cookiecutter.__app_root }}")
SHARED = ROOT / "shared"
WSGI_MODULE = {{ cookiecutter.wsgi_module | tojson }}
CELERY_APP = {{ (cookiecutter.celery_app if cookiecutter.use_celery == "y" else "") | tojson }}
RELEASE_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._-]{1,40}\Z")
OUTPUT_LINES = 20  # of a failed step's output, shown to the developer
DATABASE = {{ cookiecutter.database | tojson }}
BACKUPS = SHARED / "backups"
KEEP_BACKUPS = {{ cookiecutter.keep_backups | int }}
BACKUP_NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._-]{1,80}\.dump\Z")
LABEL = re.compile(r"[A-Za-z0-9._-]{1,80}\Z")


class Refused(Exception):
    """One line for the developer."""


def release_dir(request: dict) -> Path:
    release_id = request.get("release")
    if not isinstance(release_id, str) or not RELEASE_ID.match(release_id):
        raise Refused(f"bad release id {str(release_id)[:60]!r}")
    path = ROOT / "releases" / release_id
    if not (path / ".venv" / "bin" / "python").exists():
        raise Refused(f"no built release {release_id}")
    return path


def current_release() -> Path:
    """The `current` link itself, not where it points: paths read as the app's do."""
    if not (ROOT / "current").exists():
        raise Refused("no release deployed yet")
    os.chdir(ROOT / "current")
    return ROOT / "current"


def app_env(release: Path) -> dict[str, str]:
    venv = release / ".venv"
    env = {
        "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(venv),
        "HOME": str(SHARED),
        "LANG": "C.UTF-8",
        # The release is read-only to the app: no .pyc files to write.
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    ini = release / "uwsgi.ini"
    if ini.is_file():
        env.update(eep_env.ini_env(ini.read_text(encoding="utf-8", errors="replace")))
    env.update(eep_env.base_env())
    env.update(eep_env.usable(eep_env.read()))
    return env


def run_checked(argv: list[str], release: Path, what: str) -> str:
    proc = subprocess.run(
        argv,
        cwd=release,
        env=app_env(release),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise Refused(f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else ''}")
    return proc.stdout


# Run by the release's python: import the app as a uWSGI worker does (module:callable).
IMPORT = """
import importlib, sys
sys.path.insert(0, '.')
module, _, name = sys.argv[1].partition(':')
app = getattr(importlib.import_module(module), name or 'application')
assert callable(app), sys.argv[1] + ' is not callable'
"""

# ... then call it once with a GET, as nginx passes one through uwsgi_params.
HEALTH = (
    IMPORT
    + """
import io
path, _, query = sys.argv[2].partition('?')
environ = {
    'REQUEST_METHOD': 'GET', 'PATH_INFO': path, 'QUERY_STRING': query, 'SCRIPT_NAME': '',
    'SERVER_NAME': sys.argv[3], 'SERVER_PORT': '80', 'HTTP_HOST': sys.argv[3],
    'SERVER_PROTOCOL': 'HTTP/1.1', 'REMOTE_ADDR': '127.0.0.1',
    'wsgi.version': (1, 0), 'wsgi.url_scheme': 'http', 'wsgi.input': io.BytesIO(),
    'wsgi.errors': sys.stderr, 'wsgi.multithread': False, 'wsgi.multiprocess': True,
    'wsgi.run_once': False,
}
status = []
body = app(environ, lambda s, headers, exc_info=None: status.append(s) or (lambda data: None))
text = b''.join(body)
getattr(body, 'close', lambda: None)()
code = status[0] if status else 'no status'
if not code.startswith('2'):
    first = text.decode('utf-8', 'replace').strip().splitlines()[:1]
    sys.exit(f"answered {code}" + (f": {first[0][:200]}" if first else ''))
print(code)
"""
)


def check(request: dict) -> dict:
    release = release_dir(request)
    python = str(release / ".venv" / "bin" / "python")
    run_checked([python, "-c", IMPORT, WSGI_MODULE], release, "loading the app")
    if CELERY_APP:
        # `report` loads the Celery app and its configuration without a broker.
        celery = [str(release / ".venv" / "bin" / "celery"), "-A", CELERY_APP, "report"]
        run_checked(celery, release, "loading the Celery app")
    return {"checked": release.name}


def steps(request: dict) -> dict:
    release = release_dir(request)
    try:
        config = tomllib.loads((release / "eep.toml").read_text(encoding="utf-8"))
    except FileNotFoundError:
        config = {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise Refused(f"eep.toml is not valid TOML: {error}") from None
    commands = config.get("release", {}).get("pre_activate", [])
    ran = []
    for command in commands:
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=release,
            env=app_env(release),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
        )
        if proc.returncode != 0:
            tail = proc.stdout.strip().splitlines()[-OUTPUT_LINES:]
            sys.stderr.write("".join(f"  | {line}\n" for line in tail))
            last = tail[-1].strip() if tail else ""
            raise Refused(f"step `{command}` failed (exit {proc.returncode}): {last}")
        ran.append(command)
    return {"steps": ran}


def health(request: dict) -> dict:
    release = release_dir(request)
    path, host = request.get("path"), request.get("host")
    if not isinstance(path, str) or not path.startswith("/") or not isinstance(host, str):
        raise Refused("health: a path starting with / and a host are needed")
    python = str(release / ".venv" / "bin" / "python")
    status = run_checked(
        [python, "-c", HEALTH, WSGI_MODULE, path, host], release, f"health check GET {path}"
    )
    return {"status": status.strip()}


def run(request: dict) -> None:
    command = request.get("command")
    if not isinstance(command, str) or not command.strip():
        raise Refused("run: no command")
    release = current_release()
    os.execve("/bin/sh", ["sh", "-c", command], {**app_env(release), "PWD": str(release)})


def shell() -> None:
    release = current_release()
    env = {**app_env(release), "PWD": str(release), "TERM": os.environ.get("TERM", "xterm")}
    os.execve("/bin/bash", ["bash", "-i"], env)


def settings(request: dict) -> dict:
    op = request.get("op")
    current = eep_env.read()
    if op == "list":
        digests = {name: hashlib.sha256(v.encode()).hexdigest() for name, v in current.items()}
        return {"names": sorted(current), "digests": digests}
    if op == "show":
        return {"values": current}
    if op == "set":
        values = request.get("values")
        if not isinstance(values, dict) or not values:
            raise Refused("set: no NAME=VALUE given")
        for name, value in values.items():
            if not isinstance(value, str):
                raise Refused(f"the value of {name} is not text")
            try:
                eep_env.check(name, value)
            except ValueError as error:
                raise Refused(str(error)) from None
        changed = sorted(name for name, value in values.items() if current.get(name) != value)
        new = {**current, **values}
    elif op == "unset":
        names = request.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise Refused("unset: no NAME given")
        changed = sorted(name for name in set(names) if name in current)
        new = {k: v for k, v in current.items() if k not in names}
    else:
        raise Refused(f"env: unknown operation {str(op)[:20]!r}")
    if changed:
        write_settings(new)
    return {"changed": changed}


def write_settings(values: dict[str, str]) -> None:
    """Replace the settings file at once: readers see the old or the new, never half."""
    fd, temp = tempfile.mkstemp(dir=SHARED, prefix=".env-")  # 0600 by mkstemp
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(eep_env.render(values))
        os.replace(temp, eep_env.SETTINGS)
    except BaseException:
        os.unlink(temp)
        raise


def database_env() -> dict[str, str]:
    """Enough for pg_dump and pg_restore: the connection settings of eep's base ini."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **eep_env.base_env()}


def run_database_tool(argv: list[str], failed: str) -> None:
    """pg_dump or pg_restore with the app's connection settings; `failed: <its last
    error line>` as the one line when it exits non-zero."""
    proc = subprocess.run(
        argv,
        env=database_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise Refused(f"{failed}: {lines[-1] if lines else f'exit {proc.returncode}'}")


def backup_files() -> list[Path]:
    """The finished backups, oldest first (their names start with the UTC time)."""
    return sorted(p for p in BACKUPS.iterdir() if BACKUP_NAME.match(p.name))


def need_database() -> None:
    if DATABASE != "postgresql":
        raise Refused("this app has no database (baked with database: none)")


def backup_path(request: dict) -> Path:
    need_database()
    name = request.get("name")
    if not isinstance(name, str) or not BACKUP_NAME.match(name):
        raise Refused(f"bad backup name {str(name)[:80]!r} (see `invoke backups`)")
    if not (BACKUPS / name).is_file():
        raise Refused(f"no backup {name} (see `invoke backups`)")
    return BACKUPS / name


def backup(request: dict) -> dict:
    need_database()
    label = request.get("label") or "manual"
    if not isinstance(label, str) or not LABEL.match(label):
        raise Refused(f"bad backup label {str(label)[:80]!r}: letters, digits, . _ -")
    name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{label}.dump"
    part = BACKUPS / f".{name}.part"
    # Written under a name `backups` does not list, renamed once pg_dump succeeded.
    try:
        run_database_tool(["pg_dump", "--format=custom", f"--file={part}"], "pg_dump failed")
    except Refused:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, BACKUPS / name)
    kept = backup_files()
    removed = [p.name for p in kept[:-KEEP_BACKUPS]] if len(kept) > KEEP_BACKUPS else []
    for old in removed:
        (BACKUPS / old).unlink()
    return {"name": name, "size": (BACKUPS / name).stat().st_size, "removed": removed}


def backups(request: dict) -> dict:
    need_database()
    return {"backups": [{"name": p.name, "size": p.stat().st_size} for p in backup_files()]}


def restore(request: dict) -> dict:
    path = backup_path(request)
    # --clean --if-exists: drop what the dump holds first; --single-transaction: all of
    # it or nothing, so a failed restore leaves the database as it was.
    argv = ["pg_restore", "--clean", "--if-exists", "--single-transaction", "--no-owner"]
    argv += [f"--dbname={eep_env.base_env().get('PGDATABASE', '')}", str(path)]
    run_database_tool(argv, "pg_restore failed, nothing changed")
    return {"restored": path.name}


def download(request: dict) -> None:
    with backup_path(request).open("rb") as handle:
        shutil.copyfileobj(handle, sys.stdout.buffer, 1 << 20)
    sys.stdout.flush()


def exec_program(argv: list[str]) -> None:
    if not argv or not argv[0].startswith("/"):
        raise Refused("exec: an absolute program path is needed")
    release = current_release()
    os.execve(argv[0], argv, app_env(release))


VERBS = {
    "check": check,
    "steps": steps,
    "health": health,
    "env": settings,
    "backup": backup,
    "backups": backups,
    "restore": restore,
}


def main(argv: list[str]) -> int:
    os.umask(0o027)
    try:
        if argv[:1] == ["exec"]:
            exec_program(argv[1:])
        if argv == ["shell"]:
            shell()
        if len(argv) != 1 or argv[0] not in [*VERBS, "run", "download"]:
            verbs = ", ".join([*VERBS, "run", "shell", "download"])
            raise Refused(f"usage: as-app VERB (one of: {verbs}) or as-app exec PROGRAM")
        try:
            request = json.loads(sys.stdin.readline() or "{}")
        except ValueError:
            raise Refused("the request on stdin is not JSON") from None
        if not isinstance(request, dict):
            raise Refused("the request on stdin is not a JSON object")
        if argv[0] == "run":
            run(request)
        if argv[0] == "download":
            download(request)
            return 0
        print(json.dumps(VERBS[argv[0]](request)))
    except (Refused, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
