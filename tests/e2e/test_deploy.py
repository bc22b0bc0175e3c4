"""`invoke deploy`, `rollback`, `releases` as the deploy account against a provisioned host.

The tests of this module share one host and run in order: v1, then v2 under load
with a running task, then failures, rollback, crashes and reboot.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from e2e_support import (
    REPO,
    bake_tree,
    build_sample_release,
    load_test,
    snapshot_state,
    state_changes,
)

pytestmark = pytest.mark.e2e

SLUG = "shop"


def build(version: str, out: Path, **extra: bytes) -> Path:
    """The sample app's release tarball, optionally with extra files (name -> content)."""
    return build_sample_release(version, out, extra)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return bake_tree(tmp_path_factory.mktemp("trees"), SLUG, uwsgi_processes="4")


@pytest.fixture(scope="module")
def host(testhost_factory_module, tree):
    host = testhost_factory_module("dep")
    result = tree.provision(host)
    assert result.returncode == 0, result.stdout + result.stderr
    return host


def deploy(tree, host, *args: str) -> subprocess.CompletedProcess:
    return tree.invoke(
        *args,
        "--host",
        f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}",
        "--identity",
        str(tree.deploy_key),
    )


def page(host, path: str = "/") -> str:
    url = shlex.quote(f"http://127.0.0.1{path}")
    return host.run(f"curl -s -H 'Host: {SLUG}.example.com' {url}").stdout


def marker(host, task_id: str, timeout: float = 60) -> dict:
    path = f"/srv/{SLUG}/shared/var/tasks/{task_id}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = host.run(f"cat {path}", check=False)
        if found.returncode == 0:
            return json.loads(found.stdout)
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} never finished")


def task_started(host, task_id: str) -> None:
    """Wait until a worker has picked the task up (it marks its start)."""
    path = f"/srv/{SLUG}/shared/var/tasks/{task_id}.started"
    wait_for(lambda: host.run(f"test -f {path}", check=False).returncode == 0)


def celery_masters(host) -> list[str]:
    """Main Celery worker processes (not their pool children)."""
    rows = host.run("ps -eo pid=,ppid=,args=").stdout.splitlines()
    procs = {int(r.split()[0]): (int(r.split()[1]), r) for r in rows}
    return [
        row
        for pid, (ppid, row) in procs.items()
        if "celery" in row and "worker" in row and "celery" not in procs.get(ppid, (0, ""))[1]
    ]


