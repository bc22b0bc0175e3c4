"""The inventory (invoke.yaml eep.hosts): what a fleet may look like, checked before any SSH."""

from __future__ import annotations

import json

import pytest
from treecode import run_in_tree

FLEET = {
    "lb1": {"ssh": "203.0.113.10", "private": "10.0.0.10", "roles": ["lb"]},
    "web1": {"ssh": "203.0.113.11", "private": "10.0.0.11", "roles": ["web"]},
    "web2": {"ssh": "203.0.113.12:2222", "private": "10.0.0.12", "roles": ["web"]},
    "work1": {"ssh": "admin@203.0.113.13", "private": "10.0.0.13", "roles": "worker, broker"},
}


def load(tree, hosts: object) -> dict:
    """eep.fleet.load(hosts) in the baked tree: the fleet as plain data, or its error line."""
    code = (
        "import json, sys\n"
        "from eep import fleet\n"
        "try:\n"
        "    f = fleet.load(json.loads(sys.stdin.read()))\n"
        "except fleet.FleetError as e:\n"
        "    print(json.dumps({'error': str(e)})); raise SystemExit\n"
        "print(json.dumps(None if f is None else {\n"
        "    'hosts': [[h.name, h.provision_spec(), h.deploy_spec(), sorted(h.roles)]\n"
        "              for h in f.hosts],\n"
        "    'app': [h.name for h in f.app_hosts], 'single': f.single,\n"
        "    'lb': f.lb and f.lb.name, 'broker': f.broker and f.broker.name,\n"
        "    'beat': f.beat_host and f.beat_host.name}))\n"
    )
    return json.loads(run_in_tree(tree, code, hosts))


@pytest.fixture(scope="module")
def trees(cookies_session, ssh_keys):
    """Trees baked with Celery and beat, and without Celery."""
    from conftest import REPO

    base = {"project_name": "Shop", "project_slug": "shop", "deploy_ssh_key": ssh_keys["ed25519"]}
    return {
        name: cookies_session.bake(extra_context={**base, **extra}, template=str(REPO)).project_path
        for name, extra in {
            "celery": {"celery_beat": "y"},
            "plain": {"use_celery": "n"},
            "pg": {"database": "postgresql"},
        }.items()
    }


def test_a_fleet_of_four_with_its_roles(trees):
    fleet = load(trees["celery"], FLEET)
    assert fleet["hosts"] == [
        ["lb1", "root@203.0.113.10", "shop-deploy@203.0.113.10", ["lb"]],
        ["web1", "root@203.0.113.11", "shop-deploy@203.0.113.11", ["web"]],
        ["web2", "root@203.0.113.12:2222", "shop-deploy@203.0.113.12:2222", ["web"]],
        ["work1", "admin@203.0.113.13", "shop-deploy@203.0.113.13", ["broker", "worker"]],
    ]
    assert fleet["app"] == ["web1", "web2", "work1"]
    assert (fleet["lb"], fleet["broker"], fleet["beat"]) == ("lb1", "work1", "work1")
    assert not fleet["single"]


