"""`invoke deploy`, `activate` and `rollback` over the inventory (eep.hosts): one release on
every app host, switched web host by web host behind the load balancer.

1. The deploy lock on every app host, in inventory order, before anything changes.
2. Upload, virtualenv, build and load checks on every app host at once (one release id).
3. The release steps (migrations, and the backup before them) once, on the first web
   host; then the health call on every host.
4. Web hosts one at a time (`--batch N`: N at a time): drained at the load balancer,
   activated, through the health gate, put back, seen UP by the balancer. Then the
   worker-only hosts (their Celery worker restarts; a running task finishes first).
5. The first host that fails its gate goes back at once, and the deploy stops: the hosts
   already switched go back too (the same way, behind the balancer), unless
   `--keep-going`. Every host then serves one release, and the command exits 1.

The single-host path stays in eep/deploy.py, whose pieces this module reuses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from eep import app
from eep.deploy import check_health, check_tarball, new_release_id, prepare, run_steps
from eep.fleet import Fleet, FleetError, FleetHost
from eep.remote import HostError, Remote, Target
from eep.report import say
from eep.serving import activate_release
from eep.session import Session

GATE_PASSES = 3  # the health path must answer 2xx this many times in a row ...
GATE_WAIT = 10  # ... within this many seconds after the host serves the release
BALANCER_WAIT = 30  # seconds for the balancer to see a host UP once it is put back


# -- the plan: pure, checked before any SSH ---------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Which hosts a rolling command acts on, and in what order."""

    hosts: tuple[FleetHost, ...]  # every app host acted on, inventory order (locks, builds)
    waves: tuple[tuple[FleetHost, ...], ...]  # switched together: web batches, then workers
    first: FleetHost  # runs the release steps, once
    lb: FleetHost | None
    drained: frozenset[str]  # hosts taken out of the balancer while they switch
    batch: int


def batches(hosts: Sequence[FleetHost], size: int) -> list[tuple[FleetHost, ...]]:
    return [tuple(hosts[i : i + size]) for i in range(0, len(hosts), size)]


def make_plan(fleet: Fleet, chosen: Sequence[FleetHost], batch: int = 1) -> Plan:
    """The plan for `chosen` (hosts of `fleet`; those without web or worker role get no
    release). A host is drained only when another web host of the fleet keeps serving:
    a lone web host reloads in place, gracefully, as on one server."""
    if batch < 1:
        raise FleetError(f"--batch must be 1 or more, not {batch}")
    picked = {host.name for host in chosen}
    hosts = [host for host in fleet.app_hosts if host.name in picked]
    if not hosts:
        names = ", ".join(host.name for host in chosen)
        raise FleetError(f"{names}: no web or worker host (releases go to the app's hosts)")
    web = [host for host in hosts if host.has("web")]
    workers = [host for host in hosts if not host.has("web")]
    lb = fleet.lb
    serving = fleet.with_role("web")
    if lb and len(serving) > 1 and batch >= len(serving):
        raise FleetError(
            f"--batch {batch} would drain every web host at once ({len(serving)} behind {lb});"
            f" at most {len(serving) - 1}"
        )
    drained = frozenset(host.name for host in web) if lb and len(serving) > 1 else frozenset()
    waves = batches(web, batch) + ([tuple(workers)] if workers else [])
    return Plan(tuple(hosts), tuple(waves), (web or hosts)[0], lb, drained, batch)


# -- switching hosts: the order, the gate, who goes back --------------------------------


class Ops(Protocol):
    """What rolling needs done on one host (RealOps below; fakes in the unit tests)."""

    def switch(self, host: FleetHost) -> None:
        """Serve the new release and pass the health gate; on failure (HostError) the
        host already serves its previous release again."""

    def fail(self, host: FleetHost, why: str) -> None:
        """The host passed the gate but the balancer does not see it up: mark the
        release failed there and serve the previous one again."""

    def restore(self, host: FleetHost) -> None:
        """Serve again the release the host served before this command."""

    def drain(self, host: FleetHost) -> None: ...
    def ready(self, host: FleetHost) -> None: ...
    def confirm(self, host: FleetHost) -> None:
        """The balancer sees the host UP (HostError otherwise)."""


