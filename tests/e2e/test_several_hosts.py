"""The app's fleet from one inventory (eep.hosts), on real hosts of one private LAN.

lb1 (HAProxy), web1 and web2 (nginx + uWSGI), work1 (Celery, beat and the broker), and an
outsider on the same LAN that is not in the inventory. One tree, one set of hosts for the
whole module, the tests run in order:

- provisioning every host at once for its roles, then again with nothing to change;
- rolling deploys through the balancer under load: the release steps run once, a running
  task finishes on its old release, a release failing its gate on web2 sends every host
  back, the fleet-wide lock and rollback, `--keep-going`;
- the balancer: spreading, drain and ready, the client's address, its root-only socket,
  a web host failing its health URL or killed under load;
- the broker: its password, its firewall against the outsider, a restart under Celery;
- status and audit over every host.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from e2e_support import REPO, bake_tree, build_sample_release, load_test, write_inventory

pytestmark = pytest.mark.e2e

SLUG = "shop"
SITE = f"{SLUG}.example.com"
ROOT = f"/srv/{SLUG}"
DEPLOY = f"{SLUG}-deploy"
SECRET = f"/etc/eep/{SLUG}/broker-secret.conf"
ROLES = {"lb1": ["lb"], "web1": ["web"], "web2": ["web"], "work1": ["worker", "broker"]}
APP_HOSTS = ("web1", "web2", "work1")
RELEASE_ID = r"\d{8}T\d{6}Z-"

WSGI = (REPO / "sample_app" / "app" / "wsgi.py").read_text()
HEALTH = '@application.get("/health")\ndef health() -> str:\n    return "ok\\n"\n'
# /health of a release that is sick on a host where shared/sick exists, once served by
# uWSGI: the health call before activation (a process of its own) passes, the gate fails.
SICK_HEALTH = """@application.get("/health")
def health() -> str:
    try:
        import uwsgi  # noqa: F401 - only there when uWSGI serves the app
    except ImportError:
        return "ok\\n"
    if (Path(os.environ["EEP_SHARED_DIR"]) / "sick").exists():
        abort(503)
    return "ok\\n"
"""
# The release steps leave a mark in the host's shared directory: they must run on one host.
STEPS = '[release]\nhealth = "/health"\npre_activate = ["date >> $EEP_SHARED_DIR/steps-ran"]\n'

# A Redis client in a few lines of the host's python3: the broker's first answer line
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


def release(version: str, out: Path, *, sick: bool = False) -> Path:
    """The sample app's tarball with an eep.toml (health path, a release step); `sick`:
    its /health fails under uWSGI on a host marked sick."""
    assert HEALTH in WSGI
    extra = {"eep.toml": STEPS.encode()}
    if sick:
        extra["app/wsgi.py"] = WSGI.replace(HEALTH, SICK_HEALTH).encode()
    return build_sample_release(version, out, extra)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return bake_tree(tmp_path_factory.mktemp("trees"), SLUG, celery_beat="y", uwsgi_processes="2")


@pytest.fixture(scope="module")
def hosts(testhost_factory_module, tree) -> dict:
    found = {name: testhost_factory_module(name, lan=SLUG) for name in (*ROLES, "outsider")}
    write_inventory(tree, found, ROLES, lb_health="/health")
    return found


def as_root(tree, hosts, *args: str) -> subprocess.CompletedProcess:
    # The harness gives every host the same root key.
    return tree.invoke(*args, "--identity", str(hosts["lb1"].key_path), timeout=900)


def as_deploy(tree, *args: str) -> subprocess.CompletedProcess:
    """An invoke command of the tree as the deploy account: over the inventory, or on the
    hosts given with --host."""
    return tree.invoke(*args, "--identity", str(tree.deploy_key))


def page(host, path: str = "/") -> str:
    """What the host's port 80 answers for the site (on lb1: through the balancer)."""
    url = shlex.quote(f"http://127.0.0.1{path}")
    return host.run(f"curl -s -H 'Host: {SITE}' {url}").stdout


