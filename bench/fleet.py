"""Benchmark `invoke provision` of a fleet: 1, 2 and 4 fresh hosts in parallel; asserts nothing.

    .venv/bin/python bench/fleet.py [--rounds 1]

Each round boots fresh test hosts on a private LAN, lists them in the tree's inventory
(eep.hosts, every host a web host of a tree without Celery, so each does the same work)
and times one `invoke provision` of all of them. A first single-host run fills the
machine's .deb cache, so the timed runs measure provisioning, not downloads.
Goal (issue 15): 4 hosts within 1.5x the time of one.

Also reported per run: the CPU time the whole machine spent during it (every test host
shares this machine's cores, so N hosts' package installs cannot go faster than their
CPU time divided by the cores), and a second `invoke provision` with nothing to change
(only eep's own work: SSH, reading each host's state, comparing).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from e2e_support import BakedTree, bake_tree  # noqa: E402

from testhosts import create_host, ensure_ready  # noqa: E402


def write_inventory(tree: BakedTree, hosts: list) -> None:
    """invoke.yaml's eep.hosts for these hosts, each a web host; their keys pinned."""
    lines = ["eep:", "  known_hosts: known_hosts", "  hosts:"]
    for host in hosts:
        tree.trust(host)
        lines.append(
            f"    {host.name}: {{ssh: '127.0.0.1:{host.ssh_port}',"
            f" private: {host.lan_ip}, roles: [web]}}"
        )
    (tree.path / "invoke.yaml").write_text("\n".join(lines) + "\n")


def busy_seconds() -> float:
    """CPU seconds the machine has spent not idle since boot (all cores, /proc/stat)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed_provision(tree: BakedTree, key: str, label: str) -> tuple[float, float, str]:
    """One `invoke provision` of the inventory: seconds, the machine's CPU seconds, the
    hosts' summary lines."""
    cpu, started = busy_seconds(), time.monotonic()
    result = tree.invoke("provision", "--identity", key, timeout=1800)
    took, cpu = time.monotonic() - started, busy_seconds() - cpu
    if result.returncode != 0:
        raise SystemExit(f"error: {label}: {result.stderr.strip() or result.stdout[-800:]}")
    done = re.findall(r"done: .*", result.stdout)
    return took, cpu, f"{len(done)} hosts: {done[0] if done else '?'}"


def provision_fleet(tree: BakedTree, size: int, label: str, lan: str) -> float:
    """Boot `size` fresh hosts, provision them with one command (and again, nothing to
    change); the seconds the first took."""
    names = [f"bf{size}-{n}" for n in range(1, size + 1)]
    with ThreadPoolExecutor(max_workers=size) as pool:
        hosts = list(pool.map(lambda name: create_host(name, lan=lan), names))
    try:
        write_inventory(tree, hosts)
        key = str(hosts[0].key_path)
        took, cpu, done = timed_provision(tree, key, label)
        cores = os.cpu_count() or 1
        print(
            f"{label:<28} {took:6.1f} s   machine CPU {cpu:6.1f} s"
            f" (floor on {cores} cores: {cpu / cores:5.1f} s)   ({done})"
        )
        again, _, done = timed_provision(tree, key, label)
        print(f"{'  again, nothing to change':<28} {again:6.1f} s   ({done})")
        return took
    finally:
        for host in hosts:
            host.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="timed runs per fleet size")
    rounds = parser.parse_args().rounds
    ensure_ready()
    times: dict[int, list[float]] = {1: [], 2: [], 4: []}
    with tempfile.TemporaryDirectory() as tmp:
        tree = bake_tree(Path(tmp), "fleetb", use_celery="n")
        provision_fleet(tree, 1, "1 host (warm-up, not counted)", "benchf")
        for round_number in range(1, rounds + 1):
            for size in times:
                label = f"{size} host{'s' if size > 1 else ''} (round {round_number})"
                times[size].append(provision_fleet(tree, size, label, "benchf"))
    one = statistics.median(times[1])
    for size, taken in times.items():
        median = statistics.median(taken)
        print(f"{size} hosts in parallel: median {median:.1f} s = {median / one:.2f}x one host")
    ratio = statistics.median(times[4]) / one
    print(f"goal: 4 hosts within 1.5x one host: {'met' if ratio <= 1.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