def wait_for(check, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def settled_celery(host) -> str:
    """The pid of the one Celery worker, once the restart the last touch of the trigger
    asked for is over: the worker started after that touch (the old one may take a
    moment to notice it and finish)."""
    seen: list[str | None] = []

    def settled() -> bool:
        masters = celery_masters(host)
        pid = masters[0].split()[0] if len(masters) == 1 else None
        if pid is not None:
            ages = host.run(
                f"date +%s; stat -c %Y /run/{SLUG}/deploy; ps -o etimes= -p {pid}", check=False
            ).stdout.split()
            now, touched = int(ages[0]), int(ages[1])
            if len(ages) < 3 or now - int(ages[2]) < touched:
                pid = None  # gone meanwhile, or started before the last touch
        seen.append(pid)
        return len(seen) >= 2 and seen[-1] is not None and seen[-1] == seen[-2]

    wait_for(settled, timeout=60)
    return seen[-1]


def test_first_deploy_serves_v1(tree, host, dist):
    result = deploy(tree, host, "deploy", "--release", str(build("v1", dist)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"deployed \d{8}T\d{6}Z-v1 in [\d.]+ s \(upload", result.stdout)
    assert page(host).startswith("sample v1 pid ")
    settled_celery(host)  # exactly one worker, once its restart is over


def test_redeploying_the_same_tarball_reuses_the_virtualenv(tree, host, dist):
    result = deploy(tree, host, "deploy", "--release", str(build("v1", dist)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"virtualenv \w+ reused", result.stdout)
    assert page(host).startswith("sample v1 ")


def test_status_restart_logs_and_stop_as_the_deploy_account(tree, host):
    celery = settled_celery(host)  # the last deploy restarted it
    status = deploy(tree, host, "status")
    assert status.returncode == 0, status.stderr
    assert re.search(rf"^program\s+{SLUG}\s+RUNNING$", status.stdout, re.M), status.stdout
    assert status.stdout.count("uwsgi master") == 1 and status.stdout.count("uwsgi worker") == 4
    assert re.search(r"attached .*celery", status.stdout), status.stdout
    assert f"celery    running, pid {celery}" in status.stdout
    assert "-> 200" in status.stdout and status.stdout.rstrip().endswith("status: up")
    with load_test(host, f"{SLUG}.example.com", seconds=6, concurrency=4) as load:
        time.sleep(1)
        restarted = deploy(tree, host, "restart")
    assert restarted.returncode == 0, restarted.stderr
    assert load.stats["failed"] == 0, load.stats
    # Everything since the reload: the load test logged thousands of requests after it.
    logs = deploy(tree, host, "logs", "--lines", "100000")
    assert logs.returncode == 0 and "Gracefully killing worker 4" in logs.stdout
    nginx = deploy(tree, host, "logs", "--process", "nginx", "--lines", "5")
    assert nginx.returncode == 0 and '"GET / HTTP/1.1" 200' in nginx.stdout, nginx.stdout


def test_full_restart_rereads_the_ini_under_load_and_keeps_the_master(tree, host):
    master = host.run(f"cat /run/{SLUG}/uwsgi/uwsgi.pid").stdout.strip()
    workers = set(host.run(f"pgrep -P {master} -f 'uwsgi-core --ini'").stdout.split())

    def starts() -> int:
        log = f"/var/log/{SLUG}/uwsgi.log"
        return int(host.run(f"grep -c 'Starting uWSGI' {log}", check=False).stdout)

    started = starts()
    with load_test(host, f"{SLUG}.example.com", seconds=6, concurrency=4) as load:
        time.sleep(1)
        restarted = deploy(tree, host, "restart", "--reload", "full")
    assert restarted.returncode == 0, restarted.stderr
    assert re.search(r"\] reload +[\d.]+ s  full$", restarted.stdout, re.M), restarted.stdout
    assert load.stats["failed"] == 0, load.stats
    # The same master re-executed itself (its socket stayed open); every worker is new.
    assert host.run(f"cat /run/{SLUG}/uwsgi/uwsgi.pid").stdout.strip() == master
    now = set(host.run(f"pgrep -P {master} -f 'uwsgi-core --ini'").stdout.split())
    assert len(now) == 4 and not now & workers
    assert starts() == started + 1  # the master started over: it read its ini again


def app_processes(host) -> list[str]:
    return host.run(f"ps -u {SLUG} -o comm=").stdout.split()


def test_stop_waits_for_the_running_task_then_start_brings_the_app_back(tree, host):
    assert page(host, "/task?seconds=8&id=stopwait").startswith("queued stopwait by v1")
    task_started(host, "stopwait")
    stopped = deploy(tree, host, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    # Returned only once the task had finished; only the broker is left.
    assert (
        host.run(f"test -f /srv/{SLUG}/shared/var/tasks/stopwait.json", check=False).returncode == 0
    )
    assert app_processes(host) == ["redis-server"]
    down = deploy(tree, host, "status")
    assert down.returncode == 1 and "status: DOWN" in down.stdout
    started = deploy(tree, host, "start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert page(host).startswith("sample v1 ")
    settled_celery(host)  # exactly one worker, once its restart is over


def test_stop_now_kills_the_running_task_at_once(tree, host):
    assert page(host, "/task?seconds=300&id=killed").startswith("queued killed by v1")
    task_started(host, "killed")
    stopped = deploy(tree, host, "stop", "--now")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "killed (--now)" in stopped.stdout
    assert app_processes(host) == ["redis-server"]
    assert host.run(f"test -f /srv/{SLUG}/shared/var/tasks/killed.json", check=False).returncode
    assert deploy(tree, host, "start").returncode == 0
    assert page(host).startswith("sample v1 ")


def test_run_and_shell_work_in_the_current_release_as_the_app_user(tree, host):
    code = "import flask, getpass, os; print(getpass.getuser(), os.getcwd(), flask.__name__)"
    # Options first: everything after `--` is the command.
    login = [
        "--host",
        f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}",
        "--identity",
        str(tree.deploy_key),
    ]
    ran = tree.invoke("run", *login, "--", "python", "-c", code)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    user, cwd, module = ran.stdout.split()
    assert (user, module) == (SLUG, "flask")
    assert cwd == host.run(f"readlink -f /srv/{SLUG}/current").stdout.strip()
    assert tree.invoke("run", *login, "--", "sh", "-c", "exit 3").returncode == 3
    shell = tree.invoke("shell", *login, input="pwd; command -v python; id -un; exit\n")
    assert shell.returncode == 0, shell.stdout + shell.stderr
    assert shell.stdout.split()[:3] == [
        f"/srv/{SLUG}/current",
        f"/srv/{SLUG}/current/.venv/bin/python",
        SLUG,
    ]


def test_logs_show_control_characters_the_app_wrote_escaped(tree, host):
    # What the app prints reaches uwsgi.log as is: here a title change and a screen clear.
    host.run(f"printf 'owned \\033]0;title\\007\\033[2J\\n' >> /var/log/{SLUG}/uwsgi.log")
    shown = "owned \\x1b]0;title\\x07\\x1b[2J"
    logs = deploy(tree, host, "logs", "--lines", "5")
    assert logs.returncode == 0 and shown in logs.stdout, logs.stdout + logs.stderr
    assert "\x1b" not in logs.stdout and "\x07" not in logs.stdout
    login = [
        "--host",
        f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}",
        "--identity",
        str(tree.deploy_key),
    ]
    follow = subprocess.Popen(
        [sys.executable, "-m", "invoke", "logs", "--follow", "--lines", "5", *login],
        cwd=tree.path,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    stopper = threading.Timer(60, follow.kill)  # --follow never ends by itself
    stopper.start()
    try:
        lines = [follow.stdout.readline() for _ in range(5)]
    finally:
        stopper.cancel()
        follow.kill()
        follow.wait()
    assert any(shown in line for line in lines), lines
    assert not any("\x1b" in line for line in lines), lines


def test_deploy_under_load_drops_no_request_and_lets_the_running_task_finish(tree, host, dist):
    assert page(host, "/task?seconds=30&id=long").startswith("queued long by v1")
    task_started(host, "long")
    with load_test(host, f"{SLUG}.example.com", seconds=20, concurrency=8) as load:
        time.sleep(3)
        result = deploy(tree, host, "deploy", "--release", str(build("v2", dist)))
    assert result.returncode == 0, result.stdout + result.stderr
    stats = load.stats
    print(f"deploy under load: {stats}")
    assert stats["requests"] > 100
    assert stats["failed"] == 0, stats
    assert page(host).startswith("sample v2 ")
    assert marker(host, "long")["version"] == "v1"
    page(host, "/task?seconds=1&id=after")
    assert marker(host, "after")["version"] == "v2"
    settled_celery(host)  # exactly one worker, once its restart is over


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("dotdot", lambda t: t.addfile(tarfile.TarInfo("../evil"), io.BytesIO(b""))),
        ("absolute", lambda t: t.addfile(tarfile.TarInfo("/etc/evil"), io.BytesIO(b""))),
        ("symlink-etc", lambda t: t.addfile(_link("app/etc", "/etc", tarfile.SYMTYPE))),
        ("hardlink", lambda t: t.addfile(_link("app/pw", "/etc/passwd", tarfile.LNKTYPE))),
        ("setuid", lambda t: t.addfile(_mode("app/suid", 0o4755), io.BytesIO(b""))),
        ("fifo", lambda t: t.addfile(_fifo("app/pipe"))),
    ],
)
def test_malicious_tarball_is_refused_and_nothing_changes(tree, host, tmp_path, name, make):
    bad = tmp_path / f"bad-{name}.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for file in ("requirements.txt", "app/__init__.py", "app/wsgi.py"):
            info = tarfile.TarInfo(file)
            tar.addfile(info, io.BytesIO(b""))
        make(tar)
    before = snapshot_state(host)
    result = deploy(tree, host, "deploy", "--release", str(bad))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and "refused" in result.stderr
    assert state_changes(before, snapshot_state(host)) == []
    assert page(host).startswith("sample v2 ")
    # The host refuses it too, on its own (a developer may bypass the local check).
    host.put_file(f"/tmp/{bad.name}", bad.read_bytes(), 0o644)
    on_host = host.run(
        f"runuser -u {SLUG}-deploy -- python3 /srv/{SLUG}/.eep/tarball.py extract"
        f" /tmp/{bad.name} /tmp/out-{name} app.wsgi:application",
        check=False,
    )
    assert on_host.returncode == 1 and on_host.stderr.startswith("error: ")
    assert host.run(f"test -e /tmp/out-{name}", check=False).returncode != 0


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _mode(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info


def _fifo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info


def tasks_failing_when(condition: str, message: str) -> bytes:
    """The sample app's tasks module, raising `message` at import when `condition` holds
    (the web side imports it too, so only a worker's command line can tell them apart)."""
    source = (REPO / "sample_app" / "app" / "tasks.py").read_bytes()
    head = b"from __future__ import annotations\n"
    assert head in source
    failing = f"\nimport sys\n\nif {condition}:\n    raise RuntimeError({message!r})\n"
    return source.replace(head, head + failing.encode(), 1)


# Any `celery` command fails, `celery report` included: caught before activation.
WORKER_ONLY_FAILURE = tasks_failing_when("sys.argv[0].endswith('celery')", "only the worker breaks")


@pytest.mark.parametrize(
    ("name", "extra", "reason"),
    [
        ("migration", {"eep.toml": b'[release]\npre_activate = ["exit 3"]\n'}, "step `exit 3`"),
        ("import", {"app/wsgi.py": b"raise RuntimeError('boom')\n"}, "loading the app failed"),
        # Web fine, but the Celery worker could not start on it.
        ("celery", {"app/tasks.py": WORKER_ONLY_FAILURE}, "loading the Celery app failed"),
    ],
)
def test_failing_release_is_marked_failed_and_current_keeps_serving(
    tree, host, tmp_path, name, extra, reason
):
    result = deploy(tree, host, "deploy", "--release", str(build(f"f-{name}", tmp_path, **extra)))
    assert result.returncode != 0
    assert "failed, nothing activated" in result.stderr and reason in result.stderr
    assert page(host).startswith("sample v2 ")
    listing = deploy(tree, host, "releases").stdout
    assert re.search(rf"\S+-f-{name}\s+failed\s+-\s+.*{re.escape(reason)}", listing), listing
    assert re.search(r"^\* \S+-v2\s+ready", listing, re.M), listing


def test_a_release_uwsgi_cannot_load_is_rolled_back_automatically(tree, host, tmp_path):
    # Passes every check before activation, but its uwsgi.ini names a module that
    # is not there: uWSGI comes back without an app.
    ini = (tree.path / "uwsgi.ini").read_text().replace("module = ", "module = nowhere.", 1)
    tarball = build("f-noapp", tmp_path, **{"uwsgi.ini": ini.encode()})
    result = deploy(tree, host, "deploy", "--release", str(tarball))
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"-f-noapp failed after activation .*; \S+-v2 serves again", result.stderr)
    assert page(host).startswith("sample v2 ")
    listing = deploy(tree, host, "releases").stdout
    # Activated (time, how, by whom) before it failed.
    pattern = r"\S+-f-noapp\s+failed\s+\S+\s+deploy \S+@\S+\s+failed after activation"
    assert re.search(pattern, listing), listing
    assert re.search(r"^\* \S+-v2\s+ready", listing, re.M), listing


def test_a_release_that_fails_only_under_uwsgi_is_rolled_back_at_once(tree, host, tmp_path):
    # Same uwsgi.ini (so only the workers reload) and a module that imports fine in
    # the checks before activation but raises under uWSGI.
    wsgi = (Path(__file__).parents[2] / "sample_app" / "app" / "wsgi.py").read_text()
    wsgi = wsgi.replace(
        "import os\n",
        "import os\nimport sys\n\nif 'uwsgi' in sys.modules:\n    raise RuntimeError('boom')\n",
        1,
    )
    started = time.monotonic()
    result = deploy(
        tree,
        host,
        "deploy",
        "--release",
        str(build("f-uwsgi", tmp_path, **{"app/wsgi.py": wsgi.encode()})),
    )
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert "uWSGI could not load the app" in result.stderr, result.stderr
    assert re.search(r"-f-uwsgi failed after activation .*; \S+-v2 serves again", result.stderr)
    print(f"failed deploy and automatic rollback took {took:.1f} s")
    # Every worker is back on v2, not only the first one asked.
    assert all(page(host).startswith("sample v2 ") for _ in range(12))


def test_a_release_whose_celery_worker_cannot_start_is_rolled_back(tree, host, tmp_path):
    # Loads fine for `celery report` (the check before activation), but the worker
    # itself dies at start: the deploy waits for it, then goes back to v2.
    tasks = tasks_failing_when("'worker' in sys.argv", "the worker cannot start")
    result = deploy(
        tree,
        host,
        "deploy",
        "--release",
        str(build("f-worker", tmp_path, **{"app/tasks.py": tasks})),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the Celery worker does not start on this release" in result.stderr, result.stderr
    assert re.search(r"-f-worker failed after activation .*; \S+-v2 serves again", result.stderr)
    assert page(host).startswith("sample v2 ")
    settled_celery(host)
    assert page(host, "/task?seconds=0&id=after-worker").startswith("queued")
    assert marker(host, "after-worker")["version"] == "v2"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("uid = root\ngid = root\n", "option 'uid' is not allowed"),
        ("chown-socket = root:root\n", "option 'chown-socket' is not allowed"),
        ("logto = /var/log/uwsgi-root.log\n", "option 'logto' is not allowed"),
        ("plugins = router_basicauth\n", "option 'plugins' is not allowed"),
        ("hook-pre-app = exec:false\n", "option 'hook-pre-app' is not allowed"),
        ("need-app = true\n", "option 'need-app' is not allowed"),
        ("attach-daemon2 = uid=root,cmd=sleep 9\n", "attach-daemon2 key 'uid' is not allowed"),
        ("env = KEY=@(/etc/shadow)\n", "env: @(...) and $(...) are not allowed"),
    ],
    ids=["identity", "socket", "log", "plugin", "hook", "need-app", "daemon-uid", "file-read"],
)
def test_uwsgi_ini_options_a_release_does_not_own_are_refused(tree, host, tmp_path, extra, named):
    ini = (tree.path / "uwsgi.ini").read_text() + extra
    tarball = build("f-ini", tmp_path, **{"uwsgi.ini": ini.encode()})
    settled_celery(host)  # the last test's rollback restarted it: let that settle first
    before = snapshot_state(host)
    result = deploy(tree, host, "deploy", "--release", str(tarball))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and named in result.stderr, result.stderr
    assert state_changes(before, snapshot_state(host)) == []
    assert page(host).startswith("sample v2 ")


def test_the_host_refuses_such_an_ini_on_its_own(host):
    # A developer may bypass the local check: the release agent checks again on the host.
    bad = f"/srv/{SLUG}/releases/zz-bad"
    as_deploy = f"runuser -u {SLUG}-deploy --"
    host.run(f"{as_deploy} mkdir {bad}")
    host.run(f"{as_deploy} tee {bad}/uwsgi.ini", input="[uwsgi]\nuid = root\n")
    try:
        checked = host.run(
            f"{as_deploy} python3 /srv/{SLUG}/.eep/releases.py --root /srv/{SLUG} ini zz-bad",
            check=False,
        )
    finally:
        host.run(f"rm -rf {bad}")
    assert checked.returncode == 1
    assert checked.stderr.startswith("error: uwsgi.ini: option 'uid' is not allowed: set by eep")
    assert checked.stderr.count("\n") == 1


def test_requirements_reaching_outside_the_release_are_refused(tree, host, tmp_path):
    reqs = (REPO / "sample_app" / "requirements.txt").read_text()
    direct = build("f-req", tmp_path, **{"requirements.txt": (reqs + "-r /etc/passwd\n").encode()})
    refused = deploy(tree, host, "deploy", "--release", str(direct))
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        "refused sample-f-req.tar.gz: requirements.txt line"
        f" {reqs.count(chr(10)) + 1}: -r must name a file in the release"
    ), refused.stderr
    # Through a file it includes: only the host sees that one; pip never reads /etc/passwd.
    nested = build(
        "f-req2",
        tmp_path,
        **{"requirements.txt": (reqs + "-r more.txt\n").encode(), "more.txt": b"-r /etc/passwd\n"},
    )
    result = deploy(tree, host, "deploy", "--release", str(nested))
    assert result.returncode == 1
    assert "more.txt line 1: -r must name a file in the release" in result.stderr
    assert "root:" not in result.stdout + result.stderr
    assert page(host).startswith("sample v2 ")


