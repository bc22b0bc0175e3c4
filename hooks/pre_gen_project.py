"""Refuse bad template answers before cookiecutter writes anything.

Each answer reaches this script as JSON data (never as code), is checked by one
small function, and every refused field gets one line on stderr:

    ERROR: <field>: <what is wrong>

The script exits 1 if any field is refused. It is importable (the Jinja
expression only lives inside the string literal below), so the validators are
unit-tested directly.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import sys
from collections.abc import Callable
from pathlib import Path

# Names a slug may not take: system accounts and groups of Debian/Ubuntu (some guard
# keys or devices: ssl-cert, libvirt), the services eep itself configures, directory
# names Debian uses in /run, /var/log and /var/lib, and names that supervisorctl or
# nginx read specially. The slug becomes a user, a group and those directories. This
# list only catches the obvious: provisioning refuses any name the host already uses.
RESERVED_NAMES = frozenset(
    """
    root daemon bin sys sync games man lp mail news uucp proxy www-data backup
    list irc gnats nobody nogroup adm tty disk kmem dialout fax voice cdrom
    floppy tape sudo audio dip operator src shadow utmp video sasl plugdev staff
    users input sgx kvm render netdev crontab messagebus sshd ssh _apt
    systemd-journal systemd-network systemd-resolve systemd-timesync
    systemd-coredump polkitd supervisor nginx redis postgres mysql memcache
    uwsgi celery admin wheel ubuntu debian lxd docker eep deploy git www
    ssl-cert lpadmin libvirt libvirt-qemu wireshark bluetooth scanner sambashare
    chrony ntp dnsmasq avahi colord pulse rtkit tss uuidd dpkg
    lock user shm log journal apt private installer sysstat unattended-upgrades
    all default
    """.split()
)
# Names eep derives from a slug: a slug ending so would shadow another app's.
DERIVED_SUFFIXES = {"-deploy": "deploy account", "-redis": "broker program"}

# A slug leaves room for "<slug>-deploy" within Linux's 32-character limit.
SLUG_MAX = 25
SLUG_RE = re.compile(r"[a-z][a-z0-9_-]*")
LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
WSGI_RE = re.compile(rf"{IDENT}(\.{IDENT})*:{IDENT}")
CELERY_APP_RE = re.compile(rf"{IDENT}(\.{IDENT})*(:{IDENT})?")
PATH_RE = re.compile(r"(/[A-Za-z0-9_][A-Za-z0-9._-]*)+")
SYSTEM_DIRS = ("/tmp", "/var/tmp", "/proc", "/sys", "/dev", "/run", "/var/run")
SYSTEM_DIRS += ("/etc", "/usr", "/bin", "/sbin", "/lib", "/boot", "/root", "/home")
SYSTEM_DIRS += ("/var", "/lib32", "/lib64", "/libx32", "/media", "/mnt", "/snap")
# Known-safe places under those: nginx's own (Debian's /var/www).
SAFE_DIRS = ("/var/www",)
CHOICES = {
    "python_version": ("3.11", "3.12", "3.13"),
    "use_celery": ("y", "n"),
    "celery_beat": ("n", "y"),
    "tls": ("none", "self-signed", "acme"),
    "hsts": ("n", "y"),
    "database": ("none", "postgresql"),
}
# With database=postgresql the slug also names a PostgreSQL role and database: PostgreSQL
# refuses a role called so (public, none, pg_*), or the database already exists.
POSTGRESQL_RESERVED = frozenset({"public", "none", "template0", "template1"})
RANGES = {
    "keep_releases": (2, 50),
    "keep_backups": (1, 1000),
    "uwsgi_processes": (1, 64),
    "uwsgi_threads": (1, 64),
    "uwsgi_harakiri": (1, 3600),
    "uwsgi_max_requests": (0, 1_000_000),
    "uwsgi_listen": (1, 65535),
}
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
RSA_MIN_BITS = 2048
# An empty deploy_ssh_key answer takes the first of these in ~/.ssh: public keys only,
# in the order OpenSSH's client tries them (newest key type first).
DEFAULT_KEY_FILES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


class Refused(ValueError):
    """An answer that cannot be used; the message is shown to the user."""


def _no_control_chars(value: str) -> None:
    bad = [c for c in value if ord(c) < 32 or ord(c) == 127 or c in "\x85\u2028\u2029"]
    if bad:
        raise Refused(f"contains a control character ({bad[0]!r}); use plain text")


def check_project_name(value: str) -> None:
    if not value.strip():
        raise Refused("must not be empty")
    if len(value) > 100:
        raise Refused("at most 100 characters")
    _no_control_chars(value)


def check_project_slug(value: str) -> None:
    if not SLUG_RE.fullmatch(value):
        raise Refused(
            f"{value!r} is not a valid user name: lowercase letters, digits, '_' and '-',"
            " starting with a letter"
        )
    if len(value) > SLUG_MAX:
        raise Refused(f"at most {SLUG_MAX} characters (room for '<slug>-deploy')")
    if value in RESERVED_NAMES or value.startswith("systemd-"):
        raise Refused(f"{value!r} is a reserved system name; pick another")
    for suffix, what in DERIVED_SUFFIXES.items():
        if value.endswith(suffix):
            raise Refused(f"must not end in {suffix!r} (that suffix names an app's {what})")


def check_postgresql_name(value: str) -> None:
    if value in POSTGRESQL_RESERVED or value.startswith("pg_"):
        raise Refused(f"{value!r} is reserved by PostgreSQL (database=postgresql); pick another")


def domain_names(value: str) -> list[str]:
    """The host names of the domain answer (separated by spaces or commas)."""
    return [name for name in re.split(r"[\s,]+", value.strip()) if name]


def check_domain(value: str) -> None:
    names = domain_names(value)
    if not names:
        raise Refused("give at least one host name")
    for name in names:
        host = name[2:] if name.startswith("*.") else name
        labels = host.split(".")
        if len(host) > 253 or not all(LABEL_RE.fullmatch(label) for label in labels):
            raise Refused(f"{name!r} is not a valid host name")


def check_wsgi_module(value: str) -> None:
    if not WSGI_RE.fullmatch(value):
        raise Refused(f"{value!r} is not of the form package.module:callable")


def check_celery_app(value: str) -> None:
    if not CELERY_APP_RE.fullmatch(value):
        raise Refused(f"{value!r} is not a dotted module path (package.module[:app])")


def _within(path: str, dirs: tuple[str, ...]) -> bool:
    return path in dirs or path.startswith(tuple(d + "/" for d in dirs))


def check_web_root(value: str) -> None:
    path = value.rstrip("/")
    if path == "" or _within(path, SYSTEM_DIRS) and not _within(path, SAFE_DIRS):
        raise Refused(f"{value!r} is a system directory; use e.g. /srv or /var/www")
    if not PATH_RE.fullmatch(path) or "/." in path:
        raise Refused(f"{value!r} must be an absolute path of plain names (no '.', '..')")


def _ssh_strings(blob: bytes) -> list[bytes]:
    """Split an SSH wire-format blob into its length-prefixed strings."""
    parts, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise Refused("the key data is truncated")
        (length,) = struct.unpack(">I", blob[offset : offset + 4])
        offset += 4
        if offset + length > len(blob):
            raise Refused("the key data is truncated")
        parts.append(blob[offset : offset + length])
        offset += length
    return parts


def check_deploy_ssh_key(value: str) -> None:
    if not value.strip():
        raise Refused(
            "required: paste the developer's OpenSSH public key; none in ~/.ssh either"
            f" ({', '.join(DEFAULT_KEY_FILES)})"
        )
    if "PRIVATE KEY" in value:
        raise Refused("this is a private key: give the public one (the .pub file)")
    _no_control_chars(value)
    fields = value.strip().split(" ", 2)
    if len(fields) < 2 or fields[0] not in SSH_KEY_TYPES:
        raise Refused(
            f"not an OpenSSH public key: must start with one of {', '.join(SSH_KEY_TYPES)}"
        )
    key_type, data = fields[0], fields[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("the key data is not valid base64") from None
    parts = _ssh_strings(blob)
    if not parts or parts[0].decode("ascii", "replace") != key_type:
        raise Refused(f"the key data does not hold a {key_type} key")
    if key_type == "ssh-ed25519" and (len(parts) != 2 or len(parts[1]) != 32):
        raise Refused("malformed ssh-ed25519 key")
    if key_type == "ssh-rsa":
        if len(parts) != 3:
            raise Refused("malformed ssh-rsa key")
        bits = int.from_bytes(parts[2], "big").bit_length()
        if bits < RSA_MIN_BITS:
            raise Refused(
                f"RSA key of {bits} bits is too weak; use ed25519 or RSA >= {RSA_MIN_BITS}"
            )
    if key_type.startswith("ecdsa-") and (len(parts) != 3 or parts[1] != key_type[11:].encode()):
        raise Refused(f"malformed {key_type} key")


def _check_int(name: str) -> Callable[[str], None]:
    low, high = RANGES[name]

    def check(value: str) -> None:
        if not re.fullmatch(r"[0-9]{1,9}", str(value)) or not low <= int(value) <= high:
            raise Refused(f"{value!r} must be a whole number from {low} to {high}")

    return check


def _check_choice(name: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in CHOICES[name]:
            raise Refused(f"{value!r} must be one of {', '.join(CHOICES[name])}")

    return check


# tls=acme: the ACME directory is fetched over HTTPS (verified), the contact is an address.
ACME_URL_RE = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


def check_acme_directory(value: str) -> None:
    if not ACME_URL_RE.fullmatch(value):
        raise Refused(f"{value!r} is not an https:// URL (the ACME server's directory)")


def check_acme_email(value: str) -> None:
    if value and not EMAIL_RE.fullmatch(value):
        raise Refused(f"{value!r} is not an email address (or leave it empty)")


CHECKS: dict[str, Callable[[str], None]] = {
    "project_name": check_project_name,
    "project_slug": check_project_slug,
    "domain": check_domain,
    "wsgi_module": check_wsgi_module,
    "celery_app": check_celery_app,
    "deploy_ssh_key": check_deploy_ssh_key,
    "web_root": check_web_root,
    "acme_directory": check_acme_directory,
    "acme_email": check_acme_email,
    **{name: _check_int(name) for name in RANGES},
    **{name: _check_choice(name) for name in CHOICES},
}


def validate(answers: dict[str, object]) -> list[str]:
    """Return one 'field: problem' line per refused answer (empty: all good)."""
    errors = []
    for field, check in CHECKS.items():
        if field == "celery_app" and answers.get("use_celery") != "y":
            continue
        if field.startswith("acme_") and answers.get("tls") != "acme":
            continue
        value = answers.get(field, "")
        try:
            if not isinstance(value, str):
                raise Refused("must be text")
            check(value)
            if field == "project_slug" and answers.get("database") == "postgresql":
                check_postgresql_name(value)
        except Refused as problem:
            errors.append(f"{field}: {problem}")
    errors += check_beat_needs_celery(answers)
    return errors


def check_beat_needs_celery(answers: dict[str, object]) -> list[str]:
    """Beat only sends jobs to the queue: without a worker (and its broker) nothing runs them."""
    if answers.get("celery_beat") == "y" and answers.get("use_celery") != "y":
        return ["celery_beat: needs use_celery=y (beat only queues jobs; the worker runs them)"]
    return []


def default_public_key(home: Path) -> Path | None:
    """The developer's default public key file (the first of DEFAULT_KEY_FILES), if any.

    The post-generation hook writes the same file into config/authorized_keys (a
    pre-generation hook cannot change the answers).
    """
    for name in DEFAULT_KEY_FILES:
        if (home / ".ssh" / name).is_file():
            return home / ".ssh" / name
    return None


def main(answers: dict[str, object], home: Path) -> int:
    key_file = None
    if answers.get("deploy_ssh_key") == "":
        key_file = default_public_key(home)
    if key_file:
        answers = {**answers, "deploy_ssh_key": key_file.read_text(errors="replace").strip()}
    errors = validate(answers)
    for line in errors:
        if key_file and line.startswith("deploy_ssh_key: "):
            # Name the file; never print its content (it might be a private key).
            line = line.replace("deploy_ssh_key: ", f"deploy_ssh_key: {key_file}: ", 1)
        print(f"ERROR: {line}", file=sys.stderr)
    if key_file and not errors:
        print(f"deploy_ssh_key: none given, using {key_file}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(json.loads(r"""{{ cookiecutter | tojson }}"""), Path.home()))
