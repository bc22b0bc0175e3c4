"""How `current` gets served: one place decides between a graceful reload and a start
through supervisor, and touches the trigger that restarts the attached daemons.

Used by deploy, activate, rollback (eep/deploy.py) and restart, start (eep/control.py).
"""

from __future__ import annotations

import json
import shlex
import time

from eep import app
from eep.remote import HostError
from eep.session import Session
from eep.supervisor import CTL as SUPERVISORCTL

# The literal supervisorctl commands of config/sudoers (the same path, the same -c).
CTL = f"sudo -n /usr/bin/{SUPERVISORCTL}"
UWSGI_LOG = f"{app.LOG_DIR}/uwsgi.log"
# Reloads the app as the app user ("chain", "all", "full" or "wait"; see config/reload.py).
RELOAD = f"sudo -n -u {app.RUNTIME_USER} {app.CONF_DIR}/reload"
RELOAD_DOWN = 3  # its exit status when no uWSGI master runs


CELERY_WAIT = 15  # seconds a deploy waits for the new Celery worker (then: in the background)
CELERY_SETTLE = 8  # seconds alive after which a worker without pool processes counts as up


def touch_trigger(session: Session) -> None:
    """Restart the attached daemons that name the trigger in touch= (the Celery worker)."""
    session.remote.run(f"date -u +%FT%TZ > {app.DEPLOY_TRIGGER}")


class UwsgiDown(HostError):
    """No uWSGI master runs (stopped, or it exited): only supervisor can start one."""


def reload_app(session: Session, mode: str) -> None:
    """Run the reload script: "chain" / "all" (the web workers, one at a time or all at
    once), "full" (the master too, re-reading its ini) or "wait" (signal nothing); it
    returns once every worker serves `current` with the app loaded."""
    if mode in ("chain", "all"):
        # The attached daemons get their stop signal now, finish their tasks and start
        # again from `current`, while the web workers reload.
        touch_trigger(session)
    result = session.remote.run(f"{RELOAD} {shlex.quote(mode)}", check=False)
    if result.exited != 0:
        lines = result.stderr.strip().splitlines() or [f"reload failed (exit {result.exited})"]
        error = lines[-1].removeprefix("error: ")
        raise UwsgiDown(error) if result.exited == RELOAD_DOWN else HostError(error)
    if mode == "full":
        renew_daemons(session)


def renew_daemons(session: Session) -> None:
    """After a new or re-executed master: it adopted the old Celery worker by its
    pidfile, so restart it from `current`. The master looks at touch files once per
    loop, at least once a second: wait for that, so the old worker takes no new task
    once the command has returned."""
    touch_trigger(session)
    time.sleep(1.2)


