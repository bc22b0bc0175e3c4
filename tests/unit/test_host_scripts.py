"""The scripts the baked tree runs on its hosts (eep/host/), run here as the host runs them:
`python3 -c <file's text>`, the request as JSON on stdin."""

from __future__ import annotations

import base64
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

import pytest


@pytest.fixture
def tree(bake):
    return bake().project_path


@pytest.fixture
def host_script(tree):
    """Run eep/host/<name>.py of the baked tree with `request` on stdin."""

    def run(name: str, request) -> subprocess.CompletedProcess:
        source = (tree / "eep" / "host" / f"{name}.py").read_text()
        return subprocess.run(
            [sys.executable, "-c", source],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            check=False,
        )

    return run


# -- safe_fs: the root-side file helper ---------------------------------------------------


@pytest.fixture
def safe_fs(host_script):
    return lambda *request: host_script("safe_fs", request)


def test_safe_fs_makes_and_repairs_a_directory(safe_fs, tmp_path):
    target = tmp_path / "a" / "b"
    assert safe_fs("mkdir", str(target), "nobody", "nogroup", 0o750, "").returncode == 0
    assert (target.stat().st_mode & 0o7777, target.owner()) == (0o750, "nobody")
    target.chmod(0o777)
    assert safe_fs("mkdir", str(target), "root", "root", 0o700, "").returncode == 0
    assert (target.stat().st_mode & 0o7777, target.owner()) == (0o700, "root")


@pytest.mark.parametrize("where", ["last", "middle"])
def test_safe_fs_never_follows_a_link(safe_fs, tmp_path, where):
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "inner").mkdir(mode=0o700)
    (tmp_path / "app").symlink_to(victim)
    path = tmp_path / "app" if where == "last" else tmp_path / "app" / "inner"
    result = safe_fs("mkdir", str(path), "nobody", "nogroup", 0o777, "")
    assert result.returncode != 0
    assert "symbolic link" in result.stderr
    assert victim.owner() == "root" and (victim / "inner").owner() == "root"
    assert (victim / "inner").stat().st_mode & 0o777 == 0o700


def test_safe_fs_installs_atomically_and_refuses_a_directory_others_can_write(safe_fs, tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    data = base64.b64encode(b"hello\n").decode()
    target = etc / "file.conf"
    assert safe_fs("install", str(target), "root", "nogroup", 0o640, data).returncode == 0
    assert target.read_text() == "hello\n" and target.stat().st_mode & 0o777 == 0o640
    assert target.group() == "nogroup" and sorted(p.name for p in etc.iterdir()) == ["file.conf"]
    etc.chmod(0o777)
    refused = safe_fs("install", str(target), "root", "root", 0o644, data)
    assert refused.returncode != 0 and "writable by an account other than root" in refused.stderr


def test_safe_fs_install_replaces_a_link_at_its_name_and_writes_nothing_through_it(
    safe_fs, tmp_path
):
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    victim = tmp_path / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    (etc / "file.conf").symlink_to(victim)
    data = base64.b64encode(b"new\n").decode()
    assert (
        safe_fs("install", str(etc / "file.conf"), "nobody", "nogroup", 0o644, data).returncode == 0
    )
    assert not (etc / "file.conf").is_symlink() and (etc / "file.conf").read_text() == "new\n"
    assert victim.read_text() == "secret" and victim.owner() == "root"
    assert victim.stat().st_mode & 0o777 == 0o600


def test_safe_fs_touch_keeps_content_and_never_follows_a_link(safe_fs, tmp_path):
    logs = tmp_path / "log"
    logs.mkdir(mode=0o755)
    log = logs / "nginx-access.log"
    log.write_text("earlier lines\n")
    assert safe_fs("touch", str(log), "root", "nogroup", 0o640, "").returncode == 0
    assert log.read_text() == "earlier lines\n" and log.stat().st_mode & 0o777 == 0o640
    assert log.group() == "nogroup"
    victim = tmp_path / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    (logs / "planted.log").symlink_to(victim)
    refused = safe_fs("touch", str(logs / "planted.log"), "nobody", "nogroup", 0o666, "")
    assert refused.returncode != 0
    assert victim.owner() == "root" and victim.stat().st_mode & 0o777 == 0o600


# -- facts: everything provisioning reads, in one round trip --------------------------------


def test_facts_report_kind_mode_owner_and_content_without_following_links(host_script, tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_bytes(b"line\n\xff")
    os.chown(conf, 0, 65534)
    conf.chmod(0o640)
    (tmp_path / "dir").mkdir(mode=0o750)
    os.chown(tmp_path / "dir", 65534, 65534)
    (tmp_path / "dir").chmod(0o750)
    (tmp_path / "link").symlink_to(conf)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "web.sock"))
    paths = [str(tmp_path / name) for name in ("app.conf", "dir", "link", "web.sock", "none")]
    request = {"stat": paths, "read": [paths[0], paths[2], paths[4]]}
    facts = json.loads(host_script("facts", request).stdout)
    assert facts["stat"] == [
        ["regular file", "0640", "root", "nogroup"],
        ["directory", "0750", "nobody", "nogroup"],
        ["symbolic link", "0777", "root", "root"],
        ["socket", "0755", "root", "root"],
        None,
    ]
    assert [base64.b64decode(c) if c else c for c in facts["read"]] == [b"line\n\xff", None, None]
    assert "supervisor" not in facts and facts["commands"] == []


