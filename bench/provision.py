"""Benchmark `invoke provision` on fresh test hosts; prints figures, asserts nothing.

    .venv/bin/python bench/provision.py

Reports: cold provision of a fresh host, five no-change re-provisions (and their
median), and a fresh host provisioned again once the machine's .deb cache holds the
packages. bench/ansible_compare.py sets these against an Ansible play.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from e2e_support import bake_tree  # noqa: E402

from testhosts import create_host, ensure_ready  # noqa: E402


def timed_provision(tree, host, label: str) -> float:
    started = time.monotonic()
    result = tree.provision(host)
    took = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"error: {label}: {result.stderr.strip() or result.stdout[-500:]}")
    summary = re.findall(r"done: .*", result.stdout)[-1]
    print(f"{label:<34} {took:6.1f} s   {summary}", flush=True)
    return took


def main() -> None:
    ensure_ready()
    with tempfile.TemporaryDirectory() as tmp:
        tree = bake_tree(Path(tmp), "bench")
        first = create_host("bench-prov1")
        try:
            cold = timed_provision(tree, first, "fresh host (cache as found)")
            again = statistics.median(
                [timed_provision(tree, first, "re-provision, nothing to do") for _ in range(5)]
            )
        finally:
            first.destroy()  # its downloaded .debs join the machine's shared cache
        second = create_host("bench-prov2")
        try:
            warm = timed_provision(tree, second, "fresh host, warm .deb cache")
        finally:
            second.destroy()
    print(
        f"goals: cold <= 90 s ({'met' if cold <= 90 else 'MISSED'}), "
        f"re-provision <= 0.7 s ({'met' if again <= 0.7 else 'MISSED'}: median {again:.2f} s);"
        f" warm {warm:.1f} s"
    )


if __name__ == "__main__":
    main()
