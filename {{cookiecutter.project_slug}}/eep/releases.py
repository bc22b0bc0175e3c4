"""Releases on the host: run THERE, as the deploy account, by `invoke deploy` and friends.

    python3 releases.py --root /srv/app COMMAND [ARGS]
    python3 releases.py --root /srv/app serve     # one command per line of stdin

Standard library only (it runs on the host's own python3), prints one JSON object
on success and `error: <one line>` on stderr with exit 1 on failure. `serve` answers
each line (a JSON list of arguments) with one JSON line, {"ok": ...} or {"error":
...}: a session starts python once instead of once per command. Layout:

    <root>/releases/<id>/          one release (id = UTC time + version, sortable)
    <root>/releases/<id>/.venv     -> ../../venvs/<hash of requirements.txt>
    <root>/releases/<id>/.eep/     state: ready | failed (+ reason), activated (a line
                                   per activation: time, how, by whom)
    <root>/venvs/<hash>/           virtualenvs shared by releases with equal requirements
    <root>/current                 -> releases/<id>, switched by an atomic rename
    <root>/.deploy-lock/           present while a deploy runs; holder.json says who
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

# Uploaded beside this file: the rules for a release's uwsgi.ini, shared with `invoke deploy`.
from release_rules import RuleError, check_for_host, check_ini, check_requirements, host_facts

ROOT = Path("/")  # set from --root


class ReleaseError(Exception):
    """A one-line reason a release operation was refused or failed."""


def releases_dir() -> Path:
    return ROOT / "releases"


def release_dir(release_id: str) -> Path:
    if not release_id or "/" in release_id or release_id.startswith("."):
        raise ReleaseError(f"bad release id {release_id!r}")
    path = releases_dir() / release_id
    if not path.is_dir():
        raise ReleaseError(f"no release {release_id}")
    return path


def state_dir(release: Path) -> Path:
    path = release / ".eep"
    path.mkdir(mode=0o750, exist_ok=True)
    return path


def current_id() -> str | None:
    link = ROOT / "current"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- lock ------------------------------------------------------------------------------


def lock(who: str) -> dict:
    path = ROOT / ".deploy-lock"
    try:
        path.mkdir(mode=0o750)
    except FileExistsError:
        try:
            holder = json.loads((path / "holder.json").read_text())
        except (OSError, ValueError):
            holder = {"who": "unknown", "since": "unknown"}
        raise ReleaseError(
            f"another deploy holds the lock: {holder['who']} since {holder['since']}"
            " (if it is dead: invoke deploy --break-lock)"
        ) from None
    (path / "holder.json").write_text(json.dumps({"who": who, "since": now()}))
    return {"locked": True}


def unlock() -> dict:
    path = ROOT / ".deploy-lock"
    shutil.rmtree(path, ignore_errors=True)
    return {"unlocked": True}


# -- building a release -----------------------------------------------------------------


def mark(release: Path, state: str, reason: str = "") -> None:
    folder = state_dir(release)
    for old in ("ready", "failed"):
        (folder / old).unlink(missing_ok=True)
    (folder / state).write_text(reason or now())


def fail(release_id: str, reason: str) -> dict:
    release = releases_dir() / release_id
    release.mkdir(mode=0o750, exist_ok=True)
    mark(release, "failed", reason)
    return {"failed": release_id}


def _run(cmd: list[str], cwd: Path, what: str, env: dict | None = None) -> None:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env=env, check=False, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}"
        raise ReleaseError(f"{what} failed: {lines.splitlines()[-1]}")


def build_venv(release_id: str, python: str) -> dict:
    """Link the release to a virtualenv with its requirements, building it if none matches."""
    release = release_dir(release_id)
    check_release_requirements(release)
    requirements = (release / "requirements.txt").read_bytes()
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    key = hashlib.sha256(version.encode() + b"\0" + requirements).hexdigest()[:16]
    venvs = ROOT / "venvs"
    venvs.mkdir(mode=0o750, exist_ok=True)
    venv = venvs / key
    reused = (venv / ".complete").exists()
    if not reused:
        # Built in place; `.complete` is written last, so a half-built venv (pip failed,
        # connection lost) is never used and is rebuilt from scratch next time.
        shutil.rmtree(venv, ignore_errors=True)
        _run([python, "-m", "venv", str(venv)], release, "python3 -m venv")
        pip = [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q"]
        # The deploy account's home is root-owned: pip keeps its wheel cache here.
        env = {**os.environ, "PIP_CACHE_DIR": str(ROOT / ".cache" / "pip")}
        _run([*pip, "-r", str(release / "requirements.txt")], release, "pip install", env)
        no_group_write(venv)
        (venv / ".complete").write_text(now())
    link = release / ".venv"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"../../venvs/{key}")
    return {"venv": key, "reused": reused}


def no_group_write(top: Path) -> None:
    """Clear group and other write below `top`: whatever a package's build or install
    did despite the umask, the app (the group) cannot change its dependencies."""
    for folder, dirs, files in os.walk(top):
        for path in [folder, *(os.path.join(folder, name) for name in dirs + files)]:
            info = os.lstat(path)
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o022:
                os.chmod(path, stat.S_IMODE(info.st_mode) & ~0o022)


def host_roles() -> dict[str, str]:
    """This host's roles as provisioning stated them (config/host.ini, root-owned, in
    /etc/eep/<slug>: the app root and the config directory both end in the slug); {}
    on a host provisioned before roles existed."""
    try:
        return host_facts((Path("/etc/eep") / ROOT.name / "host.ini").read_text())
    except OSError:
        return {}


def check_release_ini(release_id: str) -> dict:
    """Refuse a uwsgi.ini that sets more than the options a release owns (release_rules.py),
    or that would run Celery where this host's roles say it must not."""
    path = release_dir(release_id) / "uwsgi.ini"
    try:
        options = check_ini(path.read_text(errors="replace"))
        check_for_host(options, host_roles())
    except RuleError as error:
        raise ReleaseError(str(error)) from None
    return {"options": len(options)}


