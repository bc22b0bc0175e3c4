"""Hosts provisioned for their roles (eep.hosts): web1 serves, work1 runs Celery and the
broker, on one LAN with an outsider that is not in the inventory.

The tests share the hosts and run in order: provisioning both at once (and again, with
nothing to change), a deploy on each, a task queued on web1 and run on work1, the
broker's locks (private address, password, firewall), a broker restart, status and
audit over the fleet.
"""

from __future__ import annotations

import re
import shlex
import time

import pytest
import yaml
from e2e_support import bake_tree, build_sample_release

pytestmark = pytest.mark.e2e

SLUG = "crew"
DOMAIN = f"{SLUG}.example.com"
ROOT = f"/srv/{SLUG}"
SECRET = f"/etc/eep/{SLUG}/broker-secret.conf"
# A Redis client in three lines of the host's python3: the broker's first answer line
# (PING without a password), or what the connection did.
PING = """python3 - <<'EOF'
import socket
try:
    s = socket.create_connection(({ip!r}, 6379), timeout=4)
    s.sendall(b"PING\\r\\n")
    print(s.recv(200).decode().strip())
except OSError as error:
    print(type(error).__name__)
EOF"""
# How many web workers the uWSGI master runs, from its stats socket.
WORKERS = f"""python3 - <<'EOF'
import json, socket
s = socket.socket(socket.AF_UNIX)
s.connect("/run/{SLUG}/uwsgi/stats.sock")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(len(json.loads(data)["workers"]))
EOF"""
# The SSH banner at ip:22: the host reaches that address at all.
BANNER = "timeout 4 bash -c 'exec 3<>/dev/tcp/{ip}/22 && head -c 4 <&3'"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return bake_tree(tmp_path_factory.mktemp("trees"), SLUG, celery_beat="y", uwsgi_processes="2")


@pytest.fixture(scope="module")
def hosts(testhost_factory_module, tree) -> dict:
    found = {name: testhost_factory_module(name, lan=SLUG) for name in ("web1", "work1")}
    found["outsider"] = testhost_factory_module("outsider", lan=SLUG)
    roles = {"web1": ["web"], "work1": ["worker", "broker"]}
    config = tree.path / "invoke.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["eep"]["hosts"] = {
        name: {
            "ssh": f"127.0.0.1:{found[name].ssh_port}",
            "private": found[name].lan_ip,
            "roles": roles[name],
        }
        for name in roles
    }
    config.write_text(yaml.safe_dump(settings))
    for host in found.values():
        tree.trust(host)
    return found


def as_root(tree, hosts, *args: str):
    return tree.invoke(*args, "--identity", str(hosts["web1"].key_path))


def as_deploy(tree, *args: str):
    return tree.invoke(*args, "--identity", str(tree.deploy_key))


def page(host, path: str = "/") -> str:
    url = shlex.quote(f"http://127.0.0.1{path}")
    return host.run(f"curl -s -H 'Host: {DOMAIN}' {url}").stdout


def app_processes(host) -> str:
    return host.run(f"ps -u {SLUG} -o args=", check=False).stdout


def wait_for(host, path: str, seconds: float = 40) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = host.run(f"cat {path}", check=False)
        if found.returncode == 0:
            return found.stdout
        time.sleep(0.5)
    return ""


def test_both_hosts_are_provisioned_at_once_then_nothing_changes(tree, hosts):
    started = time.monotonic()
    first = as_root(tree, hosts, "provision")
    took = time.monotonic() - started
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    # In parallel: work1 is under way before web1's last step.
    web1_last = max(i for i, line in enumerate(lines) if line.startswith("[web1] changed"))
    work1_first = min(i for i, line in enumerate(lines) if line.startswith("[work1]"))
    assert work1_first < web1_last
    print(f"provision of web1 + work1 in parallel: {took:.1f} s")
    again = as_root(tree, hosts, "provision")
    assert again.returncode == 0, again.stdout + again.stderr
    for name in ("web1", "work1"):
        assert re.search(rf"^\[{name}\] done: 0 changed, \d+ ok$", again.stdout, re.M), name


