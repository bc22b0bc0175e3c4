"""Roles (eep.hosts): which files each host gets, rendered for it by the one renderer, and
what a release's uwsgi.ini may run on a host of each role."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

FLEET = {
    "web1": {"ssh": "203.0.113.11", "private": "10.0.0.11", "roles": ["web"]},
    "web2": {"ssh": "203.0.113.12", "private": "10.0.0.12", "roles": ["web"]},
    "work1": {"ssh": "203.0.113.13", "private": "10.0.0.13", "roles": ["worker", "broker"]},
    "work2": {"ssh": "203.0.113.14", "private": "10.0.0.14", "roles": ["worker"]},
}

# Every host's files (source -> rendered content) and packages, in the baked tree.
RENDER = """
import json, sys
from eep import fleet, manifest, packages
fleet_ = fleet.load(json.loads(sys.stdin.read())) or fleet.single_host("203.0.113.9")
print(json.dumps({
    host.name: {
        "files": {f.source: manifest.render(f, place=(fleet_, host))
                  for f in manifest.files_for(fleet_, host)},
        "packages": packages.packages_for(fleet_, host),
        "services": packages.services_for(host),
    }
    for host in fleet_.hosts
}))
"""


def in_tree(tree, code: str, stdin: str = "") -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def tree(cookies_session, ssh_keys):
    from conftest import REPO

    context = {
        "project_name": "Shop",
        "project_slug": "shop",
        "deploy_ssh_key": ssh_keys["ed25519"],
        "celery_beat": "y",
    }
    return cookies_session.bake(extra_context=context, template=str(REPO)).project_path


@pytest.fixture(scope="module")
def fleet(tree) -> dict:
    return json.loads(in_tree(tree, RENDER, json.dumps(FLEET)))


@pytest.fixture(scope="module")
def single(tree) -> dict:
    return json.loads(in_tree(tree, RENDER, "{}"))["203.0.113.9"]


def facts(host_ini: str) -> dict[str, str]:
    return dict(re.findall(r"^set-placeholder = (eep-[a-z]+)=(.*)$", host_ini, re.M))


def test_each_host_states_its_roles_and_beat_is_on_the_first_worker_only(fleet):
    assert {name: facts(host["files"]["config/host.ini"]) for name, host in fleet.items()} == {
        name: {
            "eep-host": name,
            "eep-roles": " ".join(sorted(FLEET[name]["roles"])),
            "eep-web": "yes" if name.startswith("web") else "no",
            "eep-worker": "no" if name.startswith("web") else "yes",
            "eep-beat": "yes" if name == "work1" else "no",
            "eep-broker": "yes" if name == "work1" else "no",
        }
        for name in FLEET
    }


def test_nothing_is_left_unrendered_and_the_broker_url_has_no_password(fleet, single):
    for host in [*fleet.values(), single]:
        for source, text in host["files"].items():
            assert not re.search(r"\$[A-Z]", text), source
    url = "env = CELERY_BROKER_URL=redis://10.0.0.13:6379/0\n"
    assert all(url in host["files"]["config/host.ini"] for host in fleet.values())
    assert (
        "CELERY_BROKER_URL=redis+socket:///run/shop/redis/redis.sock"
        in (single["files"]["config/host.ini"])
    )


def test_the_broker_files_go_to_the_broker_host_alone(fleet):
    broker_files = {
        "config/redis-fleet.conf",
        "config/supervisor-broker.conf",
        "config/firewall.nft",
        "config/firewall.service",
    }
    for name, host in fleet.items():
        has = broker_files & set(host["files"])
        assert has == (broker_files if name == "work1" else set()), name
        assert "config/redis.conf" not in host["files"]  # the unix-socket one: one host only


def test_the_broker_listens_on_its_private_address_and_includes_its_password(fleet):
    conf = fleet["work1"]["files"]["config/redis-fleet.conf"]
    directives = [line.split() for line in conf.splitlines() if line and line[0] != "#"]
    assert ["bind", "10.0.0.13"] in directives and ["port", "6379"] in directives
    assert ["protected-mode", "yes"] in directives
    assert ["include", "/etc/eep/shop/broker-secret.conf"] in directives
    assert not any(words[0] == "requirepass" for words in directives)


def test_the_firewall_opens_the_port_to_the_app_hosts_only(fleet):
    rules = fleet["work1"]["files"]["config/firewall.nft"]
    assert "elements = { 10.0.0.11, 10.0.0.12, 10.0.0.13, 10.0.0.14 }" in rules
    body = rules.split("chain input {", 1)[1]
    assert body.index("ip saddr @app_hosts accept") < body.index("tcp dport 6379 drop")
    assert "policy accept;" in body  # ssh and the rest are not this file's business
    assert rules.count("table inet eep_shop") == 3  # made, emptied, filled: one transaction


def test_one_host_keeps_its_private_unix_socket_broker_unchanged(single, tree):
    assert single["files"]["config/redis.conf"] == (tree / "config/redis.conf").read_text()
    assert "port 0" in single["files"]["config/redis.conf"]
    assert "config/firewall.nft" not in single["files"]
    assert "nginx" in single["packages"] and "redis-server" in single["packages"]


def test_packages_and_services_follow_the_roles(fleet):
    web, worker, broker = fleet["web1"], fleet["work2"], fleet["work1"]
    assert "nginx" in web["packages"] and "redis-server" not in web["packages"]
    assert "nginx" not in worker["packages"] and "uwsgi-core" in worker["packages"]
    assert {"redis-server", "nftables"} <= set(broker["packages"])
    assert web["services"] == ["nginx", "supervisor"] and worker["services"] == ["supervisor"]


# What uWSGI applies of the tree's uwsgi.ini on each host, by the release rules' reading.
ON_HOST = """
import json, sys
from eep import release_rules
options = release_rules.check_ini(open("uwsgi.ini").read())
hosts = json.loads(sys.stdin.read())
out = {}
for name, text in hosts.items():
    facts = release_rules.host_facts(text)
    try:
        release_rules.check_for_host(options, facts)
        out[name] = release_rules.runs_celery(release_rules.on_host(options, facts))
    except release_rules.IniError as error:
        out[name] = str(error)
