"""Benchmark rolling deploys over an inventory; prints figures, asserts nothing.

    .venv/bin/python bench/rolling.py [WEB_COUNTS]      # default: 1,2

For each number N of web hosts: a tree without Celery, N web hosts (and lb1 when the
template has the load balancer role) on one LAN, provisioned in parallel; v1 deployed
(virtualenvs built), then v2 (same requirements) under a closed-loop load: through the
balancer on lb1 when there is one, otherwise on each web host against its own nginx.
Reports the deploy's wall time and phases (build on every host at once, switch host by
host), failed requests, p99 and max latency, and which releases answered.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from e2e_support import bake_tree, load_test  # noqa: E402

from sample_app.build_release import build  # noqa: E402
from testhosts import create_host, ensure_ready  # noqa: E402

SLUG = "rbench"
DOMAIN = f"{SLUG}.example.com"
HAS_BALANCER = (REPO / "{{cookiecutter.project_slug}}" / "eep" / "balancer.py").exists()


def fleet_of(count: int, lan: str, stack: ExitStack) -> dict:
    names = (["lb1"] if HAS_BALANCER else []) + [f"web{n}" for n in range(1, count + 1)]
    hosts = {}
    for name in names:
        hosts[name] = create_host(f"rb{count}-{name}", lan=lan)
        stack.callback(hosts[name].destroy)
    return hosts


def deploy(tree, *args: str) -> tuple[float, str]:
    started = time.monotonic()
    result = tree.invoke(*args, "--identity", str(tree.deploy_key), timeout=900)
    took = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(args)}: {result.stderr.strip()}")
    return took, result.stdout


def phases(output: str) -> str:
    found = re.search(r"^deployed \S+ on .* in [\d.]+ s \((.*)\)$", output, re.M)
    return found.group(1) if found else "?"


def one_count(count: int, tmp: Path) -> None:
    (tmp / f"n{count}").mkdir()
    tree = bake_tree(tmp / f"n{count}", SLUG, use_celery="n", uwsgi_processes="2")
    dist = tmp / "dist"
    tarballs = {v: str(build(v, dist)) for v in ("v1", "v2")}
    with ExitStack() as stack:
        hosts = fleet_of(count, f"rbench{count}", stack)
        inventory = {
            name: {
                "ssh": f"127.0.0.1:{host.ssh_port}",
                "private": host.lan_ip,
                "roles": ["lb"] if name == "lb1" else ["web"],
            }
            for name, host in hosts.items()
        }
        settings = yaml.safe_load((tree.path / "invoke.yaml").read_text())
        settings["eep"]["hosts"] = inventory
        (tree.path / "invoke.yaml").write_text(yaml.safe_dump(settings))
        for host in hosts.values():
            tree.trust(host)
        started = time.monotonic()
        key = str(next(iter(hosts.values())).key_path)
        provisioned = tree.invoke("provision", "--identity", key, timeout=900)
        if provisioned.returncode != 0:
            raise SystemExit(f"error: provision: {provisioned.stderr.strip()}")
        print(f"{count} web: provision {len(hosts)} hosts   {time.monotonic() - started:5.1f} s")
        took, out = deploy(tree, "deploy", "--release", tarballs["v1"])
        print(f"{count} web: first deploy (venvs)     {took:5.1f} s  {phases(out)}")
        web = [host for name, host in hosts.items() if name != "lb1"]
        targets = [hosts["lb1"]] if HAS_BALANCER else web
        with ExitStack() as loads:
            running = [
                loads.enter_context(load_test(host, DOMAIN, seconds=25, concurrency=4))
                for host in targets
            ]
            time.sleep(1)
            took, out = deploy(tree, "deploy", "--release", tarballs["v2"])
        print(f"{count} web: deploy v2 under load     {took:5.1f} s  {phases(out)}")
        where = "through lb1" if HAS_BALANCER else "on each web host"
        for load in running:
            stats = {k: load.stats[k] for k in ("requests", "failed", "p50_ms", "p99_ms", "max_ms")}
            print(f"  load {where}: {json.dumps(stats)} answers {load.stats['answers']}")


def main() -> None:
    counts = [int(n) for n in (sys.argv[1] if len(sys.argv) > 1 else "1,2").split(",")]
    ensure_ready()
    if not HAS_BALANCER:
        print("no load balancer role in this template: web hosts only, load on each host")
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            one_count(count, Path(tmp))


if __name__ == "__main__":
    main()