def test_facts_run_the_commands_and_answer_each_in_order(host_script):
    commands = ["echo one", "echo two >&2; exit 3", "sleep 0.3; printf 'three'"]
    facts = json.loads(host_script("facts", {"commands": commands}).stdout)
    assert facts["commands"] == [["one\n", "", 0], ["", "two\n", 3], ["three", "", 0]]


class _UnixXMLRPCServer(socketserver.UnixStreamServer, SimpleXMLRPCDispatcher):
    """supervisord's XML-RPC interface on a unix socket."""

    logRequests = False

    def __init__(self, path: str) -> None:
        socketserver.UnixStreamServer.__init__(self, path, _Handler)
        SimpleXMLRPCDispatcher.__init__(self, allow_none=False, encoding=None)


class _Handler(SimpleXMLRPCRequestHandler):
    disable_nagle_algorithm = False  # a TCP option

    def address_string(self) -> str:  # a unix socket has no client address
        return "local"


def test_facts_read_supervisors_programs_through_its_socket(host_script, tmp_path):
    """Named as `supervisorctl status` names them; null when supervisord does not answer."""
    sock = tmp_path / "supervisor.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[supervisorctl]\nserverurl=unix://{sock} ; a comment\n")
    assert json.loads(host_script("facts", {"supervisor": str(conf)}).stdout)["supervisor"] is None
    server = _UnixXMLRPCServer(str(sock))
    processes = [
        {"group": "shop", "name": "shop", "statename": "RUNNING"},
        {"group": "shop-redis", "name": "shop-redis", "statename": "STARTING"},
        {"group": "web", "name": "web_0", "statename": "FATAL"},
    ]
    server.register_function(lambda: processes, "supervisor.getAllProcessInfo")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        facts = json.loads(host_script("facts", {"supervisor": str(conf)}).stdout)
    finally:
        server.shutdown()
        server.server_close()
    assert facts["supervisor"] == [
        ["shop", "RUNNING"],
        ["shop-redis", "STARTING"],
        ["web:web_0", "FATAL"],
    ]


# -- processes: the audit's scan -------------------------------------------------------------


def _fake_proc(root, processes: dict[int, tuple[int, int, str]]) -> None:
    for pid, (ppid, uid, cmd) in processes.items():
        (root / str(pid)).mkdir(parents=True)
        status = f"Name:\tx\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t7\t7\t7\t7\n"
        (root / str(pid) / "status").write_text(status)
        (root / str(pid) / "cmdline").write_bytes(cmd.replace(" ", "\0").encode() + b"\0")