def current(host) -> str:
    """The version the host's `current` release is of (v1, v2, ...)."""
    return host.run(f"readlink {ROOT}/current").stdout.strip().rsplit("-", 1)[-1]


def releases_on(host) -> list[str]:
    return host.run(f"ls {ROOT}/releases").stdout.split()


def steps_ran(host) -> int:
    """How many times the release steps ran on the host."""
    return len(host.run(f"cat {ROOT}/shared/steps-ran", check=False).stdout.splitlines())


def wait_for_file(host, path: str, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = host.run(f"cat {path}", check=False)
        if found.returncode == 0:
            return found.stdout
        time.sleep(0.5)
    return ""


def wait_for(check, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.5)


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


def status_of(tree, lb, server: str) -> str:
    return balancer(tree, lb, "backend_states(remote)")[server]["status"]


def totals(tree, lb) -> dict[str, int]:
    return {name: s["total"] for name, s in balancer(tree, lb, "backend_states(remote)").items()}


# -- provisioning ------------------------------------------------------------------------


def test_every_host_is_provisioned_at_once_then_nothing_changes(tree, hosts):
    started = time.monotonic()
    first = as_root(tree, hosts, "provision")
    took = time.monotonic() - started
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    # In parallel: work1 is under way before web1's last step.
    web1_last = max(i for i, line in enumerate(lines) if line.startswith("[web1] changed"))
    work1_first = min(i for i, line in enumerate(lines) if line.startswith("[work1]"))
    assert work1_first < web1_last
    print(f"provision of 4 hosts in parallel: {took:.1f} s")
    again = as_root(tree, hosts, "provision")
    assert again.returncode == 0, again.stdout + again.stderr
    for name in ROLES:
        assert re.search(rf"^\[{name}\] done: 0 changed, \d+ ok$", again.stdout, re.M), name
    assert "outsider" not in first.stdout + again.stdout


def test_each_host_has_what_its_roles_need_and_nothing_else(hosts):
    lb, web1, work1 = hosts["lb1"], hosts["web1"], hosts["work1"]
    # lb1: HAProxy and the deploy account, nothing of the app.
    assert lb.run("systemctl is-active haproxy").stdout.strip() == "active"
    for absent in (ROOT, "/usr/sbin/nginx", "/usr/bin/uwsgi-core", "/etc/supervisor"):
        assert lb.run(f"test -e {absent}", check=False).returncode != 0, absent
    # work1: no nginx, nothing on port 80; the web hosts: no broker.
    assert web1.run("systemctl is-active nginx").stdout.strip() == "active"
    absent = work1.run("dpkg-query -W -f='${Status}' nginx", check=False).stdout
    assert "installed" not in absent.split()
    assert work1.run("ss -Hltn 'sport = :80'").stdout.strip() == ""
    assert web1.run("ss -Hltn 'sport = :6379'").stdout.strip() == ""
    # The broker's password is on every app host, for the app only.
    for name in APP_HOSTS:
        owner = hosts[name].run(f"stat -c '%U:%G %a' {SECRET}").stdout.split()
        assert owner == [f"root:{SLUG}", "640"], name
    roles = work1.run(f"cat /etc/eep/{SLUG}/host.ini").stdout
    assert "set-placeholder = eep-web=no" in roles and "eep-worker=yes" in roles


# -- rolling deploys ---------------------------------------------------------------------


def test_the_first_deploy_builds_everywhere_and_serves_v1_through_the_balancer(tree, hosts, dist):
    done = as_deploy(tree, "deploy", "--release", str(release("v1", dist)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"^deployed {RELEASE_ID}v1 on web1, web2, work1 in ", done.stdout, re.M)
    assert [current(hosts[name]) for name in APP_HOSTS] == ["v1"] * 3
    for name in ("web1", "web2"):
        assert re.search(rf"^\[{name}\] gate +[\d.]+ s  GET /health: 200", done.stdout, re.M)
    # The release steps ran once, on the first web host.
    assert [steps_ran(hosts[name]) for name in APP_HOSTS] == [1, 0, 0]
    # web hosts: uWSGI serving, no Celery; work1: Celery and beat, no web worker.
    for name in ("web1", "web2"):
        assert "celery" not in hosts[name].run(f"ps -u {SLUG} -o args=").stdout, name
    on_work1 = hosts["work1"].run(f"ps -u {SLUG} -o args=").stdout
    assert " worker " in on_work1 and " beat " in on_work1
    assert hosts["work1"].run(f"runuser -u {SLUG} -- {WORKERS}").stdout.strip() == "0"
    lb = hosts["lb1"]
    wait_for(lambda: {status_of(tree, lb, "web1"), status_of(tree, lb, "web2")} == {"UP"})
    assert {page(lb).split(" pid")[0] for _ in range(6)} == {"sample v1"}


def test_requests_through_the_balancer_are_spread_over_both_web_hosts(tree, hosts):
    lb = hosts["lb1"]
    before = totals(tree, lb)
    with load_test(lb, SITE, seconds=4, concurrency=4) as load:
        pass
    after = totals(tree, lb)
    assert load.stats["failed"] == 0 and load.stats["requests"] > 100, load.stats
    served = {name: after[name] - before[name] for name in after}
    print(f"spread: {served}, {load.stats['requests']} requests, p99 {load.stats['p99_ms']} ms")
    assert min(served.values()) > 0.3 * load.stats["requests"], served


def test_the_web_hosts_log_the_clients_address_not_a_forged_one(hosts):
    lb, web1, web2 = hosts["lb1"], hosts["web1"], hosts["web2"]
    for _ in range(4):  # round robin: both web hosts get some
        web2.run(
            f"curl -sf -o /dev/null -H 'Host: {SITE}' -H 'X-Forwarded-For: 6.6.6.6'"
            f" http://{lb.lan_ip}/"
        )
    # (The balancer's own health checks ask for /health.)
    logged = web1.run(f"grep '\"GET / ' /var/log/{SLUG}/nginx-access.log | tail -n 1").stdout
    assert logged.startswith(f"{web2.lan_ip} ") and "6.6.6.6" not in logged, logged


def test_a_task_queued_through_the_balancer_runs_on_work1(hosts):
    lb, work1 = hosts["lb1"], hosts["work1"]
    assert page(lb, "/task?id=first&seconds=0").startswith("queued first")
    assert '"version": "v1"' in wait_for_file(work1, f"{ROOT}/shared/var/tasks/first.json")
    for name in ("web1", "web2"):
        gone = hosts[name].run(f"test -e {ROOT}/shared/var/tasks/first.json", check=False)
        assert gone.returncode != 0, name


def test_a_lock_held_on_one_host_refuses_the_whole_deploy(tree, hosts, dist):
    web2 = hosts["web2"]
    web2.run(
        f"runuser -u {DEPLOY} -- mkdir {ROOT}/.deploy-lock && echo"
        f' \'{{"who": "carol@ci", "since": "2026-01-01T00:00:00Z"}}\''
        f" > {ROOT}/.deploy-lock/holder.json"
    )
    before = {name: releases_on(hosts[name]) for name in APP_HOSTS}
    try:
        refused = as_deploy(tree, "deploy", "--release", str(release("v3", dist)))
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            "error: web2: another deploy holds the lock: carol@ci since 2026-01-01T00:00:00Z"
            " (if it is dead: invoke deploy --break-lock)"
        )
        # Nothing changed: no release uploaded, the other hosts' locks released again.
        assert {name: releases_on(hosts[name]) for name in APP_HOSTS} == before
        for name in ("web1", "work1"):
            held = hosts[name].run(f"test -e {ROOT}/.deploy-lock", check=False)
            assert held.returncode == 1, name
    finally:
        web2.run(f"rm -rf {ROOT}/.deploy-lock")


def test_a_release_failing_its_gate_on_web2_stops_and_every_host_is_back(tree, hosts, dist):
    web2 = hosts["web2"]
    web2.run(f"touch {ROOT}/shared/sick")
    try:
        with load_test(hosts["lb1"], SITE, seconds=45, concurrency=4) as load:
            failed = as_deploy(tree, "deploy", "--release", str(release("v2bad", dist, sick=True)))
    finally:
        web2.run(f"rm -f {ROOT}/shared/sick")
    assert failed.returncode == 1, failed.stdout
    assert re.fullmatch(
        "error: deploy stopped: web2 failed its health gate: GET /health answers 503;"
        f" every host serves {RELEASE_ID}v1 again",
        failed.stderr.strip(),
    ), failed.stderr
    # web1 switched (drained, gate, back in the balancer, UP) and went back the same way.
    assert re.search(r"^\[web1\] balancer .* UP at lb1$", failed.stdout, re.M), failed.stdout
    assert "[work1] activate" not in failed.stdout  # the workers' turn never came
    assert [current(hosts[name]) for name in APP_HOSTS] == ["v1"] * 3
    for name in ("web1", "web2"):
        bad = next(r for r in releases_on(hosts[name]) if r.endswith("-v2bad"))
        reason = hosts[name].run(f"cat {ROOT}/releases/{bad}/.eep/failed").stdout
        assert "failed its health gate: GET /health answers 503" in reason, (name, reason)
    print(f"gate failure: {load.stats['requests']} requests, p99 {load.stats['p99_ms']} ms")
    assert load.stats["failed"] == 0, load.stats
    assert set(load.stats["answers"]) <= {"sample v1", "sample v2bad"}, load.stats


def test_v2_rolls_under_load_its_steps_run_once_and_a_running_task_finishes_on_v1(
    tree, hosts, dist
):
    lb, work1 = hosts["lb1"], hosts["work1"]
    steps_before = [steps_ran(hosts[name]) for name in APP_HOSTS]
    queued = page(lb, "/task?seconds=20&id=rolling")
    assert queued.startswith("queued rolling by v1"), queued
    started = f"{ROOT}/shared/var/tasks/rolling.started"
    work1.run(f"for i in $(seq 60); do test -f {started} && break; sleep 0.5; done")
    work1.run(f"test -f {started}")  # a worker on work1 runs it
    with load_test(lb, SITE, seconds=40, concurrency=4) as load:
        done = as_deploy(tree, "deploy", "--release", str(release("v2", dist)))
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"rolling v2: {load.stats['requests']} requests, p99 {load.stats['p99_ms']} ms")
    assert load.stats["failed"] == 0, load.stats
    assert set(load.stats["answers"]) <= {"sample v1", "sample v2"}, load.stats
    assert load.stats["answers"].get("sample v2"), load.stats
    assert {page(lb).split(" pid")[0] for _ in range(8)} == {"sample v2"}
    assert [current(hosts[name]) for name in APP_HOSTS] == ["v2"] * 3
    # web2 switched only once web1 had passed its gate; work1 last.
    assert done.stdout.index("[web1] gate") < done.stdout.index("[web2] activate")
    assert done.stdout.index("[web2] activate") < done.stdout.index("[work1] activate")
    # The steps ran once more, on web1 only.
    assert [steps_ran(hosts[name]) for name in APP_HOSTS] == [
        steps_before[0] + 1,
        *steps_before[1:],
    ]
    # work1's Celery worker switched once the running task was done: it ran on v1.
    marker = wait_for_file(work1, f"{ROOT}/shared/var/tasks/rolling.json", 45)
    assert json.loads(marker)["version"] == "v1"


