"""`invoke audit` on a live host: passes on a provisioned host with a release, and fails on
the right line when an invariant of the threat model is broken on purpose.

The host is provisioned and deployed as by a developer whose umask is 002 (a common
desktop default), with a tarball whose members are 0666 and 0777: what lands on the
host must not inherit those modes.
The tests share one host and run in order; each breakage is repaired before the next.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from e2e_support import REPO, bake_tree

pytestmark = pytest.mark.e2e

SLUG = "shop"
CURRENT = f"$(readlink -f /srv/{SLUG}/current)"
VENV = f"$(readlink -f /srv/{SLUG}/current/.venv)"

PROCESSES = f"every process runs as {SLUG}"
SOCKET = "web socket 0660 www-data, only nginx and the app reach it"
CODE = "the app cannot change its code, venv, uwsgi.ini or config"
MODES = "directories as provisioned, nothing for others"
SETUID = "no setuid/setgid file in releases or venvs"
SUDO = f"sudo rules of {SLUG}-deploy literal, for this app only"
DRIFT = "config matches the tree (no drift)"
OWNERSHIP = "the app's names and paths are eep's, claimed by nothing else"
SERVICES = "nginx and supervisor enabled at boot and running"
HOST_KEY = "host key pinned in the tree"
ALL_CHECKS = [PROCESSES, SOCKET, CODE, MODES, SETUID, SUDO, DRIFT, OWNERSHIP, SERVICES, HOST_KEY]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    tree = bake_tree(tmp_path_factory.mktemp("trees"), SLUG, uwsgi_processes="2")
    # As in a clone checked out under umask 002: every file of the tree group-writable.
    for path in [tree.path, *tree.path.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o020)
    return tree


def loose_release(dist: Path) -> Path:
    """The sample release with files 0666, directories 0777 and a 0777 script in it."""
    build = REPO / "sample_app" / "build_release.py"
    built = subprocess.run(
        [sys.executable, str(build), "v1", str(dist / "built")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    loose = dist / Path(built).name
    with tarfile.open(built) as source, tarfile.open(loose, "w:gz") as tar:
        for top in ("sample-v1", "sample-v1/app"):
            info = tarfile.TarInfo(top)
            info.type, info.mode = tarfile.DIRTYPE, 0o777
            tar.addfile(info)
        for info in source.getmembers():
            info.mode = 0o666
            tar.addfile(info, source.extractfile(info))
        script = tarfile.TarInfo("sample-v1/run.sh")
        script.size, script.mode = 10, 0o777
        tar.addfile(script, io.BytesIO(b"#!/bin/sh\n"))
    loose.chmod(0o664)
    return loose


@pytest.fixture(scope="module")
def host(testhost_factory_module, tree, tmp_path_factory):
    host = testhost_factory_module("aud")
    result = tree.provision(host)
    assert result.returncode == 0, result.stdout + result.stderr
    tarball = loose_release(tmp_path_factory.mktemp("dist"))
    umask = os.umask(0o002)
    try:
        deployed = tree.invoke("deploy", "--release", str(tarball), *as_deploy(tree, host))
    finally:
        os.umask(umask)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return host


def as_deploy(tree, host) -> list[str]:
    spec = f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}"
    return ["--identity", str(tree.deploy_key), "--host", spec]


def audit(tree, host) -> subprocess.CompletedProcess:
    spec = f"root@127.0.0.1:{host.ssh_port}"
    return tree.invoke("audit", "--host", spec, "--identity", str(host.key_path))


def verdicts(output: str) -> dict[str, str]:
    """{check name: PASS or FAIL} from the audit's table."""
    found = re.findall(r"\] (PASS|FAIL)\s+([^:\n]+)", output)
    return {name.strip(): status for status, name in found}


def test_a_provisioned_host_with_a_release_passes_every_check(tree, host):
    result = audit(tree, host)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts(result.stdout) == dict.fromkeys(ALL_CHECKS, "PASS")
    assert re.search(r"audit: 10 passed, 0 failed$", result.stdout, re.M)


