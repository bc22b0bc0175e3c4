"""Attacks from the threat model, tried on a real host: each must fail and harm nothing.

One host, two apps: `shop` (the sample app with Celery, v1 served through nginx) and
`blog` (the same app, deployed too). Each test acts as one of shop's identities:

- the runtime user (`runuser -u shop`): code running in the app, e.g. a hostile
  dependency or a compromised request handler;
- the deploy account (`runuser -u shop-deploy`): a developer holding only the app's
  deploy credentials;

or as blog's, against shop. It tries one attack, checks the precise refusal (sudo's
message, "Permission denied", "Operation not permitted", a file's checksum unchanged),
then checks that both apps still serve v1 and that no supervisor program was stopped
or restarted. Malicious tarballs and options a release's uwsgi.ini may not set are
refused by test_deploy.py; the last test here plants socket, plugin and root options
past that check, as a developer can, and shows they still give nothing.
"""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest
from e2e_support import REPO, BakedTree, bake_tree

pytestmark = pytest.mark.e2e

SHOP, BLOG = "shop", "blog"
RUNTIME, DEPLOY = SHOP, f"{SHOP}-deploy"
CTL = "/usr/bin/supervisorctl -c /etc/supervisor/supervisord.conf"
BUILD = REPO / "sample_app" / "build_release.py"
MARKER = "eep-adversary-was-here"


# -- setup ------------------------------------------------------------------------------


def build(version: str, out: Path, **extra: bytes) -> Path:
    """The sample app's release tarball, plus extra files (name under the release -> content)."""
    done = subprocess.run(
        ["python3", str(BUILD), version, str(out)], capture_output=True, text=True, check=True
    )
    path = Path(done.stdout.strip())
    if extra:
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
        with tarfile.open(path, "w:gz") as tar:
            for member, data in members:
                tar.addfile(member, io.BytesIO(data) if data is not None else None)
            for name, data in extra.items():
                info = tarfile.TarInfo(f"sample-{version}/{name}")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


def deploy(tree: BakedTree, host, *args: str) -> subprocess.CompletedProcess:
    """An `invoke` deploy-side task of the tree, logged in as its deploy account."""
    spec = f"{tree.slug}-deploy@127.0.0.1:{host.ssh_port}"
    return tree.invoke(*args, "--host", spec, "--identity", str(tree.deploy_key))


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, BakedTree]:
    directory = tmp_path_factory.mktemp("trees")
    return {slug: bake_tree(directory, slug) for slug in (SHOP, BLOG)}


@pytest.fixture(scope="module")
def host(testhost_factory_module, trees, dist):
    """Both apps provisioned and serving v1; the files the sudo attacks need in /tmp."""
    host = testhost_factory_module("adv")
    v1 = build("v1", dist)
    for tree in trees.values():
        provisioned = tree.provision(host)
        assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
        deployed = deploy(tree, host, "deploy", "--release", str(v1))
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    # supervisorctl configs of the developer's own: one to pass with -c, one that a
    # supervisorctl without -c would find in its working directory.
    evil = "[supervisorctl]\nserverurl = unix:///var/run/supervisor.sock\n"
    for name in ("evil.conf", "supervisord.conf"):
        host.put_file(f"/tmp/{name}", evil, mode=0o644, owner=f"{DEPLOY}:{SHOP}")
    assert_unharmed(host)
    return host


@pytest.fixture(scope="module")
def paths(host) -> dict[str, str]:
    """Where shop's current release and its virtualenv really are."""
    release = host.run(f"readlink -f /srv/{SHOP}/current").stdout.strip()
    venv = host.run(f"readlink -f /srv/{SHOP}/current/.venv").stdout.strip()
    assert release.startswith(f"/srv/{SHOP}/releases/") and venv.startswith(f"/srv/{SHOP}/venvs/")
    return {"release": release, "venv": venv}


# -- helpers ----------------------------------------------------------------------------