def test_a_fleet_rollback_takes_every_host_to_the_same_earlier_release(tree, hosts):
    done = as_deploy(tree, "rollback")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"^rolled back to {RELEASE_ID}v1 on web1, web2, work1 in ", done.stdout, re.M)
    assert [current(hosts[name]) for name in APP_HOSTS] == ["v1"] * 3
    assert {page(hosts["lb1"]).split(" pid")[0] for _ in range(6)} == {"sample v1"}


# -- the balancer ------------------------------------------------------------------------


def test_a_drained_web_host_gets_no_new_request_and_ready_brings_it_back(tree, hosts):
    lb = hosts["lb1"]
    wait_for(lambda: {status_of(tree, lb, "web1"), status_of(tree, lb, "web2")} == {"UP"})
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


def test_the_deploy_account_cannot_open_the_admin_socket(hosts):
    lb = hosts["lb1"]
    assert lb.run("stat -c '%U:%G %a %F' /run/eep-haproxy.sock").stdout.strip() == (
        "root:root 600 socket"
    )
    connect = "import socket; socket.socket(socket.AF_UNIX).connect('/run/eep-haproxy.sock')"
    tried = lb.run(f'runuser -u {DEPLOY} -- python3 -c "{connect}"', check=False)
    assert tried.returncode != 0 and "PermissionError" in tried.stderr, tried.stderr
    listed = lb.run(f"runuser -u {DEPLOY} -- sudo -n -l").stdout
    rules = sorted(re.findall(rf"/etc/eep/{SLUG}/balancer \w+", listed))
    assert rules == [f"/etc/eep/{SLUG}/balancer {verb}" for verb in ("drain", "ready", "state")]
    # Only this app's servers: a name HAProxy does not list there is refused.
    script = lb.run(
        f'echo \'{{"server": "stats"}}\' | runuser -u {DEPLOY} --'
        f" sudo -n /etc/eep/{SLUG}/balancer drain",
        check=False,
    )
    assert script.returncode == 1 and f"not a server of eep_{SLUG}" in script.stderr


