"""`invoke deploy`, `activate`, `rollback`, `releases`: run as the deploy account, never root.

The work on the host is done by eep/releases.py and eep/tarball.py, uploaded at the
start of each command and run there with the host's python3 (eep/session.py); this
module builds and checks releases, and eep/serving.py makes one serve.
"""

from __future__ import annotations

import re
import shlex
import tarfile
import time
from pathlib import Path

from eep import app, backups
from eep.manifest import TREE
from eep.release_rules import RuleError, check_ini, check_requirements
from eep.remote import HostError
from eep.report import say
from eep.serving import activate_release
from eep.session import AGENT_DIR, INI_MODE, UPLOAD_MODE, Session
from eep.tarball import ReleaseInfo, TarballError, inspect

SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")


def version_of(filename: str) -> str:
    """'app-1.2.tar.gz' -> '1.2'; the part after the name, made safe for a directory name."""
    stem = next((filename[: -len(s)] for s in SUFFIXES if filename.endswith(s)), filename)
    match = re.search(r"-(v?\d[^/]*)$", stem)
    version = match.group(1) if match else stem
    return re.sub(r"[^A-Za-z0-9._-]", "_", version)[:40] or "release"


def _build(
    session: Session, tarball: Path, release_id: str, info: ReleaseInfo, requirements: str
) -> None:
    """Everything before activation, on one host: prepare, the release steps, health."""
    config = prepare(session, tarball, release_id, info, requirements)
    run_steps(session, release_id, config)
    check_health(session, release_id, config)


def prepare(
    session: Session, tarball: Path, release_id: str, info: ReleaseInfo, requirements: str
) -> dict:
    """Upload, extract, virtualenv, build and load checks: what touches this host only
    (a fleet does it on every host at once). Returns the release's eep.toml settings."""
    releases = f"{app.APP_ROOT}/releases"
    upload = f"{AGENT_DIR}/upload-{release_id}.tar"
    with session.step("upload", f"{tarball.name} ({tarball.stat().st_size // 1024} KiB)"):
        session.remote.put(str(tarball), upload, mode=UPLOAD_MODE)
    try:
        with session.step("extract"):
            args = [f"{AGENT_DIR}/tarball.py", "extract", upload, f"{releases}/{release_id}"]
            result = session.remote.run(
                "umask 027 && python3 " + shlex.join([*args, app.WSGI_MODULE]), check=False
            )
            if result.exited != 0:
                lines = result.stderr.strip().splitlines() or ["extract failed"]
                raise HostError("refused on the host: " + lines[-1].removeprefix("error: "))
    finally:
        session.remote.run(f"rm -f {shlex.quote(upload)}")
    if not info.has_uwsgi_ini:
        # The release brings no uwsgi.ini: it runs with this tree's, uploaded into .eep
        # (where the app cannot open it while its mode is set), then moved in.
        staged = f"{AGENT_DIR}/uwsgi.ini"
        session.remote.put(str(TREE / "uwsgi.ini"), staged, mode=INI_MODE)
        session.remote.run(f"mv -T {staged} {shlex.quote(f'{releases}/{release_id}/uwsgi.ini')}")
    session.agent("ini", release_id)  # before minutes of pip: the release's uwsgi.ini
    with session.step("venv", running=f"pip install -r requirements.txt{_listing(requirements)}"):
        venv = session.agent("venv", release_id)
    session.say("", f"virtualenv {venv['venv']} {'reused' if venv['reused'] else 'built'}")
    config = session.agent("config", release_id)
    if config["build"]:
        with session.step("build", running=" && ".join(config["build"])[:60]) as details:
            details.append(f"as {app.DEPLOY_USER}: " + "; ".join(config["build"]))
            session.agent("build", release_id)
    request = {"release": release_id}
    with session.step("checks") as details:
        session.as_app("check", request)
        details.append(f"app{' and Celery' if app.USE_CELERY else ''} load as {app.RUNTIME_USER}")
    return config


def run_steps(session: Session, release_id: str, config: dict) -> None:
    """The release's pre_activate steps (migrations): they change what every host
    shares, so a fleet runs them once, on one host."""
    request = {"release": release_id}
    if config["pre_activate"]:
        # Migrations may change the database: a backup first, named if a step fails.
        taken = backups.take(session, f"before-{release_id}") if app.DATABASE != "none" else ""
        try:
            with session.step("steps", running=" && ".join(config["pre_activate"])[:60]) as details:
                ran = session.as_app("steps", request)["steps"]
                details.append(f"as {app.RUNTIME_USER}: " + "; ".join(ran))
        except HostError as error:
            if not taken:
                raise
            raise HostError(
                f"{error}; the backup taken just before: {taken}"
                f" (`invoke restore {taken} --yes` brings it back)"
            ) from None


