"""The load balancer (lb role): HAProxy on lb1 in front of web1 and web2, on one LAN.

The three hosts are provisioned in parallel from the tree's inventory, the sample app is
deployed on each web host, then requests go through the balancer while a web host is
drained, killed, and fails its health URL. The tests share the hosts and run in order.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from e2e_support import bake_tree, build_sample_release, load_test

pytestmark = pytest.mark.e2e

SLUG = "shop"
SITE = f"{SLUG}.example.com"
DEPLOY = f"{SLUG}-deploy"


@pytest.fixture(scope="module")
def fleet(testhost_factory_module) -> dict:
    return {name: testhost_factory_module(name, lan="lb") for name in ("lb1", "web1", "web2")}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, fleet):
    tree = bake_tree(tmp_path_factory.mktemp("trees"), SLUG, use_celery="n")
    roles = {"lb1": ["lb"], "web1": ["web"], "web2": ["web"]}
    hosts = {
        name: {"ssh": f"127.0.0.1:{host.ssh_port}", "private": host.lan_ip, "roles": roles[name]}
        for name, host in fleet.items()
    }
    config = tree.path / "invoke.yaml"
    # JSON is YAML: the inventory as a user would write it, plus the health URL.
    text = config.read_text().replace("  hosts: {}", f"  hosts: {json.dumps(hosts)}")
    config.write_text(text.replace("  lb_health: /\n", "  lb_health: /health\n"))
    for host in fleet.values():
        tree.trust(host)
    return tree


def provision(tree, fleet, *args: str) -> subprocess.CompletedProcess:
    key = str(fleet["lb1"].key_path)  # the harness gives every host the same root key
    return tree.invoke("provision", "--identity", key, *args)


@pytest.fixture(scope="module")
def provisioned(tree, fleet, tmp_path_factory):
    first = provision(tree, fleet)
    assert first.returncode == 0, first.stdout + first.stderr
    release = build_sample_release("1.0", tmp_path_factory.mktemp("dist"))
    for name in ("web1", "web2"):
        done = as_deploy(tree, fleet[name], "deploy", "--release", str(release))
        assert done.returncode == 0, done.stdout + done.stderr
    return first


def as_deploy(tree, host, *args: str) -> subprocess.CompletedProcess:
    spec = f"{DEPLOY}@127.0.0.1:{host.ssh_port}"
    return tree.invoke(*args, "--host", spec, "--identity", str(tree.deploy_key))


def balancer(tree, lb, call: str) -> object:
    """`call` (e.g. "backend_states(remote)") of the tree's eep.balancer, as the deploy
    account on the lb host, run in the tree like its tasks; its result."""
    code = (
        "import json\n"
        "from eep.balancer import backend_states, set_backend\n"
        "from eep.remote import Remote, Target\n"
        f"remote = Remote(Target('{DEPLOY}', '127.0.0.1', {lb.ssh_port}),"
        f" identity={str(tree.deploy_key)!r}, become_root=False)\n"
        "remote.open()\n"
        f"print(json.dumps({call}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tree.path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_for(check, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.5)


def status_of(tree, lb, server: str) -> str:
    return balancer(tree, lb, "backend_states(remote)")[server]["status"]


def totals(tree, lb) -> dict[str, int]:
    return {name: s["total"] for name, s in balancer(tree, lb, "backend_states(remote)").items()}


def test_provisioned_in_parallel_and_again_nothing_changes(tree, fleet, provisioned):
    for name in fleet:
        assert re.search(rf"^\[{name}\] done: \d+ changed", provisioned.stdout, re.M), name
    # The lb host got HAProxy and the deploy account, nothing of the app.
    lb = fleet["lb1"]
    assert lb.run("systemctl is-active haproxy").stdout.strip() == "active"
    for absent in ("/srv/shop", "/usr/sbin/nginx", "/usr/bin/uwsgi-core", "/etc/supervisor"):
        assert lb.run(f"test -e {absent}", check=False).returncode != 0, absent
    again = provision(tree, fleet)
    assert again.returncode == 0, again.stdout + again.stderr
    for name in fleet:
        assert re.search(rf"^\[{name}\] done: 0 changed", again.stdout, re.M), again.stdout


def test_requests_through_the_balancer_are_spread_over_both_web_hosts(tree, fleet, provisioned):
    lb = fleet["lb1"]
    wait_for(lambda: {status_of(tree, lb, "web1"), status_of(tree, lb, "web2")} == {"UP"})
    before = totals(tree, lb)
    with load_test(lb, SITE, seconds=4, concurrency=4) as load:
        pass
    after = totals(tree, lb)
    assert load.stats["failed"] == 0 and load.stats["requests"] > 100, load.stats
    served = {name: after[name] - before[name] for name in after}
    print(f"spread: {served}, {load.stats['requests']} requests, p99 {load.stats['p99_ms']} ms")
    assert min(served.values()) > 0.3 * load.stats["requests"], served


def test_the_web_hosts_log_the_clients_address_not_a_forged_one(fleet, provisioned):
    lb, web1, web2 = fleet["lb1"], fleet["web1"], fleet["web2"]
    for _ in range(4):  # round robin: both web hosts get some
        web2.run(
            f"curl -sf -o /dev/null -H 'Host: {SITE}' -H 'X-Forwarded-For: 6.6.6.6'"
            f" http://{lb.lan_ip}/"
        )
    # (The balancer's own health checks ask for /health.)
    logged = web1.run(f"grep '\"GET / ' /var/log/{SLUG}/nginx-access.log | tail -n 1").stdout
    assert logged.startswith(f"{web2.lan_ip} ") and "6.6.6.6" not in logged, logged


def test_a_drained_web_host_gets_no_new_request_and_ready_brings_it_back(tree, fleet, provisioned):
    lb = fleet["lb1"]
    # Long enough for the calls below (each a new SSH login) to end well before it does.
    with load_test(lb, SITE, seconds=24, concurrency=4) as load:
        time.sleep(2)
        drained = balancer(tree, lb, "set_backend(remote, 'web1', 'drain')")
        assert drained["status"] == "DRAIN" and drained["sessions"] == 0, drained
        during = totals(tree, lb)
        time.sleep(4)
        after = totals(tree, lb)
        ready = balancer(tree, lb, "set_backend(remote, 'web1', 'ready')")
        time.sleep(4)
        back = totals(tree, lb)
    assert load.stats["failed"] == 0, load.stats
    assert after["web1"] == during["web1"], "web1 got requests while drained"
    assert after["web2"] > during["web2"]
    assert ready["status"].startswith("UP"), ready
    assert back["web1"] > after["web1"], "web1 got no request once ready"


def test_the_deploy_account_cannot_open_the_admin_socket(tree, fleet, provisioned):
    lb = fleet["lb1"]
    assert lb.run("stat -c '%U:%G %a %F' /run/eep-haproxy.sock").stdout.strip() == (
        "root:root 600 socket"
    )
    connect = "import socket; socket.socket(socket.AF_UNIX).connect('/run/eep-haproxy.sock')"
    tried = lb.run(f'runuser -u {DEPLOY} -- python3 -c "{connect}"', check=False)
    assert tried.returncode != 0 and "PermissionError" in tried.stderr, tried.stderr
    listed = lb.run(f"runuser -u {DEPLOY} -- sudo -n -l").stdout
    rules = sorted(re.findall(r"/etc/eep/shop/balancer \w+", listed))
    assert rules == [f"/etc/eep/shop/balancer {verb}" for verb in ("drain", "ready", "state")]
    # Only this app's servers: a name HAProxy does not list there is refused.
    script = lb.run(
        f'echo \'{{"server": "stats"}}\' | runuser -u {DEPLOY} --'
        " sudo -n /etc/eep/shop/balancer drain",
        check=False,
    )
    assert script.returncode == 1 and "not a server of eep_shop" in script.stderr


def test_status_shows_each_backend_and_the_audit_of_the_balancer_passes(tree, fleet, provisioned):
    shown = as_deploy(tree, fleet["web1"], "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert re.search(r"backend\s+web1\s+UP\s+check L7OK 200", shown.stdout), shown.stdout
    assert re.search(r"backend\s+web2\s+UP", shown.stdout)
    lb = fleet["lb1"]
    key = str(lb.key_path)
    audit = tree.invoke("audit", "--host", "lb1", "--identity", key)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "HAProxy's runtime API only root opens" in audit.stdout
    web = tree.invoke("audit", "--host", "web1", "--identity", key)
    assert web.returncode == 0, web.stdout + web.stderr  # the nginx snippet matches too
    lb.run("sed -i 's/inter 1s/inter 5s/' /etc/haproxy/haproxy.cfg")
    try:
        drifted = tree.invoke("audit", "--host", "lb1", "--identity", key)
        assert drifted.returncode == 1
        assert "/etc/haproxy/haproxy.cfg differs from config/haproxy.cfg" in drifted.stdout
    finally:
        repaired = provision(tree, fleet, "--host", "lb1")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr


def test_a_web_host_failing_its_health_url_leaves_the_rotation(tree, fleet, provisioned):
    lb, web2 = fleet["lb1"], fleet["web2"]
    # Maintenance mode: web2's nginx answers 503 to everyone but its own host.
    assert as_deploy(tree, web2, "maintenance", "on").returncode == 0
    try:
        wait_for(lambda: status_of(tree, lb, "web2") == "DOWN", what="web2 taken out")
        before = totals(tree, lb)
        with load_test(lb, SITE, seconds=3, concurrency=4) as load:
            pass
        after = totals(tree, lb)
        assert load.stats["failed"] == 0, load.stats
        assert after["web2"] == before["web2"]
    finally:
        assert as_deploy(tree, web2, "maintenance", "off").returncode == 0
    wait_for(lambda: status_of(tree, lb, "web2").startswith("UP"), what="web2 back")


def test_a_killed_web_host_is_routed_around_and_rejoins(tree, fleet, provisioned):
    lb, web2 = fleet["lb1"], fleet["web2"]
    wait_for(lambda: status_of(tree, lb, "web2") == "UP")
    with load_test(lb, SITE, seconds=16, concurrency=4, timeline=True) as load:
        time.sleep(3)
        killed = time.monotonic()
        web2.stop()
        wait_for(lambda: status_of(tree, lb, "web2") == "DOWN", what="web2 seen down")
        detected = time.monotonic() - killed
    stats = load.stats
    slow = [entry for entry in stats["timeline"] if entry[1] > 1000]
    print(
        f"web2 stopped: seen down {detected:.1f} s after the stop began; {stats['failed']} of"
        f" {stats['requests']} requests failed, {len(slow)} took over 1 s, max {stats['max_ms']} ms"
    )
    assert stats["failed"] == 0, stats["failures"]
    web2.start()
    wait_for(lambda: status_of(tree, lb, "web2") == "UP", timeout=60, what="web2 rejoins")
    before = totals(tree, lb)
    with load_test(lb, SITE, seconds=3, concurrency=4) as load:
        pass
    assert load.stats["failed"] == 0
    assert totals(tree, lb)["web2"] > before["web2"]
