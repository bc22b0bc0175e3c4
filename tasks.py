"""Developer tasks of the eep template itself (run them through ./dev, which sets up .venv)."""

from __future__ import annotations

import contextlib
import json
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
    # The slowest steps at the end of the output: where the suite's time goes.
    _pytest(c, "e2e", "--durations=25 " + (f"-k '{k}' " if k else "") + ("-x" if x else ""))


@task
def lint(c):
    """ruff lint and format check of the repository, mypy over a baked tree."""
    c.run(f"{PY} -m ruff check .")
    c.run(f"{PY} -m ruff format --check .")
    # The template holds Jinja: its Python is type-checked once baked (and ruff-checked
    # by tests/unit/test_bake.py).
    baked = bake(c, slug="lint")
    with c.cd(str(baked)):
        c.run(
            f"{PY} -m mypy --ignore-missing-imports eep tasks.py"
            " config/reload.py config/as-app.py config/eep_env.py config/balancer.py"
        )
    # The same code with database=postgresql (its steps and checks run only then).
    baked = bake(c, slug="lintpg", database="postgresql")
    with c.cd(str(baked)):
        c.run(f"{PY} -m mypy --ignore-missing-imports eep tasks.py config/as-app.py")


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


@task(help={"slug": "project_slug to bake with", "database": "none or postgresql"})
def bake(c, slug="demo", database="none"):
    """Bake the template with default answers into build/demo/<slug> (a demo SSH key included)."""
    out = BUILD / "demo"
    c.run(f"rm -rf {out / slug}")
    c.run(
        f"{PY} -m cookiecutter {REPO} --no-input -o {out} project_name={slug} "
        f"project_slug={slug} domain={slug}.test 'deploy_ssh_key={_demo_key()}' database={database}"
    )
    return out / slug


def _show(title: str, text: str) -> None:
    print(f"\n==> {title}")
    print("\n".join(f"    {line}" for line in text.strip().splitlines()))


@task
def demo(c):
    """Bake the template, boot a local Debian host, provision it, deploy the sample app twice."""
    sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]
    from e2e_support import bake_tree, load_test

    from testhosts import create_host, ensure_ready, get_host
    from testhosts.errors import HarnessError

    out = BUILD / "demo"
    c.run(f"rm -rf {out / 'shop'}", hide=True)
    out.mkdir(parents=True, exist_ok=True)
    print("==> bake the template (project_slug=shop, domain=shop.example.com)")
    tree = bake_tree(out, "shop")
    print(
        f"    {tree.path.relative_to(REPO)}: "
        + " ".join(sorted(p.name for p in tree.path.iterdir()))
    )
    print("==> boot a disposable Debian 12 host (systemd-nspawn, own network namespace)")
    ensure_ready()
    with contextlib.suppress(HarnessError):
        get_host("eep-demo").destroy()
    host = create_host("eep-demo")

    def step(title: str, *args: str) -> str:
        print(f"\n==> invoke {' '.join(args)}")
        result = tree.invoke(*args)
        print(result.stdout.rstrip())
        if result.returncode != 0:
            raise Exit(f"error: {title} failed: {result.stderr.strip()}", code=1)
        return result.stdout

    tree.trust(host)
    step(
        "provision",
        "provision",
        "--host",
        f"root@127.0.0.1:{host.ssh_port}",
        "--identity",
        str(host.key_path),
    )
    deploy_args = [
        "--host",
        f"shop-deploy@127.0.0.1:{host.ssh_port}",
        "--identity",
        str(tree.deploy_key),
    ]
    dist = out / "dist"
    releases = [
        c.run(f"{PY} sample_app/build_release.py {v} {dist}", hide=True).stdout.strip()
        for v in ("v1", "v2")
    ]
    step("deploy v1", "deploy", "--release", releases[0], *deploy_args)
    page = "curl -s -H 'Host: shop.example.com' http://127.0.0.1"
    _show("the app answers through nginx", host.run(f"{page}/").stdout)
    _show(
        "a 15 s Celery task is queued on v1", host.run(f"{page}/task?seconds=15\\&id=demo").stdout
    )
    tasks = "/srv/shop/shared/var/tasks"
    # Deploy only once the task runs: it must finish on v1 while v2 takes over the web.
    started = host.run(
        f"for i in $(seq 120); do test -f {tasks}/demo.started && exit 0; sleep 0.5; done; exit 1",
        check=False,
    )
    if started.returncode != 0:
        raise Exit("error: the demo task never started on v1; see `invoke logs`", code=1)
    _show("the task runs on v1", "started")
    with load_test(host, "shop.example.com", seconds=10, concurrency=4) as load:
        step("deploy v2 under load", "deploy", "--release", releases[1], *deploy_args)
    _show("requests during the deploy", json.dumps(load.stats))
    _show("the app answers", host.run(f"{page}/").stdout)
    host.run(f"for i in $(seq 60); do test -f {tasks}/demo.json && break; sleep 0.5; done")
    finished = host.run(f"cat {tasks}/demo.json", check=False).stdout
    _show("the task that ran during the deploy finished on its own release", finished)
    if '"v1"' not in finished:
        raise Exit("error: the task did not finish on v1", code=1)
    if load.stats.get("failed"):
        raise Exit(f"error: {load.stats['failed']} requests failed during the deploy", code=1)
    step("releases", "releases", *deploy_args)
    step("status", "status", *deploy_args)
    step("audit", "audit", *deploy_args)
    print(f"\n==> the host stays up: {host.ssh_line()}")
    print("    remove it with: ./dev host.down eep-demo")


@task(help={"name": "host name", "release": "Debian release: bookworm (default) or trixie"})
def host_up(c, name, release="bookworm"):
    """Boot a disposable Debian test host and print how to reach it."""
    c.run(f"{PY} -m testhosts up {name} --release {release}", pty=False)


@task(help={"name": "host name"})
def host_down(c, name):
    """Destroy a test host."""
    c.run(f"{PY} -m testhosts down {name}", pty=False)


@task
def host_list(c):
    """List the test hosts."""
    c.run(f"{PY} -m testhosts list", pty=False)


host = Collection("host")
host.add_task(host_up, "up")
host.add_task(host_down, "down")
host.add_task(host_list, "list")
ns = Collection(test, unit, e2e, lint, fmt, bake, demo, host)
