"""The disposable test-host harness itself, checked the way a user would."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from testhosts import (
    BootError,
    HarnessError,
    cgroups,
    cleanup_leftovers,
    create_host,
    delete_snapshot,
    get_host,
    list_snapshots,
    state_dir,
)
from testhosts.network import netns_exists, port_is_free
from testhosts.pytest_plugin import unique_name

pytestmark = pytest.mark.e2e

MARKER_UNIT = """\
[Unit]
Description=eep harness check: writes the boot id at every boot

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/boot_id >> /var/lib/boot-marker'

[Install]
WantedBy=multi-user.target
"""


def test_pid1_is_systemd_and_the_system_is_up(session_testhost):
    assert session_testhost.run("ps -p 1 -o comm=").stdout.strip() == "systemd"
    state = session_testhost.run("systemctl is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert session_testhost.run("hostname").stdout.strip() == session_testhost.name


def test_ssh_host_key_checking_is_really_on(session_testhost, tmp_path):
    host = session_testhost
    command = host.ssh_command()
    assert command[command.index("-p") + 1] == str(host.ssh_port)
    assert "StrictHostKeyChecking=yes" in command

    pinned = Path(host.known_hosts_path).read_text().splitlines()
    assert len(pinned) == 1 and pinned[0].startswith(f"[127.0.0.1]:{host.ssh_port} ssh-ed25519 ")

    def connect(known_hosts: Path) -> subprocess.CompletedProcess:
        argv = [
            f"UserKnownHostsFile={known_hosts}" if a.startswith("UserKnownHostsFile=") else a
            for a in command
        ]
        return subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=30)

    empty = tmp_path / "empty"
    empty.write_text("")
    refused = connect(empty)
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    other_key = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    wrong = tmp_path / "wrong"
    wrong.write_text(f"[127.0.0.1]:{host.ssh_port} {other_key}\n")
    refused = connect(wrong)
    assert refused.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in refused.stderr

    assert connect(Path(host.known_hosts_path)).returncode == 0


def test_guest_reaches_the_debian_archive_and_https(session_testhost):
    result = session_testhost.run("apt-get update", timeout=300)
    assert re.search(r"^(Hit|Get):\d+ \S+ bookworm(-updates)? ", result.stdout, re.M)
    assert not re.search(r"^(Err|W):", result.stdout + result.stderr, re.M), result.stderr
    # pip needs HTTPS to PyPI: the machine's CAs must be trusted in the guest.
    code = session_testhost.run(
        "curl -sS -o /dev/null -w '%{http_code}' https://pypi.org/simple/pip/", timeout=60
    ).stdout
    assert code == "200"


def test_http_port_is_forwarded(session_testhost):
    host = session_testhost
    host.put_file("/srv/www/hello.txt", "hello from the guest\n")
    host.run(
        "systemd-run --unit=eep-harness-http --property=WorkingDirectory=/srv/www "
        "python3 -m http.server 80"
    )
    try:
        host.run("for i in $(seq 50); do curl -sf localhost/hello.txt && break; sleep 0.1; done")
        with urllib.request.urlopen(f"{host.http_url}hello.txt", timeout=10) as response:
            assert response.read() == b"hello from the guest\n"
    finally:
        host.run("systemctl stop eep-harness-http", check=False)


def test_two_hosts_have_their_own_identity_and_etc(testhost_factory):
    first, second = testhost_factory("iso"), testhost_factory("iso")
    assert first.name != second.name
    assert {first.ssh_port, first.http_port}.isdisjoint({second.ssh_port, second.http_port})
    assert first.run("hostname").stdout.strip() == first.name
    assert second.run("hostname").stdout.strip() == second.name
    first.run("useradd --create-home alice && echo only-first > /etc/eep-harness-marker")
    assert second.run("test -e /etc/eep-harness-marker", check=False).returncode == 1
    assert second.run("getent passwd alice", check=False).returncode == 2
    machine_ids = {h.run("cat /etc/machine-id").stdout for h in (first, second)}
    assert len(machine_ids) == 2
    # Each guest's systemd sees only its own processes.
    first.run("systemd-run --unit=eep-harness-sleep sleep 300")
    assert "sleep 300" not in second.run("ps -eo args").stdout
    assert second.run("systemctl is-active eep-harness-sleep", check=False).returncode != 0


def test_enabled_service_comes_back_after_a_real_reboot(testhost_factory):
    host = testhost_factory("reboot")
    host.put_file("/etc/systemd/system/eep-harness-marker.service", MARKER_UNIT)
    host.run("systemctl daemon-reload && systemctl enable --now eep-harness-marker")
    before = host.boot_id()
    assert host.run("cat /var/lib/boot-marker").stdout.split() == [before]

    host.reboot()

    after = host.boot_id()
    assert after != before
    assert host.run("systemctl is-active eep-harness-marker").stdout.strip() == "active"
    assert host.run("cat /var/lib/boot-marker").stdout.split() == [before, after]
    assert host.run("ps -p 1 -o comm=").stdout.strip() == "systemd"


def test_stop_and_start_keep_the_disk(testhost_factory):
    host = testhost_factory("stop")
    host.put_file("/root/kept.txt", "still here\n", mode=0o600)
    before = host.boot_id()

    host.stop()
    assert not host.is_running()
    assert host.run("true", check=False).returncode == 255

    host.start()
    assert host.is_running()
    assert host.boot_id() != before
    assert host.read_file("/root/kept.txt") == b"still here\n"
    assert host.run("stat -c %a /root/kept.txt").stdout.strip() == "600"


def test_snapshot_boots_a_new_host_with_the_same_disk(testhost_factory):
    source = testhost_factory("snap")
    source.put_file("/etc/eep-harness-snapshot", "from the source\n")
    source.run("rm /etc/motd")  # a deletion is an overlay whiteout: it must survive too
    snapshot = f"harness-{source.name}"
    source.snapshot(snapshot)
    try:
        assert source.run("cat /etc/eep-harness-snapshot").stdout == "from the source\n"
        clone = testhost_factory("clone", from_snapshot=snapshot)
        assert clone.run("cat /etc/eep-harness-snapshot").stdout == "from the source\n"
        assert clone.run("test -e /etc/motd", check=False).returncode == 1
        assert clone.run("hostname").stdout.strip() == clone.name
        keys = [
            h.run("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
            for h in (source, clone)
        ]
        assert keys[0] != keys[1], "a clone must get fresh ssh host keys"
        assert source.run("cat /etc/machine-id").stdout != clone.run("cat /etc/machine-id").stdout
        # The snapshot is a shared read-only layer: deleting it spares hosts using it.
        delete_snapshot(snapshot)
        assert clone.run("cat /etc/eep-harness-snapshot").stdout == "from the source\n"
        clone.reboot()
        assert clone.run("cat /etc/eep-harness-snapshot").stdout == "from the source\n"
    finally:
        if snapshot in {s["name"] for s in list_snapshots()}:
            delete_snapshot(snapshot)


def test_downloaded_debs_are_cached_for_the_next_host(testhost_factory):
    first = testhost_factory("apt")
    first.run("apt-get update -q && apt-get install -y -q tree", timeout=300)
    first.stop()
    cached = list(state_dir().apt_cache.glob("tree_*.deb"))
    assert cached, "the stopped guest's .deb files must land in the machine-side cache"

    second = testhost_factory("apt")
    result = second.run("apt-get update -q && apt-get install -y -q tree", timeout=300)
    assert "Need to get 0 B" in result.stdout, result.stdout
    assert second.run("tree -L 1 /etc/apt").returncode == 0


def test_destroy_leaves_nothing_behind(testhost_factory):
    host = testhost_factory("gone")
    host_dir, netns = Path(host.dir), host.netns
    assert netns_exists(netns)
    ports = (host.ssh_port, host.http_port)

    host.destroy()

    assert not host_dir.exists()
    assert not netns_exists(netns)
    assert str(host_dir) not in Path("/proc/self/mountinfo").read_text()
    leftovers = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(host_dir) not in leftovers
    assert not any(path.exists() for path in cgroups.host_paths(host.name))
    assert all(port_is_free(port) for port in ports)
    assert not state_dir().console_log(host.name).exists()
    with pytest.raises(HarnessError):
        get_host(host.name)


def test_a_host_that_cannot_boot_raises_with_its_console_log(testhost_factory):
    source = testhost_factory("broken")
    source.run("mv /usr/lib/systemd/systemd /usr/lib/systemd/systemd.off")
    snapshot = f"harness-{source.name}"
    source.snapshot(snapshot)
    try:
        with pytest.raises(BootError) as caught:
            testhost_factory("broken", from_snapshot=snapshot, timeout=30)
    finally:
        delete_snapshot(snapshot)
    message = str(caught.value)
    assert "console log" in message and "last lines:" in message
    assert caught.value.log_path.exists()
    assert "systemd-nspawn" in caught.value.log_path.read_text()
    caught.value.log_path.unlink()
    assert not netns_exists(f"eep-{caught.value.name}")
    assert not state_dir().host_dir(caught.value.name).exists()


def test_cleanup_removes_hosts_whose_owner_died(testhosts_ready):
    owner = subprocess.Popen(["sleep", "600"])
    host = create_host(unique_name("orphan"), owner_pid=owner.pid)
    try:
        assert host.is_running()
        cleanup_leftovers()
        assert host.is_running(), "a host whose owner lives must survive cleanup"
        owner.kill()
        owner.wait()
        removed = cleanup_leftovers()
        assert any(host.name in line for line in removed)
        assert not Path(host.dir).exists()
        assert not netns_exists(host.netns)
        assert not any(path.exists() for path in cgroups.host_paths(host.name))
    finally:
        owner.kill()
        host.destroy()
