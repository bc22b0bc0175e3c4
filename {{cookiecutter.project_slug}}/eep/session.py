"""One SSH session as the deploy account, with the release agent running on the host.

Every command the developer runs (deploy, rollback, status, restart, ...) opens one:
it uploads eep/releases.py and friends when the host's copies differ, starts ONE
python process there that answers each agent() call, and reports steps with their
duration.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import shlex
import socket
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Self

from eep import app
from eep.remote import Conversation, HostError, Remote, Target
from eep.report import progress, say

AGENT_DIR = f"{app.APP_ROOT}/.eep"
# The app's own code, run as the app user through the literal sudo rules (config/as-app.py).
AS_APP = f"sudo -n -u {app.RUNTIME_USER} {app.CONF_DIR}/as-app"
HERE = Path(__file__).resolve().parent
AGENT_FILES = ("releases.py", "tarball.py", "release_rules.py")
# Modes of what deploy uploads, never the local file's: the app (group) writes none.
AGENT_MODE, UPLOAD_MODE, INI_MODE = 0o600, 0o600, 0o640


class Session:
    """One SSH connection as the deploy account, with the release tools uploaded."""

    def __init__(self, spec: str, identity: str, *, name: str = "") -> None:
        self.target = Target.parse(spec, default_user=app.DEPLOY_USER)
        # What progress lines call the host: its inventory name, or the SSH target.
        self.label = name or str(self.target)
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
        say(f"[{self.label}] {status:<10} {message}")

    def summary(self, what: str, started: float) -> None:
        """The last line of a command: what it did, in how long, and its steps' times."""
        parts = ", ".join(f"{name} {secs:.1f} s" for name, secs in self.timings.items())
        say(f"[{self.label}] {what} in {time.monotonic() - started:.1f} s ({parts})")

    @contextmanager
    def step(self, name: str, detail: str = "", *, running: str = ""):
        """Time the `with` body and report it; words appended to the list it gives
        are added to the line. With `running`, a line every few seconds says what is
        still running, so a long step (pip) never looks stuck."""
        started = time.monotonic()
        details = [detail] if detail else []
        ticker = progress(lambda secs: f"[{self.label}] {name:<10} {running} ({secs:.0f} s so far)")
        with ticker if running else nullcontext():
            yield details
        self.timings[name] = time.monotonic() - started
        self.say(name, f"{self.timings[name]:.1f} s" + "".join(f"  {d}" for d in details))

    @contextmanager
    def locked(self, *, break_lock: bool = False):
        """Hold the host's deploy lock for the `with` body (refused if someone holds it)."""
        if break_lock:
            self.agent("unlock")
            self.say("lock", "broken on request")
        self.agent("lock", self.who)
        try:
            yield
        finally:
            self.agent("unlock")

    @functools.cached_property
    def roles(self) -> dict[str, str]:
        """This host's part in the fleet as provisioning stated it (config/host.ini):
        {"eep-web": "yes", "eep-worker": "no", ...}; {} on a host provisioned before
        roles existed (one host: every role)."""
        return self.agent("roles")

    def has(self, role: str) -> bool:
        """Whether this host plays `role` ("web", "worker", "beat")."""
        return self.roles.get(f"eep-{role}", "yes") == "yes"

    def agent(self, *args: str) -> dict:
        """Run one command of eep/releases.py on the host; its error as a HostError."""
        process = self.agent_process
        if process is None:
            raise HostError("no release agent: the session is not open")
        line = process.ask(json.dumps(args))
        if not line:
            raise HostError(f"the release agent stopped: {process.last_error()}")
        answer = json.loads(line)
        if "error" in answer:
            raise HostError(answer["error"])
        return answer["ok"]

    def as_app(self, verb: str, request: dict | None = None) -> dict:
        """Run one verb of config/as-app on the host AS THE APP USER (its sudo rule), the
        request on stdin; its answer, or its one-line error as a HostError. Output a
        failed step printed ("  | ..." lines) is shown first."""
        result = self.remote.run(
            f"{AS_APP} {shlex.quote(verb)}",
            stdin=(json.dumps(request or {}) + "\n").encode(),
            check=False,
        )
        if result.exited != 0:
            lines = result.stderr.strip().splitlines() or [f"as-app {verb}: exit {result.exited}"]
            for line in lines[:-1]:
                if line.startswith("  | "):
                    say(f"[{self.label}] {'':<10} {line[4:]}")
            raise HostError(lines[-1].removeprefix("error: "))
        return json.loads(result.stdout)

    @property
    def host_header(self) -> str:
        """The Host the site answers to: the app's first domain (a wildcard made concrete)."""
        return app.DOMAINS[0].replace("*.", "www.")

    @property
    def who(self) -> str:
        """The developer behind this session, as the lock and the release history name them."""
        return f"{getpass.getuser()}@{socket.gethostname()}"

    def http_status(self, path: str = "/") -> int:
        """Status nginx gives for `path` on the app's first domain, asked from the host itself."""
        return self.agent("http-status", path, self.host_header)["status"]