def current_release(host) -> str:
    return host.run(f"readlink /srv/{SLUG}/current").stdout.strip().rsplit("/", 1)[-1]


def test_a_release_that_makes_uwsgi_exit_is_rolled_back_within_seconds(tree, host, tmp_path):
    # Planted past the checks (as the developer can, on their own release files): a
    # release whose uWSGI exits on reload. The master dies; supervisor restarts it.
    serving = current_release(host)
    staged = deploy(tree, host, "deploy", "--release", str(build("f-exit", tmp_path)), "--stage")
    assert staged.returncode == 0, staged.stdout + staged.stderr
    release_id = re.search(r"staged (\S+-f-exit)", staged.stdout).group(1)
    host.run(
        f"cat >> /srv/{SLUG}/releases/{release_id}/uwsgi.ini",
        input="need-app = true\nmodule = nowhere:application\n",
    )
    started = time.monotonic()
    result = deploy(tree, host, "activate", release_id)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    print(f"activation of a release that kills uWSGI, and the way back: {took:.1f} s")
    assert took < 60, "the failure must be found within seconds, not a timeout"
    # The report says what broke it, uWSGI's own words included.
    assert f"{release_id} failed after activation (the uWSGI master exited" in result.stderr
    assert "failed loading app" in result.stderr and f"{serving} serves again" in result.stderr
    assert current_release(host) == serving
    assert all(page(host).startswith("sample v2 ") for _ in range(8))
    assert host.run(f"test -e /srv/{SLUG}/.deploy-lock", check=False).returncode == 1
    # A cold start works on what `current` now holds.
    assert deploy(tree, host, "stop").returncode == 0
    assert deploy(tree, host, "start").returncode == 0
    assert page(host).startswith("sample v2 ")