@dataclass
class Outcome:
    switched: list[str] = field(default_factory=list)  # on the new release, gate passed
    failed: dict[str, str] = field(default_factory=dict)  # host -> why (back on its previous)
    restored: list[str] = field(default_factory=list)  # switched, then back after a failure
    stuck: dict[str, str] = field(default_factory=dict)  # could not go back: host -> why


def each(hosts: Sequence[FleetHost], action: Callable[[FleetHost], object]) -> dict[str, str]:
    """Run `action` on the hosts at once; {host: error} of those that raised HostError."""
    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(hosts))) as pool:
        futures = {host.name: pool.submit(action, host) for host in hosts}
    errors = {}
    for name, future in futures.items():
        try:
            future.result()
        except HostError as error:
            errors[name] = str(error)
    return errors


def through_gate(plan: Plan, ops: Ops, host: FleetHost, *, back: bool = False) -> None:
    """Move one host (to the new release, or `back` to its previous one), out of the
    balancer meanwhile when the plan drains it, and see it UP there afterwards."""
    behind = host.name in plan.drained
    if behind:
        ops.drain(host)
    try:
        (ops.restore if back else ops.switch)(host)
    finally:
        if behind:
            ops.ready(host)  # new release, or its old one after a failure: it serves
    if plan.lb is None or not host.has("web"):
        return
    try:
        ops.confirm(host)
    except HostError as error:
        if back:
            raise
        if behind:
            ops.drain(host)
        try:
            ops.fail(host, str(error))
        finally:
            if behind:
                ops.ready(host)
        raise


def roll(plan: Plan, ops: Ops, *, keep_going: bool = False) -> Outcome:
    """Switch the plan's waves in order. The first failing host stops it, and the hosts
    already switched go back (in the same order, the same way), unless `keep_going`."""
    outcome = Outcome()
    for wave in plan.waves:
        errors = each(wave, lambda host: through_gate(plan, ops, host))
        outcome.switched += [host.name for host in wave if host.name not in errors]
        outcome.failed.update(errors)
        if errors and not keep_going:
            break
    if outcome.failed and not keep_going:
        done = [host for host in plan.hosts if host.name in outcome.switched]
        web = [host for host in done if host.has("web")]
        for wave in [*batches(web, plan.batch), tuple(h for h in done if not h.has("web"))]:
            errors = each(wave, lambda host: through_gate(plan, ops, host, back=True))
            outcome.stuck.update(errors)
            outcome.restored += [host.name for host in wave if host.name not in errors]
        outcome.switched = [name for name in outcome.switched if name not in outcome.restored]
    return outcome


# -- on the hosts -----------------------------------------------------------------------


@contextmanager
def sessions_on(plan: Plan, identity: str) -> Iterator[dict[str, Session]]:
    """One deploy session per app host, opened at once, closed at the end."""
    opened: dict[str, Session] = {}

    def open_one(host: FleetHost) -> None:
        session = Session(host.deploy_spec(), identity, name=host.name)
        opened[host.name] = session.__enter__()

    with ExitStack() as stack:
        try:
            errors = each(plan.hosts, open_one)
        finally:
            for session in opened.values():
                stack.push(session.__exit__)
        if errors:
            name, error = next(iter(errors.items()))
            raise HostError(f"{name}: {error}")
        yield {host.name: opened[host.name] for host in plan.hosts}


@contextmanager
def fleet_locked(plan: Plan, sessions: dict[str, Session], break_lock: bool) -> Iterator[None]:
    """The deploy lock of every app host, taken in inventory order (two deploys of the
    same fleet meet at its first host: one is refused before it holds any lock), all
    released at the end; a lock held anywhere refuses the command, naming host and holder."""
    with ExitStack() as stack:
        for host in plan.hosts:
            try:
                stack.enter_context(sessions[host.name].locked(break_lock=break_lock))
            except HostError as error:
                raise HostError(f"{host}: {error}") from None
        yield


class Balancer:
    """The load balancer's runtime API (eep/balancer.py) through the deploy account on
    the lb host; one call at a time (hosts of a batch share the connection)."""

    def __init__(self, lb: FleetHost, identity: str) -> None:
        from eep import balancer

        self.api = balancer
        self.host = lb
        target = Target.parse(lb.deploy_spec(), default_user=app.DEPLOY_USER)
        self.remote = Remote(target, identity=identity, become_root=False)
        self.lock = threading.Lock()

    def states(self) -> dict[str, dict]:
        with self.lock:
            return self.api.backend_states(self.remote)

    def set(self, server: str, state: str) -> None:
        with self.lock:
            self.api.set_backend(self.remote, server, state)


