"""Rolling deploys over an inventory (eep.hosts, eep/rolling.py) on real hosts of one LAN.

Two web hosts without a load balancer and without Celery: one release built on both at
once, its release steps run once, the hosts switched one by one through the health
gate, a fleet-wide lock, a release failing its gate on the second host sending both
back, and a fleet-wide rollback.

The tests of each part share its hosts and run in order.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import tarfile
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from e2e_support import REPO, bake_tree, build_sample_release, load_test

pytestmark = pytest.mark.e2e

SLUG = "roll"
DOMAIN = f"{SLUG}.example.com"
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


def release(version: str, out: Path, *, sick: bool = False) -> Path:
    """The sample app's tarball with an eep.toml (health path, a release step); `sick`:
    its /health fails under uWSGI on a host marked sick."""
    assert HEALTH in WSGI
    path = build_sample_release(version, out)
    extra = {"eep.toml": STEPS.encode()}
    if sick:
        extra["app/wsgi.py"] = WSGI.replace(HEALTH, SICK_HEALTH).encode()
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    prefix = f"sample-{version}/"
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            if member.name.removeprefix(prefix) not in extra:
                tar.addfile(member, io.BytesIO(data) if data is not None else None)
        for name, data in extra.items():
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def set_inventory(tree, hosts: dict[str, dict]) -> None:
    config = tree.path / "invoke.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["eep"]["hosts"] = hosts
    config.write_text(yaml.safe_dump(settings))


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return bake_tree(tmp_path_factory.mktemp("trees"), SLUG, use_celery="n", uwsgi_processes="2")


@pytest.fixture(scope="module")
def webs(testhost_factory_module, tree) -> dict:
    hosts = {name: testhost_factory_module(name, lan="roll") for name in ("web1", "web2")}
    set_inventory(
        tree,
        {
            name: {"ssh": f"127.0.0.1:{host.ssh_port}", "private": host.lan_ip, "roles": ["web"]}
            for name, host in hosts.items()
        },
    )
    for host in hosts.values():
        tree.trust(host)
    done = tree.invoke("provision", "--identity", str(hosts["web1"].key_path))
    assert done.returncode == 0, done.stdout + done.stderr
    return hosts


def fleet(tree, *args: str):
    """An invoke command of the tree over the inventory, as the deploy account."""
    return tree.invoke(*args, "--identity", str(tree.deploy_key))


def page(host, path: str = "/") -> str:
    url = shlex.quote(f"http://127.0.0.1{path}")
    return host.run(f"curl -s -H 'Host: {DOMAIN}' {url}").stdout


def releases_on(host) -> list[str]:
    return host.run(f"ls /srv/{SLUG}/releases").stdout.split()


def test_the_first_rolling_deploy_builds_on_both_and_serves_v1(tree, webs, dist):
    done = fleet(tree, "deploy", "--release", str(release("v1", dist)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"^deployed {RELEASE_ID}v1 on web1, web2 in [\d.]+ s", done.stdout, re.M)
    for name, host in webs.items():
        assert page(host).startswith("sample v1 "), name
        assert re.search(rf"^\[{name}\] gate +[\d.]+ s  GET /health: 200", done.stdout, re.M)


def steps_ran(host) -> int:
    """How many times the release steps ran on the host."""
    marks = host.run(f"cat /srv/{SLUG}/shared/steps-ran", check=False).stdout
    return len(marks.splitlines())


def test_v2_rolls_host_by_host_under_load_and_its_steps_run_once(tree, webs, dist):
    assert (steps_ran(webs["web1"]), steps_ran(webs["web2"])) == (1, 0)  # v1's, on web1
    with (
        load_test(webs["web1"], DOMAIN, seconds=30, concurrency=2) as load1,
        load_test(webs["web2"], DOMAIN, seconds=30, concurrency=2) as load2,
    ):
        done = fleet(tree, "deploy", "--release", str(release("v2", dist)))
    assert done.returncode == 0, done.stdout + done.stderr
    for load in (load1, load2):
        assert load.stats["failed"] == 0 and load.stats["requests"] > 100, load.stats
    assert all(page(host).startswith("sample v2 ") for host in webs.values())
    # web2 switched only once web1 had passed its gate; the steps ran once, on web1.
    assert done.stdout.index("[web1] gate") < done.stdout.index("[web2] activate"), done.stdout
    assert (steps_ran(webs["web1"]), steps_ran(webs["web2"])) == (2, 0)


def test_a_lock_held_on_one_host_refuses_the_whole_deploy(tree, webs, dist):
    web2 = webs["web2"]
    web2.run(
        f"runuser -u {SLUG}-deploy -- mkdir /srv/{SLUG}/.deploy-lock && echo"
        f' \'{{"who": "carol@ci", "since": "2026-01-01T00:00:00Z"}}\''
        f" > /srv/{SLUG}/.deploy-lock/holder.json"
    )
    before = {name: releases_on(host) for name, host in webs.items()}
    try:
        refused = fleet(tree, "deploy", "--release", str(release("v3", dist)))
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            "error: web2: another deploy holds the lock: carol@ci since 2026-01-01T00:00:00Z"
            " (if it is dead: invoke deploy --break-lock)"
        )
        # Nothing changed: no release uploaded, web1's lock released again.
        assert {name: releases_on(host) for name, host in webs.items()} == before
        assert webs["web1"].run(f"test -e /srv/{SLUG}/.deploy-lock", check=False).returncode == 1
    finally:
        web2.run(f"rm -rf /srv/{SLUG}/.deploy-lock")


def test_a_release_failing_its_gate_on_web2_sends_both_hosts_back(tree, webs, dist):
    web2 = webs["web2"]
    web2.run(f"touch /srv/{SLUG}/shared/sick")
    try:
        with (
            load_test(webs["web1"], DOMAIN, seconds=40, concurrency=2) as load1,
            load_test(web2, DOMAIN, seconds=40, concurrency=2) as load2,
        ):
            failed = fleet(tree, "deploy", "--release", str(release("v3", dist, sick=True)))
    finally:
        web2.run(f"rm -f /srv/{SLUG}/shared/sick")
    assert failed.returncode == 1, failed.stdout
    error = failed.stderr.strip()
    assert re.fullmatch(
        "error: deploy stopped: web2 failed its health gate: GET /health answers 503;"
        f" every host serves {RELEASE_ID}v2 again",
        error,
    ), error
    # web1 had switched and passed its gate: it went back too, the same way.
    assert re.search(r"^\[web1\] gate .*\n(.*\n)*\[web2\] failed ", failed.stdout, re.M)
    assert re.search(rf"^\[web1\] activate +[\d.]+ s  {RELEASE_ID}v2$", failed.stdout, re.M)
    for name, host in webs.items():
        assert page(host).startswith("sample v2 "), name
        v3 = next(r for r in releases_on(host) if r.endswith("-v3"))
        reason = host.run(f"cat /srv/{SLUG}/releases/{v3}/.eep/failed").stdout
        assert "failed its health gate: GET /health answers 503" in reason, (name, reason)
    for load in (load1, load2):
        assert load.stats["failed"] == 0, load.stats


def test_a_fleet_rollback_takes_every_host_to_the_same_earlier_release(tree, webs):
    done = fleet(tree, "rollback")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"^rolled back to {RELEASE_ID}v1 on web1, web2 in ", done.stdout, re.M)
    assert all(page(host).startswith("sample v1 ") for host in webs.values())


def test_keep_going_leaves_the_failed_host_on_its_release_and_switches_the_others(tree, webs, dist):
    web1 = webs["web1"]
    web1.run(f"touch /srv/{SLUG}/shared/sick")
    try:
        went_on = fleet(
            tree, "deploy", "--release", str(release("v4", dist, sick=True)), "--keep-going"
        )
    finally:
        web1.run(f"rm -f /srv/{SLUG}/shared/sick")
    assert went_on.returncode == 1, went_on.stdout
    assert re.fullmatch(
        f"error: deploy went on \\(--keep-going\\): {RELEASE_ID}v4 on web2;"
        f" web1 failed its health gate: GET /health answers 503; web1 on {RELEASE_ID}v1",
        went_on.stderr.strip(),
    ), went_on.stderr
    assert page(web1).startswith("sample v1 ") and page(webs["web2"]).startswith("sample v4 ")


# -- the app's full fleet: lb1, web1, web2, work1 ---------------------------------------

SHOP = "shop"
SHOP_DOMAIN = f"{SHOP}.example.com"
ROLES = {"lb1": ["lb"], "web1": ["web"], "web2": ["web"], "work1": ["worker", "broker"]}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return bake_tree(tmp_path_factory.mktemp("shop"), SHOP, uwsgi_processes="2")


@pytest.fixture(scope="module")
def four(testhost_factory_module, shop) -> dict:
    hosts = {name: testhost_factory_module(name, lan="shop") for name in ROLES}
    set_inventory(
        shop,
        {
            name: {"ssh": f"127.0.0.1:{host.ssh_port}", "private": host.lan_ip, "roles": roles}
            for (name, host), roles in zip(hosts.items(), ROLES.values(), strict=True)
        },
    )
    for host in hosts.values():
        shop.trust(host)
    done = shop.invoke("provision", "--identity", str(hosts["web1"].key_path), timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return hosts


def fronts(four: dict) -> list:
    """Where requests enter: lb1, or (without the balancer role yet) each web host's nginx."""
    return [four["lb1"]]