def check_health(session: Session, release_id: str, config: dict) -> None:
    """The release's health call (after its steps), then mark it ready to activate."""
    request = {"release": release_id}
    with session.step("health") as details:
        answer = session.as_app(
            "health", {**request, "path": config["health"], "host": session.host_header}
        )
        details.append(f"GET {config['health']} (Host: {session.host_header}): {answer['status']}")
    session.agent("ready", release_id)


def _listing(requirements: str) -> str:
    """': flask, celery[redis], ...': what pip installs, for the progress line."""
    names = [re.split(r"[<>=!~ ;@]", line.strip())[0] for line in requirements.splitlines()]
    names = [name for name in names if name and not name.startswith(("#", "-"))]
    return f": {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}" if names else ""


def _release_files(tarball: Path, prefix: str, *names: str) -> dict[str, str | None]:
    """The text of files at the release's root, read from the checked tarball in one
    pass; None for a missing file or a link (the host checks the file it points to)."""
    wanted = {prefix + name: name for name in names}
    found: dict[str, str | None] = dict.fromkeys(names)
    with tarfile.open(tarball) as tar:
        for member in tar:
            name = wanted.get(member.name)
            data = tar.extractfile(member) if name and member.isfile() else None
            if name:
                # The last member of a name wins, as it does when the host extracts.
                found[name] = data.read().decode("utf-8", "replace") if data else None
    return found


def check_tarball(tarball: str) -> tuple[Path, ReleaseInfo, str]:
    """The release tarball checked here, before any host is touched: its layout, its
    uwsgi.ini and requirements.txt against the release rules. Returns the path, what
    inspect() found and the requirements' text."""
    path = Path(tarball)
    if not path.is_file():
        raise HostError(f"no release tarball at {tarball}")
    try:
        info = inspect(str(path), app.WSGI_MODULE)
        texts = _release_files(path, info.root_prefix, "uwsgi.ini", "requirements.txt")
        ini = texts["uwsgi.ini"] if info.has_uwsgi_ini else (TREE / "uwsgi.ini").read_text()
        requirements = texts["requirements.txt"]
        # Links, and files requirements.txt includes, are checked on the host.
        for check, text in ((check_ini, ini), (check_requirements, requirements)):
            if text is not None:
                check(text)
    except (TarballError, RuleError) as error:
        raise HostError(f"refused {path.name}: {error}") from None
    return path, info, requirements or ""


def new_release_id(path: Path) -> str:
    """UTC time + version: sortable, and the same on every host of one deploy."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + version_of(path.name)


def deploy(
    tarball: str,
    spec: str,
    *,
    identity: str = "",
    stage: bool = False,
    break_lock: bool = False,
    reload: str = "chain",
) -> str:
    path, info, requirements = check_tarball(tarball)
    release_id = new_release_id(path)
    started = time.monotonic()
    with Session(spec, identity) as session:
        with session.locked(break_lock=break_lock):
            try:
                _build(session, path, release_id, info, requirements)
            except HostError as error:
                session.agent("fail", release_id, str(error))
                raise HostError(
                    f"release {release_id} failed, nothing activated: {error}"
                ) from None
            if stage:
                session.say(
                    "staged", f"{release_id}: activate it with `invoke activate {release_id}`"
                )
            else:
                activate_release(session, ["activate", release_id], reload, how="deploy")
            removed = session.agent("cleanup", "--keep", str(app.KEEP_RELEASES))["removed"]
            if removed:
                session.say("cleanup", ", ".join(removed))
        session.summary(f"{'staged' if stage else 'deployed'} {release_id}", started)
    return release_id


def activate(release_id: str, spec: str, *, identity: str = "", reload: str = "chain") -> None:
    with Session(spec, identity) as session, session.locked():
        activate_release(session, ["activate", release_id], reload, how="activate")


def rollback(
    spec: str, *, to: str = "", identity: str = "", break_lock: bool = False, reload: str = "all"
) -> str:
    started = time.monotonic()
    with Session(spec, identity) as session:
        with session.locked(break_lock=break_lock):
            target = activate_release(session, ["rollback", "--to", to], reload, how="rollback")
        session.summary(f"rolled back to {target}", started)
    return target


def releases(spec: str, *, identity: str = "") -> list[dict]:
    with Session(spec, identity) as session:
        found = session.agent("list")["releases"]
    say(f"{'':2}{'release':<34} {'state':<10} {'activated':<22} {'how, by':<28} reason")
    for release in found:
        mark = "* " if release["current"] else "  "
        last = release["activated"][-1] if release["activated"] else "-"
        by = release.get("last_by") or "-"
        say(
            f"{mark}{release['id']:<34} {release['state']:<10} {last:<22} {by:<28}"
            f" {release['reason']}"
        )
    return found