def test_rollback_and_start_work_with_uwsgi_stopped(tree, host, dist):
    v2 = current_release(host)
    assert deploy(tree, host, "stop").returncode == 0
    back = deploy(tree, host, "rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "started (uWSGI was not running)" in back.stdout
    assert page(host).startswith("sample v1 ")
    assert deploy(tree, host, "stop").returncode == 0
    forward = deploy(tree, host, "rollback", "--to", v2)
    assert forward.returncode == 0, forward.stdout + forward.stderr
    assert page(host).startswith("sample v2 ")
    # `current` broken behind eep's back: `start` finds it does not come up, marks it
    # failed and starts the release activated before it.
    host.run(f"echo 'module = nowhere:application' >> /srv/{SLUG}/current/uwsgi.ini")
    assert deploy(tree, host, "stop").returncode == 0
    started = deploy(tree, host, "start")
    assert started.returncode == 1, started.stdout + started.stderr
    assert re.search(
        rf"{v2} failed to start \(.*could not load the app.*\); \S+-v1 serves instead",
        started.stderr,
    ), started.stderr
    assert page(host).startswith("sample v1 ")
    listing = deploy(tree, host, "releases").stdout
    assert re.search(rf"{v2}\s+failed\s+\S+\s+rollback \S+\s+failed to start", listing), listing
    assert re.search(r"^\* \S+-v1\s+ready\s+\S+\s+start-fallback \S+@\S+", listing, re.M), listing
    # A fresh v2 for the tests that follow.
    again = deploy(tree, host, "deploy", "--release", str(build("v2", dist)))
    assert again.returncode == 0, again.stdout + again.stderr
    assert page(host).startswith("sample v2 ")
    settled_celery(host)


def test_rollback_under_load_is_quick_and_drops_nothing(tree, host):
    with load_test(host, f"{SLUG}.example.com", seconds=8, concurrency=8) as load:
        time.sleep(2)
        started = time.monotonic()
        result = deploy(tree, host, "rollback")
        took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"rollback took {took:.1f} s; load: {load.stats}")
    assert load.stats["failed"] == 0
    # All workers were reloaded at once (rollback's default): every answer is v1.
    assert re.search(r"\] reload +[\d.]+ s  all$", result.stdout, re.M), result.stdout
    assert all(page(host).startswith("sample v1 ") for _ in range(12))


