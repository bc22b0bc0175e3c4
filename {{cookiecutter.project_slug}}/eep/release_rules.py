"""What a release's uwsgi.ini and requirements.txt may say, beyond its code.

Checked before anything is uploaded (`invoke deploy`) and again on the host by the
release agent, which imports this file beside it. Standard library only.

uwsgi.ini: the options the developer owns, nothing else.
Why an allow-list: uWSGI parses the release's ini on every start. An option about
identity, sockets, logging, plugins or start-up hooks may pass a graceful reload
(which redoes none of that) and then fail the next cold start (`invoke start`, a
reboot) with the site down. The enforced ini (config/uwsgi-base.ini) sets all of
those; a release sets only how its app is loaded and run.
"""

from __future__ import annotations

import re

# Options whose value is a whole number (0 or more).
NUMBERS = {
    "processes",
    "workers",
    "threads",
    "harakiri",
    "max-requests",
    "max-requests-delta",
    "min-worker-lifetime",
    "max-worker-lifetime",
    "max-worker-lifetime-delta",
    "reload-on-rss",
    "reload-on-as",
    "evil-reload-on-rss",
    "worker-reload-mercy",
    "reload-mercy",
    "buffer-size",
    "post-buffering",
    "limit-post",
    "socket-timeout",
    "offload-threads",
    "cheaper",
    "cheaper-initial",
    "cheaper-step",
    "cheaper-overload",
    "log-slow",
    "log-big",
}
# Options that are on or off.
FLAGS = {
    "enable-threads",
    "single-interpreter",
    "thunder-lock",
    "harakiri-verbose",
    "skip-atexit",
    "skip-atexit-teardown",
    "disable-logging",
    "log-4xx",
    "log-5xx",
    "log-x-forwarded-for",
    "memory-report",
    "ignore-sigpipe",
    "ignore-write-errors",
    "disable-write-exception",
}
# Options whose value is free text (checked further below where needed).
TEXT = {
    "module",
    "callable",
    "wsgi-file",
    "env",
    "cheaper-algo",
    "logformat",
    "attach-daemon",
    "attach-daemon2",
    "smart-attach-daemon",
    "smart-attach-daemon2",
}
# Config logic on this host's roles (config/host.ini): `if-opt = eep-worker=yes` ...
# `endif =`, one level deep (uWSGI has no nesting), on the host's eep-* facts only.
LOGIC = {"if-opt", "if-not-opt"}
ENDIF = {"endif", "end-if"}
HOST_FACTS = {"eep-host", "eep-roles", "eep-web", "eep-worker", "eep-beat", "eep-broker"}
ALLOWED = NUMBERS | FLAGS | TEXT | LOGIC | ENDIF
# attach-daemon2 keys a release may use; uid/gid/ns_pid/legion are refused.
DAEMON_KEYS = {
    "cmd",
    "exec",
    "pidfile",
    "control",
    "daemonize",
    "touch",
    "stopsignal",
    "reloadsignal",
    "chdir",
    "freq",
    "max_throttle",
    "notifypid",
}
# Why some options a developer might reach for are refused (the rest: "not allowed").
REASONS = {
    "need-app": "a worker without its app would take the whole uWSGI down; eep already"
    " fails a release whose workers load no app",
    "die-on-term": "stopping and reloading are eep's (see the tree's README)",
    "py-autoreload": "restarts are explicit: `invoke restart`",
    "static-map": "nginx serves static files",
}
FLAG_VALUES = {"true", "false", "yes", "no", "on", "off", "1", "0"}
# uWSGI's magic values: @(file) reads a file, $(VAR) an environment variable, at parse
# time; their outcome differs between a reload and a cold start.
MAGIC = re.compile(r"[@$]\(")
OPTION = re.compile(r"^([A-Za-z0-9_.-]+)\s*=\s*(.*)$")


class RuleError(Exception):
    """The one line that names what a release may not say."""


class IniError(RuleError):
    def __str__(self) -> str:
        return f"uwsgi.ini: {self.args[0]}"


def _check_daemon2(value: str) -> None:
    for pair in value.split(","):
        key, sep, _ = pair.partition("=")
        if not sep:
            continue  # a comma inside the command (cmd=... is last by convention)
        if key.strip() not in DAEMON_KEYS:
            why = "attached processes run as the app user"
            raise IniError(f"attach-daemon2 key {key.strip()!r} is not allowed ({why})")


