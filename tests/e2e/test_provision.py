"""`invoke provision` from a baked tree against real Debian 12 hosts over real SSH."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_support import BakedTree, bake_tree, snapshot_state, state_changes

pytestmark = pytest.mark.e2e

SLUG = "shop"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> BakedTree:
    return bake_tree(tmp_path_factory.mktemp("trees"), SLUG)


@pytest.fixture(scope="module")
def host(testhost_factory_module, tree):
    """One host, provisioned once for the read-only checks of this module."""
    host = testhost_factory_module("prov")
    first = tree.provision(host)
    assert first.returncode == 0, first.stdout + first.stderr
    host.first_output = first.stdout
    return host


def test_first_run_reports_changes_and_a_summary(host):
    assert re.search(r"\] changed\s+packages: install nginx supervisor", host.first_output)
    assert re.search(r"\] done: [1-9]\d* changed, \d+ ok$", host.first_output, re.M)


def test_second_run_changes_nothing(host, tree):
    before = snapshot_state(host)
    second = tree.provision(host)
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(r"\] done: 0 changed, \d+ ok$", second.stdout, re.M), second.stdout
    assert state_changes(before, snapshot_state(host)) == []


ACCOUNTS = [
    # user, shell, home, groups (id -nG)
    (SLUG, "/usr/sbin/nologin", f"/srv/{SLUG}", {SLUG}),
    (f"{SLUG}-deploy", "/bin/bash", f"/home/{SLUG}-deploy", {SLUG}),
]


@pytest.mark.parametrize(("user", "shell", "home", "groups"), ACCOUNTS)
def test_accounts(host, user, shell, home, groups):
    entry = host.run(f"getent passwd {user}").stdout.strip().split(":")
    assert (entry[5], entry[6]) == (home, shell)
    assert set(host.run(f"id -nG {user}").stdout.split()) == groups
    # No password: the deploy account logs in with its key only.
    assert host.run(f"passwd -S {user}").stdout.split()[1] in ("L", "NP")


def test_nginx_is_in_the_app_group_only_for_socket_and_static(host):
    assert SLUG in host.run("id -nG www-data").stdout.split()


PATHS = [
    # path, type, mode, owner, group
    (f"/srv/{SLUG}", "directory", "750", f"{SLUG}-deploy", SLUG),
    (f"/srv/{SLUG}/releases", "directory", "750", f"{SLUG}-deploy", SLUG),
    (f"/srv/{SLUG}/shared", "directory", "750", SLUG, SLUG),
    (f"/srv/{SLUG}/shared/media", "directory", "750", SLUG, SLUG),
    (f"/srv/{SLUG}/shared/redis", "directory", "700", SLUG, SLUG),
    (f"/var/log/{SLUG}", "directory", "750", "root", SLUG),
    (f"/etc/eep/{SLUG}", "directory", "750", "root", SLUG),
    (f"/etc/eep/{SLUG}/uwsgi.ini", "regular file", "644", "root", "root"),
    (f"/run/{SLUG}", "directory", "750", "root", SLUG),
    (f"/run/{SLUG}/uwsgi", "directory", "750", SLUG, SLUG),
    (f"/run/{SLUG}/redis", "directory", "700", SLUG, SLUG),
    (f"/run/{SLUG}/deploy", "regular file", "640", f"{SLUG}-deploy", SLUG),
    (f"/run/{SLUG}/web.sock", "socket", "660", "www-data", SLUG),
    (f"/etc/sudoers.d/{SLUG}", "regular file", "440", "root", "root"),
    (f"/etc/supervisor/conf.d/{SLUG}.conf", "regular file", "644", "root", "root"),
    (f"/etc/nginx/sites-available/{SLUG}", "regular file", "644", "root", "root"),
    (f"/etc/nginx/sites-enabled/{SLUG}", "symbolic link", "777", "root", "root"),
    (f"/var/log/{SLUG}/nginx-access.log", "regular file", "640", "root", SLUG),
    (f"/etc/eep/{SLUG}/stop-app", "regular file", "755", "root", "root"),
    ("/etc/systemd/system/supervisor.service.d/eep.conf", "regular file", "644", "root", "root"),
    (f"/home/{SLUG}-deploy", "directory", "750", "root", SLUG),
    (f"/home/{SLUG}-deploy/.ssh", "directory", "750", "root", SLUG),
    (f"/home/{SLUG}-deploy/.ssh/authorized_keys", "regular file", "640", "root", SLUG),
]


@pytest.mark.parametrize(
    ("path", "kind", "mode", "owner", "group"), PATHS, ids=[p[0] for p in PATHS]
)
def test_path_owner_and_mode(host, path, kind, mode, owner, group):
    found = host.run(f"stat -c '%F|%a|%U|%G' {path}").stdout.strip()
    # An empty file and a file with content are the same thing here.
    assert found.replace("regular empty file", "regular file") == f"{kind}|{mode}|{owner}|{group}"


def test_sudoers_is_valid_and_deploy_may_run_only_its_literal_commands(host):
    host.run("visudo -c")
    listing = host.run(f"sudo -l -U {SLUG}-deploy").stdout
    allowed = re.findall(r"/usr/bin/supervisorctl[^,\n]*", listing)
    ctl = "/usr/bin/supervisorctl -c /etc/supervisor/supervisord.conf"
    expected = [f"{ctl} {verb} {SLUG}" for verb in ("status", "start", "stop")]
    assert sorted(allowed) == sorted([*expected, f"{ctl} status {SLUG}-redis"])
    rules = listing.split("may run the following commands")[1]
    # Two rules run as the app user: the control scripts, then as-app's verbs.
    assert re.findall(r"\((\w+)\) NOPASSWD: /etc/eep/\S+", rules) == [SLUG, SLUG]
    assert re.findall(rf"/etc/eep/{SLUG}/[^,\n]*", rules) == [
        f"/etc/eep/{SLUG}/stop-app warm",
        f"/etc/eep/{SLUG}/stop-app now",
        f"/etc/eep/{SLUG}/reload chain",
        f"/etc/eep/{SLUG}/reload all",
        f"/etc/eep/{SLUG}/reload full",
        f"/etc/eep/{SLUG}/reload wait",
        *(f"/etc/eep/{SLUG}/as-app {verb}" for verb in ("check", "steps", "health")),
        *(f"/etc/eep/{SLUG}/as-app {verb}" for verb in ("run", "shell", "env")),
    ]
    assert "ALL" not in rules.replace("(root)", "")


def test_supervisord_comes_back_quickly_and_without_orphans(host):
    settings = host.run("systemctl show supervisor -p KillMode -p Restart -p RestartUSec").stdout
    assert sorted(settings.split()) == ["KillMode=mixed", "Restart=always", "RestartUSec=2s"]


@pytest.mark.parametrize("service", ["nginx", "supervisor"])
def test_services_enabled_and_running(host, service):
    assert host.run(f"systemctl is-enabled {service}").stdout.strip() == "enabled"
    assert host.run(f"systemctl is-active {service}").stdout.strip() == "active"


def test_audit_passes_on_a_freshly_provisioned_host(tree, host):
    spec = f"root@127.0.0.1:{host.ssh_port}"
    result = tree.invoke("audit", "--host", spec, "--identity", str(host.key_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no release deployed yet" in result.stdout
    assert re.search(r"audit: 10 passed, 0 failed$", result.stdout, re.M)


def test_shared_default_redis_is_off_and_the_private_one_has_no_tcp_port(host):
    assert host.run("systemctl is-active redis-server", check=False).stdout.strip() != "active"
    listening = host.run("ss -ltnH").stdout
    assert ":6379" not in listening


def test_nginx_answers_no_release_yet_with_503(host):
    out = host.run(
        f"curl -s -w '\\n%{{http_code}}' -H 'Host: {SLUG}.example.com' http://127.0.0.1/"
    ).stdout
    assert out.split() == ["No", "release", "deployed", "yet.", "503"]


@pytest.mark.parametrize("name", ["unknown.example.org", "127.0.0.1", "www.shop.example.com"])
def test_a_host_name_no_site_serves_gets_no_page(host, name):
    # Not Debian's welcome page (200): nginx closes the connection without an answer.
    answer = host.run(
        f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Host: {name}' http://127.0.0.1/", check=False
    )
    assert answer.returncode == 52 and answer.stdout == "000", (answer.returncode, answer.stdout)
    assert host.run("test -e /etc/nginx/sites-enabled/default", check=False).returncode == 1


def test_every_app_process_runs_as_the_app_user(host):
    ps = host.run(f"ps -u {SLUG} -o comm=").stdout.split()
    assert "uwsgi-core" in ps and "redis-server" in ps
    root_procs = host.run("ps -U root -o args=").stdout
    assert "uwsgi" not in root_procs and "redis-server" not in root_procs


def test_socket_refused_to_other_users(host):
    probe = (
        "python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX);"
        f' s.connect("/run/{SLUG}/web.sock")\''
    )
    denied = host.run(f"setpriv --reuid=nobody --regid=nogroup --clear-groups {probe}", check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    host.run(f"setpriv --reuid=www-data --regid=www-data --init-groups {probe}")


def test_drift_is_shown_by_check_and_repaired(host, tree):
    site = f"/etc/nginx/sites-available/{SLUG}"
    host.run(f"sed -i 's/client_max_body_size 20m/client_max_body_size 1g/' {site}")
    host.run(f"echo '# hand edit' >> /etc/sudoers.d/{SLUG}")
    # A file an earlier version of the tree installed (its sudo rule is long gone).
    retired = f"/etc/eep/{SLUG}/reload-wait"
    host.run(f"install -m 755 /dev/null {retired}")
    spec = f"root@127.0.0.1:{host.ssh_port}"
    audit = tree.invoke("audit", "--host", spec, "--identity", str(host.key_path))
    assert audit.returncode == 1
    assert f"{retired} is left from an earlier version of this tree" in audit.stdout
    before = snapshot_state(host)
    check = tree.provision(host, "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"would change file {site}: content differs" in check.stdout
    assert "-    client_max_body_size 1g;" in check.stdout
    assert "+    client_max_body_size 20m;" in check.stdout
    assert "-# hand edit" in check.stdout
    assert f"would change file {retired}: removed" in check.stdout
    assert state_changes(before, snapshot_state(host)) == []
    fix = tree.provision(host)
    assert fix.returncode == 0
    # The site, sudoers, the retired file, nginx's reload.
    assert re.search(r"\] done: 4 changed", fix.stdout), fix.stdout
    assert host.run(f"test -e {retired}", check=False).returncode == 1
    assert "client_max_body_size 20m" in host.run(f"cat {site}").stdout


@pytest.mark.parametrize(
    ("name", "breakage", "refusal"),
    [
        ("config/sudoers", ("NOPASSWD:", "NOPASSWD"), "visudo refused config/sudoers"),
        ("config/nginx.conf", ("listen 80;", "listen 80"), "nginx -t refused the site"),
    ],
)
def test_broken_config_is_refused_and_host_stays_sane(
    host, tree, tmp_path, name, breakage, refusal
):
    broken = tree.copy(tmp_path / "broken")
    path = broken.path / name
    path.write_text(path.read_text().replace(*breakage))
    before = snapshot_state(host)
    result = broken.provision(host)
    assert result.returncode != 0
    assert refusal in result.stderr + result.stdout
    assert state_changes(before, snapshot_state(host)) == []
    host.run("visudo -c && nginx -t")
    assert tree.provision(host).returncode == 0


def test_services_come_back_after_reboot(host):
    host.reboot()
    for service in ("nginx", "supervisor"):
        assert host.run(f"systemctl is-active {service}").stdout.strip() == "active"
    # supervisord starts uWSGI shortly after boot: give it a few seconds.
    host.run(
        f"for i in $(seq 60); do curl -s -H 'Host: {SLUG}.example.com' http://127.0.0.1/"
        " | grep -q 'No release' && break; sleep 0.5; done"
    )
    test_nginx_answers_no_release_yet_with_503(host)
    assert host.run(f"stat -c %U /run/{SLUG}/deploy").stdout.strip() == f"{SLUG}-deploy"


def test_two_apps_on_one_host_are_isolated(host, tree, tmp_path):
    other = bake_tree(tmp_path, "blog")
    assert other.provision(host).returncode == 0
    assert tree.provision(host).stdout.count(" changed ") == 0
    as_blog = "setpriv --reuid=blog --regid=blog --init-groups"
    for path in (f"/srv/{SLUG}", f"/run/{SLUG}", f"/var/log/{SLUG}", f"/etc/eep/{SLUG}"):
        denied = host.run(f"{as_blog} ls {path}", check=False)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, path
    as_shop = f"setpriv --reuid={SLUG} --regid={SLUG} --init-groups"
    denied = host.run(f"{as_shop} ls /srv/blog/shared", check=False)
    assert denied.returncode != 0
    shutil.rmtree(other.path)


def test_one_dead_host_does_not_stop_the_others(host, tree):
    spec = f"root@127.0.0.1:{host.ssh_port},root@127.0.0.1:1"
    result = tree.invoke("provision", "--host", spec, "--identity", str(host.key_path))
    assert result.returncode == 1
    assert re.search(r"\[root@127.0.0.1:1\] FAILED: cannot reach root@127.0.0.1:1", result.stderr)
    assert re.search(rf"\[root@127.0.0.1:{host.ssh_port}\] done: 0 changed", result.stdout)


def test_unknown_or_changed_host_key_is_refused(host, tree, tmp_path):
    other = tree.copy(tmp_path / "other")
    (other.path / "known_hosts").unlink()
    args = ["provision", "--host", f"root@127.0.0.1:{host.ssh_port}", "-i", str(host.key_path)]
    unknown = other.invoke(*args)
    assert unknown.returncode == 1 and "unknown host key for [127.0.0.1]:" in unknown.stderr
    assert not (other.path / "known_hosts").exists()
    line = Path(host.known_hosts_path).read_text().split()
    forged = (tmp_path / "forged").with_suffix("")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(forged)], check=True)
    fake_key = forged.with_suffix(".pub").read_text().split()[:2]
    (other.path / "known_hosts").write_text(" ".join([line[0], *fake_key]) + "\n")
    changed = other.invoke(*args)
    assert changed.returncode == 1 and "CHANGED" in changed.stderr, changed.stderr
    trusted = other.invoke(*args[:-2], "-i", str(host.key_path), "--trust-new-host-key")
    assert trusted.returncode == 1, "a changed key is never trusted, even when asked"
