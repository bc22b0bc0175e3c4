"""`invoke deploy`, `activate`, `rollback`, `releases`: run as the deploy account, never root.

The work on the host is done by eep/releases.py and eep/tarball.py, uploaded at the
start of each command and run there with the host's python3; this module drives
them over one SSH connection and reports each step with its duration.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import shlex
import socket
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from eep import app
from eep.manifest import TREE
from eep.release_rules import RuleError, check_ini, check_requirements
from eep.remote import Conversation, HostError, Remote, Target
from eep.report import say
from eep.tarball import TarballError, inspect

AGENT_DIR = f"{app.APP_ROOT}/.eep"
HERE = Path(__file__).resolve().parent
CTL = "sudo -n /usr/bin/supervisorctl -c /etc/supervisor/supervisord.conf"
UWSGI_LOG = f"{app.LOG_DIR}/uwsgi.log"
# Reloads the app as the app user ("chain", "all", "full" or "wait"; see config/reload.py).
RELOAD = f"sudo -n -u {app.RUNTIME_USER} {app.CONF_DIR}/reload"
RELOAD_DOWN = 3  # its exit status when no uWSGI master runs
AGENT_FILES = ("releases.py", "tarball.py", "release_rules.py")
# Modes of what deploy uploads, never the local file's: the app (group) writes none.
AGENT_MODE, UPLOAD_MODE, INI_MODE = 0o600, 0o600, 0o640
SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")


def version_of(filename: str) -> str:
    """'app-1.2.tar.gz' -> '1.2'; the part after the name, made safe for a directory name."""
    stem = next((filename[: -len(s)] for s in SUFFIXES if filename.endswith(s)), filename)
    match = re.search(r"-(v?\d[^/]*)$", stem)
    version = match.group(1) if match else stem
    return re.sub(r"[^A-Za-z0-9._-]", "_", version)[:40] or "release"


class Session:
    """One SSH connection as the deploy account, with the release tools uploaded."""

    def __init__(self, spec: str, identity: str) -> None:
        self.target = Target.parse(spec, default_user=app.DEPLOY_USER)
        self.remote = Remote(self.target, identity=identity, become_root=False)
        self.timings: dict[str, float] = {}
        self.agent_process: Conversation | None = None

    def __enter__(self) -> Self:
        self.remote.open()
        # Upload the release tools only when the host's copies differ (one round trip).
        sums = "".join(
            f"{hashlib.sha256((HERE / name).read_bytes()).hexdigest()}  {name}\n"
            for name in AGENT_FILES
        )
        # .eep is the deploy account's alone (0700, from its mkdir on): the agent it runs
        # and the tarballs it extracts sit there, out of the app's reach.
        same = self.remote.run(
            f"mkdir -p -m 700 {AGENT_DIR} && chmod 700 {AGENT_DIR} && cd {AGENT_DIR} && "
            f"printf %s {shlex.quote(sums)} | sha256sum --check --status && "
            f'test -z "$(find {" ".join(AGENT_FILES)} ! -perm {AGENT_MODE:o})"',
            check=False,
        )
        if same.exited != 0:
            for name in AGENT_FILES:
                self.remote.put(str(HERE / name), f"{AGENT_DIR}/{name}", mode=AGENT_MODE)
        # One python process on the host answers every agent() call of the session.
        self.agent_process = self.remote.converse(
            f"python3 {AGENT_DIR}/releases.py --root {app.APP_ROOT} serve"
        )
        return self

    def __exit__(self, *exc) -> None:
        if self.agent_process:
            self.agent_process.close()
        self.remote.close()

    def say(self, status: str, message: str) -> None:
        say(f"[{self.target}] {status:<10} {message}")

    def summary(self, what: str, started: float) -> None:
        """The last line of a command: what it did, in how long, and its steps' times."""
        parts = ", ".join(f"{name} {secs:.1f} s" for name, secs in self.timings.items())
        say(f"[{self.target}] {what} in {time.monotonic() - started:.1f} s ({parts})")

    @contextmanager
    def step(self, name: str, detail: str = ""):
        """Time the `with` body and report it; words appended to the list it gives
        are added to the line."""
        started = time.monotonic()
        details = [detail] if detail else []
        yield details
        self.timings[name] = time.monotonic() - started
        self.say(name, f"{self.timings[name]:.1f} s" + "".join(f"  {d}" for d in details))

    @contextmanager
    def locked(self, *, break_lock: bool = False):
        """Hold the host's deploy lock for the `with` body (refused if someone holds it)."""
        if break_lock:
            self.agent("unlock")
            self.say("lock", "broken on request")
        self.agent("lock", _lock_holder())
        try:
            yield
        finally:
            self.agent("unlock")

    def agent(self, *args: str) -> dict:
        """Run one command of eep/releases.py on the host; its error as a HostError."""
        line = self.agent_process.ask(json.dumps(args))
        if not line:
            raise HostError(f"the release agent stopped: {self.agent_process.last_error()}")
        answer = json.loads(line)
        if "error" in answer:
            raise HostError(answer["error"])
        return answer["ok"]

    def http_status(self, path: str = "/") -> int:
        """Status nginx gives for `path` on the app's first domain, asked from the host itself."""
        return self.agent("http-status", path, app.DOMAINS[0].replace("*.", "www."))["status"]


