"""config/as-app.py and config/eep_env.py, run here as the host runs them: the app's code
as the app user, with its environment and settings. The tree is baked with its app root in
a temporary directory; a release's virtualenv is this Python."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest

RELEASE = "20260101T000000Z-1.0"
APP = """
import os

def application(environ, start_response):
    if environ["HTTP_HOST"] not in os.environ.get("ALLOWED", "").split():
        start_response("400 Bad Request", [])
        return [b"bad host " + environ["HTTP_HOST"].encode() + b"\\n"]
    start_response("200 OK", [])
    return [b"ok " + environ["PATH_INFO"].encode()]
"""


@pytest.fixture
def host(bake, tmp_path):
    """(tree, app root) with one release whose app answers 200 only to ALLOWED hosts."""
    tree = bake(use_celery="n", wsgi_module="site_app:application").project_path
    root = tmp_path / "shop"
    for script in ("as-app.py", "eep_env.py"):  # the app root moved into tmp_path
        path = tree / "config" / script
        path.write_text(path.read_text().replace('"/srv/shop', f'"{root}'))
    release = root / "releases" / RELEASE
    (release / ".venv" / "bin").mkdir(parents=True)
    (release / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (release / "site_app.py").write_text(APP)
    (root / "shared").mkdir()
    (root / "current").symlink_to(f"releases/{RELEASE}")
    return tree, root


def as_app(host, *argv: str, request: object = None) -> subprocess.CompletedProcess:
    tree, _ = host
    return subprocess.run(
        [sys.executable, str(tree / "config" / "as-app.py"), *argv],
        input="" if request is None else json.dumps(request) + "\n",
        env={"PYTHONPATH": str(tree / "config"), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )


def answer(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1 and proc.stdout == ""
    return proc.stderr.strip().splitlines()[-1]


def test_settings_are_set_listed_shown_and_unset_in_a_file_only_the_app_reads(host):
    _, root = host
    values = {"ALLOWED": "www.example.com", "SECRET": "s3cr=t; $(rm -rf /) 'x'"}
    assert answer(as_app(host, "env", request={"op": "set", "values": values})) == {
        "changed": ["ALLOWED", "SECRET"]
    }
    settings = root / "shared" / "env"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    listed = answer(as_app(host, "env", request={"op": "list"}))
    assert listed["names"] == ["ALLOWED", "SECRET"]
    # Hosts are compared by digest: the values themselves stay on the host.
    assert listed["digests"]["ALLOWED"] == hashlib.sha256(b"www.example.com").hexdigest()
    assert values["SECRET"] not in json.dumps(listed)
    assert answer(as_app(host, "env", request={"op": "show"}))["values"] == values
    again = as_app(host, "env", request={"op": "set", "values": {"SECRET": values["SECRET"]}})
    assert answer(again) == {"changed": []}
    gone = as_app(host, "env", request={"op": "unset", "names": ["SECRET", "NEVER_SET"]})
    assert answer(gone) == {"changed": ["SECRET"]}
    assert settings.read_text() == "ALLOWED=www.example.com\n"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"A=B": "x"}, "bad setting name 'A=B'"),
        ({"1X": "x"}, "bad setting name '1X'"),
        ({"OK": "one\ntwo"}, "the value of OK contains a newline or NUL"),
        ({"OK": "nul\0"}, "the value of OK contains a newline or NUL"),
        ({"PATH": "/tmp"}, "PATH is set by eep itself and cannot be changed"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line_and_changes_nothing(host, values, message):
    _, root = host
    as_app(host, "env", request={"op": "set", "values": {"KEPT": "1"}})
    before = (root / "shared" / "env").read_bytes()
    proc = as_app(host, "env", request={"op": "set", "values": {"NEW": "2", **values}})
    assert error(proc).startswith(f"error: {message}")
    assert (root / "shared" / "env").read_bytes() == before


def test_health_calls_the_app_with_the_sites_host_and_its_settings(host):
    request = {"release": RELEASE, "path": "/health/?full=1", "host": "www.example.com"}
    assert error(as_app(host, "health", request=request)) == (
        "error: health check GET /health/?full=1 failed (exit 1):"
        " answered 400 Bad Request: bad host www.example.com"
    )
    as_app(host, "env", request={"op": "set", "values": {"ALLOWED": "www.example.com"}})
    assert answer(as_app(host, "health", request=request)) == {"status": "200 OK"}


def test_check_imports_the_app_and_names_what_failed(host):
    _, root = host
    assert answer(as_app(host, "check", request={"release": RELEASE})) == {"checked": RELEASE}
    (root / "releases" / RELEASE / "site_app.py").write_text("import missing_module\n")
    assert error(as_app(host, "check", request={"release": RELEASE})).startswith(
        "error: loading the app failed (exit 1): ModuleNotFoundError: No module named"
    )


def test_steps_run_in_order_with_the_settings_and_a_failure_shows_its_output(host):
    _, root = host
    release = root / "releases" / RELEASE
    as_app(host, "env", request={"op": "set", "values": {"GREETING": "hello"}})
    (release / "eep.toml").write_text(
        '[release]\npre_activate = ["echo $GREETING from $PWD >> $HOME/steps.log",'
        ' "echo first line; echo migration 0002 broke >&2; exit 3", "echo never"]\n'
    )
    proc = as_app(host, "steps", request={"release": RELEASE})
    assert error(proc) == (
        "error: step `echo first line; echo migration 0002 broke >&2; exit 3` failed (exit 3):"
        " migration 0002 broke"
    )
    assert "  | first line" in proc.stderr
    assert (root / "shared" / "steps.log").read_text() == f"hello from {release}\n"


@pytest.mark.parametrize(
    ("argv", "request_", "message"),
    [
        (["check"], {"release": "../../etc"}, "error: bad release id '../../etc'"),
        (["check"], {"release": "20260101T000000Z-9.9"}, "error: no built release"),
        (["steps"], None, "error: bad release id 'None'"),
        (["rm"], {}, "error: usage: as-app VERB (one of: check, steps, health, env, backup,"),
        (["check", "--release", RELEASE], {}, "error: usage: as-app VERB"),
        (["backup"], {}, "error: this app has no database (baked with database: none)"),
        (["download"], {"name": "x.dump"}, "error: this app has no database"),
    ],
)
def test_bad_requests_get_one_line(host, argv, request_, message):
    assert error(as_app(host, *argv, request=request_)).startswith(message)


def test_run_and_exec_run_in_the_current_release_with_the_settings(host):
    _, root = host
    as_app(host, "env", request={"op": "set", "values": {"GREETING": "hi"}})
    proc = as_app(host, "run", request={"command": 'echo "$GREETING in $PWD"; exit 4'})
    assert (proc.returncode, proc.stdout) == (4, f"hi in {root / 'current'}\n")
    proc = as_app(host, "exec", "/bin/sh", "-c", "echo $GREETING $VIRTUAL_ENV; pwd -P")
    assert proc.stdout == f"hi {root / 'current' / '.venv'}\n{root / 'releases' / RELEASE}\n"