# Run as the app user: which of the paths on stdin (NUL-separated) it may write.
WRITABLE = (
    "import os, sys\n"
    "paths = [p for p in sys.stdin.read().split('\\0') if p]\n"
    "print(len(paths)); print('\\n'.join(p for p in paths if os.access(p, os.W_OK)))\n"
)


def test_the_app_can_write_nothing_in_its_root_but_shared(host):
    root = f"/srv/{SLUG}"
    found = host.run(
        f"(find {root} -path {root}/shared -prune -o ! -type l -print0; printf '{root}/shared/var')"
        f" | runuser -u {SLUG} -- python3 -c {shlex.quote(WRITABLE)}"
    ).stdout.split("\n")
    assert int(found[0]) > 100, "the app root should hold a release and its venv"
    assert [path for path in found[1:] if path] == [f"{root}/shared/var"]
    modes = host.run(
        f"cd {root} && stat -c '%a %n' .eep .eep/tarball.py .eep/releases.py"
        f" current/ current/app current/app/wsgi.py current/run.sh current/uwsgi.ini"
    ).stdout.splitlines()
    assert modes == [
        "700 .eep",
        "600 .eep/tarball.py",
        "600 .eep/releases.py",
        "750 current/",
        "750 current/app",
        "640 current/app/wsgi.py",
        "750 current/run.sh",
        "640 current/uwsgi.ini",
    ]


AGENT = f"/srv/{SLUG}/.eep/tarball.py"
UPLOAD = f"/srv/{SLUG}/.eep/upload-x.tar"


@pytest.mark.parametrize(
    ("plant", "path", "repair"),
    [
        # As on a host deployed by an earlier version: the next deploy session replaces it.
        pytest.param(f"chmod g+w {AGENT}", AGENT, "releases", id="agent"),
        pytest.param(
            f"umask 002 && touch {UPLOAD} && chown {SLUG}-deploy:{SLUG} {UPLOAD}",
            UPLOAD,
            f"rm {UPLOAD}",
            id="upload",
        ),
    ],
)
def test_a_group_writable_agent_or_upload_fails_the_audit_naming_it(
    tree, host, plant, path, repair
):
    host.run(plant)
    try:
        result = audit(tree, host)
        assert result.returncode == 1, result.stdout + result.stderr
        line = next(line for line in result.stdout.splitlines() if CODE in line)
        assert "FAIL" in line and f"{path} is writable by its group or others" in line, line
    finally:
        if repair == "releases":
            listed = tree.invoke("releases", *as_deploy(tree, host))
            assert listed.returncode == 0, listed.stdout + listed.stderr
        else:
            host.run(repair)
    assert audit(tree, host).returncode == 0


def test_the_deploy_account_can_run_the_audit_too(tree, host):
    spec = f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}"
    result = tree.invoke("audit", "--host", spec, "--identity", str(tree.deploy_key))
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts(result.stdout) == dict.fromkeys(ALL_CHECKS, "PASS")
    assert "visudo -c not run (needs root)" in result.stdout


REPAIR_BY_PROVISIONING = "provision"
SUPERVISOR_CONF = f"/etc/supervisor/conf.d/{SLUG}.conf"
CTL = "supervisorctl -c /etc/supervisor/supervisord.conf"

