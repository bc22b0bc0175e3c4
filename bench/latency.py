"""Request latency over time during a deploy under load: eep's two reload modes against the
seed's configuration. Draws docs/latency-during-deploy.svg and prints a summary line each.

    .venv/bin/python bench/latency.py

The same closed-loop load as bench/deploy.py (8 clients, on the host, against nginx)
runs for 20 s; the deploy starts 3 s in. eep: a provisioned host with 4 workers, a
deploy of a new version with unchanged requirements, `--reload chain` then
`--reload all`. The seed: its literal setup (bench/seed_baseline.py), a deploy by
`supervisorctl restart`. Each request is a point in time; the picture shows, per
100 ms, the slowest request that started then, and marks failed requests in red.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e"), str(REPO / "bench")]

from e2e_support import bake_tree, load_test  # noqa: E402
from seed_baseline import SETUP, release  # noqa: E402

from sample_app.build_release import build  # noqa: E402
from testhosts import create_host, ensure_ready  # noqa: E402

OUT = REPO / "docs" / "latency-during-deploy.svg"
SECONDS, CLIENTS, LEAD = 20.0, 8, 3.0
BUCKET = 0.1  # seconds per point of the curve


def under_load(host, server_name: str, action) -> dict:
    """Run `action()` LEAD seconds into the load; the stats with the deploy's window."""
    with load_test(host, server_name, seconds=SECONDS, concurrency=CLIENTS, timeline=True) as load:
        time.sleep(LEAD)
        started = time.time()
        action()
        ended = time.time()
    stats = load.stats
    stats["window"] = (started - stats["began"], ended - stats["began"])
    return stats


def eep_runs(dist: Path) -> list[tuple[str, dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        tree = bake_tree(Path(tmp), "bench", uwsgi_processes="4")
        host = create_host("bench-lat")
        try:
            if tree.provision(host).returncode != 0:
                raise SystemExit("error: provisioning the benchmark host failed")
            login = ["--host", f"bench-deploy@127.0.0.1:{host.ssh_port}"]
            login += ["--identity", str(tree.deploy_key)]

            def deploy(version: str, *extra: str) -> None:
                done = tree.invoke("deploy", "--release", str(build(version, dist)), *login, *extra)
                if done.returncode != 0:
                    raise SystemExit(f"error: deploy {version}: {done.stderr.strip()}")

            deploy("v1")
            chain = under_load(host, "bench.example.com", lambda: deploy("v2"))
            time.sleep(5)  # the Celery worker's restart settles
            every = under_load(host, "bench.example.com", lambda: deploy("v3", "--reload", "all"))
            return [("eep, deploy --reload chain (default)", chain), ("eep, --reload all", every)]
        finally:
            host.destroy()


def seed_run(dist: Path) -> tuple[str, dict]:
    host = create_host("bench-lat-seed")
    try:
        host.run(SETUP, timeout=600)
        release(host, "v1", build("v1", dist))
        host.run("supervisorctl update && sleep 5")

        def restart() -> None:
            release(host, "v2", build("v2", dist))
            host.run("supervisorctl restart uwsgi_example")

        return ("the seed: supervisorctl restart", under_load(host, "seed.example.com", restart))
    finally:
        host.destroy()


def curve(timeline: list) -> list[tuple[float, float]]:
    """(bucket start, slowest latency in ms) per BUCKET seconds."""
    slowest: dict[int, float] = {}
    for start, ms, _ in timeline:
        key = int(start / BUCKET)
        slowest[key] = max(slowest.get(key, 0.0), ms)
    return [(key * BUCKET, ms) for key, ms in sorted(slowest.items())]


def svg(runs: list[tuple[str, dict]]) -> str:
    """Stacked panels, one per run: time on x, latency on a log scale on y."""
    width, panel, left, top = 760, 150, 60, 30
    top_ms = 10_000.0

    def y(ms: float, base: float) -> float:
        fraction = math.log10(max(ms, 1.0)) / math.log10(top_ms)
        return base + panel - min(1.0, fraction) * panel

    def x(seconds: float) -> float:
        return left + seconds / SECONDS * (width - left - 20)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{top + len(runs) * (panel + 50)}" font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="16" font-size="13">Slowest request per 100 ms during a deploy '
        f"under load ({CLIENTS} clients); red: failed requests; grey: the deploy</text>",
    ]
    for index, (title, stats) in enumerate(runs):
        base = top + index * (panel + 50) + 14
        start, end = stats["window"][0], min(stats["window"][1], SECONDS)
        parts.append(
            f'<rect x="{x(start):.1f}" y="{base}" width="{x(end) - x(start):.1f}" '
            f'height="{panel}" fill="#e8e8e8"/>'
        )
        for ms in (1, 10, 100, 1000, 10000):
            parts.append(
                f'<line x1="{left}" x2="{width - 20}" y1="{y(ms, base):.1f}" '
                f'y2="{y(ms, base):.1f}" stroke="#ccc" stroke-width="0.5"/>'
                f'<text x="{left - 6}" y="{y(ms, base) + 4:.1f}" text-anchor="end">'
                f"{ms if ms < 1000 else f'{ms // 1000} s'}{' ms' if ms < 1000 else ''}</text>"
            )
        points = " ".join(f"{x(t):.1f},{y(ms, base):.1f}" for t, ms in curve(stats["timeline"]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="#1f5fa8"/>')
        for t, ms, ok in stats["timeline"]:
            if not ok:
                parts.append(
                    f'<circle cx="{x(t):.1f}" cy="{y(ms, base):.1f}" r="2.5" fill="#d62728"/>'
                )
        summary = (
            f"{title}: {stats['requests']} requests, {stats['failed']} failed, "
            f"p99 {stats['p99_ms']} ms, max {stats['max_ms']} ms"
        )
        parts.append(f'<text x="{left}" y="{base - 4}">{summary}</text>')
        for second in range(0, int(SECONDS) + 1, 2):
            parts.append(
                f'<text x="{x(second):.1f}" y="{base + panel + 14}" text-anchor="middle">'
                f"{second} s</text>"
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    ensure_ready()
    with tempfile.TemporaryDirectory() as tmp:
        dist = Path(tmp) / "dist"
        runs = [*eep_runs(dist), seed_run(dist)]
    for title, stats in runs:
        start, end = stats["window"]
        print(
            f"{title:<40} deploy {end - start:4.1f} s  requests {stats['requests']:6}"
            f"  failed {stats['failed']:5}  p99 {stats['p99_ms']:7.1f} ms"
            f"  max {stats['max_ms']:7.1f} ms"
        )
    OUT.write_text(svg(runs))
    print(f"picture: {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
