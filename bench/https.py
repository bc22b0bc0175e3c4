"""Benchmark HTTPS (`tls: acme`) against Pebble on a test host; prints figures, asserts nothing.

    .venv/bin/python bench/https.py

On a fresh test host with Pebble (as tests/e2e/test_https.py runs it) and two apps of the
same sample release and 4 uWSGI workers each, `bench` (tls: acme) and `plain` (tls: none):
- issuance: a cold provision (packages, then the certificate), and a provision that only
  has to issue (the certificate deleted first) next to one with nothing to do;
- a forced renewal (what certbot.timer runs, forced) while the load generator of
  bench/deploy.py runs over HTTPS with 8 connections: failed requests, p50/p99/max;
- throughput through nginx: the same load over HTTP (plain) and over HTTPS (bench), a
  new connection per request (a full TLS handshake each: the worst case), twice each,
  alternating.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from e2e_support import (  # noqa: E402
    DIRECTORY,
    PEBBLE_SETUP,
    PEBBLE_START,
    bake_tree,
    load_test,
)

from sample_app.build_release import build  # noqa: E402
from testhosts import create_host, ensure_ready  # noqa: E402

SECURE, PLAIN = "bench.example.com", "plain.example.com"
SECONDS, CONNECTIONS = 10, 8


def timed(action) -> tuple[float, object]:
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


def provision(tree, host) -> float:
    took, done = timed(lambda: tree.provision(host))
    if done.returncode != 0:
        raise SystemExit(f"error: provision {tree.slug}: {done.stdout[-500:]}{done.stderr}")
    return took


def deploy(tree, host, tarball: str) -> None:
    login = ["--host", f"{tree.slug}-deploy@127.0.0.1:{host.ssh_port}"]
    done = tree.invoke("deploy", *login, "--identity", str(tree.deploy_key), "--release", tarball)
    if done.returncode != 0:
        raise SystemExit(f"error: deploy {tree.slug}: {done.stderr.strip()}")


def rate(stats: dict) -> str:
    return (
        f"{stats['requests'] / SECONDS:6.0f} req/s, {stats['failed']} failed,"
        f" p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms"
    )


def median(times: list[float]) -> str:
    return f"{sorted(times)[len(times) // 2]:5.2f} s median ({min(times):.2f}-{max(times):.2f})"


def main() -> None:
    ensure_ready()
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("s", "p"):
            (Path(tmp) / name).mkdir()
        secure = bake_tree(
            Path(tmp) / "s", "bench", tls="acme", acme_directory=DIRECTORY, uwsgi_processes="4"
        )
        plain = bake_tree(Path(tmp) / "p", "plain", uwsgi_processes="4")
        tarball = str(build("v1", Path(tmp) / "dist"))
        host = create_host("bench-tls")
        try:
            host.run(PEBBLE_SETUP.format(domain=f"{SECURE} {PLAIN}"), timeout=900)
            host.run(PEBBLE_START(unit="", config="config", port=15000))
            print(
                f"cold provision, tls: acme (packages included)  {provision(secure, host):5.1f} s"
            )
            idle = [provision(secure, host) for _ in range(3)]
            issuing = []
            for _ in range(3):
                host.run("certbot delete -n --cert-name bench >/dev/null 2>&1")
                issuing.append(provision(secure, host))
            print(f"provision, nothing to do (3 runs)              {median(idle)}")
            print(f"provision that issues the certificate (3 runs) {median(issuing)}")
            provision(plain, host)
            deploy(secure, host, tarball)
            deploy(plain, host, tarball)
            renew = "certbot renew --force-renewal --no-random-sleep-on-renew --cert-name bench -q"
            with load_test(host, SECURE, seconds=15, concurrency=CONNECTIONS, https=True) as load:
                time.sleep(3)
                took, _ = timed(lambda: host.run(renew))
            print(f"forced renewal under HTTPS load                {took:5.1f} s")
            print(f"  load during it: {json.dumps(load.stats)}")
            results: dict[str, list[dict]] = {"http": [], "https": []}
            for _ in range(2):
                for scheme, name in (("http", PLAIN), ("https", SECURE)):
                    with load_test(
                        host,
                        name,
                        seconds=SECONDS,
                        concurrency=CONNECTIONS,
                        https=scheme == "https",
                    ) as load:
                        pass
                    results[scheme].append(load.stats)
                    print(f"{scheme:<5} GET / ({CONNECTIONS} connections)  {rate(load.stats)}")
            http = sum(s["requests"] for s in results["http"])
            https = sum(s["requests"] for s in results["https"])
            print(f"HTTPS / HTTP throughput: {https / http:.2f}")
        finally:
            host.destroy()


if __name__ == "__main__":
    main()