def status_of(states: dict[str, dict], name: str) -> str:
    """'UP', 'DOWN', 'DRAIN', 'MAINT', 'UP 1/3' (going down), ...; '' for no such server."""
    return str(states.get(name, {}).get("status", ""))


class RealOps:
    """Ops on real hosts: `command` is what the release agent activates ("activate ID"),
    `how` the word the release history records, `mode` the reload."""

    def __init__(
        self,
        fleet: Fleet,
        sessions: dict[str, Session],
        balancer: Balancer | None,
        command: list[str],
        *,
        mode: str,
        how: str,
    ) -> None:
        self.fleet, self.sessions, self.balancer = fleet, sessions, balancer
        self.command, self.mode, self.how = command, mode, how
        self.previous: dict[str, str | None] = {}  # what each host served before

    def switch(self, host: FleetHost) -> None:
        session = self.sessions[host.name]
        listed = session.agent("list")["releases"]
        self.previous[host.name] = next((r["id"] for r in listed if r["current"]), None)
        release = activate_release(session, self.command, self.mode, how=self.how)
        if not host.has("web"):
            return  # activation waited for the new Celery worker: its gate
        try:
            gate(session, release)
        except HostError as error:
            why = f"failed its health gate: {error}"
            try:
                self.fail(host, why)
            except HostError as stuck:
                raise HostError(f"{why}; it could not go back: {stuck}") from None
            raise HostError(why) from None

    def fail(self, host: FleetHost, why: str) -> None:
        session = self.sessions[host.name]
        release = self.command[-1]
        session.say("failed", f"{release}: {why}")
        session.agent("fail", release, why)
        self.restore(host, how="auto-rollback")

    def restore(self, host: FleetHost, how: str = "rollback") -> None:
        session = self.sessions[host.name]
        previous = self.previous.get(host.name)
        if previous is None:
            raise HostError("no earlier release to go back to")
        activate_release(session, ["activate", previous], "all", how=how, undo=False)

    def drain(self, host: FleetHost) -> None:
        assert self.balancer
        session = self.sessions[host.name]
        lb = self.balancer.host
        with session.step("drain") as details:
            states = self.balancer.states()
            if status_of(states, host.name) != "UP":
                # Out of rotation already (the first deploy: no host serves a release, so
                # every health check fails): no visitor's request reaches it to drain.
                details.append(
                    f"at {lb}: {status_of(states, host.name) or 'absent'}, nothing to drain"
                )
                return
            others = [h.name for h in self.fleet.with_role("web") if h.name != host.name]
            # Another web host must take the requests. One just put back (a host that
            # failed its gate, on its old release again) is UP after a few health checks.
            deadline = time.monotonic() + BALANCER_WAIT
            while not any(status_of(states, name) == "UP" for name in others):
                if time.monotonic() > deadline:
                    seen = ", ".join(f"{n} {status_of(states, n) or 'absent'}" for n in others)
                    raise HostError(f"not drained: no other web host is UP at {lb} ({seen})")
                time.sleep(0.5)
                states = self.balancer.states()
            self.balancer.set(host.name, "drain")
            details.append(f"at {lb}: no session left")

    def ready(self, host: FleetHost) -> None:
        assert self.balancer
        with self.sessions[host.name].step("ready") as details:
            self.balancer.set(host.name, "ready")
            details.append(f"back in {self.balancer.host}")

    def confirm(self, host: FleetHost) -> None:
        assert self.balancer
        lb = self.balancer.host
        with self.sessions[host.name].step("balancer") as details:
            deadline = time.monotonic() + BALANCER_WAIT
            while (status := status_of(self.balancer.states(), host.name)) != "UP":
                if time.monotonic() > deadline:
                    raise HostError(f"{lb} sees it {status or 'absent'}, not UP")
                time.sleep(0.5)
            details.append(f"UP at {lb}")