def test_a_web_host_failing_its_health_url_leaves_the_rotation(tree, hosts):
    lb = hosts["lb1"]
    # Maintenance mode: web2's nginx answers 503 to everyone but its own host.
    assert as_deploy(tree, "maintenance", "on", "--host", "web2").returncode == 0
    try:
        wait_for(lambda: status_of(tree, lb, "web2") == "DOWN", what="web2 taken out")
        before = totals(tree, lb)
        with load_test(lb, SITE, seconds=3, concurrency=4) as load:
            pass
        after = totals(tree, lb)
        assert load.stats["failed"] == 0, load.stats
        assert after["web2"] == before["web2"]
    finally:
        assert as_deploy(tree, "maintenance", "off", "--host", "web2").returncode == 0
    wait_for(lambda: status_of(tree, lb, "web2").startswith("UP"), what="web2 back")


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("web2", "stop"),  # shut down: nginx and uWSGI close their connections
        ("web1", "kill"),  # power cut: no process says goodbye, the host leaves the LAN
    ],
)
def test_a_web_host_switched_off_under_load_is_routed_around_and_rejoins(tree, hosts, name, how):
    lb, host = hosts["lb1"], hosts[name]
    wait_for(lambda: {status_of(tree, lb, "web1"), status_of(tree, lb, "web2")} == {"UP"})
    with load_test(lb, SITE, seconds=16, concurrency=4, timeline=True) as load:
        time.sleep(3)
        switched_off = time.monotonic()
        getattr(host, how)()
        wait_for(lambda: status_of(tree, lb, name) == "DOWN", what=f"{name} seen down")
        detected = time.monotonic() - switched_off
    stats = load.stats
    slow = [entry for entry in stats["timeline"] if entry[1] > 1000]
    print(
        f"{name} ({how}): seen down {detected:.1f} s after; {stats['failed']} of"
        f" {stats['requests']} requests failed, {len(slow)} took over 1 s, max {stats['max_ms']} ms"
    )
    assert stats["failed"] == 0, stats["failures"]
    host.start()
    wait_for(lambda: status_of(tree, lb, name) == "UP", timeout=90, what=f"{name} rejoins")
    before = totals(tree, lb)
    with load_test(lb, SITE, seconds=3, concurrency=4) as load:
        pass
    assert load.stats["failed"] == 0
    assert totals(tree, lb)[name] > before[name]