def check_release_requirements(release: Path) -> None:
    """requirements.txt and every file it includes name nothing outside the release."""
    pending, seen = ["requirements.txt"], set()
    while pending:
        name = pending.pop()
        path = release / name
        if name in seen:
            continue
        seen.add(name)
        # Links were checked with the tarball: they cannot leave the release.
        if not path.is_file():
            raise ReleaseError(f"{name} is not a file in the release")
        try:
            pending += check_requirements(path.read_text(errors="replace"), name)
        except RuleError as error:
            raise ReleaseError(str(error)) from None


CONFIG_KEYS = {"build", "pre_activate", "health"}


def release_config(release_id: str) -> dict:
    """The release's eep.toml [release] table, checked: `build` and `pre_activate` are
    lists of shell commands, `health` a URL path (default "/")."""
    path = release_dir(release_id) / "eep.toml"
    try:
        table = tomllib.loads(path.read_text()).get("release", {}) if path.exists() else {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ReleaseError(f"eep.toml is not valid TOML: {error}") from None
    unknown = sorted(set(table) - CONFIG_KEYS)
    if not isinstance(table, dict) or unknown:
        raise ReleaseError(f"eep.toml: [release] has unknown keys: {', '.join(unknown)}")
    for key in ("build", "pre_activate"):
        steps = table.get(key, [])
        if not isinstance(steps, list) or not all(isinstance(s, str) and s for s in steps):
            raise ReleaseError(f"eep.toml: [release] {key} must be a list of command strings")
    health = table.get("health", "/")
    if not isinstance(health, str) or not health.startswith("/") or any(c in health for c in " \n"):
        raise ReleaseError("eep.toml: [release] health must be a URL path such as /health/")
    return {
        "build": table.get("build", []),
        "pre_activate": table.get("pre_activate", []),
        "health": health,
    }


def build(release_id: str) -> dict:
    """Run the release's build steps (eep.toml: [release] build) as the deploy account, in
    the release with its virtualenv: they may write the release (collectstatic), get no
    settings and no shared/. Then nothing in the release stays writable by the group."""
    release = release_dir(release_id)
    steps = release_config(release_id)["build"]
    env = {
        "PATH": f"{release / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(release / ".venv"),
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
    }
    for step in steps:
        _run(["/bin/sh", "-c", step], release, f"build step `{step}`", env=env)
    no_group_write(release)
    return {"build": steps}


def ready(release_id: str) -> dict:
    mark(release_dir(release_id), "ready")
    return {"ready": release_id}


# -- activation -------------------------------------------------------------------------


def activate(release_id: str, how: str = "activate", by: str = "") -> dict:
    """Point `current` at the release (atomic rename) and say how the app must reload."""
    release = release_dir(release_id)
    if not (release / ".eep" / "ready").exists():
        raise ReleaseError(f"release {release_id} is not ready (failed or still building)")
    previous = current_id()
    new_link = ROOT / ".current-new"
    if new_link.is_symlink():
        new_link.unlink()
    new_link.symlink_to(f"releases/{release_id}")
    os.replace(new_link, ROOT / "current")
    with (state_dir(release) / "activated").open("a") as handle:
        handle.write(" ".join(word for word in (now(), how, by) if word) + "\n")
    if previous is None or not (releases_dir() / previous).exists():
        reload = "full"  # uWSGI still runs the no-release page: it must re-read its ini
    else:
        old_ini = (releases_dir() / previous / "uwsgi.ini").read_bytes()
        reload = "workers" if old_ini == (release / "uwsgi.ini").read_bytes() else "full"
    return {"previous": previous, "current": release_id, "reload": reload}


def rollback_target(to: str) -> str:
    if to:
        release_dir(to)
        return to
    current = current_id()
    candidates = [r for r in list_releases() if r["state"] == "ready" and r["activated"]]
    older = [r for r in candidates if r["id"] < (current or "")]
    if not older:
        raise ReleaseError("no earlier activated release to roll back to")
    return older[-1]["id"]


# -- listing and cleanup ----------------------------------------------------------------


def list_releases() -> list[dict]:
    current = current_id()
    found = []
    for path in sorted(releases_dir().iterdir()) if releases_dir().is_dir() else []:
        if not path.is_dir() or path.name.startswith("."):
            continue
        state = path / ".eep"
        status = "failed" if (state / "failed").exists() else "ready"
        if status == "ready" and not (state / "ready").exists():
            status = "incomplete"
        history = (
            (state / "activated").read_text().splitlines() if (state / "activated").exists() else []
        )
        activated = [line.split()[0] for line in history if line.strip()]
        found.append(
            {
                "id": path.name,
                "version": path.name.partition("-")[2],
                "state": status,
                "reason": (state / "failed").read_text() if status == "failed" else "",
                "current": path.name == current,
                "activated": activated,
                # "deploy alice@laptop": how and by whom it was last activated
                "last_by": " ".join(history[-1].split()[1:]) if history else "",
            }
        )
    return found


def cleanup(keep: int) -> dict:
    """Keep the newest `keep` good releases (always current and the one before); drop the rest."""
    releases = list_releases()
    current = current_id()
    good = [r["id"] for r in releases if r["state"] == "ready"]
    keep_ids = set(good[-keep:])
    if current:
        keep_ids.add(current)
        activated = sorted(
            (r for r in releases if r["activated"] and r["id"] != current),
            key=lambda r: r["activated"][-1],
        )
        if activated:
            keep_ids.add(activated[-1]["id"])
    newest = releases[-1]["id"] if releases else None
    removed = []
    for release in releases:
        # The newest release stays even when it failed, so it can be inspected.
        if release["id"] in keep_ids or release["id"] == newest:
            continue
        shutil.rmtree(releases_dir() / release["id"])
        removed.append(release["id"])
    used = {
        os.readlink(path / ".venv").rsplit("/", 1)[-1]
        for path in releases_dir().iterdir()
        if (path / ".venv").is_symlink()
    }
    venvs = ROOT / "venvs"
    for venv in venvs.iterdir() if venvs.is_dir() else []:
        if venv.name not in used and not venv.name.startswith("."):
            shutil.rmtree(venv)
            removed.append(f"venv {venv.name}")
    return {"removed": removed}


# -- command line -----------------------------------------------------------------------


def http_status(path: str, host: str) -> dict:
    """The status nginx gives for `path` on the app's domain, asked from the host itself;
    X-Eep-Check lets it through maintenance mode (config/nginx.conf)."""
    headers = {"Host": host, "X-Eep-Check": "1"}
    request = urllib.request.Request("http://127.0.0.1" + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return {"status": response.status}
    except urllib.error.HTTPError as error:
        return {"status": error.code}
    except OSError:
        return {"status": 0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="releases.py")
    parser.add_argument("--root", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")
    sub.add_parser("lock").add_argument("who")
    sub.add_parser("unlock")
    sub.add_parser("fail").add_argument("release_id")
    sub.choices["fail"].add_argument("reason")
    sub.add_parser("venv").add_argument("release_id")
    sub.choices["venv"].add_argument("--python", default="/usr/bin/python3")
    sub.add_parser("config").add_argument("release_id")
    sub.add_parser("build").add_argument("release_id")
    sub.add_parser("ini").add_argument("release_id")
    sub.add_parser("ready").add_argument("release_id")
    sub.add_parser("activate").add_argument("release_id")
    sub.add_parser("rollback")
    for name in ("activate", "rollback"):
        sub.choices[name].add_argument("--how", default=name)
        sub.choices[name].add_argument("--by", default="")
    sub.choices["rollback"].add_argument("--to", default="")
    sub.add_parser("rollback-target").add_argument("--to", default="")
    sub.add_parser("list")
    sub.add_parser("cleanup").add_argument("--keep", type=int, required=True)
    sub.add_parser("roles")
    sub.add_parser("http-status").add_argument("path")
    sub.choices["http-status"].add_argument("host")
    return parser


def dispatch(args: argparse.Namespace) -> dict:
    handlers = {
        "lock": lambda: lock(args.who),
        "unlock": unlock,
        "fail": lambda: fail(args.release_id, args.reason),
        "venv": lambda: build_venv(args.release_id, args.python),
        "config": lambda: release_config(args.release_id),
        "build": lambda: build(args.release_id),
        "ini": lambda: check_release_ini(args.release_id),
        "ready": lambda: ready(args.release_id),
        "activate": lambda: activate(args.release_id, args.how, args.by),
        "rollback": lambda: activate(rollback_target(args.to), args.how, args.by),
        # What `rollback` would activate, without activating it (a fleet agrees on it first).
        "rollback-target": lambda: {"current": current_id(), "target": rollback_target(args.to)},
        "list": lambda: {"releases": list_releases()},
        "cleanup": lambda: cleanup(args.keep),
        "http-status": lambda: http_status(args.path, args.host),
        "roles": host_roles,
    }
    return handlers[args.command]()


def serve(parser: argparse.ArgumentParser, root: str) -> int:
    for line in sys.stdin:
        answer: dict[str, object]
        try:
            args = parser.parse_args(["--root", root, *json.loads(line)])
            if args.command == "serve":
                raise ReleaseError("serve cannot be nested")
            answer = {"ok": dispatch(args)}
        except (ReleaseError, OSError) as error:
            answer = {"error": str(error)}
        except (SystemExit, ValueError, TypeError):
            answer = {"error": f"not a command: {line.strip()[:200]}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


def main(argv: list[str]) -> int:
    global ROOT
    parser = build_parser()
    args = parser.parse_args(argv)
    ROOT = Path(args.root)
    # What the agent, venv builds and release steps create: nothing for the group to write.
    os.umask(0o027)
    if args.command == "serve":
        return serve(parser, args.root)
    try:
        print(json.dumps(dispatch(args)))
    except (ReleaseError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