def program_state(session: Session, program: str = app.SLUG) -> str:
    """supervisor's state of one of the app's programs (the uWSGI one by default):
    RUNNING, STARTING, BACKOFF, FATAL, ..."""
    out = session.remote.run(f"{CTL} status {program}", check=False).stdout.split()
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
    """Make uWSGI serve `current` and nginx answer below 500 (on a host without the web
    role: the master run its attached processes on `current`): a graceful reload `mode`
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
    if done != mode and mode != "wait":
        renew_daemons(session)  # a Celery worker the new master adopted runs old code
    if not session.has("web"):
        return done  # no nginx here: the Celery worker is awaited by the caller
    deadline = time.monotonic() + 60
    while (status := session.http_status()) >= 500 or status == 0:
        if time.monotonic() > deadline:
            raise HostError(f"the app answers {status or 'nothing'}; see {UWSGI_LOG}")
        time.sleep(0.5)
    return done


def say_celery_restarts(session: Session) -> None:
    """The trigger was touched: the worker restarts in the background, not before this returns."""
    if app.USE_CELERY and session.has("worker"):
        session.say("", "the Celery worker restarts once its running tasks are done")


def celery_workers(session: Session) -> dict[int, tuple[float, int]]:
    """{pid: (seconds from the trigger's touch to its start, pool processes)} of the
    Celery workers the uWSGI master runs (eep/host/celery.py), in one round trip."""
    request = {"master_pidfile": f"{app.RUN_DIR}/uwsgi/uwsgi.pid", "trigger": app.DEPLOY_TRIGGER}
    out = session.remote.run_script("celery", request, changes=False)
    rows = json.loads(out.stdout) if out.exited == 0 and out.stdout.strip() else []
    return {int(pid): (after, int(kids)) for pid, after, kids in rows}


def await_celery(session: Session) -> None:
    """Wait (at most CELERY_WAIT s) until a Celery worker started for this release runs.

    A worker that started after the trigger's last touch runs this release (`current`
    switched before the touch). "Runs": seen twice with its pool processes (a prefork
    worker forks them only once its app has loaded), or alive for CELERY_SETTLE s
    (pools without processes). The old worker finishes its running tasks first, which
    may take hours: once the wait is over, an old worker still busy is reported and left
    to finish; one that exits during the wait gives the new one CELERY_WAIT s from then.
    A new worker that dies twice, or none running at the end of the wait, means the
    release cannot run one: a HostError, so it fails like one whose web workers do not
    come up.
    """
    if not app.USE_CELERY or not session.has("worker"):
        return  # a web host of several: the worker hosts run Celery
    with session.step("celery") as details:
        deadline = time.monotonic() + CELERY_WAIT
        seen: set[int] = set()  # new workers (started after the touch)
        dead: set[int] = set()  # ... of which have exited again
        pooled: set[int] = set()  # new workers seen with their pool processes
        first: dict[int, float] = {}  # when each new worker was first seen
        workers: dict[int, tuple[float, int]] = {}
        old_running = True  # until no worker started before the touch is left
        while time.monotonic() < deadline and len(dead) < 2:
            polled = time.monotonic()
            workers = celery_workers(session)
            new = {pid for pid, (after, _) in workers.items() if after >= 0}
            if old_running and len(new) == len(workers):
                # The old worker has gone (its tasks done): the new one gets a full wait.
                old_running = False
                deadline = max(deadline, polled + CELERY_WAIT)
            for pid in new:
                kids = workers[pid][1]
                if (kids and pid in pooled) or (
                    pid in seen and polled - first[pid] >= CELERY_SETTLE
                ):
                    details.append("the worker runs the current release")
                    return
                if kids:
                    pooled.add(pid)
                first.setdefault(pid, polled)
            dead |= seen - set(workers)
            seen |= new
            time.sleep(0.5)
        if old_running and len(dead) < 2:
            details.append(
                "the old worker finishes its running tasks first; then the new one starts"
            )
            return
    raise HostError(
        "the Celery worker does not start on this release; see `invoke logs --process celery`"
    )


def activate_release(
    session: Session, command: list[str], mode: str, *, how: str, undo: bool = True
) -> str:
    """Switch `current` (the agent's `activate` or `rollback`), reload; if the app then
    fails, go back to the release that served before (`undo`). Without `undo` the
    release is a known-good one brought back: started over if a reload fails."""
    with session.step("activate") as details:
        result = session.agent(*command, "--how", how, "--by", session.who)
        details.append(result["current"])
    release_id = result["current"]
    kind = mode if result["reload"] == "workers" else "full"
    try:
        with session.step("reload") as details:
            details.append(serve(session, kind, start_if_failing=not undo))
        if undo:
            await_celery(session)
    except HostError as error:
        previous = result["previous"]
        if not undo or previous is None:
            raise HostError(f"{release_id} is active but failing: {error}") from None
        # Like a failed health check elsewhere: the release that served before comes
        # back, all workers at once (the failing release serves nothing useful).
        session.say("failed", f"{release_id}: {error}")
        session.agent("fail", release_id, f"failed after activation: {error}")
        activate_release(session, ["activate", previous], "all", how="auto-rollback", undo=False)
        raise HostError(
            f"{release_id} failed after activation ({error}); {previous} serves again"
        ) from None
    if not undo:
        say_celery_restarts(session)
    return release_id