def through_balancer(lb, path: str = "/") -> str:
    url = shlex.quote(f"http://127.0.0.1{path}")
    return lb.run(f"curl -s -H 'Host: {SHOP_DOMAIN}' {url}").stdout


def current(host) -> str:
    return host.run(f"readlink /srv/{SHOP}/current").stdout.strip().rsplit("-", 1)[-1]


def test_fleet_first_deploy_serves_v1_through_the_balancer(shop, four, dist):
    done = fleet(shop, "deploy", "--release", str(release("v1", dist)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"^deployed {RELEASE_ID}v1 on web1, web2, work1 in ", done.stdout, re.M)
    assert [current(four[name]) for name in ("web1", "web2", "work1")] == ["v1"] * 3
    for front in fronts(four):
        assert {through_balancer(front).split(" pid")[0] for _ in range(6)} == {"sample v1"}


def test_fleet_a_release_failing_its_gate_on_web2_stops_and_every_host_is_back(shop, four, dist):
    web2 = four["web2"]
    web2.run(f"touch /srv/{SHOP}/shared/sick")
    try:
        with load_test(four["lb1"], SHOP_DOMAIN, seconds=45, concurrency=4) as load:
            failed = fleet(shop, "deploy", "--release", str(release("v2bad", dist, sick=True)))
    finally:
        web2.run(f"rm -f /srv/{SHOP}/shared/sick")
    assert failed.returncode == 1, failed.stdout
    assert re.fullmatch(
        "error: deploy stopped: web2 failed its health gate: GET /health answers 503;"
        f" every host serves {RELEASE_ID}v1 again",
        failed.stderr.strip(),
    ), failed.stderr
    # web1 switched (drained, gate, back in the balancer, UP) and went back the same way.
    assert re.search(r"^\[web1\] balancer .* UP at lb1$", failed.stdout, re.M), failed.stdout
    assert "[work1] activate" not in failed.stdout  # the workers' turn never came
    assert [current(four[name]) for name in ("web1", "web2", "work1")] == ["v1"] * 3
    assert load.stats["failed"] == 0, load.stats
    assert set(load.stats["answers"]) <= {"sample v1", "sample v2bad"}, load.stats


def test_fleet_v2_rolls_under_load_and_a_running_task_finishes_on_v1(shop, four, dist):
    front, work1 = fronts(four)[0], four["work1"]
    queued = through_balancer(front, "/task?seconds=20&id=rolling")
    assert queued.startswith("queued rolling by v1"), queued
    started = f"/srv/{SHOP}/shared/var/tasks/rolling.started"
    work1.run(f"for i in $(seq 60); do test -f {started} && break; sleep 0.5; done")
    work1.run(f"test -f {started}")  # a worker on work1 runs it
    with ExitStack() as stack:
        loads = [
            stack.enter_context(load_test(host, SHOP_DOMAIN, seconds=40, concurrency=4))
            for host in fronts(four)
        ]
        done = fleet(shop, "deploy", "--release", str(release("v2", dist)))
    assert done.returncode == 0, done.stdout + done.stderr
    for load in loads:
        assert load.stats["failed"] == 0, load.stats
        assert set(load.stats["answers"]) <= {"sample v1", "sample v2"}, load.stats
        assert load.stats["answers"].get("sample v2"), load.stats
    for host in fronts(four):
        assert {through_balancer(host).split(" pid")[0] for _ in range(8)} == {"sample v2"}
    assert [current(four[name]) for name in ("web1", "web2", "work1")] == ["v2"] * 3
    # work1 switched last, its Celery worker once the running task was done: on v1.
    assert done.stdout.index("[web2] activate") < done.stdout.index("[work1] activate")
    marker = f"/srv/{SHOP}/shared/var/tasks/rolling.json"
    work1.run(f"for i in $(seq 90); do test -f {marker} && break; sleep 0.5; done")
    assert json.loads(work1.run(f"cat {marker}").stdout)["version"] == "v1"