# -- the broker --------------------------------------------------------------------------


def test_the_broker_wants_the_password_and_the_outsider_cannot_reach_it(hosts):
    web1, work1, outsider = hosts["web1"], hosts["work1"], hosts["outsider"]
    broker = work1.lan_ip
    assert web1.run(PING.format(ip=broker)).stdout.strip().startswith("-NOAUTH")
    # The outsider is on the same LAN: only the firewall keeps it out (its packets dropped).
    assert outsider.run(PING.format(ip=broker)).stdout.strip() in ("TimeoutError", "timeout")
    assert outsider.run(BANNER.format(ip=broker), check=False).stdout == "SSH-"
    listening = work1.run("ss -Hltn 'sport = :6379'").stdout.splitlines()
    assert [line.split()[3] for line in listening] == [f"{broker}:6379"]


def test_the_password_is_in_no_file_of_the_tree(tree, hosts):
    token = hosts["work1"].run(f"cat {SECRET}").stdout.split()[1]
    assert len(token) == 64
    for path in tree.path.rglob("*"):
        if path.is_file() and ".venv" not in path.parts:
            assert token not in path.read_text(errors="replace"), path


def test_celery_survives_a_broker_restart(hosts):
    lb, work1 = hosts["lb1"], hosts["work1"]
    work1.run(f"supervisorctl restart {SLUG}-redis")
    assert page(lb, "/task?id=after&seconds=0").startswith("queued after")
    assert '"version": "v1"' in wait_for_file(work1, f"{ROOT}/shared/var/tasks/after.json")


