"""Pure logic of the baked tree's `eep` package (no host involved)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_in_tree(tree, code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("use_celery", ["y", "n"])
def test_every_config_file_goes_to_the_host(bake, use_celery):
    tree = bake(use_celery=use_celery).project_path
    listed = run_in_tree(
        tree, "from eep.manifest import HOST_FILES\nfor f in HOST_FILES: print(f.source)"
    ).split()
    assert sorted(listed) == sorted(f"config/{p.name}" for p in (tree / "config").iterdir())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("root@h.example.com", "root@h.example.com"),
        ("h.example.com", "root@h.example.com"),
        ("admin@10.0.0.5:2222", "admin@10.0.0.5:2222"),
        ("bad@host:port", "HostError: bad@host:port: port must be a number"),
        ("root@", "HostError: 'root@': no host name"),
    ],
)
def test_host_specs(bake, spec, expected):
    code = (
        "from eep.remote import Target, HostError\n"
        f"try: print(Target.parse({spec!r}, 'root'))\n"
        "except HostError as e: print('HostError:', e)"
    )
    assert run_in_tree(bake().project_path, code).strip() == expected


def test_check_mode_reports_would_change_and_applies_nothing(bake):
    code = (
        "from eep.report import Report\n"
        "r = Report('h', check=True)\n"
        "print(r.change('file /x', 'content differs', '-a\\n+b\\n'))\n"
        "r.unchanged('dir /y')\n"
        "print(r.summary())"
    )
    out = run_in_tree(bake().project_path, code)
    assert out.splitlines() == [
        "[h] would change file /x: content differs",
        "    -a",
        "    +b",
        "False",
        "[h] ok           dir /y",
        "[h] done: 1 would change, 1 ok",
    ]