def as_user(user: str, command: str) -> str:
    """A shell command line run as `user` (with its groups), from /tmp."""
    return f"runuser -u {user} -- sh -c {shlex.quote('cd /tmp && ' + command)}"


def page(host, slug: str, path: str = "/") -> tuple[int, str]:
    url = shlex.quote(f"http://127.0.0.1{path}")
    out = host.run(f"curl -s -w '\\n%{{http_code}}' -H 'Host: {slug}.example.com' {url}").stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


def programs(host) -> dict[str, tuple[str, str]]:
    """supervisor's programs: name -> (state, pid)."""
    rows = host.run("supervisorctl status", check=False).stdout.splitlines()
    found = {}
    for row in rows:
        match = re.match(r"(\S+)\s+(\S+)\s+(?:pid (\d+),)?", row)
        if match:
            found[match.group(1)] = (match.group(2), match.group(3) or "")
    return found


def assert_unharmed(host, before: dict | None = None, version: str = "v1") -> None:
    """Both apps serve `version` and every program runs (with the same pids as `before`)."""
    now = programs(host)
    assert set(now) == {SHOP, f"{SHOP}-redis", BLOG, f"{BLOG}-redis"}, now
    assert {state for state, _ in now.values()} == {"RUNNING"}, now
    if before is not None:
        assert now == before, "a supervisor program was stopped or restarted"
    for slug in (SHOP, BLOG):
        status, body = page(host, slug)
        assert status == 200 and body.startswith(f"sample {version} pid "), (slug, status, body)


# The attack on one path, run as the attacker: one line per attempt, "method rc error".
PROBE = r"""
p=$1
try() { m=$1; shift; err=$("$@" 2>&1 >/dev/null); echo "$m $? $err"; }
if [ -L "$p" ]; then
    try replace ln -sfn /tmp "$p"
    try remove rm -f "$p"
elif [ -S "$p" ]; then
    try replace ln -sfn /tmp "$p"
    try chmod chmod 0666 "$p"
    try remove rm -f "$p"
elif [ -d "$p" ]; then
    try create touch "$p/.adversary"
    try chmod chmod 0777 "$p"
else
    try append sh -c 'echo "$2" >> "$1"' _ "$p" "$MARKER"
    try replace ln -sfn /tmp "$p"
    try chmod chmod 0666 "$p"
    try remove rm -f "$p"
fi
"""


def fingerprint(host, path: str) -> str:
    """Type, mode, owner and content (checksum, link target or listing) of a path."""
    q = shlex.quote(path)
    volatile = path.endswith(".log")  # uWSGI writes it all the time
    meta = "%F %a %U:%G" if volatile else "%F %a %U:%G %s %Y"
    return host.run(
        f"stat -c '{meta}' {q}; if [ -L {q} ]; then readlink {q};"
        f" elif [ -d {q} ]; then ls -A {q};"
        f" elif [ -f {q} ]; then grep -c {MARKER} {q}; {'' if volatile else f'sha256sum < {q}'};"
        " fi",
        check=False,
    ).stdout


# -- sudo and supervisor ----------------------------------------------------------------