# -- settings ----------------------------------------------------------------------------


def test_settings_go_to_every_app_host_and_a_host_that_differs_is_named(tree, hosts):
    done = as_deploy(tree, "env.set", "SAMPLE_COLOR=teal", "--restart")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in APP_HOSTS:
        assert re.search(rf"^\[{name}\] set +SAMPLE_COLOR", done.stdout, re.M), done.stdout
    assert {page(hosts["lb1"], "/setting/color").strip() for _ in range(4)} == {"teal"}
    work1 = hosts["work1"]
    celery = work1.run(f"pgrep -u {SLUG} -f 'celery.*worker' | head -1").stdout.strip()
    assert "SAMPLE_COLOR=teal" in work1.run(f"tr '\\0' '\\n' < /proc/{celery}/environ").stdout
    listed = as_deploy(tree, "env")
    assert listed.returncode == 0 and listed.stdout.split() == ["SAMPLE_COLOR"], listed.stdout
    # Changed on web2 behind eep's back: `invoke env` names it, and env.set repairs it.
    env = f"{ROOT}/shared/env"
    hosts["web2"].run(
        f"runuser -u {SLUG} -- sh -c 'v=$(sed s/teal/red/ {env}); echo \"$v\" > {env}'"
    )
    differ = as_deploy(tree, "env")
    assert differ.returncode == 1
    assert "SAMPLE_COLOR    (differs: one value on web1, work1, another on web2)" in differ.stdout
    assert differ.stderr.strip() == (
        "error: not the same on every host: SAMPLE_COLOR (env.set sets it on all)"
    )
    again = as_deploy(tree, "env.set", "SAMPLE_COLOR=teal")
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"^\[web2\] set ", again.stdout, re.M), again.stdout
    assert re.search(r"^\[web1\] unchanged ", again.stdout, re.M), again.stdout
    assert as_deploy(tree, "env").returncode == 0


# -- status and audit --------------------------------------------------------------------