def test_the_process_scan_finds_the_apps_processes_and_their_descendants(tree, tmp_path):
    _fake_proc(
        tmp_path,
        {
            1: (0, 0, "/sbin/init"),
            10: (1, 990, "/usr/bin/uwsgi-core --ini x"),  # the app's user
            11: (10, 0, "/bin/sh -c something"),  # a child, whatever its user
            12: (11, 0, "sleep 5"),
            20: (1, 0, "python3 /etc/eep/shop/reload all"),  # names an app path
            30: (1, 1000, "bash"),
            31: (30, 1000, "vi /etc/eep/shopping.txt"),
        },
    )
    (tmp_path / "self").mkdir()
    (tmp_path / "40").mkdir()  # exited while being read: no status file
    code = (
        "import json\nfrom eep.host.processes import app_processes\n"
        "marks = ['/etc/eep/shop/', '/srv/shop/']\n"
        f"print(json.dumps(app_processes(marks, 990, {str(tmp_path)!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    found = {pid: (uids, cmd) for pid, uids, gids, cmd in json.loads(proc.stdout)}
    assert sorted(found) == [10, 11, 12, 20]
    assert found[10] == ([990, 990, 990, 990], "/usr/bin/uwsgi-core --ini x")


def test_the_process_scan_on_this_machine_does_not_list_itself(host_script):
    mark = f"/srv/eep-scan-test-{os.getpid()}/"
    parent = subprocess.Popen(["sh", "-c", f"sleep 30; : {mark}"])
    try:
        time.sleep(0.2)  # until sh has started its sleep
        result = host_script("processes", [[mark], -1])
        found = {pid: cmd for pid, uids, gids, cmd in json.loads(result.stdout)}
    finally:
        parent.kill()
        parent.wait()
    assert parent.pid in found and mark in found[parent.pid]
    children = [pid for pid, cmd in found.items() if cmd == "sleep 30"]
    assert len(found) == 2 and len(children) == 1


# -- Remote: steps answer from the facts until the host changes -----------------------------

CACHE = """
import json
from eep.remote import Remote, Result, Target
sent = []
facts = {"stat": [["directory", "0750", "root", "shop"]], "read": [None],
         "commands": [["shop:x:990:\\n", "", 0]], "supervisor": [["shop", "RUNNING"]]}
def raw(command, *, check=True, stdin=b""):
    sent.append("facts" if "def read_facts" in command else command)
    return Result(json.dumps(facts) if sent[-1] == "facts" else "fresh\\n", "", 0)
remote = Remote(Target("root", "h", None))
remote._raw = raw
print(remote.prefetch(["/srv/shop"], ["/etc/x"], ["getent group shop"], "/etc/s.conf"))
print(remote.run("getent group shop", changes=False).stdout.strip(), remote.stat("/srv/shop"))
print(remote.supervisor_states(), remote.read("/etc/x"), sent)
remote.run("usermod -aG shop www-data")
print(remote.run("getent group shop", changes=False).stdout.strip(), remote.supervisor_states())
print(sent)
"""


def test_steps_answer_from_the_facts_until_a_command_changes_the_host(tree):
    proc = subprocess.run([sys.executable, "-c", CACHE], cwd=tree, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "True",
        "shop:x:990: directory root:shop 0750",
        "[['shop', 'RUNNING']] None ['facts']",
        "fresh None",
        "['facts', \"sh -c 'usermod -aG shop www-data'\", \"sh -c 'getent group shop'\"]",
    ]


# -- celery: which Celery worker started after the restart trigger ----------------------------


BEAT_ARGS = ["/srv/x/.venv/bin/celery", "-A", "worker", "beat", "--pidfile=/run/x/b.pid"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["/usr/bin/python3", "/srv/x/current/.venv/bin/celery", "-A", "app", "worker"], "worker"),
        (BEAT_ARGS, "beat"),
        (["python3", "-m", "celery", "--app=worker", "--workdir", "/w", "beat", "-l", "X"], "beat"),
        (["python3", "-c", "pass", "celery", "worker"], "worker"),
        (["/srv/x/.venv/bin/python3", "-m", "app.consumer", "beat"], ""),
        (["/srv/x/.venv/bin/celery", "-A", "app"], ""),
    ],
)
def test_a_celery_command_s_subcommand_tells_the_worker_from_the_beat(tree, args, expected):
    code = f"from eep.host.celery import subcommand\nprint(repr(subcommand({args!r})))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True)
    assert proc.stdout.strip() == repr(expected), proc.stderr


def test_the_celery_scan_tells_workers_started_after_the_trigger_and_their_pool(
    host_script, tmp_path
):
    pidfile, trigger = tmp_path / "uwsgi.pid", tmp_path / "deploy"
    pidfile.write_text(str(os.getpid()))  # this test plays the uWSGI master
    sleeper = [sys.executable, "-c", "import sys, time; time.sleep(30)", "celery", "worker"]
    old = subprocess.Popen(sleeper)
    time.sleep(0.2)
    trigger.write_text("touched")
    time.sleep(0.2)
    # A "new worker" with one pool process of its own.
    pool = "import subprocess, sys, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"
    new = subprocess.Popen([sys.executable, "-c", pool, "celery", "worker"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "beat"])
    # The beat is attached like the worker, even with an app named like a subcommand.
    beat = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"] + BEAT_ARGS)
    try:
        time.sleep(0.5)
        done = host_script("celery", {"master_pidfile": str(pidfile), "trigger": str(trigger)})
        assert done.returncode == 0, done.stderr
        found = {pid: (after, kids) for pid, after, kids in json.loads(done.stdout)}
        assert set(found) == {old.pid, new.pid}
        assert found[old.pid][0] < 0 and found[old.pid][1] == 0
        assert found[new.pid][0] >= 0 and found[new.pid][1] == 1
    finally:
        for process in (old, new, other, beat):
            process.kill()
            process.wait()