def test_each_host_has_what_its_roles_need_and_nothing_else(hosts):
    web1, work1 = hosts["web1"], hosts["work1"]
    assert web1.run("systemctl is-active nginx").stdout.strip() == "active"
    absent = work1.run("dpkg-query -W -f='${Status}' nginx", check=False).stdout
    assert "installed" not in absent.split()
    assert work1.run("ss -Hltn 'sport = :80'").stdout.strip() == ""
    # Neither the broker nor its secret's source is on web1; the password is, for the app.
    assert web1.run("ss -Hltn 'sport = :6379'").stdout.strip() == ""
    for host in (web1, work1):
        assert host.run(f"stat -c '%U:%G %a' {SECRET}").stdout.split() == [f"root:{SLUG}", "640"]
    roles = work1.run(f"cat /etc/eep/{SLUG}/host.ini").stdout
    assert "set-placeholder = eep-web=no" in roles and "eep-worker=yes" in roles


def test_a_deploy_on_each_host_serves_on_web1_and_runs_celery_on_work1(tree, hosts, dist):
    release = build_sample_release("v1", dist)
    for name in ("web1", "work1"):
        done = as_deploy(tree, "deploy", "--release", str(release), "--host", name)
        assert done.returncode == 0, done.stdout + done.stderr
    web1, work1 = hosts["web1"], hosts["work1"]
    assert page(web1).startswith("sample v1 ")
    # web1: uWSGI serving, no Celery; work1: Celery and beat, no web worker.
    assert "celery" not in app_processes(web1)
    on_work1 = app_processes(work1)
    assert " worker " in on_work1 and " beat " in on_work1
    assert work1.run(f"runuser -u {SLUG} -- {WORKERS}").stdout.strip() == "0"


def test_a_task_queued_on_web1_runs_on_work1(hosts):
    web1, work1 = hosts["web1"], hosts["work1"]
    assert page(web1, "/task?id=first&seconds=0").startswith("queued first")
    marker = wait_for(work1, f"{ROOT}/shared/var/tasks/first.json")
    assert '"version": "v1"' in marker
    assert web1.run(f"test -e {ROOT}/shared/var/tasks/first.json", check=False).returncode != 0


def test_the_broker_wants_the_password_and_the_outsider_cannot_reach_it(hosts):
    web1, work1, outsider = hosts["web1"], hosts["work1"], hosts["outsider"]
    broker = work1.lan_ip
    assert web1.run(PING.format(ip=broker)).stdout.strip().startswith("-NOAUTH")
    # The outsider is on the same LAN: only the firewall keeps it out (its packets dropped).
    assert outsider.run(PING.format(ip=broker)).stdout.strip() in ("TimeoutError", "timeout")
    assert outsider.run(BANNER.format(ip=broker), check=False).stdout == "SSH-"
    listening = work1.run("ss -Hltn 'sport = :6379'").stdout.splitlines()
    assert [line.split()[3] for line in listening] == [f"{broker}:6379"]


def test_celery_survives_a_broker_restart(hosts):
    web1, work1 = hosts["web1"], hosts["work1"]
    work1.run(f"supervisorctl restart {SLUG}-redis")
    assert page(web1, "/task?id=after&seconds=0").startswith("queued after")
    assert '"version": "v1"' in wait_for(work1, f"{ROOT}/shared/var/tasks/after.json", 60)


def test_the_password_is_in_no_file_of_the_tree(tree, hosts):
    token = hosts["work1"].run(f"cat {SECRET}").stdout.split()[1]
    assert len(token) == 64
    for path in tree.path.rglob("*"):
        if path.is_file() and ".venv" not in path.parts:
            assert token not in path.read_text(errors="replace"), path


def test_status_and_audit_cover_both_hosts(tree, hosts):
    status = as_deploy(tree, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    # The fleet's table: one line per host, after each host's own lines ("[web1] ...").
    rows = {line.split()[0]: line for line in status.stdout.splitlines() if "Z-v1 " in line}
    rows = {name: line for name, line in rows.items() if not name.startswith("[")}
    assert set(rows) == {"web1", "work1"}
    assert " up: GET /health 200" in rows["web1"]
    assert "celery running" in rows["work1"] and "broker RUNNING" in rows["work1"]
    audit = as_root(tree, hosts, "audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    for line in (
        "[work1] PASS  broker listens on",
        "[work1] PASS  broker port open to the app's hosts only (firewall)",
        f"[web1] PASS  broker password root:{SLUG} 0640",
        "[web1] audit:",
        "[work1] audit:",
    ):
        assert line in audit.stdout, line
