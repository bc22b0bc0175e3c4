"""eep: the settings of {{ cookiecutter.project_slug }} (`invoke env`), and the environment the app runs with.

Installed as {{ cookiecutter.__conf_dir }}/python/eep_env.py (root:root 0644). Used by:
- every uWSGI worker (config/uwsgi-base.ini: `import = eep_env`): it puts the settings
  into the worker's environment before the app is loaded, so a chain reload picks up a
  changed setting without restarting the master;
- {{ cookiecutter.__conf_dir }}/as-app, for release steps, checks, `invoke run`, `shell`
  and the attached processes (Celery).

The settings file, {{ cookiecutter.__app_root }}/shared/env, belongs to the app user (0600): one
`NAME=VALUE` line each. Only the app user reads it (the deploy account through as-app);
root never does. Names that eep's own ini files set (the database, the broker, the
shared directory) cannot be overridden: the base ini and this host's host.ini state them
once. With several hosts, the broker's URL there has no password: it is added here from
{{ cookiecutter.__conf_dir }}/broker-secret.conf (root-owned, readable by the app's group,
copied by provisioning from the broker host), so it is in no file of the tree.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

SETTINGS = Path("{{ cookiecutter.__app_root }}/shared/env")
BASE_INI = Path("{{ cookiecutter.__conf_dir }}/uwsgi.ini")
HOST_INI = Path("{{ cookiecutter.__conf_dir }}/host.ini")
BROKER_SECRET = Path("{{ cookiecutter.__conf_dir }}/broker-secret.conf")
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
    """What eep's own ini files set: where the broker is (this host's host.ini), the
    database and the shared directory (config/uwsgi-base.ini); the broker's password added."""
    found: dict[str, str] = {}
    for path in (HOST_INI, BASE_INI):
        try:
            found.update(ini_env(path.read_text(encoding="utf-8")))
        except FileNotFoundError:  # not provisioned yet
            pass
    if "CELERY_BROKER_URL" in found:
        found["CELERY_BROKER_URL"] = with_password(found["CELERY_BROKER_URL"])
    return found


def with_password(url: str) -> str:
    """A redis:// broker URL (several hosts) with the broker's password in it."""
    if not url.startswith("redis://") or "@" in url:
        return url  # one host: the private unix socket needs no password
    try:
        words = BROKER_SECRET.read_text(encoding="utf-8").split()
    except OSError:
        return url  # not copied here yet: the broker refuses, Celery says why
    if len(words) != 2 or words[0] != "requirepass":
        return url
    return f"redis://:{words[1]}@{url.removeprefix('redis://')}"


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
    if "CELERY_BROKER_URL" in os.environ:  # set by host.ini, without the password
        os.environ["CELERY_BROKER_URL"] = with_password(os.environ["CELERY_BROKER_URL"])
    try:
        os.environ.update(usable(read()))
    except OSError as error:  # unreadable: say so in the log, the app decides what is missing
        print(f"eep_env: settings not read: {error}", file=sys.stderr)