# (id, command that breaks one invariant, the check that must fail, command that repairs it)
BREAKAGES = [
    (
        "uwsgi-as-root",
        f"sed -i 's/^user = {SLUG}$/user = root/' {SUPERVISOR_CONF} && {CTL} update {SLUG}"
        " && sleep 4",
        PROCESSES,
        REPAIR_BY_PROVISIONING,
    ),
    (
        "socket-mode",
        f"chmod 666 /run/{SLUG}/web.sock",
        SOCKET,
        f"chmod 660 /run/{SLUG}/web.sock",
    ),
    ("run-dir-open", f"chmod 755 /run/{SLUG}", SOCKET, f"chmod 750 /run/{SLUG}"),
    ("group-member", f"gpasswd -a nobody {SLUG}", SOCKET, f"gpasswd -d nobody {SLUG}"),
    (
        "release-writable",
        f"chmod g+w {CURRENT}/app/__init__.py",
        CODE,
        f"chmod g-w {CURRENT}/app/__init__.py",
    ),
    (
        "release-owned-by-app",
        f"chown {SLUG} {CURRENT}/uwsgi.ini",
        CODE,
        f"chown {SLUG}-deploy {CURRENT}/uwsgi.ini",
    ),
    ("venv-writable", f"chmod g+w {VENV}/pyvenv.cfg", CODE, f"chmod g-w {VENV}/pyvenv.cfg"),
    (
        "enforced-ini-owned-by-app",
        f"chown {SLUG} /etc/eep/{SLUG}/uwsgi.ini",
        CODE,
        f"chown root /etc/eep/{SLUG}/uwsgi.ini",
    ),
    (
        "uwsgi-binary-writable",
        "chmod o+w /usr/bin/uwsgi-core",
        CODE,
        "chmod o-w /usr/bin/uwsgi-core",
    ),
    ("app-root-open", f"chmod 755 /srv/{SLUG}", MODES, f"chmod 750 /srv/{SLUG}"),
    (
        "world-writable-file",
        f"touch /srv/{SLUG}/shared/var/x && chmod 666 /srv/{SLUG}/shared/var/x",
        MODES,
        f"rm /srv/{SLUG}/shared/var/x",
    ),
    (
        "setuid-in-release",
        f"chmod u+s {CURRENT}/app/__init__.py",
        SETUID,
        f"chmod u-s {CURRENT}/app/__init__.py",
    ),
    (
        "sudoers-mode",
        f"chmod 640 /etc/sudoers.d/{SLUG}",
        SUDO,
        f"chmod 440 /etc/sudoers.d/{SLUG}",
    ),
    (
        "wildcard-rule-elsewhere",
        f"echo '{SLUG}-deploy ALL = (root) NOPASSWD: /usr/bin/supervisorctl *'"
        " > /etc/sudoers.d/zz-extra && chmod 440 /etc/sudoers.d/zz-extra",
        SUDO,
        "rm /etc/sudoers.d/zz-extra",
    ),
    (
        "runtime-user-gets-sudo",
        f"echo '{SLUG} ALL = (root) NOPASSWD: /usr/bin/id' > /etc/sudoers.d/zz-app"
        " && chmod 440 /etc/sudoers.d/zz-app",
        SUDO,
        "rm /etc/sudoers.d/zz-app",
    ),
    (
        "sudoers-syntax-error",
        "echo 'this is not sudoers' > /etc/sudoers.d/zz-broken"
        " && chmod 440 /etc/sudoers.d/zz-broken",
        SUDO,
        "rm /etc/sudoers.d/zz-broken",
    ),
    (
        "nginx-site-edited",
        f"echo '# hand edit' >> /etc/nginx/sites-available/{SLUG}",
        DRIFT,
        REPAIR_BY_PROVISIONING,
    ),
    (
        "supervisor-program-edited",
        f"sed -i 's/^stopwaitsecs = 20$/stopwaitsecs = 1/' {SUPERVISOR_CONF}",
        DRIFT,
        REPAIR_BY_PROVISIONING,
    ),
    (
        "extra-ssh-key-file",
        f"cp /home/{SLUG}-deploy/.ssh/authorized_keys /home/{SLUG}-deploy/.ssh/authorized_keys2",
        DRIFT,
        f"rm /home/{SLUG}-deploy/.ssh/authorized_keys2",
    ),
    (
        "another-site-claims-the-domain",
        f"echo 'server {{ listen 81; server_name {SLUG}.example.com; }}'"
        " > /etc/nginx/sites-enabled/zz-other",
        OWNERSHIP,
        "rm /etc/nginx/sites-enabled/zz-other",
    ),
    ("app-group-of-another-user", f"useradd -M -g {SLUG} intruder", OWNERSHIP, "userdel intruder"),
    (
        "tmpfiles-claims-the-run-dir",
        f"echo 'z /run/{SLUG} 0755 root root -' > /etc/tmpfiles.d/zz-other.conf",
        OWNERSHIP,
        "rm /etc/tmpfiles.d/zz-other.conf",
    ),
    ("nginx-disabled", "systemctl disable -q nginx", SERVICES, "systemctl enable -q nginx"),
    (
        "supervisor-disabled",
        "systemctl disable -q supervisor",
        SERVICES,
        "systemctl enable -q supervisor",
    ),
]


