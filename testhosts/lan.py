"""Private LANs among test hosts: a Linux bridge in a network namespace of its own.

LAN NAME is the netns `eeplan-NAME` holding the bridge `br0` and nothing else
that leads anywhere: no uplink, no routes, no forwarding. A host that joins
gets a veth pair: `hN` in the LAN netns, enslaved to the bridge, and `lan0` in
the host's own netns with 10.77.<LAN index>.<N>/24, where the guest finds it
when it boots. The host's slirp4netns uplink and loopback forwards are not
touched, and neither is anything in the machine's own namespaces; every
host's netns gets an unreachable route for 10.77.0.0/16, so the LANs it is
not on fail at once instead of going out through its uplink.

Addresses set on an interface live as long as the interface, and the
interface as long as the host's netns; the netns outlives the guest's
reboots, so lan0 is there before the guest's first service starts, at every
boot. Stopping a host removes its veth pair (its address no longer answers on
the LAN, as when a server is switched off); starting it creates the pair
again, with the same address and MAC.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable

from . import network
from .errors import HarnessError

# Not "eep-": that prefix names the hosts' own netns (eep-HOST), and a host
# called "lan-x" must never own the netns of a LAN called "x".
NETNS_PREFIX = "eeplan-"
SUBNET = "10.77"
PREFIX_LEN = 24
FIRST_LAN_INDEX = 1
LAST_LAN_INDEX = 254
FIRST_HOST_NUMBER = 10
LAST_HOST_NUMBER = 254
BRIDGE = "br0"
GUEST_INTERFACE = "lan0"

LAN_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,22}[a-z0-9]$")


# ---- names and addresses (pure) ------------------------------------------------


def check_lan_name(name: str) -> str:
    if not LAN_NAME_RE.match(name):
        raise HarnessError(
            f"invalid LAN name {name!r}: use 2-24 chars of a-z, 0-9 and '-', starting with a letter"
        )
    return name


def netns_name(lan: str) -> str:
    return f"{NETNS_PREFIX}{lan}"


def lan_index(address: str) -> int:
    """The LAN's number: the third octet of any of its hosts' addresses."""
    return int(address.split(".")[2])


def host_number(address: str) -> int:
    """The host's number on its LAN: the last octet of its address."""
    return int(address.split(".")[3])


def _lowest_free(used: set[int], first: int, last: int, what: str) -> int:
    for number in range(first, last + 1):
        if number not in used:
            return number
    raise HarnessError(f"no free {what}: all {last - first + 1} are taken")


def allocate_address(lan: str, members: Iterable[tuple[str, str]]) -> str:
    """The address a new host on `lan` gets, given (LAN, address) of every
    existing host on any LAN: the LAN keeps the index its hosts have (a new
    LAN takes the lowest free one), the host the lowest free number on it."""
    members = list(members)
    on_lan = [address for name, address in members if name == lan]
    if on_lan:
        index = lan_index(on_lan[0])
    else:
        taken = {lan_index(address) for _, address in members}
        index = _lowest_free(taken, FIRST_LAN_INDEX, LAST_LAN_INDEX, "LAN index")
    numbers = {host_number(address) for address in on_lan}
    number = _lowest_free(numbers, FIRST_HOST_NUMBER, LAST_HOST_NUMBER, f"address on LAN {lan}")
    return f"{SUBNET}.{index}.{number}"


def mac_address(address: str) -> str:
    """A fixed, locally administered MAC per address: after a stop and start
    the other hosts' ARP caches are still right."""
    return f"02:4c:41:4e:{lan_index(address):02x}:{host_number(address):02x}"


def bridge_port(address: str) -> str:
    """The name of the host's veth end inside the LAN netns (unique per LAN)."""
    return f"h{host_number(address)}"


# ---- the namespaces ------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise HarnessError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _link(netns: str, interface: str) -> dict | None:
    """`ip -j addr show` of one interface in netns, or None if it is not there."""
    if not network.netns_exists(netns):
        return None
    result = _ip("-n", netns, "-j", "addr", "show", "dev", interface, check=False)
    if result.returncode != 0:
        return None
    found = json.loads(result.stdout or "[]")
    return found[0] if found else None


def lan_exists(lan: str) -> bool:
    return network.netns_exists(netns_name(lan))


def list_lans() -> list[str]:
    """Names of the LANs whose netns exists."""
    return [netns[len(NETNS_PREFIX) :] for netns in network.list_netns(NETNS_PREFIX)]


def ensure_lan(lan: str) -> None:
    """Create the LAN's netns and bridge, if not there."""
    netns = netns_name(lan)
    network.add_netns(netns)
    if _link(netns, BRIDGE) is None:
        _ip("-n", netns, "link", "add", BRIDGE, "type", "bridge")
    _ip("-n", netns, "link", "set", BRIDGE, "up")


def _attached(lan: str, host_netns: str, address: str) -> bool:
    guest_side = _link(host_netns, GUEST_INTERFACE)
    lan_side = _link(netns_name(lan), bridge_port(address))
    if guest_side is None or lan_side is None:
        return False
    addresses = {a.get("local") for a in guest_side.get("addr_info", [])}
    return (
        address in addresses
        and "UP" in guest_side.get("flags", [])
        and lan_side.get("master") == BRIDGE
        and "UP" in lan_side.get("flags", [])
    )


def keep_off_uplink(host_netns: str) -> None:
    """Make the whole LAN range unreachable in a host's netns except its own
    LAN (the /24 on lan0 is the more specific route). Without it a packet for
    another LAN would leave through slirp4netns to the machine's network,
    where a proxy may even accept the connection."""
    _ip("-n", host_netns, "route", "replace", "unreachable", f"{SUBNET}.0.0/16")


def attach(lan: str, host_netns: str, address: str) -> None:
    """Plug the host's netns into the LAN with address (idempotent)."""
    ensure_lan(lan)
    if _attached(lan, host_netns, address):
        return
    netns = netns_name(lan)
    port = bridge_port(address)
    # Whatever is left of an earlier, half-done attach goes first.
    _ip("-n", netns, "link", "del", port, check=False)
    _ip("-n", host_netns, "link", "del", GUEST_INTERFACE, check=False)
    _ip(
        "-n", netns, "link", "add", port, "type", "veth",
        "peer", "name", GUEST_INTERFACE, "address", mac_address(address), "netns", host_netns,
    )  # fmt: skip
    _ip("-n", netns, "link", "set", port, "master", BRIDGE, "up")
    _ip("-n", host_netns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", GUEST_INTERFACE)
    _ip("-n", host_netns, "link", "set", GUEST_INTERFACE, "up")


def detach(lan: str, address: str) -> None:
    """Unplug a host: deleting its bridge port deletes the guest's lan0 too."""
    netns = netns_name(lan)
    if _link(netns, bridge_port(address)) is not None:
        _ip("-n", netns, "link", "del", bridge_port(address))


def remove_lan(lan: str) -> None:
    network.delete_netns(netns_name(lan))