def test_no_inventory_is_none_and_one_host_is_single(trees):
    assert load(trees["celery"], {}) is None
    one = load(trees["celery"], {"app1": {"ssh": "h", "roles": ["web", "worker", "broker"]}})
    assert one["single"] and one["beat"] == "app1"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"web1": {"ssh": "h1", "roles": ["web", "db"]}}, "eep.hosts.web1: unknown role 'db'"),
        ({"web1": {"ssh": "h1", "role": ["web"]}}, "eep.hosts.web1: unknown setting 'role'"),
        ({"web1": {"roles": ["web"]}}, "eep.hosts.web1: no ssh address"),
        ({"web1": {"ssh": "h1:x", "roles": ["web"]}}, "h1:x: port must be a number"),
        ({"web1": {"ssh": "h1", "private": "10.0.0", "roles": ["web"]}}, "private must be an IP"),
        ({"Web_1": {"ssh": "h9", "roles": ["web"]}}, "eep.hosts.Web_1: a host name is lowercase"),
        ({"web2": {"ssh": "203.0.113.11", "private": "10.0.0.12", "roles": ["web"]}}, "ssh '203"),
        ({"web2": {"ssh": "h2", "private": "10.0.0.11", "roles": ["web"]}}, "10.0.0.11 is given"),
        ({"web2": {"ssh": "h2", "roles": ["web"]}}, "eep.hosts.web2: no private address"),
        ({"lb1": {"ssh": "h0", "private": "10.0.0.10", "roles": ["lb", "web"]}}, "lb and web"),
        ({"lb2": {"ssh": "h5", "private": "10.0.0.5", "roles": ["lb"]}}, "more than one lb"),
        ({"web9": {"ssh": "h9", "private": "10.0.0.9", "roles": ["broker"]}}, "exactly one host"),
    ],
)
def test_a_broken_inventory_is_one_line_naming_the_host(trees, change, error):
    found = load(trees["celery"], {**FLEET, **change})
    assert error in found["error"], found


def test_fleet_rules_that_depend_on_the_bake_answers(trees):
    no_worker = {name: settings for name, settings in FLEET.items() if name != "work1"}
    assert "no host has the worker role" in load(trees["celery"], no_worker)["error"]
    assert "need a tree baked with Celery" in load(trees["plain"], FLEET)["error"]
    plain = load(trees["plain"], no_worker)
    assert plain["app"] == ["web1", "web2"] and plain["broker"] is None
    pg = load(trees["pg"], FLEET)["error"]
    assert "database=postgresql are not supported yet" in pg
    no_web = {"w": {"ssh": "h", "roles": ["worker", "broker"]}}
    assert "no host has the web role" in load(trees["celery"], no_web)["error"]


def resolve(tree, inventory: object, given: list[str], listed: list[str]) -> list:
    code = (
        "import json, sys\n"
        "from eep import fleet\n"
        "inventory, given, listed = json.loads(sys.stdin.read())\n"
        "try:\n"
        "    found = fleet.resolve(inventory, given, listed)\n"
        "except fleet.FleetError as e:\n"
        "    print(json.dumps(str(e))); raise SystemExit\n"
        "print(json.dumps([[h.name, h.provision_spec(), len(f.hosts)] for f, h in found]))\n"
    )
    return json.loads(run_in_tree(tree, code, [inventory, given, listed]))


def test_host_picks_inventory_hosts_or_names_single_servers(trees):
    tree = trees["celery"]
    assert resolve(tree, FLEET, ["web2", "203.0.113.10"], []) == [
        ["lb1", "root@203.0.113.10", 4],
        ["web2", "root@203.0.113.12:2222", 4],
    ]
    assert [name for name, *_ in resolve(tree, FLEET, [], ["ignored"])] == list(FLEET)
    assert resolve(tree, FLEET, ["web3"], []) == (
        "web3: not in eep.hosts (known: lb1, web1, web2, work1)"
    )
    assert resolve(tree, {}, [], ["root@a:2200", "admin@b"]) == [
        ["a", "root@a:2200", 1],
        ["b", "admin@b", 1],
    ]


def test_settings_that_differ_between_hosts_are_named_with_the_hosts(trees):
    code = (
        "import json, sys\n"
        "from eep.settings import compare\n"
        "print(json.dumps(compare(json.load(sys.stdin))))\n"
    )
    found = {
        "web1": {"A": "1", "B": "x", "C": "same"},
        "web2": {"A": "1", "B": "y", "C": "same"},
        "work1": {"B": "x", "C": "same"},
    }
    assert json.loads(run_in_tree(trees["celery"], code, found)) == {
        "A": "missing on work1",
        "B": "one value on web1, work1, another on web2",
    }
    alike = {"web1": {"A": "1"}, "work1": {"A": "1"}}
    assert json.loads(run_in_tree(trees["celery"], code, alike)) == {}