def _check_value(name: str, value: str) -> None:
    if MAGIC.search(value):
        raise IniError(f"{name}: @(...) and $(...) are not allowed (read at start-up only)")
    if name in NUMBERS and not value.isdigit():
        raise IniError(f"{name} must be a whole number, not {value!r}")
    if name in FLAGS and value.lower() not in FLAG_VALUES:
        raise IniError(f"{name} must be true or false, not {value!r}")
    if name == "wsgi-file" and (value.startswith("/") or ".." in value.split("/")):
        raise IniError("wsgi-file must be a path inside the release")
    if name == "attach-daemon2":
        _check_daemon2(value)
    if name == "env" and "=" not in value:
        raise IniError(f"env must be NAME=value, not {value!r}")
    if name in LOGIC and value.partition("=")[0] not in HOST_FACTS:
        known = ", ".join(sorted(HOST_FACTS))
        raise IniError(f"{name} may test this host's roles only ({known}), not {value!r}")


def _daemon2_fields(value: str) -> dict[str, str]:
    """key -> value of an attach-daemon2 line (a comma inside the command stays in it)."""
    fields: dict[str, str] = {}
    key = ""
    for pair in value.split(","):
        name, sep, rest = pair.partition("=")
        if sep and name.strip() in DAEMON_KEYS:
            key = name.strip()
            fields[key] = rest.strip()
        elif key:
            fields[key] += "," + pair
    return fields


def _runs_beat(words: list[str]) -> bool:
    """A celery beat, or a worker with an embedded one (-B)."""
    return "beat" in words or ("worker" in words and ("-B" in words or "--beat" in words))


def _check_beats(options: list[tuple[str, str]]) -> None:
    """Celery beat queues each scheduled job: two beats run every job twice. uWSGI starts
    a second one unless it writes the beat's pidfile itself (daemonize) and so starts
    one only while the pid there is not alive."""
    beats = 0
    for name, value in options:
        if "attach-daemon" not in name:
            continue
        fields = _daemon2_fields(value) if name.endswith("daemon2") else {"cmd": value}
        words = (fields.get("cmd") or fields.get("exec") or "").split()
        if not _runs_beat(words):
            continue
        beats += 1
        tracked = fields.get("pidfile") and fields.get("daemonize", "0") not in ("", "0")
        if name == "attach-daemon2" and "beat" in words and not tracked:
            raise IniError(
                "attach-daemon2 running celery beat needs pidfile=PATH and daemonize=1"
                " (else uWSGI may start a second beat beside one that runs)"
            )
    if beats > 1:
        raise IniError(f"{beats} lines run celery beat: at most one (two run every job twice)")


def check_ini(text: str) -> list[tuple[str, str]]:
    """The (option, value) pairs of a release's uwsgi.ini; IniError on anything refused."""
    options = []
    section = None
    opened = 0  # the line of the open if-opt block, or 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section != "uwsgi":
                raise IniError(f"line {number}: only the [uwsgi] section is read, not [{section}]")
            continue
        match = OPTION.match(line)
        if not match:
            raise IniError(f"line {number} is not `option = value`")
        if section is None:
            raise IniError(f"line {number}: options must follow [uwsgi]")
        name, value = match.group(1), match.group(2).strip()
        if name not in ALLOWED:
            why = REASONS.get(name, "set by eep (config/uwsgi-base.ini) or not supported")
            raise IniError(f"option {name!r} is not allowed: {why}")
        _check_value(name, value)
        if name in LOGIC and opened:
            raise IniError(f"line {number}: {name} inside the block opened on line {opened}")
        if name in ENDIF and not opened:
            raise IniError(f"line {number}: {name} without an if-opt above it")
        opened = number if name in LOGIC else 0 if name in ENDIF else opened
        options.append((name, value))
    if section is None:
        raise IniError("no [uwsgi] section")
    if opened:
        raise IniError(f"line {opened}: the block is never closed (endif =)")
    _check_beats(options)
    return options


def on_host(options: list[tuple[str, str]], facts: dict[str, str]) -> list[tuple[str, str]]:
    """The options uWSGI applies on a host whose config/host.ini says `facts`
    ({"eep-worker": "yes", ...}): those of the if-opt blocks whose test holds there."""
    applied, keep = [], True
    for name, value in options:
        if name in LOGIC:
            fact, sep, wanted = value.partition("=")
            found = facts.get(fact)
            holds = found is not None and (not sep or found == wanted)
            keep = holds if name == "if-opt" else not holds
        elif name in ENDIF:
            keep = True
        elif keep:
            applied.append((name, value))
    return applied


