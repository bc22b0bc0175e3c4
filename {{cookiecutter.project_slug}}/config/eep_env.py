"""eep: the settings of {{ cookiecutter.project_slug }} (`invoke env`), and the environment the app runs with.

Installed as {{ cookiecutter.__conf_dir }}/python/eep_env.py (root:root 0644). Used by:
- every uWSGI worker (config/uwsgi-base.ini: `import = eep_env`): it puts the settings
  into the worker's environment before the app is loaded, so a chain reload picks up a
  changed setting without restarting the master;
- {{ cookiecutter.__conf_dir }}/as-app, for release steps, checks, `invoke run`, `shell`
  and the attached processes (Celery).

The settings file, {{ cookiecutter.__app_root }}/shared/env, belongs to the app user (0600): one
`NAME=VALUE` line each. Only the app user reads it (the deploy account through as-app);
root never does. Names that eep's own ini sets (the database, the broker, the shared
directory) cannot be overridden: the base ini states them once.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

SETTINGS = Path("{{ cookiecutter.__app_root }}/shared/env")
BASE_INI = Path("{{ cookiecutter.__conf_dir }}/uwsgi.ini")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
MAX_VALUE = 64 * 1024
# Set by eep for every process of the app: a setting of that name would be ignored
# by some of them, so it is refused.
RESERVED = {
    "PATH",
    "HOME",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONDONTWRITEBYTECODE",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
}
_ENV_LINE = re.compile(r"\s*env\s*=\s*([A-Za-z_][A-Za-z0-9_]*)=(.*?)\s*\Z")


def ini_env(text: str) -> dict[str, str]:
    """The `env = NAME=VALUE` lines of a uWSGI ini, in order (a later one wins)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _ENV_LINE.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def base_env() -> dict[str, str]:
    """What eep's own ini (config/uwsgi-base.ini) sets: the database, broker, shared dir."""
    try:
        return ini_env(BASE_INI.read_text(encoding="utf-8"))
    except FileNotFoundError:  # not provisioned yet
        return {}


def enforced() -> set[str]:
    """Names no setting may change: eep's own (the base ini's `env` lines) and RESERVED."""
    return RESERVED | set(base_env())


def check(name: str, value: str | None = None) -> None:
    """Raise ValueError with one line when a name (and value) cannot be a setting."""
    if not NAME.match(name):
        raise ValueError(
            f"bad setting name {name[:60]!r}: letters, digits and _, not first a digit"
        )
    if name in enforced():
        raise ValueError(f"{name} is set by eep itself and cannot be changed")
    if value is not None:
        if any(c in value for c in "\n\r\0"):
            raise ValueError(f"the value of {name} contains a newline or NUL")
        if len(value.encode()) > MAX_VALUE:
            raise ValueError(f"the value of {name} is longer than {MAX_VALUE} bytes")


def parse(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and NAME.match(name):
            settings[name] = value
    return settings


def render(settings: dict[str, str]) -> str:
    return "".join(f"{name}={settings[name]}\n" for name in sorted(settings))


def read(path: Path = SETTINGS) -> dict[str, str]:
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def usable(settings: dict[str, str]) -> dict[str, str]:
    """The settings a process gets: never one of the enforced names."""
    blocked = enforced()
    return {name: value for name, value in settings.items() if name not in blocked}


if "uwsgi" in sys.modules:  # imported by a uWSGI worker: apply the settings now
    try:
        os.environ.update(usable(read()))
    except OSError as error:  # unreadable: say so in the log, the app decides what is missing
        print(f"eep_env: settings not read: {error}", file=sys.stderr)
