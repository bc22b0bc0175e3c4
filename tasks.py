"""Developer tasks of the eep template itself (run them through ./dev, which sets up .venv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from invoke import Collection, Exit, task

REPO = Path(__file__).resolve().parent
BUILD = REPO / "build"
PY = sys.executable


def _pytest(c, marker: str, extra: str) -> None:
    result = c.run(f"{PY} -m pytest -m '{marker}' {extra}", warn=True, pty=False)
    # Exit code 5 means "no test ran": a suite that runs nothing is a failure here.
    if result.exited != 0:
        raise Exit(f"error: pytest -m '{marker}' failed (exit {result.exited})", code=1)


@task(help={"k": "only tests matching this pytest -k expression", "x": "stop at the first failure"})
def unit(c, k="", x=False):
    """Fast offline tests: hooks, baking, generated configs checked by the real tools."""
    _pytest(c, "not e2e", (f"-k '{k}' " if k else "") + ("-x" if x else ""))


@task(help={"k": "only tests matching this pytest -k expression", "x": "stop at the first failure"})
def e2e(c, k="", x=False):
    """End-to-end tests on real disposable Debian hosts (root; boots systemd-nspawn guests)."""
    _pytest(c, "e2e", (f"-k '{k}' " if k else "") + ("-x" if x else ""))


@task
def lint(c):
    """ruff lint and format check of the repository (the template dir is linted after baking)."""
    c.run(f"{PY} -m ruff check .")
    c.run(f"{PY} -m ruff format --check .")


@task
def fmt(c):
    """ruff format the repository, and the template's Python files that hold no Jinja."""
    c.run(f"{PY} -m ruff format .")
    template = REPO / "{{cookiecutter.project_slug}}"
    baked = bake(c, slug="fmt")
    c.run(f"{PY} -m ruff format --isolated --line-length 100 {baked}", hide=True)
    c.run(f"{PY} -m ruff check --isolated --line-length 100 --fix {baked}", warn=True)
    for path in sorted(baked.rglob("*.py")):
        source = template / path.relative_to(baked)
        text = source.read_text() if source.exists() else "{{"
        if "{{" not in text and "{%" not in text and text != path.read_text():
            source.write_text(path.read_text())
            print(f"formatted {source.relative_to(REPO)}")


@task
def test(c):
    """The whole suite, as CI runs it: lint, unit tests, then end-to-end tests."""
    lint(c)
    unit(c)
    e2e(c)


def _demo_key() -> str:
    key = BUILD / "demo" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "eep-demo", "-f", str(key)],
            check=True,
        )
    return key.with_suffix(".pub").read_text().strip()


@task(help={"slug": "project_slug to bake with"})
def bake(c, slug="demo"):
    """Bake the template with default answers into build/demo/<slug> (a demo SSH key included)."""
    out = BUILD / "demo"
    c.run(f"rm -rf {out / slug}")
    c.run(
        f"{PY} -m cookiecutter {REPO} --no-input -o {out} project_name={slug} "
        f"project_slug={slug} domain={slug}.test 'deploy_ssh_key={_demo_key()}'"
    )
    return out / slug


@task
def demo(c):
    """Bake the template with defaults and show the generated provisioning tree."""
    tree = bake(c)
    print(f"\n==> The provisioning tree {tree.relative_to(REPO)}:")
    c.run(f"find {tree} -type f -not -path '*/__pycache__/*' | sort | sed 's|{tree}/|  |'")
    for name in ("config/supervisor.conf", "config/sudoers"):
        print(f"\n==> {name}:")
        c.run(f"cat {tree / name}")


ns = Collection(test, unit, e2e, lint, fmt, bake, demo)