def gate(session: Session, release: str) -> None:
    """The health gate of a web host: the release's health path, through nginx on the
    host, answers 2xx GATE_PASSES times in a row within GATE_WAIT seconds."""
    path = session.agent("config", release)["health"]
    with session.step("gate") as details:
        deadline = time.monotonic() + GATE_WAIT
        passes, status = 0, 0
        while passes < GATE_PASSES:
            status = session.http_status(path)
            passes = passes + 1 if 200 <= status < 300 else 0
            if passes < GATE_PASSES and time.monotonic() > deadline:
                raise HostError(f"GET {path} answers {status or 'nothing'}")
            time.sleep(0.2)
        details.append(f"GET {path}: {status}, {GATE_PASSES} times in a row")


@contextmanager
def balancer_of(plan: Plan, identity: str) -> Iterator[Balancer | None]:
    """The load balancer's connection, checked before anything changes: every web host
    the plan drains must be one of its servers."""
    if plan.lb is None or not any(host.has("web") for host in plan.hosts):
        yield None
        return
    balancer = Balancer(plan.lb, identity)
    try:
        balancer.remote.open()
    except HostError as error:
        raise HostError(f"{plan.lb}: {error}") from None
    try:
        states = balancer.states()
        missing = [h.name for h in plan.hosts if h.has("web") and h.name not in states]
        if missing:
            raise HostError(
                f"{plan.lb} has no server {', '.join(missing)} (provision {plan.lb} again)"
            )
        yield balancer
    finally:
        balancer.remote.close()


def _switch(plan: Plan, ops: RealOps, release: str, keep_going: bool) -> Outcome:
    waves = " then ".join(", ".join(host.name for host in wave) for wave in plan.waves)
    say(f"* switching to {release}: {waves}")
    return roll(plan, ops, keep_going=keep_going)


def _verdict(what: str, release: str, outcome: Outcome, ops: RealOps, keep_going: bool) -> str:
    """The error line of a rolling command that failed somewhere."""
    failed = "; ".join(f"{name} {error}" for name, error in outcome.failed.items())
    if keep_going:
        switched = ", ".join(outcome.switched) or "no host"
        back = ", ".join(f"{name} on {ops.previous.get(name)}" for name in outcome.failed)
        return f"{what} went on (--keep-going): {release} on {switched}; {failed}; {back}"
    serving = ", ".join(sorted({p for p in ops.previous.values() if p})) or "no release"
    line = f"{what} stopped: {failed}; every host serves {serving} again"
    if outcome.stuck:
        stuck = "; ".join(f"{name}: {error}" for name, error in outcome.stuck.items())
        line += f", except {stuck}"
    return line


def _names(hosts: Sequence[FleetHost]) -> str:
    return ", ".join(host.name for host in hosts)


def deploy(
    fleet: Fleet,
    chosen: Sequence[FleetHost],
    tarball: str,
    *,
    identity: str = "",
    stage: bool = False,
    break_lock: bool = False,
    reload: str = "chain",
    batch: int = 1,
    keep_going: bool = False,
) -> str:
    """Build the release on every app host, then switch them (see the module's doc)."""
    plan = make_plan(fleet, chosen, batch)
    path, info, requirements = check_tarball(tarball)
    release = new_release_id(path)
    started = time.monotonic()
    timings: dict[str, float] = {}
    with (
        sessions_on(plan, identity) as sessions,
        balancer_of(plan, identity) as balancer,
        fleet_locked(plan, sessions, break_lock),
    ):
        say(f"* building {release} on {_names(plan.hosts)} at once")
        configs: dict[str, dict] = {}

        def build(host: FleetHost) -> None:
            configs[host.name] = prepare(sessions[host.name], path, release, info, requirements)

        errors = each(plan.hosts, build)
        if not errors:
            say(f"* release steps once, on {plan.first}")
            try:
                run_steps(sessions[plan.first.name], release, configs[plan.first.name])
            except HostError as error:
                errors[plan.first.name] = str(error)
        if not errors:
            errors = each(
                plan.hosts, lambda h: check_health(sessions[h.name], release, configs[h.name])
            )
        timings["build"] = time.monotonic() - started
        if errors:
            why = "; ".join(f"{name}: {error}" for name, error in errors.items())
            each(plan.hosts, lambda h: sessions[h.name].agent("fail", release, why))
            raise HostError(f"release {release} failed, nothing activated: {why}")
        if stage:
            say(f"* staged {release} on {_names(plan.hosts)}: `invoke activate {release}`")
        else:
            ops = RealOps(
                fleet, sessions, balancer, ["activate", release], mode=reload, how="deploy"
            )
            switching = time.monotonic()
            outcome = _switch(plan, ops, release, keep_going)
            timings["switch"] = time.monotonic() - switching
            if outcome.failed:
                if not keep_going:  # failed for the fleet: no host activates it by mistake
                    why = "; ".join(f"{name} {error}" for name, error in outcome.failed.items())
                    others = [h for h in plan.hosts if h.name not in outcome.failed]
                    each(others, lambda h: sessions[h.name].agent("fail", release, why))
                raise HostError(_verdict("deploy", release, outcome, ops, keep_going))
        each(plan.hosts, lambda host: _cleanup(sessions[host.name]))
    spent = ", ".join(f"{name} {secs:.1f} s" for name, secs in timings.items())
    verb = "staged" if stage else "deployed"
    say(f"{verb} {release} on {_names(plan.hosts)} in {time.monotonic() - started:.1f} s ({spent})")
    return release