def runs_celery(options: list[tuple[str, str]]) -> dict[str, bool]:
    """Whether these options attach a Celery worker and a beat: {"worker": .., "beat": ..}."""
    found = {"worker": False, "beat": False}
    for name, value in options:
        if "attach-daemon" not in name:
            continue
        fields = _daemon2_fields(value) if name.endswith("daemon2") else {"cmd": value}
        words = (fields.get("cmd") or fields.get("exec") or "").split()
        if "celery" not in " ".join(words):
            continue
        found["beat"] = found["beat"] or _runs_beat(words)
        found["worker"] = found["worker"] or "worker" in words
    return found


def host_facts(text: str) -> dict[str, str]:
    """The eep-* facts of a host.ini (config/host.ini: `set-placeholder = eep-web=yes`
    lines), as `if-opt` sees them."""
    facts: dict[str, str] = {}
    for line in text.splitlines():
        match = OPTION.match(line.strip())
        if match and match.group(1) == "set-placeholder":
            name, _, value = match.group(2).partition("=")
            if name.strip() in HOST_FACTS:
                facts.setdefault(name.strip(), value.strip())  # the first one counts
    return facts


def check_for_host(options: list[tuple[str, str]], facts: dict[str, str]) -> None:
    """IniError when the release would run Celery where this host's roles say it must
    not: a worker on a host without the worker role, a beat anywhere but the beat host
    (two beats run every scheduled job twice)."""
    if not facts:
        return  # a host provisioned before roles existed: one host, every role
    runs = runs_celery(on_host(options, facts))
    host = facts.get("eep-host") or "this host"
    if runs["beat"] and facts.get("eep-beat") != "yes":
        raise IniError(
            f"celery beat would run on {host}, which is not the beat host:"
            " put its line in an `if-opt = eep-beat=yes` block"
        )
    if runs["worker"] and facts.get("eep-worker") != "yes":
        raise IniError(
            f"the Celery worker would run on {host}, which has no worker role:"
            " put its line in an `if-opt = eep-worker=yes` block"
        )


# -- requirements.txt -------------------------------------------------------------------
# pip reads what a requirements file names, as the deploy account: `-r /etc/passwd`
# would echo a line of that file into the deploy's error. Files it names must be
# inside the release; indexes and links must be http(s) URLs.
FILE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable"}
URL_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links"}
FLAG_OPTIONS = {"--pre", "--prefer-binary", "--require-hashes", "--no-index"}
VALUE_OPTIONS = {"--only-binary", "--no-binary", "--trusted-host"}
WEB = re.compile(r"^https?://", re.IGNORECASE)


class RequirementsError(RuleError):
    def __init__(self, where: str, number: int, problem: str) -> None:
        super().__init__(f"{where} line {number}: {problem}")


def _inside(path: str) -> bool:
    """A relative path that stays inside the release (the file it names is checked too)."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "~" not in path


def check_requirements(text: str, where: str = "requirements.txt") -> list[str]:
    """The release files this requirements text includes (-r, -c, -e); RequirementsError
    on an option or a path that reaches outside the release."""
    included = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("-"):
            reference = line.partition("@")[2].strip() if "@" in line else ""
            if reference and not WEB.match(reference) and not reference.startswith("git+https"):
                raise RequirementsError(where, number, "a direct reference must be an https URL")
            if line.startswith(("/", "~", "file:")) or ".." in line.split("/"):
                raise RequirementsError(where, number, "a path must be inside the release")
            continue
        option, _, value = line.replace("=", " ", 1).partition(" ")
        value = value.strip()
        if option in FILE_OPTIONS:
            if not _inside(value):
                raise RequirementsError(where, number, f"{option} must name a file in the release")
            if option in {"-r", "--requirement", "-c", "--constraint"}:
                included.append(value)
        elif option in URL_OPTIONS:
            if not WEB.match(value):
                raise RequirementsError(where, number, f"{option} must be an http(s) URL")
        elif option not in FLAG_OPTIONS | VALUE_OPTIONS:
            raise RequirementsError(where, number, f"option {option} is not allowed")
    return included
