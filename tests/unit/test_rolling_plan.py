"""Rolling deploys over a fleet (eep/rolling.py): the plan, the order each host goes
through, who goes back when host k fails, the order locks are taken in. Fake hosts."""

from __future__ import annotations

import json

import pytest
from treecode import run_in_tree

LB = {"lb1": {"ssh": "h0", "private": "10.0.0.10", "roles": ["lb"]}}
WEB = {f"web{n}": {"ssh": f"h{n}", "private": f"10.0.0.1{n}", "roles": ["web"]} for n in (1, 2, 3)}
WORK = {"work1": {"ssh": "h9", "private": "10.0.0.19", "roles": ["worker", "broker"]}}

# Runs in the baked tree: the scenario on stdin, what happened as JSON on stdout.
SCENARIO = """
import json, sys, threading
from eep import fleet, rolling
from eep.remote import HostError

scenario = json.loads(sys.stdin.read())
f = fleet.load(scenario["inventory"])
chosen = f.named(scenario["chosen"]) if scenario.get("chosen") else f.hosts
try:
    plan = rolling.make_plan(f, chosen, scenario.get("batch", 1))
except fleet.FleetError as error:
    print(json.dumps({"error": str(error)})); raise SystemExit
calls, lock = [], threading.Lock()

class Ops:
    def __getattr__(self, verb):
        def call(host, *why):
            with lock:
                calls.append(f"{verb} {host.name}")
            if f"{verb} {host.name}" in scenario.get("fails", []):
                raise HostError(f"{verb} failed")
        return call

outcome = None
if scenario.get("roll", True):
    o = rolling.roll(plan, Ops(), keep_going=scenario.get("keep_going", False))
    outcome = {"switched": o.switched, "failed": o.failed, "restored": o.restored,
               "stuck": o.stuck}
print(json.dumps({
    "waves": [[h.name for h in wave] for wave in plan.waves],
    "first": plan.first.name, "drained": sorted(plan.drained),
    "calls": calls, "outcome": outcome}))
"""


@pytest.fixture(scope="module")
def trees(cookies_session, ssh_keys):
    from conftest import REPO

    base = {"project_name": "Shop", "project_slug": "shop", "deploy_ssh_key": ssh_keys["ed25519"]}
    return {
        name: cookies_session.bake(extra_context={**base, **extra}, template=str(REPO)).project_path
        for name, extra in {"celery": {}, "plain": {"use_celery": "n"}}.items()
    }


def run(tree, code: str, scenario: dict) -> dict:
    return json.loads(run_in_tree(tree, code, scenario))


def roll(tree, inventory: dict, **scenario) -> dict:
    return run(tree, SCENARIO, {"inventory": inventory, **scenario})


def per_host(calls: list[str]) -> dict[str, list[str]]:
    """The calls grouped by host, each host's in order (hosts of one batch run at once)."""
    hosts: dict[str, list[str]] = {}
    for call in calls:
        verb, host = call.split()
        hosts.setdefault(host, []).append(verb)
    return hosts


def test_web_hosts_one_by_one_behind_the_balancer_then_the_workers(trees):
    done = roll(trees["celery"], {**LB, **WEB, **WORK})
    assert done["waves"] == [["web1"], ["web2"], ["web3"], ["work1"]]
    assert done["first"] == "web1"  # the release steps (migrations) run there, once
    assert done["drained"] == ["web1", "web2", "web3"]
    assert done["calls"] == [
        *(f"{verb} web{n}" for n in (1, 2, 3) for verb in ("drain", "switch", "ready", "confirm")),
        "switch work1",  # no balancer in front of a worker: its gate is the new Celery worker
    ]
    assert done["outcome"] == {
        "switched": ["web1", "web2", "web3", "work1"],
        "failed": {},
        "restored": [],
        "stuck": {},
    }


def test_batches_of_n_and_never_every_web_host_at_once(trees):
    fleet = {**LB, **WEB, **WORK}
    done = roll(trees["celery"], fleet, batch=2)
    assert done["waves"] == [["web1", "web2"], ["web3"], ["work1"]]
    assert per_host(done["calls"])["web2"] == ["drain", "switch", "ready", "confirm"]
    refused = roll(trees["celery"], fleet, batch=3)
    assert (
        refused["error"] == "--batch 3 would drain every web host at once (3 behind lb1); at most 2"
    )
    assert roll(trees["celery"], fleet, batch=0)["error"] == "--batch must be 1 or more, not 0"


def test_without_a_balancer_hosts_switch_one_by_one_through_the_gate_only(trees):
    done = roll(trees["plain"], WEB)
    assert done["drained"] == []
    assert done["calls"] == ["switch web1", "switch web2", "switch web3"]


def test_a_lone_web_host_behind_the_balancer_reloads_in_place(trees):
    done = roll(trees["celery"], {**LB, "web1": WEB["web1"], **WORK})
    assert done["drained"] == []  # draining it would leave the balancer no server
    assert done["calls"] == ["switch web1", "confirm web1", "switch work1"]