@pytest.mark.parametrize(
    ("breakage", "check", "repair"),
    [pytest.param(b[1], b[2], b[3], id=b[0]) for b in BREAKAGES],
)
def test_a_broken_invariant_fails_the_audit_on_its_line(tree, host, breakage, check, repair):
    host.run(breakage)
    try:
        result = audit(tree, host)
        assert result.returncode == 1, result.stdout + result.stderr
        assert verdicts(result.stdout)[check] == "FAIL", result.stdout
        assert re.search(r"audit: \d passed, [1-9] failed$", result.stdout, re.M)
    finally:
        if repair == REPAIR_BY_PROVISIONING:
            repaired = tree.provision(host)
            assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        else:
            host.run(repair)
    assert audit(tree, host).returncode == 0, "the repair did not restore a passing audit"


def test_a_host_key_known_only_outside_the_tree_fails_the_audit(tree, host, tmp_path):
    copy = tree.copy(tmp_path / "tree")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    # The key is trusted by the user's own known_hosts, but not pinned in the tree.
    (copy.path / "known_hosts").rename(home / ".ssh" / "known_hosts")
    spec = f"root@127.0.0.1:{host.ssh_port}"
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "audit", "--host", spec, "--identity", str(host.key_path)],
        cwd=copy.path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HOME": str(home)},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdicts(result.stdout)[HOST_KEY] == "FAIL"
    assert not Path(copy.path / "known_hosts").exists(), "the audit must not record host keys"


def invoke_with_home(tree_path: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=tree_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HOME": str(home)},
        stdin=subprocess.DEVNULL,
    )


def test_a_host_reached_through_an_ssh_config_alias_is_pinned_under_its_address(
    tree, host, tmp_path
):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host shopserver\n  HostName 127.0.0.1\n  Port {host.ssh_port}\n"
        f"  IdentityFile {host.key_path}\n"
    )
    result = invoke_with_home(tree.path, home, "audit", "--host", "root@shopserver")
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts(result.stdout)[HOST_KEY] == "PASS"


def test_the_known_hosts_setting_of_invoke_yaml_is_the_file_used(tree, host, tmp_path):
    copy = tree.copy(tmp_path / "tree")
    (copy.path / "known_hosts").rename(copy.path / "pinned_hosts")
    yaml = copy.path / "invoke.yaml"
    yaml.write_text(
        yaml.read_text().replace("known_hosts: known_hosts", "known_hosts: pinned_hosts")
    )
    home = tmp_path / "home"
    home.mkdir()
    spec = f"root@127.0.0.1:{host.ssh_port}"
    result = invoke_with_home(
        copy.path, home, "audit", "--host", spec, "--identity", str(host.key_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts(result.stdout)[HOST_KEY] == "PASS"
    # Without the setting, the same host's key is unknown: the connection is refused.
    yaml.write_text(
        yaml.read_text().replace("known_hosts: pinned_hosts", "known_hosts: known_hosts")
    )
    refused = invoke_with_home(
        copy.path, home, "audit", "--host", spec, "--identity", str(host.key_path)
    )
    assert refused.returncode == 1 and "unknown host key" in refused.stderr, refused.stderr