def test_a_second_concurrent_deploy_is_refused_by_the_lock(tree, host, dist):
    host.run(
        f"runuser -u {SLUG}-deploy -- mkdir /srv/{SLUG}/.deploy-lock && echo"
        f' \'{{"who": "carol@ci", "since": "2026-01-01T00:00:00Z"}}\''
        f" > /srv/{SLUG}/.deploy-lock/holder.json"
    )
    refused = deploy(tree, host, "deploy", "--release", str(build("v2", dist)))
    assert refused.returncode != 0
    assert "another deploy holds the lock: carol@ci since 2026-01-01T00:00:00Z" in refused.stderr
    forced = deploy(tree, host, "deploy", "--release", str(build("v2", dist)), "--break-lock")
    assert forced.returncode == 0, forced.stderr
    assert page(host).startswith("sample v2 ")


def test_killed_processes_come_back(host):
    # The last reload restarted Celery (it starts again once the old one has exited).
    celery = settled_celery(host)
    host.run(f"kill -9 {celery}")
    wait_for(lambda: len(masters := celery_masters(host)) == 1 and masters[0].split()[0] != celery)
    master = host.run(f"cat /run/{SLUG}/uwsgi/uwsgi.pid").stdout.strip()
    host.run(f"kill -9 {master}")
    wait_for(lambda: page(host).startswith("sample v2 "))
    time.sleep(3)
    settled_celery(host)  # exactly one worker, once its restart is over
    supervisord = host.run("systemctl show -p MainPID --value supervisor").stdout.strip()
    host.run(f"kill -9 {supervisord}")

    def supervisor_back() -> bool:
        pid = host.run("systemctl show -p MainPID --value supervisor").stdout.strip()
        return pid not in ("0", supervisord) and page(host).startswith("sample v2 ")

    wait_for(supervisor_back, timeout=30)
    time.sleep(3)
    # The old process tree did not survive next to the new one.
    settled_celery(host)  # exactly one worker, once its restart is over
    masters = host.run(f"pgrep -u {SLUG} -f 'uwsgi-core --ini' -P 1", check=False).stdout.split()
    assert masters == [], "an orphaned uWSGI master survived"