def _lock_holder() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def touch_trigger(session: Session) -> None:
    """Restart the attached daemons that name the trigger in touch= (the Celery worker)."""
    session.remote.run(f"date -u +%FT%TZ > {app.DEPLOY_TRIGGER}")


class UwsgiDown(HostError):
    """No uWSGI master runs (stopped, or it exited): only supervisor can start one."""


def reload_app(session: Session, mode: str) -> None:
    """Run the reload script: "chain" / "all" (the web workers, one at a time or all at
    once), "full" (the master too, re-reading its ini) or "wait" (signal nothing); it
    returns once every worker serves `current` with the app loaded."""
    result = session.remote.run(f"{RELOAD} {shlex.quote(mode)}", check=False)
    if result.exited != 0:
        lines = result.stderr.strip().splitlines() or [f"reload failed (exit {result.exited})"]
        error = lines[-1].removeprefix("error: ")
        raise UwsgiDown(error) if result.exited == RELOAD_DOWN else HostError(error)
    if mode == "full":
        # The new master adopted the old Celery worker by its pidfile: renew it. The
        # master looks at touch files once per loop, at least once a second; wait for
        # that, so the old worker takes no task once this command has returned.
        touch_trigger(session)
        time.sleep(1.2)


def program_state(session: Session) -> str:
    """supervisor's state of the uWSGI program: RUNNING, STARTING, BACKOFF, FATAL, ..."""
    out = session.remote.run(f"{CTL} status {app.SLUG}", check=False).stdout.split()
    return out[1] if len(out) > 1 else "UNKNOWN"


def start_app(session: Session, timeout: float = 60) -> None:
    """Have supervisor run uWSGI on `current` and wait until every worker serves.

    A master that exited is restarted by supervisor itself (a few times, then FATAL):
    one it is restarting is waited for, not stopped (a uWSGI stopped while it starts
    ignores the signal until supervisor kills it); a stopped or given-up one is started.
    """
    deadline = time.monotonic() + timeout
    why = "it does not stay up"
    while time.monotonic() < deadline:
        state = program_state(session)
        if state == "RUNNING":
            try:
                reload_app(session, "wait")
                return
            except UwsgiDown as error:  # it exited meanwhile: supervisor restarts it
                why = str(error)
        elif state in ("STOPPED", "EXITED", "FATAL"):
            session.remote.run(f"{CTL} start {app.SLUG}", check=False)
            continue
        time.sleep(0.5)
    raise HostError(f"supervisor could not start {app.SLUG}: {why}")


def serve(session: Session, mode: str, *, start_if_failing: bool = False) -> str:
    """Make uWSGI serve `current` and nginx answer below 500: a graceful reload `mode`
    when uWSGI runs, a start when it does not. `start_if_failing`: also start it over
    when the reload fails (going back to a good release after a bad one, which may
    have left uWSGI half-up or restarting). Returns what was done."""
    try:
        reload_app(session, mode)
        done = mode
    except UwsgiDown:
        start_app(session)
        done = "started (uWSGI was not running)"
    except HostError:
        if not start_if_failing:
            raise
        start_app(session)
        done = "started over (the reload failed)"
    deadline = time.monotonic() + 60
    while (status := session.http_status()) >= 500 or status == 0:
        if time.monotonic() > deadline:
            raise HostError(f"the app answers {status or 'nothing'}; see {UWSGI_LOG}")
        time.sleep(0.5)
    return done


def say_celery_restarts(session: Session) -> None:
    """The trigger was touched: the worker restarts in the background, not before this returns."""
    if app.USE_CELERY:
        session.say("", "the Celery worker restarts once its running tasks are done")