def test_status_and_audit_cover_every_host(tree, hosts):
    status = as_deploy(tree, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    # The fleet's table: one line per host, after each host's own lines ("[web1] ...").
    rows = {line.split()[0]: line for line in status.stdout.splitlines() if "Z-v1 " in line}
    rows = {name: line for name, line in rows.items() if not name.startswith("[")}
    assert set(rows) == set(APP_HOSTS), status.stdout
    assert " up: GET /health 200" in rows["web1"] and " up: GET /health 200" in rows["web2"]
    assert "celery running" in rows["work1"] and "broker RUNNING" in rows["work1"]
    # The balancer's row, and its view of each web host.
    assert re.search(
        r"^lb1 +lb +- +up: HAProxy: 2 of 2 web hosts take requests$", status.stdout, re.M
    )
    assert re.search(r"backend\s+web1\s+UP\s+check L7OK 200", status.stdout), status.stdout
    assert re.search(r"backend\s+web2\s+UP", status.stdout)
    audit = as_root(tree, hosts, "audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    for line in (
        "[lb1] PASS  HAProxy's runtime API only root opens",
        "[work1] PASS  broker listens on",
        "[work1] PASS  broker port open to the app's hosts only (firewall)",
        f"[web1] PASS  broker password root:{SLUG} 0640",
        "[web2] audit:",
        "[work1] audit:",
    ):
        assert line in audit.stdout, line


def test_the_audit_finds_a_changed_balancer_config_and_provision_repairs_it(tree, hosts):
    lb = hosts["lb1"]
    lb.run("sed -i 's/inter 1s/inter 5s/' /etc/haproxy/haproxy.cfg")
    try:
        drifted = as_root(tree, hosts, "audit", "--host", "lb1")
        assert drifted.returncode == 1
        assert "/etc/haproxy/haproxy.cfg differs from config/haproxy.cfg" in drifted.stdout
    finally:
        repaired = as_root(tree, hosts, "provision", "--host", "lb1")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert as_root(tree, hosts, "audit", "--host", "lb1").returncode == 0


# -- last: it leaves the fleet on two releases -------------------------------------------


def test_keep_going_leaves_the_failed_host_on_its_release_and_switches_the_others(
    tree, hosts, dist
):
    web1 = hosts["web1"]
    web1.run(f"touch {ROOT}/shared/sick")
    try:
        went_on = as_deploy(
            tree, "deploy", "--release", str(release("v4", dist, sick=True)), "--keep-going"
        )
    finally:
        web1.run(f"rm -f {ROOT}/shared/sick")
    assert went_on.returncode == 1, went_on.stdout
    assert re.fullmatch(
        f"error: deploy went on \\(--keep-going\\): {RELEASE_ID}v4 on web2, work1;"
        f" web1 failed its health gate: GET /health answers 503; web1 on {RELEASE_ID}v1",
        went_on.stderr.strip(),
    ), went_on.stderr
    assert [current(hosts[name]) for name in APP_HOSTS] == ["v1", "v4", "v4"]
    assert page(web1).startswith("sample v1 ") and page(hosts["web2"]).startswith("sample v4 ")


def test_a_web_host_that_becomes_a_worker_host_leaves_nginx_and_the_balancer(tree, hosts):
    lb, web2, work1 = hosts["lb1"], hosts["web2"], hosts["work1"]
    config = tree.path / "invoke.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["eep"]["hosts"]["web2"]["roles"] = ["worker"]
    config.write_text(yaml.safe_dump(settings))
    done = as_root(tree, hosts, "provision")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(
        r"^\[web2\] .*sites-enabled/shop.* removed: this host does not have the web",
        done.stdout,
        re.M,
    ), done.stdout
    # The balancer sends nothing to web2 any more; web2's nginx does not serve the site.
    assert list(balancer(tree, lb, "backend_states(remote)")) == ["web1"]
    assert web2.run(f"test -e /etc/nginx/sites-enabled/{SLUG}", check=False).returncode == 1
    answer = web2.run(f"curl -s -H 'Host: {SITE}' http://127.0.0.1/", check=False)
    assert answer.returncode == 52 and answer.stdout == ""  # eep's default site: no answer
    # web2 is the first worker host now: Celery and beat run there, beat no longer on work1.
    beat = f"pgrep -u {SLUG} -f 'celery.* beat'"
    wait_for(lambda: web2.run(beat, check=False).returncode == 0, what="beat on web2")
    wait_for(lambda: work1.run(beat, check=False).returncode == 1, what="no beat on work1")
    assert web2.run(f"runuser -u {SLUG} -- {WORKERS}").stdout.strip() == "0"
    again = as_root(tree, hosts, "provision")
    assert again.returncode == 0, again.stdout + again.stderr
    for name in ROLES:
        assert re.search(rf"^\[{name}\] done: 0 changed, \d+ ok$", again.stdout, re.M), name