def _cleanup(session: Session) -> None:
    removed = session.agent("cleanup", "--keep", str(app.KEEP_RELEASES))["removed"]
    if removed:
        session.say("cleanup", ", ".join(removed))


def activate(
    fleet: Fleet,
    chosen: Sequence[FleetHost],
    release: str,
    *,
    identity: str = "",
    reload: str = "chain",
    batch: int = 1,
    keep_going: bool = False,
    break_lock: bool = False,
) -> None:
    """Switch every app host to a release staged on all of them."""
    plan = make_plan(fleet, chosen, batch)
    _roll_to(plan, fleet, identity, break_lock, keep_going, "activate", release, reload)


def rollback(
    fleet: Fleet,
    chosen: Sequence[FleetHost],
    *,
    to: str = "",
    identity: str = "",
    reload: str = "all",
    batch: int = 1,
    keep_going: bool = False,
    break_lock: bool = False,
) -> str:
    """Every app host back to the release before current (or `to`): the same one everywhere."""
    plan = make_plan(fleet, chosen, batch)
    return _roll_to(plan, fleet, identity, break_lock, keep_going, "rollback", to, reload)


def _roll_to(
    plan: Plan,
    fleet: Fleet,
    identity: str,
    break_lock: bool,
    keep_going: bool,
    how: str,
    release: str,
    reload: str,
) -> str:
    """activate RELEASE, or rollback [to RELEASE], rolled over the plan."""
    started = time.monotonic()
    with (
        sessions_on(plan, identity) as sessions,
        balancer_of(plan, identity) as balancer,
        fleet_locked(plan, sessions, break_lock),
    ):
        release = _agreed(plan, sessions, how, release)
        ops = RealOps(fleet, sessions, balancer, ["activate", release], mode=reload, how=how)
        outcome = _switch(plan, ops, release, keep_going)
        if outcome.failed:
            raise HostError(_verdict(how, release, outcome, ops, keep_going))
    verb = "activated" if how == "activate" else "rolled back to"
    say(f"{verb} {release} on {_names(plan.hosts)} in {time.monotonic() - started:.1f} s")
    return release


def _agreed(plan: Plan, sessions: dict[str, Session], how: str, release: str) -> str:
    """The one release every host goes to, refused before any change when a host does
    not have it ready or (rollback) the hosts would go back to different releases."""
    found: dict[str, str] = {}

    def look(host: FleetHost) -> None:
        session = sessions[host.name]
        if how == "rollback":
            found[host.name] = session.agent("rollback-target", "--to", release)["target"]
        else:
            found[host.name] = release
        listed = {r["id"]: r["state"] for r in session.agent("list")["releases"]}
        state = listed.get(found[host.name], "absent")
        if state != "ready":
            raise HostError(f"release {found[host.name]} is {state} there")

    errors = each(plan.hosts, look)
    if errors:
        raise HostError("; ".join(f"{name}: {error}" for name, error in errors.items()))
    targets = sorted(set(found.values()))
    if len(targets) > 1:
        listed = "; ".join(f"{name}: {target}" for name, target in found.items())
        raise HostError(f"the hosts would go back to different releases ({listed}); use --to")
    return targets[0]