def test_host_picks_some_hosts_and_the_balancer_gets_no_release(trees):
    fleet = {**LB, **WEB, **WORK}
    done = roll(trees["celery"], fleet, chosen=["work1", "web2", "lb1"], roll=False)
    assert done["waves"] == [["web2"], ["work1"]] and done["first"] == "web2"
    only_workers = roll(trees["celery"], fleet, chosen=["work1"], roll=False)
    assert only_workers["waves"] == [["work1"]] and only_workers["first"] == "work1"
    refused = roll(trees["celery"], fleet, chosen=["lb1"])
    assert refused["error"] == "lb1: no web or worker host (releases go to the app's hosts)"


def test_when_host_k_fails_its_gate_the_switched_ones_go_back_and_the_rest_is_untouched(trees):
    done = roll(trees["celery"], {**LB, **WEB, **WORK}, fails=["switch web2"])
    assert done["calls"] == [
        *(f"{verb} web1" for verb in ("drain", "switch", "ready", "confirm")),
        "drain web2",
        "switch web2",  # failed: web2 went back to its previous release itself
        "ready web2",  # ... so it is put back into the balancer
        # then web1, which had switched, the same way
        *(f"{verb} web1" for verb in ("drain", "restore", "ready", "confirm")),
    ]
    assert done["outcome"] == {
        "switched": [],
        "failed": {"web2": "switch failed"},
        "restored": ["web1"],
        "stuck": {},
    }


def test_a_host_the_balancer_does_not_see_up_is_taken_out_and_sent_back(trees):
    done = roll(trees["celery"], {**LB, **WEB, **WORK}, fails=["confirm web1"])
    assert done["calls"] == [
        *(f"{verb} web1" for verb in ("drain", "switch", "ready", "confirm")),
        *(f"{verb} web1" for verb in ("drain", "fail", "ready")),
    ]
    assert done["outcome"]["failed"] == {"web1": "confirm failed"}
    assert done["outcome"]["restored"] == []


def test_a_failing_worker_host_sends_every_web_host_back(trees):
    done = roll(trees["celery"], {**LB, **WEB, **WORK}, fails=["switch work1"])
    assert done["outcome"]["failed"] == {"work1": "switch failed"}
    assert done["outcome"]["restored"] == ["web1", "web2", "web3"]
    restored = [call for call in done["calls"] if call.startswith("restore")]
    assert restored == ["restore web1", "restore web2", "restore web3"]


def test_a_failure_in_a_batch_sends_back_its_hosts_that_switched(trees):
    done = roll(trees["celery"], {**LB, **WEB, **WORK}, batch=2, fails=["switch web1"])
    hosts = per_host(done["calls"])
    assert hosts["web2"] == ["drain", "switch", "ready", "confirm", "drain", "restore", "ready"] + [
        "confirm"
    ]
    assert "web3" not in hosts and "work1" not in hosts
    assert done["outcome"]["restored"] == ["web2"]


def test_keep_going_goes_on_with_the_others_and_sends_nobody_back(trees):
    done = roll(trees["celery"], {**LB, **WEB, **WORK}, fails=["switch web2"], keep_going=True)
    assert not any(call.startswith("restore") for call in done["calls"])
    assert done["outcome"]["switched"] == ["web1", "web3", "work1"]
    assert done["outcome"]["failed"] == {"web2": "switch failed"}


def test_a_host_that_cannot_go_back_is_named(trees):
    done = roll(trees["plain"], WEB, fails=["switch web3", "restore web1"])
    assert done["outcome"]["stuck"] == {"web1": "restore failed"}
    assert done["outcome"]["restored"] == ["web2"]


LOCKS = """
import json, sys
from contextlib import contextmanager
from eep import fleet, rolling
from eep.remote import HostError

scenario = json.loads(sys.stdin.read())
f = fleet.load(scenario["inventory"])
plan = rolling.make_plan(f, f.named(scenario["chosen"]))
events = []

class Session:
    def __init__(self, name):
        self.name = name
    @contextmanager
    def locked(self, break_lock=False):
        if self.name == scenario.get("held"):
            raise HostError("another deploy holds the lock: bob@laptop since 2026-01-01T10:00:00Z")
        events.append(f"lock {self.name}")
        try:
            yield
        finally:
            events.append(f"unlock {self.name}")

sessions = {h.name: Session(h.name) for h in plan.hosts}
try:
    with rolling.fleet_locked(plan, sessions, False):
        events.append("work")
except HostError as error:
    events.append(f"error {error}")
print(json.dumps(events))
"""


def test_the_fleet_lock_is_taken_in_inventory_order_and_released_everywhere(trees):
    scenario = {"inventory": {**LB, **WEB, **WORK}, "chosen": ["work1", "web2", "web1"]}
    events = run(trees["celery"], LOCKS, scenario)
    assert events == [
        *("lock web1", "lock web2", "lock work1", "work"),
        *("unlock work1", "unlock web2", "unlock web1"),
    ]


def test_a_lock_held_anywhere_refuses_naming_host_and_holder_and_releases_the_rest(trees):
    scenario = {"inventory": {**LB, **WEB, **WORK}, "chosen": ["web1", "web2", "web3"]}
    events = run(trees["celery"], LOCKS, {**scenario, "held": "web2"})
    assert events == [
        "lock web1",
        "unlock web1",
        "error web2: another deploy holds the lock: bob@laptop since 2026-01-01T10:00:00Z",
    ]