PASSWORD = "sudo: a password is required"
SUDO_ATTACKS = [
    # (who, arguments to `sudo -n`, sudo's refusal)
    (DEPLOY, f"{CTL} stop all", PASSWORD),
    (DEPLOY, f"{CTL} stop {BLOG}", PASSWORD),
    (DEPLOY, f"{CTL} signal KILL all {SHOP}", PASSWORD),
    (DEPLOY, f"{CTL} signal KILL {SHOP}", PASSWORD),
    (DEPLOY, f"{CTL} update", PASSWORD),
    (DEPLOY, f"{CTL} restart all", PASSWORD),
    (DEPLOY, f"{CTL} stop {SHOP} {BLOG}", PASSWORD),
    (DEPLOY, f"{CTL} status {SHOP} -c /tmp/evil.conf", PASSWORD),
    (DEPLOY, f"/usr/bin/supervisorctl -c /tmp/evil.conf status {SHOP}", PASSWORD),
    (DEPLOY, f"/usr/bin/supervisorctl status {SHOP}", PASSWORD),  # would read ./supervisord.conf
    (DEPLOY, "-u root id", PASSWORD),
    (DEPLOY, "true", PASSWORD),
    (DEPLOY, f"-u {BLOG} id", PASSWORD),
    (DEPLOY, f"-u {SHOP} id", PASSWORD),
    (DEPLOY, "-i", PASSWORD),
    (DEPLOY, f"-e /etc/sudoers.d/{SHOP}", PASSWORD),
    (
        DEPLOY,
        f"-E {CTL} status {SHOP}",
        "sudo: sorry, you are not allowed to preserve the environment",
    ),
    (
        DEPLOY,
        f"PYTHONPATH=/tmp {CTL} status {SHOP}",
        "sudo: sorry, you are not allowed to set the following environment variables: PYTHONPATH",
    ),
    # The app-user scripts: only as the app user, only with their literal arguments.
    (DEPLOY, f"/etc/eep/{SHOP}/stop-app now", PASSWORD),
    (DEPLOY, f"-u {SHOP} /etc/eep/{SHOP}/stop-app all", PASSWORD),
    (DEPLOY, f"-u {SHOP} /etc/eep/{SHOP}/reload /etc/shadow", PASSWORD),
    (DEPLOY, f"-u {SHOP} /etc/eep/{SHOP}/reload", PASSWORD),
    (DEPLOY, f"/etc/eep/{SHOP}/reload all", PASSWORD),
    (DEPLOY, f"-u {BLOG} /etc/eep/{BLOG}/stop-app now", PASSWORD),
    (RUNTIME, f"/etc/eep/{SHOP}/stop-app warm", PASSWORD),
    (RUNTIME, "true", PASSWORD),
    (RUNTIME, f"{CTL} status {SHOP}", PASSWORD),
    (RUNTIME, f"{CTL} stop all", PASSWORD),
    (RUNTIME, f"-u {DEPLOY} id", PASSWORD),
]


