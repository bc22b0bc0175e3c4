"""The load balancer (lb role): HAProxy's configuration made from eep.hosts and checked by
haproxy itself, the web hosts' trust in its X-Forwarded-For, the deploy account's rules,
the script behind them and the inventory's rules about the lb."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import configcheck
import pytest
from treecode import run_in_tree

FLEET = {
    "lb1": {"ssh": "203.0.113.10", "private": "10.0.0.10", "roles": ["lb"]},
    "web1": {"ssh": "203.0.113.11", "private": "10.0.0.11", "roles": ["web"]},
    "web2": {"ssh": "203.0.113.12", "private": "10.0.0.12", "roles": ["web"]},
}


def rendered(tree: Path, source: str, hosts: object, health: str = "/") -> str:
    """manifest.render() of a file made from eep.hosts, for the fleet `hosts`."""
    code = (
        "import json, sys\n"
        "from eep import fleet, manifest\n"
        f"f = fleet.load(json.loads(sys.stdin.read()), {health!r})\n"
        f"print(manifest.render(manifest.host_file({source!r}), fleet=f), end='')\n"
    )
    return run_in_tree(tree, code, hosts)


def fleet_error(tree: Path, hosts: object, health: str = "/") -> str:
    code = (
        "import json, sys\n"
        "from eep import fleet\n"
        "try:\n"
        f"    fleet.load(json.loads(sys.stdin.read()), {health!r}); print('ok')\n"
        "except fleet.FleetError as e:\n"
        "    print(e)\n"
    )
    return run_in_tree(tree, code, hosts).strip()


@pytest.fixture
def tree(bake):
    return bake(use_celery="n").project_path


def test_haproxy_gets_one_checked_server_per_web_host_and_haproxy_accepts_it(tree, tmp_path):
    text = rendered(tree, "config/haproxy.cfg", FLEET, "/health/")
    servers = [line.split() for line in text.splitlines() if line.strip().startswith("server ")]
    assert servers == [
        ["server", "web1", "10.0.0.11:80", "check"],
        ["server", "web2", "10.0.0.12:80", "check"],
    ]
    assert "http-check send meth GET uri /health/ ver HTTP/1.1 hdr Host shop.example.com" in text
    # The stats socket is root's alone; retries go to another host, safe methods only
    # beyond a failed connection.
    assert "stats socket /run/eep-haproxy.sock mode 600 level admin" in text
    assert "option redispatch 1" in text
    assert "http-request disable-l7-retry unless METH_GET || METH_OPTIONS" in text
    # Longer than nginx's own wait for uWSGI (harakiri 30 + 10).
    assert "timeout server 50s" in text
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    assert configcheck.check_haproxy(path) is None
    path.write_text(text.replace("balance roundrobin", "balance roundrobyn"))
    assert configcheck.check_haproxy(path) is not None


def test_web_hosts_believe_x_forwarded_for_from_the_balancer_only(tree, tmp_path):
    snippet = rendered(tree, "config/nginx-balancer.conf", FLEET)
    assert "set_real_ip_from 10.0.0.10;\nreal_ip_header X-Forwarded-For;\n" in snippet
    assert "real_ip_recursive" not in snippet  # the last address: the balancer's own
    alone = {"web1": {"ssh": "203.0.113.11", "private": "10.0.0.11", "roles": ["web"]}}
    assert "set_real_ip_from" not in rendered(tree, "config/nginx-balancer.conf", alone)
    site = (tree / "config" / "nginx.conf").read_text()
    assert "include /etc/eep/shop/nginx-balancer.conf;" in site
    assert configcheck.check_nginx_site(tree / "config" / "nginx.conf") is None


def test_the_deploy_account_reaches_the_runtime_api_by_three_literal_rules(tree):
    path = tree / "config" / "sudoers-lb"
    assert configcheck.check_sudoers(path) is None
    code = "from eep.sudoers import rules\nfor r in rules('config/sudoers-lb'): print(*r)"
    assert run_in_tree(tree, code).splitlines() == [
        "root /etc/eep/shop/balancer state",
        "root /etc/eep/shop/balancer drain",
        "root /etc/eep/shop/balancer ready",
    ]
    assert "*" not in path.read_text()


@pytest.mark.parametrize(
    ("change", "health", "error"),
    [
        ({"web1": {"roles": ["web", "lb"]}}, "/", "lb and web on one host"),
        ({"lb2": {"ssh": "h9", "private": "10.0.0.9", "roles": ["lb"]}}, "/", "more than one"),
        ({}, "/a b", "eep.lb_health: '/a b' is not a URL path"),
        ({}, "health", "is not a URL path"),
        ({}, "/x#y", "is not a URL path"),
    ],
)
def test_the_inventory_check_refuses_a_bad_balancer(tree, change, health, error):
    hosts = {name: {**FLEET.get(name, {}), **value} for name, value in change.items()}
    assert error in fleet_error(tree, {**FLEET, **hosts}, health)


class FakeHaproxy:
    """A unix socket answering the runtime API's commands the script sends."""

    STAT = (
        "# pxname,svname,qcur,scur,stot,status,check_status,check_code,addr,\n"
        "eep_shop,web1,0,{web1},40,{state},L7OK,200,10.0.0.11:80,\n"
        "eep_shop,web2,0,0,38,UP,L7OK,200,10.0.0.12:80,\n"
        "eep_shop,BACKEND,0,0,78,UP,,,,\n"
    )