def test_a_release_with_its_own_uwsgi_ini_gets_a_full_reload_and_its_process(tree, host, tmp_path):
    ini = (tree.path / "uwsgi.ini").read_bytes() + (
        # A process the developer adds: runs as the app user, restarted when it dies.
        b"attach-daemon2 = cmd=exec /bin/sleep 100001\n"
    )
    result = deploy(
        tree, host, "deploy", "--release", str(build("v3", tmp_path, **{"uwsgi.ini": ini}))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\] reload +[\d.]+ s  full$", result.stdout, re.M), result.stdout
    assert page(host).startswith("sample v3 ")
    # After a full reload the Celery worker was restarted too: tasks run the new code.
    assert page(host, "/task?seconds=0&id=after-full").startswith("queued")
    assert marker(host, "after-full")["version"] == "v3"
    settled_celery(host)  # exactly one worker, once its restart is over
    rows = host.run("ps -eo user=,comm=").stdout.splitlines()
    app_procs = [row.split() for row in rows if row.split()[1] in ("uwsgi-core", "celery")]
    assert {comm for _, comm in app_procs} == {"uwsgi-core", "celery"}
    assert {user for user, _ in app_procs} == {SLUG}
    added = host.run("pgrep -u shop -fx '/bin/sleep 100001'").stdout.split()
    assert len(added) == 1
    host.run(f"kill -9 {added[0]}")
    wait_for(
        lambda: (
            host.run("pgrep -u shop -fx '/bin/sleep 100001'", check=False).stdout.split()
            not in ([], added)
        )
    )