def activate_release(session: Session, command: list[str], mode: str, *, undo: bool = True) -> str:
    """Switch `current` (the agent's `activate` or `rollback`), reload; if the app then
    fails, go back to the release that served before (`undo`). Without `undo` the
    release is a known-good one brought back: started over if a reload fails."""
    with session.step("activate") as details:
        result = session.agent(*command, "--trigger", app.DEPLOY_TRIGGER)
        details.append(result["current"])
    release_id = result["current"]
    kind = mode if result["reload"] == "workers" else "full"
    try:
        with session.step("reload") as details:
            details.append(serve(session, kind, start_if_failing=not undo))
    except HostError as error:
        previous = result["previous"]
        if not undo or previous is None:
            raise HostError(f"{release_id} is active but failing: {error}") from None
        # Like a failed health check elsewhere: the release that served before comes
        # back, all workers at once (the failing release serves nothing useful).
        session.say("failed", f"{release_id}: {error}")
        session.agent("fail", release_id, f"failed after activation: {error}")
        activate_release(session, ["activate", previous], "all", undo=False)
        raise HostError(
            f"{release_id} failed after activation ({error}); {previous} serves again"
        ) from None
    say_celery_restarts(session)
    return release_id


def _build(session: Session, tarball: Path, release_id: str, has_ini: bool) -> None:
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
    if not has_ini:
        # The release brings no uwsgi.ini: it runs with this tree's, uploaded into .eep
        # (where the app cannot open it while its mode is set), then moved in.
        staged = f"{AGENT_DIR}/uwsgi.ini"
        session.remote.put(str(TREE / "uwsgi.ini"), staged, mode=INI_MODE)
        session.remote.run(f"mv -T {staged} {shlex.quote(f'{releases}/{release_id}/uwsgi.ini')}")
    session.agent("ini", release_id)  # before minutes of pip: the release's uwsgi.ini
    with session.step("venv"):
        venv = session.agent("venv", release_id)
    session.say("", f"virtualenv {venv['venv']} {'reused' if venv['reused'] else 'built'}")
    with session.step("checks"):
        celery = ["--celery", app.CELERY_APP] if app.USE_CELERY else []
        session.agent("smoke", release_id, app.WSGI_MODULE, *celery)
        session.agent("steps", release_id)
    session.agent("ready", release_id)


def _release_file(tarball: Path, prefix: str, name: str) -> str | None:
    """The text of a file at the release's root, read from the checked tarball; None
    for a link (the host checks the file it points to)."""
    with tarfile.open(tarball) as tar:
        try:
            member = tar.getmember(prefix + name)
        except KeyError:
            return None
        found = tar.extractfile(member) if member.isfile() else None
        return found.read().decode("utf-8", "replace") if found else None


def deploy(
    tarball: str,
    spec: str,
    *,
    identity: str = "",
    stage: bool = False,
    break_lock: bool = False,
    reload: str = "chain",
) -> str:
    path = Path(tarball)
    if not path.is_file():
        raise HostError(f"no release tarball at {tarball}")
    try:
        info = inspect(str(path), app.WSGI_MODULE)
        if info.has_uwsgi_ini:
            ini = _release_file(path, info.root_prefix, "uwsgi.ini")
        else:
            ini = (TREE / "uwsgi.ini").read_text()
        requirements = _release_file(path, info.root_prefix, "requirements.txt")
        # Links, and files requirements.txt includes, are checked on the host.
        for check, text in ((check_ini, ini), (check_requirements, requirements)):
            if text is not None:
                check(text)
    except (TarballError, RuleError) as error:
        raise HostError(f"refused {path.name}: {error}") from None
    release_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + version_of(path.name)
    started = time.monotonic()
    with Session(spec, identity) as session:
        with session.locked(break_lock=break_lock):
            try:
                _build(session, path, release_id, info.has_uwsgi_ini)
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
                activate_release(session, ["activate", release_id], reload)
            removed = session.agent("cleanup", "--keep", str(app.KEEP_RELEASES))["removed"]
            if removed:
                session.say("cleanup", ", ".join(removed))
        session.summary(f"{'staged' if stage else 'deployed'} {release_id}", started)
    return release_id


def activate(release_id: str, spec: str, *, identity: str = "", reload: str = "chain") -> None:
    with Session(spec, identity) as session, session.locked():
        activate_release(session, ["activate", release_id], reload)


def rollback(
    spec: str, *, to: str = "", identity: str = "", break_lock: bool = False, reload: str = "all"
) -> str:
    started = time.monotonic()
    with Session(spec, identity) as session:
        with session.locked(break_lock=break_lock):
            target = activate_release(session, ["rollback", "--to", to], reload)
        session.summary(f"rolled back to {target}", started)
    return target


def releases(spec: str, *, identity: str = "") -> list[dict]:
    with Session(spec, identity) as session:
        found = session.agent("list")["releases"]
    say(f"{'':2}{'release':<34} {'state':<10} {'activated':<22} reason")
    for release in found:
        mark = "* " if release["current"] else "  "
        last = release["activated"][-1] if release["activated"] else "-"
        say(f"{mark}{release['id']:<34} {release['state']:<10} {last:<22} {release['reason']}")
    return found