def run_script(tree: Path, tmp_path: Path, verb: str, stdin: str, sessions: list[int]):
    """config/balancer.py against a fake runtime API whose web1 runs `sessions` requests
    (one number per `show stat`, the last repeated); (exit, stdout, stderr, commands)."""
    sock = tmp_path / f"admin-{verb}.sock"
    sock.unlink(missing_ok=True)
    script = (tree / "config" / "balancer.py").read_text()
    script = script.replace('"/run/eep-haproxy.sock"', repr(str(sock)))
    (tmp_path / "balancer.py").write_text(script)
    server = (
        "import socket, sys, json\n"
        "from pathlib import Path\n"
        f"stat, sessions = {FakeHaproxy.STAT!r}, {sessions!r}\n"
        "state, seen = 'UP', []\n"
        f"s = socket.socket(socket.AF_UNIX); s.bind({str(sock)!r}); s.listen()\n"
        "print(flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept(); cmd = c.makefile().readline().strip(); seen.append(cmd)\n"
        f"    Path({str(tmp_path / 'seen')!r}).write_text(json.dumps(seen))\n"
        "    if cmd.startswith('set server'):\n"
        "        state = cmd.split()[-1].upper().replace('READY', 'UP')\n"
        "    else:\n"
        "        now = sessions.pop(0) if len(sessions) > 1 else sessions[0]\n"
        "        c.sendall(stat.format(web1=now, state=state).encode())\n"
        "    c.close()\n"
    )
    (tmp_path / "seen").unlink(missing_ok=True)
    fake = subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE, text=True)
    try:
        fake.stdout.readline()
        proc = subprocess.run(
            [sys.executable, str(tmp_path / "balancer.py"), verb],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        fake.kill()
    seen_file = tmp_path / "seen"
    seen = json.loads(seen_file.read_text()) if seen_file.exists() else []
    return proc.returncode, proc.stdout, proc.stderr, seen


def test_the_script_drains_until_no_request_runs_there(tree, tmp_path):
    code, out, err, seen = run_script(tree, tmp_path, "drain", '{"server": "web1"}', [2, 2, 1, 0])
    assert code == 0, err
    assert json.loads(out)["status"] == "DRAIN" and json.loads(out)["sessions"] == 0
    assert "set server eep_shop/web1 state drain" in seen
    assert len([cmd for cmd in seen if cmd.startswith("show stat")]) >= 4


def test_the_script_gives_up_after_its_timeout_leaving_the_host_drained(tree, tmp_path):
    code, _, err, _ = run_script(tree, tmp_path, "drain", '{"server": "web1", "timeout": 0.3}', [3])
    assert code == 1
    assert err.strip() == "error: web1 still runs 3 requests after 0.3 s (drained)"


@pytest.mark.parametrize(
    ("stdin", "error"),
    [
        ('{"server": "web3"}', "web3 is not a server of eep_shop (it has: web1, web2)"),
        ('{"server": "BACKEND"}', "bad server name 'BACKEND'"),
        ('{"server": "web1/x"}', "bad server name 'web1/x'"),
        ('{"server": "web1 state maint"}', "bad server name"),
        ("nonsense", "stdin is not JSON"),
    ],
)
def test_the_script_touches_only_the_apps_servers(tree, tmp_path, stdin, error):
    code, _, err, seen = run_script(tree, tmp_path, "ready", stdin, [0])
    assert code == 1 and error in err
    assert not [cmd for cmd in seen if cmd.startswith("set ")]


def test_the_script_lists_every_server_and_makes_one_ready(tree, tmp_path):
    code, out, _, _ = run_script(tree, tmp_path, "state", "", [1])
    states = json.loads(out)
    assert code == 0 and sorted(states) == ["web1", "web2"]
    assert states["web1"] == {
        "status": "UP",
        "check": "L7OK",
        "check_code": "200",
        "sessions": 1,
        "total": 40,
        "address": "10.0.0.11:80",
    }
    code, out, _, seen = run_script(tree, tmp_path, "ready", '{"server": "web2"}', [0])
    assert code == 0 and "set server eep_shop/web2 state ready" in seen
