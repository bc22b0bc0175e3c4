"""Benchmark `invoke deploy` and `rollback` of the sample app; prints figures, asserts nothing.

    .venv/bin/python bench/deploy.py

On a fresh provisioned test host (4 uWSGI workers): first deploy (virtualenv
built); a deploy of a new version with unchanged requirements while a load
generator runs on the host and a 20 s Celery task is running (default chain
reload); the same with `--reload all`; a rollback under load (all workers at once,
its default) and one without load. Reports wall-clock times of the commands, their
phases, failed requests, p99/max latency, and whether the running task was lost.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from e2e_support import bake_tree, load_test  # noqa: E402

from sample_app.build_release import build  # noqa: E402
from testhosts import create_host, ensure_ready  # noqa: E402

HOST_HEADER = "bench.example.com"


def run(tree, host, *args: str) -> tuple[float, str]:
    deploy_args = ["--host", f"bench-deploy@127.0.0.1:{host.ssh_port}"]
    started = time.monotonic()
    result = tree.invoke(*args, *deploy_args, "--identity", str(tree.deploy_key))
    took = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(args)}: {result.stderr.strip()}")
    return took, result.stdout


def phases(output: str) -> str:
    found = re.search(r"in [\d.]+ s \((.*)\)", output)
    return found.group(1) if found else "?"


def main() -> None:
    ensure_ready()
    with tempfile.TemporaryDirectory() as tmp:
        tree = bake_tree(Path(tmp), "bench", uwsgi_processes="4")
        dist = Path(tmp) / "dist"
        tarballs = {v: str(build(v, dist)) for v in ("v1", "v2", "v3")}
        host = create_host("bench-dep")
        try:
            assert tree.provision(host).returncode == 0, "provision failed"
            took, out = run(tree, host, "deploy", "--release", tarballs["v1"])
            print(f"first deploy (venv built)        {took:5.1f} s  {phases(out)}")
            page = f"curl -s -H 'Host: {HOST_HEADER}' http://127.0.0.1"
            host.run(f"{page}/task?seconds=20\\&id=bench")
            started = "/srv/bench/shared/var/tasks/bench.started"
            host.run(f"for i in $(seq 60); do test -f {started} && break; sleep 0.5; done")
            with load_test(host, HOST_HEADER, seconds=15, concurrency=8) as load:
                time.sleep(2)
                took, out = run(tree, host, "deploy", "--release", tarballs["v2"])
            print(f"deploy v2 under load (same reqs) {took:5.1f} s  {phases(out)}")
            print(f"  load during deploy: {json.dumps(load.stats)}")
            marker = "/srv/bench/shared/var/tasks/bench.json"
            host.run(f"for i in $(seq 60); do test -f {marker} && break; sleep 0.5; done")
            found = host.run(f"cat {marker}", check=False)
            task = json.loads(found.stdout)["version"] if found.returncode == 0 else "LOST"
            print(f"  task running during deploy: finished on {task} (lost: {task == 'LOST'})")
            with load_test(host, HOST_HEADER, seconds=10, concurrency=8) as load:
                time.sleep(2)
                took, out = run(
                    tree, host, "deploy", "--release", tarballs["v3"], "--reload", "all"
                )
            print(f"deploy v3 under load, --reload all {took:5.1f} s  {phases(out)}")
            v3_id = re.search(r"deployed (\S+) in", out).group(1)
            print(f"  load during deploy: {json.dumps(load.stats)}")
            with load_test(host, HOST_HEADER, seconds=8, concurrency=8) as load:
                time.sleep(2)
                took, out = run(tree, host, "rollback")
            print(f"rollback under load              {took:5.1f} s  {phases(out)}")
            print(f"  load during rollback: {json.dumps(load.stats)}")
            time.sleep(2)
            took, out = run(tree, host, "rollback", "--to", v3_id)
            print(f"rollback, no load                {took:5.1f} s  {phases(out)}")
        finally:
            host.destroy()
    print("baseline (the seed's literal config): bench/seed_baseline.py")


if __name__ == "__main__":
    main()
