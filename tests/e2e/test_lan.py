"""The harness's private LAN: test hosts reach each other on lan0, nobody else does."""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import time
from itertools import permutations
from pathlib import Path

import pytest

from testhosts import Host, cleanup_leftovers, create_host, delete_snapshot, get_host
from testhosts.lan import bridge_port, ensure_lan, netns_name, remove_lan
from testhosts.network import netns_exists
from testhosts.pytest_plugin import session_lan, unique_name

pytestmark = pytest.mark.e2e

# sshd answers with its banner at once; a proxy or a half-open path would not.
BANNER_PROBE = "timeout 4 bash -c 'exec 3<>/dev/tcp/{ip}/{port} && head -c 4 <&3'"

# A second sshd listener bound to the LAN address only: sshd binds it when it
# starts at boot, so it only answers if lan0 had its address by then.
LAN_ONLY_LISTENER = "ListenAddress 0.0.0.0:22\nListenAddress {ip}:2222\n"


def reaches(source: Host, ip: str, port: int = 22) -> bool:
    """True if source gets the ssh banner from ip:port."""
    probe = source.run(BANNER_PROBE.format(ip=ip, port=port), check=False, timeout=30)
    return probe.stdout == "SSH-"


def lan_ports(lan: str) -> set[str]:
    """The veth ends plugged into the LAN's bridge."""
    listing = subprocess.run(
        ["ip", "-n", netns_name(lan), "-o", "link", "show", "master", "br0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in listing.splitlines()}


@pytest.fixture(scope="module")
def fleet(testhost_factory_module) -> list[Host]:
    return [testhost_factory_module(role, lan="fleet") for role in ("lb", "web", "worker")]


@pytest.fixture(scope="module")
def outsider(testhost_factory_module) -> Host:
    return testhost_factory_module("outsider", lan="other")


@pytest.fixture(scope="module")
def loner(testhost_factory_module) -> Host:
    return testhost_factory_module("loner")


def test_hosts_on_one_lan_get_their_own_address_and_reach_each_other(fleet):
    addresses = [ipaddress.ip_address(host.lan_ip) for host in fleet]
    assert len(set(addresses)) == 3
    assert all(address in ipaddress.ip_network("10.77.0.0/16") for address in addresses)
    assert len({ipaddress.ip_network(f"{a}/24", strict=False) for a in addresses}) == 1
    for host in fleet:
        assert get_host(host.name).lan_ip == host.lan_ip, "state.json must record it"
        shown = host.run("ip -4 -o addr show dev lan0").stdout
        assert f"inet {host.lan_ip}/24" in shown
    for source, target in permutations(fleet, 2):
        assert reaches(source, target.lan_ip), f"{source.name} -> {target.name}"


def test_a_host_on_another_lan_or_on_none_reaches_nobody_on_it(fleet, outsider, loner):
    assert loner.lan_ip is None
    assert loner.run("ip link show lan0", check=False).returncode != 0
    other_net = ipaddress.ip_network(f"{outsider.lan_ip}/24", strict=False)
    assert ipaddress.ip_address(fleet[0].lan_ip) not in other_net
    for target in fleet:
        assert not reaches(outsider, target.lan_ip)
        assert not reaches(loner, target.lan_ip)
    assert not reaches(fleet[0], outsider.lan_ip)


def test_a_daemon_bound_to_the_lan_address_at_boot_answers_after_a_reboot(fleet):
    lb, web, _ = fleet
    web.put_file("/etc/ssh/sshd_config.d/lan.conf", LAN_ONLY_LISTENER.format(ip=web.lan_ip))
    web.run("sshd -t")
    before = web.boot_id()

    web.reboot()

    assert web.boot_id() != before
    assert f"inet {web.lan_ip}/24" in web.run("ip -4 -o addr show dev lan0").stdout
    assert reaches(lb, web.lan_ip, port=2222), "sshd must have bound the LAN address at boot"
    assert reaches(lb, web.lan_ip) and reaches(web, lb.lan_ip)


def test_a_stopped_host_is_unreachable_and_comes_back_at_the_same_address(fleet):
    lb, web, worker = fleet
    address = web.lan_ip

    web.stop()

    assert not reaches(lb, address)
    assert not reaches(worker, address)
    assert bridge_port(address) not in lan_ports(web.lan)

    web.start()

    assert get_host(web.name).lan_ip == address
    assert reaches(lb, address) and reaches(web, worker.lan_ip)


def test_a_host_powered_off_from_inside_leaves_the_lan_too(fleet):
    lb, web, _ = fleet
    with contextlib.suppress(subprocess.TimeoutExpired):
        web.run("systemctl poweroff", check=False, timeout=15)
    deadline = time.monotonic() + 30
    while web.is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not web.is_running()

    assert bridge_port(web.lan_ip) not in lan_ports(web.lan)
    assert not reaches(lb, web.lan_ip)

    web.start()

    assert reaches(lb, web.lan_ip)


def test_start_plugs_running_hosts_into_a_lan_that_was_lost(fleet):
    lb, web, worker = fleet
    remove_lan(lb.lan)  # as after the machine lost /run/netns
    assert not reaches(lb, web.lan_ip)

    for host in fleet:
        host.start()

    assert all(host.is_running() for host in fleet)
    for source, target in permutations(fleet, 2):
        assert reaches(source, target.lan_ip), f"{source.name} -> {target.name}"


def test_a_host_from_a_snapshot_gets_its_own_address(fleet, testhost_factory):
    source = fleet[2]
    snapshot = f"lan-{source.name}"
    source.snapshot(snapshot)
    try:
        clone = testhost_factory("clone", from_snapshot=snapshot, lan="fleet")
    finally:
        delete_snapshot(snapshot)
    assert clone.lan == source.lan
    assert clone.lan_ip not in {host.lan_ip for host in fleet}
    assert reaches(clone, source.lan_ip) and reaches(source, clone.lan_ip)
    assert bridge_port(clone.lan_ip) in lan_ports(clone.lan)

    clone.destroy()

    assert bridge_port(clone.lan_ip) not in lan_ports(source.lan)
    assert reaches(fleet[0], source.lan_ip), "the others stay on the LAN"


def test_the_lan_goes_with_its_last_host(outsider):
    lan = outsider.lan
    assert netns_exists(netns_name(lan))

    outsider.destroy()

    assert not netns_exists(netns_name(lan))


def test_cleanup_removes_the_lans_of_crashed_runs(testhosts_ready):
    # A LAN whose only host belongs to a process that dies.
    owner = subprocess.Popen(["sleep", "600"])
    orphaned = session_lan("orphaned")
    host = create_host(unique_name("orphan"), lan=orphaned, owner_pid=owner.pid)
    bare = session_lan("bare")
    try:
        cleanup_leftovers()
        assert netns_exists(netns_name(orphaned)), "a LAN whose host lives must survive"
        # A LAN whose first host was being made when its run died: no host is on it.
        ensure_lan(bare)
        owner.kill()
        owner.wait()

        removed = cleanup_leftovers()

        assert f"LAN {bare}" in removed
        assert any(host.name in line for line in removed)
        assert not netns_exists(netns_name(bare))
        assert not netns_exists(netns_name(orphaned))
        assert not Path(host.dir).exists()
    finally:
        owner.kill()
        host.destroy()
        remove_lan(bare)