@pytest.mark.parametrize(
    ("user", "args", "refusal"), SUDO_ATTACKS, ids=[f"{u}:{a}" for u, a, _ in SUDO_ATTACKS]
)
def test_sudo_refuses_everything_but_the_literal_rules(host, user, args, refusal):
    before = programs(host)
    result = host.run(as_user(user, f"sudo -n {args}"), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [refusal]
    assert_unharmed(host, before)


@pytest.mark.parametrize("user", [RUNTIME, DEPLOY])
@pytest.mark.parametrize("args", ["-c /etc/supervisor/supervisord.conf stop all", "restart all"])
def test_supervisord_socket_is_closed_to_the_app_accounts(host, user, args):
    before = programs(host)
    result = host.run(as_user(user, f"/usr/bin/supervisorctl {args}"), check=False)
    assert result.returncode == 1
    assert "PermissionError" in result.stdout + result.stderr
    assert "Permission denied" in result.stdout + result.stderr
    assert_unharmed(host, before)


# -- files ------------------------------------------------------------------------------

# Paths only root may change: neither the app nor the developer may touch them.
ROOT_PATHS = [
    f"/etc/eep/{SHOP}/uwsgi.ini",
    f"/etc/eep/{SHOP}",
    f"/etc/supervisor/conf.d/{SHOP}.conf",
    "/etc/supervisor/conf.d",
    f"/etc/nginx/sites-available/{SHOP}",
    "/etc/nginx/sites-enabled",
    f"/etc/sudoers.d/{SHOP}",
    "/etc/sudoers.d",
    "/usr/bin/uwsgi-core",
    f"/run/{SHOP}",
    f"/run/{SHOP}/web.sock",
    f"/var/log/{SHOP}/uwsgi.log",
    f"/home/{DEPLOY}/.ssh/authorized_keys",
]
# The running code and its ini: the developer's (it deploys them), never the app's.
RELEASE_PATHS = [
    "{release}/app/wsgi.py",
    "{release}",
    "{release}/app",
    "{release}/uwsgi.ini",
    "{venv}/bin/python",
    "{venv}/bin/celery",
    "{venv}/lib/python3.11/site-packages",
    f"/srv/{SHOP}/current",
    # The agent the next deploy runs as the developer, where uploads land.
    f"/srv/{SHOP}/.eep",
    f"/srv/{SHOP}/.eep/tarball.py",
]
FILE_ATTACKS = [(RUNTIME, p) for p in RELEASE_PATHS + ROOT_PATHS] + [
    (DEPLOY, p) for p in ROOT_PATHS
]


FILE_IDS = [f"{user}:{path.replace('{', '').replace('}', '')}" for user, path in FILE_ATTACKS]


@pytest.mark.parametrize(("user", "path"), FILE_ATTACKS, ids=FILE_IDS)
def test_protected_path_cannot_be_written_replaced_or_chmodded(host, paths, user, path):
    path = path.format(**paths)
    before, running = fingerprint(host, path), programs(host)
    probe = f"MARKER={MARKER} sh -c {shlex.quote(PROBE)} _ {shlex.quote(path)}"
    attempts = host.run(as_user(user, probe)).stdout.strip().splitlines()
    assert attempts, "the probe tried nothing"
    for attempt in attempts:
        method, code, error = attempt.split(" ", 2)
        assert code != "0", f"{user} could {method} {path}"
        assert error.endswith(("Permission denied", "Operation not permitted")), attempt
    assert fingerprint(host, path) == before
    assert_unharmed(host, running)


# -- the other app ----------------------------------------------------------------------

CROSS = [(SHOP, BLOG), (DEPLOY, BLOG), (BLOG, SHOP), (f"{BLOG}-deploy", SHOP)]
CROSS_IDS = [f"{user}->{other}" for user, other in CROSS]


@pytest.mark.parametrize(("user", "other"), CROSS, ids=CROSS_IDS)
def test_another_apps_tree_is_unreadable(host, user, other):
    for path in (
        f"/srv/{other}",
        f"/srv/{other}/shared",
        f"/etc/eep/{other}",
        f"/var/log/{other}",
        f"/run/{other}",
        f"/home/{other}-deploy",
    ):
        listed = host.run(as_user(user, f"ls -A {path}"), check=False)
        assert listed.returncode != 0 and listed.stderr.endswith("Permission denied\n"), path
    for path in (
        f"/srv/{other}/current/app/wsgi.py",
        f"/etc/eep/{other}/uwsgi.ini",
        f"/var/log/{other}/uwsgi.log",
    ):
        read = host.run(as_user(user, f"head -c 1 {path}"), check=False)
        assert read.returncode != 0 and read.stderr.endswith("Permission denied\n"), path
    assert_unharmed(host)


@pytest.mark.parametrize(("user", "other"), CROSS, ids=CROSS_IDS)
@pytest.mark.parametrize("socket", ["web.sock", "redis/redis.sock"])
def test_another_apps_sockets_refuse_connections(host, user, other, socket):
    code = f"import socket; socket.socket(socket.AF_UNIX).connect('/run/{other}/{socket}')"
    result = host.run(as_user(user, f"python3 -c {shlex.quote(code)}"), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("PermissionError: [Errno 13] Permission denied")
    assert_unharmed(host)


@pytest.mark.parametrize(("user", "other"), CROSS, ids=CROSS_IDS)
def test_another_apps_processes_cannot_be_signalled(host, user, other):
    before = programs(host)
    pids = host.run(f"pgrep -u {other} -x 'uwsgi-core|redis-server'").stdout.split()
    assert len(pids) == 4  # uWSGI's master and two workers, the broker
    result = host.run(as_user(user, f"env kill -s KILL {' '.join(pids)}"), check=False)
    assert result.returncode != 0
    refused = result.stderr.strip().splitlines()
    assert refused == [f"kill: ({pid}): Operation not permitted" for pid in pids]
    assert host.run(f"pgrep -u {other} -x 'uwsgi-core|redis-server'").stdout.split() == pids
    assert_unharmed(host, before)


# -- links and keys the accounts control ------------------------------------------------


@pytest.mark.parametrize(
    ("user", "directory", "url", "target"),
    [
        (RUNTIME, f"/srv/{SHOP}/shared/media", "/media/", f"/srv/{BLOG}/current/app/version.py"),
        (DEPLOY, "{release}/static", "/static/", f"/var/log/{BLOG}/uwsgi.log"),
    ],
    ids=["runtime-media", "deploy-static"],
)
def test_another_apps_files_cannot_be_read_through_nginx(host, paths, user, directory, url, target):
    directory = directory.format(**paths)
    link = f"{directory}/adversary"
    created = host.run(f"test -d {directory}", check=False).returncode != 0
    try:
        host.run(as_user(user, f"mkdir -p {directory} && ln -s {target} {link}"))
        status, body = page(host, SHOP, f"{url}adversary")
        assert status in (403, 404), f"{target} served to {SHOP}.example.com: {body[:200]!r}"
    finally:
        host.run(f"rm -f {link}" + (f" && rmdir {directory}" if created else ""))
    assert_unharmed(host)


def test_deploy_account_cannot_replace_its_managed_ssh_directory(host):
    home = f"/home/{DEPLOY}"
    moved = host.run(as_user(DEPLOY, f"mv {home}/.ssh {home}/.ssh-moved"), check=False)
    if moved.returncode == 0:
        host.run(f"mv {home}/.ssh-moved {home}/.ssh")
    assert moved.returncode != 0 and "Permission denied" in moved.stderr


# -- a hostile uwsgi.ini ----------------------------------------------------------------

HOSTILE_INI = b"""
; Options a hostile release may try on the socket, plugins and privileges.
chown-socket = root:root
chmod-socket = 666
plugins-dir = /srv/shop/current/plugins
plugin = evil
hook-as-root = exec:touch /root/owned-hook
exec-as-root = touch /root/owned-exec
uid = root
gid = root
"""


def process_ids(host, pattern: str) -> dict[str, tuple[str, str]]:
    """pid -> (Uid: line, Gid: line) of /proc/PID/status for the pids `pgrep pattern` lists."""
    out = host.run(
        f"for p in $(pgrep {pattern}); do"
        " s=$(grep -E '^(Uid|Gid):' /proc/$p/status 2>/dev/null | tr -s '\\t' ' ');"
        ' [ -n "$s" ] && echo $p $s; done'
    ).stdout
    found = {}
    for row in out.splitlines():
        pid, rest = row.split(" ", 1)
        uid, gid = re.fullmatch(r"Uid: ([\d ]+) Gid: ([\d ]+)", rest).groups()
        found[pid] = (uid, gid)
    return found


def all_four(number: str) -> str:
    """A Uid:/Gid: line's values when real, effective, saved and filesystem ids are `number`."""
    return " ".join([number] * 4)


def test_release_ini_cannot_open_the_socket_or_load_a_plugin_as_root(trees, host, dist):
    tree = trees[SHOP]
    ini = (tree.path / "uwsgi.ini").read_bytes() + HOSTILE_INI
    junk = b"\x7fELF not really a plugin\n" * 64
    hostile = build("v2", dist, **{"uwsgi.ini": ini, "plugins/evil_plugin.so": junk})
    # `invoke deploy` refuses options a release does not own, naming the first one.
    refused = deploy(tree, host, "deploy", "--release", str(hostile))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "uwsgi.ini: option 'chown-socket' is not allowed" in refused.stderr
    # A developer can still bypass that check: the release files on the host are theirs.
    release = build("v2", dist, **{"plugins/evil_plugin.so": junk})
    staged = deploy(tree, host, "deploy", "--release", str(release), "--stage")
    assert staged.returncode == 0, staged.stdout + staged.stderr
    release_id = re.search(r"staged (\S+-v2)", staged.stdout).group(1)
    host.run(f"cat >> /srv/{SHOP}/releases/{release_id}/uwsgi.ini", input=HOSTILE_INI.decode())
    root_before = host.run("ls -A /root").stdout
    log_offset = int(host.run(f"stat -c %s /var/log/{SHOP}/uwsgi.log").stdout)

    result = deploy(tree, host, "activate", release_id)

    # What happens: uWSGI (started as the app user) ignores the root options, keeps the
    # socket supervisord made, cannot load the junk plugin, and serves the release.
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"reload\s+[\d.]+ s\s+full", result.stdout), result.stdout
    log = host.run(f"tail -c +{log_offset + 1} /var/log/{SHOP}/uwsgi.log").stdout
    assert "!!! UNABLE to load uWSGI plugin: " in log
    assert f"uwsgi socket 0 inherited UNIX address /run/{SHOP}/web.sock fd 0" in log
    assert host.run("grep -l evil_plugin /proc/[0-9]*/maps", check=False).stdout == ""
    assert host.run("ls -A /root").stdout == root_before
    sock = host.run(f"stat -c '%A %U %G' /run/{SHOP}/web.sock").stdout.strip()
    assert sock == f"srw-rw---- www-data {SHOP}"
    uid = host.run(f"id -u {SHOP}").stdout.strip()
    gid = host.run(f"id -g {SHOP}").stdout.strip()
    shop_procs = process_ids(host, f"-u {SHOP}")
    assert shop_procs and set(shop_procs.values()) == {(all_four(uid), all_four(gid))}
    uwsgi_uids = {ids[0] for ids in process_ids(host, "-x uwsgi-core").values()}
    blog_uid = host.run(f"id -u {BLOG}").stdout.strip()
    assert uwsgi_uids == {all_four(uid), all_four(blog_uid)}
    assert len(host.run(f"pgrep -u {SHOP} -x uwsgi-core").stdout.split()) == 3
    status, body = page(host, SHOP)
    assert status == 200 and body.startswith("sample v2 pid ")

    back = deploy(tree, host, "rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert_unharmed(host)


# -- provisioning (root) must not follow links the accounts plant -------------------------

SWAPS = [
    # (who, a directory provisioning manages, under a directory that account owns)
    pytest.param(DEPLOY, f"/srv/{SHOP}/releases", id="deploy-swaps-releases"),
    pytest.param(RUNTIME, f"/srv/{SHOP}/shared/media", id="runtime-swaps-media"),
]


@pytest.mark.parametrize(("user", "directory"), SWAPS)
def test_provisioning_does_not_follow_a_directory_swapped_for_a_link(host, trees, user, directory):
    # The directory is replaced by a link to a root-only directory: a `chown` that
    # followed it would hand that directory (or /root) to the account.
    canary = "/var/lib/eep-canary"
    host.run(f"rm -rf {canary} && mkdir -m 700 {canary}")
    before = host.run(f"stat -c '%U:%G %a' {canary} /root").stdout
    host.run(as_user(user, f"mv {directory} {directory}.moved && ln -s {canary} {directory}"))
    try:
        result = trees[SHOP].provision(host)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "symbolic link" in result.stdout + result.stderr
        assert host.run(f"stat -c '%U:%G %a' {canary} /root").stdout == before
    finally:
        host.run(f"rm {directory} && mv {directory}.moved {directory}")
    assert trees[SHOP].provision(host).returncode == 0
    assert_unharmed(host)


def test_the_deploy_account_cannot_plant_a_link_where_root_writes_its_keys(host, trees):
    ssh = f"/home/{DEPLOY}/.ssh"
    planted = host.run(
        as_user(DEPLOY, f"ln -s /var/lib/eep-canary {ssh}/.authorized_keys.eep-new"), check=False
    )
    assert planted.returncode != 0 and "Permission denied" in planted.stderr
    assert trees[SHOP].provision(host).returncode == 0
    assert_unharmed(host)
