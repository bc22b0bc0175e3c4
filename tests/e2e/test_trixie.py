"""Debian 13 (trixie): a tree baked with python_version=3.13 provisions and deploys there.

The rest of the suite runs on Debian 12; this module runs the subset a user of another
release checks first, on one trixie host, in order: provisioning (twice), a deploy under
load with a running task, control, the audit and a reboot. A host that does not boot
makes the module error, never skip.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from e2e_support import BakedTree, bake_tree, load_test, snapshot_state, state_changes
from test_deploy import SLUG, build, deploy, marker, page, settled_celery, task_started

pytestmark = pytest.mark.e2e

SITE = f"{SLUG}.example.com"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> BakedTree:
    # With the database: PostgreSQL 17 and its pg_hba.conf where Debian 13 puts them.
    return bake_tree(
        tmp_path_factory.mktemp("trees"), SLUG, python_version="3.13", database="postgresql"
    )


@pytest.fixture(scope="module")
def host(testhost_factory_module):
    started = time.monotonic()
    host = testhost_factory_module("trixie", release="trixie")
    print(f"trixie host up in {time.monotonic() - started:.1f} s")
    return host


def test_the_host_runs_debian_13_with_python_3_13(host):
    os_release = host.run("cat /etc/os-release").stdout
    assert 'VERSION_ID="13"' in os_release and "VERSION_CODENAME=trixie" in os_release
    assert host.run("python3 -V").stdout.startswith("Python 3.13.")


def test_a_tree_baked_for_another_python_is_refused_in_one_line(host, tmp_path):
    other = bake_tree(tmp_path, SLUG, python_version="3.11")
    before = snapshot_state(host)
    refused = other.provision(host)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"[root@127.0.0.1:{host.ssh_port}] FAILED: the host runs Debian GNU/Linux 13 (trixie),"
        " whose python3 is 3.13; this tree was made for 3.11 (re-bake with python_version=3.13)"
    ]
    assert state_changes(before, snapshot_state(host)) == []


def test_provisioning_installs_everything_then_a_second_run_changes_nothing(host, tree):
    started = time.monotonic()
    first = tree.provision(host)
    print(f"cold provision on trixie: {time.monotonic() - started:.1f} s")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ok           system: Debian GNU/Linux 13 (trixie), python3 3.13" in first.stdout
    assert re.search(r"\] changed\s+packages: install nginx supervisor", first.stdout)
    before = snapshot_state(host)
    second = tree.provision(host)
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(r"\] done: 0 changed, \d+ ok$", second.stdout, re.M), second.stdout
    assert state_changes(before, snapshot_state(host)) == []


def test_first_deploy_serves_and_its_celery_worker_runs(tree, host, dist):
    result = deploy(tree, host, "deploy", "--release", str(build("v1", dist)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert page(host).startswith("sample v1 pid ")
    settled_celery(host)
    # uWSGI embeds the host's python3 (Debian's plugin), and the release's virtualenv is
    # made from that same python3.
    embedded = host.run(f"grep -m1 '^Python version: ' /var/log/{SLUG}/uwsgi.log").stdout
    assert embedded.startswith("Python version: 3.13.")
    venv = host.run(f"/srv/{SLUG}/current/.venv/bin/python -V").stdout
    assert venv.startswith("Python 3.13.")


def test_deploy_under_load_drops_no_request_and_lets_the_running_task_finish(tree, host, dist):
    assert page(host, "/task?seconds=15&id=long").startswith("queued long by v1")
    task_started(host, "long")
    with load_test(host, SITE, seconds=12, concurrency=8) as load:
        time.sleep(2)
        result = deploy(tree, host, "deploy", "--release", str(build("v2", dist)))
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"deploy under load on trixie: {load.stats}")
    assert load.stats["requests"] > 100
    assert load.stats["failed"] == 0, load.stats
    assert page(host).startswith("sample v2 ")
    assert marker(host, "long")["version"] == "v1"
    page(host, "/task?seconds=1&id=after")
    assert marker(host, "after")["version"] == "v2"
    settled_celery(host)


def test_status_restart_stop_and_start_as_the_deploy_account(tree, host):
    celery = settled_celery(host)
    status = deploy(tree, host, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(rf"^program\s+{SLUG}\s+RUNNING$", status.stdout, re.M), status.stdout
    assert f"celery    running, pid {celery}" in status.stdout
    assert status.stdout.rstrip().endswith("status: up")
    with load_test(host, SITE, seconds=6, concurrency=4) as load:
        time.sleep(1)
        restarted = deploy(tree, host, "restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert load.stats["failed"] == 0, load.stats
    settled_celery(host)
    # stop waits for the running task, then only the broker is left.
    assert page(host, "/task?seconds=5&id=stopwait").startswith("queued stopwait by v2")
    task_started(host, "stopwait")
    stopped = deploy(tree, host, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    finished = host.run(f"cat /srv/{SLUG}/shared/var/tasks/stopwait.json", check=False)
    assert finished.returncode == 0 and json.loads(finished.stdout)["version"] == "v2"
    assert host.run(f"ps -u {SLUG} -o comm=").stdout.split() == ["redis-server"]
    down = deploy(tree, host, "status")
    assert down.returncode == 1 and "status: DOWN" in down.stdout
    started = deploy(tree, host, "start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert page(host).startswith("sample v2 ")
    settled_celery(host)


def test_the_audit_passes_as_root_and_as_the_deploy_account(tree, host):
    spec = f"root@127.0.0.1:{host.ssh_port}"
    as_root = tree.invoke("audit", "--host", spec, "--identity", str(host.key_path))
    assert as_root.returncode == 0, as_root.stdout + as_root.stderr
    assert re.search(r"audit: 11 passed, 0 failed$", as_root.stdout, re.M), as_root.stdout
    as_deploy = deploy(tree, host, "audit")
    assert as_deploy.returncode == 0, as_deploy.stdout + as_deploy.stderr
    assert re.search(r"audit: 11 passed, 0 failed$", as_deploy.stdout, re.M), as_deploy.stdout


def test_the_app_serves_again_after_a_reboot_and_provisioning_still_changes_nothing(tree, host):
    host.reboot()
    deadline = time.monotonic() + 60
    while not page(host).startswith("sample v2 "):
        assert time.monotonic() < deadline, "the app did not come back after the reboot"
        time.sleep(0.5)
    settled_celery(host)
    again = tree.provision(host)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"\] done: 0 changed, \d+ ok$", again.stdout, re.M), again.stdout