print(json.dumps(out))
"""


def test_the_trees_uwsgi_ini_runs_celery_on_workers_and_beat_on_one(tree, fleet):
    host_inis = {name: host["files"]["config/host.ini"] for name, host in fleet.items()}
    runs = json.loads(in_tree(tree, ON_HOST, json.dumps(host_inis)))
    assert runs == {
        "web1": {"worker": False, "beat": False},
        "web2": {"worker": False, "beat": False},
        "work1": {"worker": True, "beat": True},
        "work2": {"worker": True, "beat": False},
    }


RULES = """
import json, sys
from eep import release_rules
body, host_ini = json.loads(sys.stdin.read())
try:
    options = release_rules.check_ini("[uwsgi]\\nmodule = app.wsgi\\n" + body)
    release_rules.check_for_host(options, release_rules.host_facts(host_ini))
    print("ok")
except release_rules.IniError as error:
    print(error)
"""
BEAT = "attach-daemon2 = pidfile=/run/b.pid,daemonize=1,cmd=celery -A app beat\n"
WORKER = "attach-daemon2 = pidfile=/run/w.pid,cmd=celery -A app worker\n"


@pytest.mark.parametrize(
    ("body", "host", "says"),
    [
        (BEAT, "work2", "celery beat would run on work2, which is not the beat host"),
        (BEAT, "work1", "ok"),
        (WORKER, "web1", "the Celery worker would run on web1, which has no worker role"),
        (f"if-opt = eep-worker=yes\n{WORKER}endif =\n", "web1", "ok"),
        (
            f"if-opt = eep-beat=yes\n{BEAT}endif =\nif-opt = eep-web=no\n{BEAT}endif =\n",
            "work1",
            "2 lines run celery beat: at most one",
        ),
        (
            "if-opt = eep-web=yes\nif-opt = eep-beat=yes\nendif =\n",
            "web1",
            "line 4: if-opt inside the block opened on line 3",
        ),
        ("endif =\n", "web1", "line 3: endif without an if-opt above it"),
        ("if-opt = eep-web=yes\nprocesses = 2\n", "web1", "line 3: the block is never closed"),
        ("if-opt = HOME=/root\nendif =\n", "web1", "if-opt may test this host's roles only"),
    ],
)
def test_what_a_release_may_run_on_each_host(tree, fleet, body, host, says):
    answer = in_tree(tree, RULES, json.dumps([body, fleet[host]["files"]["config/host.ini"]]))
    assert says in answer.strip()


BROKER_URL = """
import sys
sys.path.insert(0, "config")
import eep_env
from pathlib import Path
eep_env.BROKER_SECRET = Path(sys.argv[1])
print(eep_env.with_password("redis://10.0.0.13:6379/0"))
print(eep_env.with_password("redis+socket:///run/shop/redis/redis.sock"))
"""


def test_the_app_gets_the_broker_url_with_the_password_from_the_secret_file(tree, tmp_path):
    secret = tmp_path / "broker-secret.conf"
    secret.write_text("requirepass " + "ab" * 32 + "\n")
    proc = subprocess.run(
        [sys.executable, "-c", BROKER_URL, str(secret)], cwd=tree, capture_output=True, text=True
    )
    assert proc.stdout.splitlines() == [
        f"redis://:{'ab' * 32}@10.0.0.13:6379/0",
        "redis+socket:///run/shop/redis/redis.sock",
    ]