def test_staged_release_activates_later_and_rollback_to_a_named_release(tree, host, tmp_path):
    current = re.search(r"^\* (\S+)", deploy(tree, host, "releases").stdout, re.M).group(1)
    staged = deploy(tree, host, "deploy", "--release", str(build("v4", tmp_path)), "--stage")
    assert staged.returncode == 0, staged.stderr
    release_id = re.search(r"staged (\S+-v4)", staged.stdout).group(1)
    assert page(host).startswith("sample v3 ")
    with load_test(host, f"{SLUG}.example.com", seconds=5, concurrency=8) as load:
        time.sleep(1)
        activated = deploy(tree, host, "activate", release_id, "--reload", "all")
    assert activated.returncode == 0, activated.stderr
    assert load.stats["failed"] == 0, load.stats
    assert all(page(host).startswith("sample v4 ") for _ in range(12))
    back = deploy(tree, host, "rollback", "--to", current)
    assert back.returncode == 0, back.stderr
    assert page(host).startswith("sample v3 ")


def test_the_app_serves_again_after_a_reboot(host):
    host.reboot()
    wait_for(lambda: page(host).startswith("sample v3 "), timeout=60)
    settled_celery(host)  # exactly one worker, once its restart is over


def test_three_times_keep_releases_deploys_then_rollback_and_restart(tree, host, tmp_path):
    """Cleanup deletes old releases: no process may still sit in one (issue: the master's cwd)."""
    keep = 5  # the template's default keep_releases
    count = 2 * keep + 1  # the cleanup deletes releases twice over, a reboot in between
    base = (tree.path / "uwsgi.ini").read_text()
    for number in range(count):
        # Every third release brings a changed uwsgi.ini: a full reload of the master.
        ini = base + f"; round {number // 3}\n"
        tarball = build(f"r{number}", tmp_path, **{"uwsgi.ini": ini.encode()})
        result = deploy(tree, host, "deploy", "--release", str(tarball))
        assert result.returncode == 0, f"deploy {number}: " + result.stdout + result.stderr
        assert page(host).startswith(f"sample r{number} "), number
        if number == keep + 2:
            host.reboot()
            served = f"sample r{number} "
            wait_for(lambda: page(host).startswith(served), timeout=60)  # noqa: B023
    cwds = host.run(
        f"for p in $(pgrep -u {SLUG}); do readlink /proc/$p/cwd; done", check=False
    ).stdout
    assert "(deleted)" not in cwds, cwds
    back = deploy(tree, host, "rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert page(host).startswith(f"sample r{count - 2} ")
    restarted = deploy(tree, host, "restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert page(host).startswith(f"sample r{count - 2} ")


def test_a_deploy_waits_for_the_worker_that_finishes_a_short_task_first(tree, host, dist):
    # The old worker is busy for a few seconds of the wait: once its task is done, the
    # new worker comes up on the new release and the deploy says so (it does not fail).
    settled_celery(host)
    serving = page(host).split()[1]
    assert page(host, "/task?seconds=8&id=short").startswith("queued short")
    task_started(host, "short")
    result = deploy(tree, host, "deploy", "--release", str(build("v2", dist)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(
        r"\] celery +[\d.]+ s  the worker runs the current release$", result.stdout, re.M
    )
    assert marker(host, "short")["version"] == serving
    assert page(host, "/task?seconds=0&id=after-short").startswith("queued")
    assert marker(host, "after-short")["version"] == "v2"
