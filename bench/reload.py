"""Benchmark graceful reloads under load: eep's reload script against uWSGI's own.

    .venv/bin/python bench/reload.py [MODE ...]

On a fresh provisioned test host (sample app deployed, 4 uWSGI workers, max-requests
5000), each mode reloads the app up to 10 times within about a minute while a load
generator inside the host keeps 8 connections busy. Times are taken on the host, from
the signal until every worker is a new process that accepts requests (at most 65 s).
Modes: eep's `reload chain|all|full` (what deploy, rollback and restart run) and uWSGI's
own reloads: `c` and `w` on the master FIFO (chain, workers) and SIGHUP to the master.
Prints figures, asserts nothing.
"""

from __future__ import annotations

import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from e2e_support import bake_tree, load_test  # noqa: E402

from sample_app.build_release import build  # noqa: E402
from testhosts import create_host, ensure_ready  # noqa: E402

SLUG = "rl"
MODES = ["eep-chain", "eep-all", "eep-full", "uwsgi-chain", "uwsgi-workers", "uwsgi-hup"]
# Run on the host as the app user: start one reload, wait until all workers are new.
TIMED_RELOAD = r"""
import json, os, socket, subprocess, sys, time
RUN = "/run/%(slug)s/uwsgi"
def workers():
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(RUN + "/stats.sock")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return json.loads(data)["workers"]
mode = sys.argv[1]
old = {w["pid"] for w in workers()}
started = time.monotonic()
if mode.startswith("eep-"):
    subprocess.run(["/etc/eep/%(slug)s/reload", mode[4:]], check=True)
elif mode == "uwsgi-hup":
    os.kill(int(open(RUN + "/uwsgi.pid").read()), 1)
else:
    with open(RUN + "/master.fifo", "w") as fifo:
        fifo.write({"uwsgi-chain": "c", "uwsgi-workers": "w"}[mode])
while time.monotonic() - started < 65:
    try:
        now = workers()
    except (OSError, ValueError):
        now = []
    if now and all(w["pid"] > 0 and w["pid"] not in old and w["accepting"] for w in now):
        break
    time.sleep(0.05)
print(round(time.monotonic() - started, 2))
"""


def main(modes: list[str]) -> None:
    ensure_ready()
    with tempfile.TemporaryDirectory() as tmp:
        tree = bake_tree(Path(tmp), SLUG, uwsgi_processes="4")
        release = build("v1", Path(tmp) / "dist")
        host = create_host("bench-reload")
        try:
            assert tree.provision(host).returncode == 0, "provision failed"
            spec = f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}"
            args = ["--host", spec, "--identity", str(tree.deploy_key)]
            assert tree.invoke("deploy", "--release", str(release), *args).returncode == 0
            script = base64.b64encode((TIMED_RELOAD % {"slug": SLUG}).encode()).decode()
            host.run(f"echo {script} | base64 -d > /tmp/timed_reload.py")
            for mode in modes:
                times: list[float] = []
                with load_test(host, f"{SLUG}.example.com", seconds=75, concurrency=8) as load:
                    time.sleep(3)
                    began = time.monotonic()
                    while len(times) < 10 and time.monotonic() - began < 50:
                        out = host.run(f"runuser -u {SLUG} -- python3 /tmp/timed_reload.py {mode}")
                        times.append(float(out.stdout.strip().splitlines()[-1]))
                        time.sleep(1)
                stalls = sum(t > 30 for t in times)
                print(
                    f"{mode:<14} n={len(times):<2} median {statistics.median(times):5.2f} s"
                    f"  max {max(times):5.2f} s  stalls(>30 s) {stalls}"
                    f"  failed {load.stats['failed']} of {load.stats['requests']}"
                    f"  p99 {load.stats['p99_ms']} ms  max {load.stats['max_ms']} ms",
                    flush=True,
                )
                print(f"  {json.dumps(times)}", flush=True)
        finally:
            host.destroy()


if __name__ == "__main__":
    main(sys.argv[1:] or MODES)
