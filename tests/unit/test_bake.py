"""Baking the template: supported answers bake, bad answers are refused with one line."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import pytest
from cookiecutter.exceptions import FailedHookException

HOSTILE_NAME = 'Bob\'s "Shop" $(touch /tmp/pwned) `id`; rm -rf ../ \\ %(y)s ${HOME} <b>&amp;'

SUPPORTED = [
    pytest.param({}, id="defaults-with-celery"),
    pytest.param({"use_celery": "n"}, id="no-celery"),
    pytest.param({"celery_beat": "y"}, id="celery-beat"),
    pytest.param({"python_version": "3.12"}, id="python-3.12"),
    pytest.param({"python_version": "3.13", "use_celery": "n"}, id="python-3.13-no-celery"),
    pytest.param({"domain": "a.example.com,b.example.org *.c.example.net"}, id="many-domains"),
    pytest.param({"web_root": "/var/www/"}, id="web-root-var-www"),
    pytest.param({"project_slug": "a-b_c9", "celery_app": "pkg.worker:app"}, id="slug-chars"),
    pytest.param({"keep_releases": "2", "uwsgi_max_requests": "0"}, id="lowest-numbers"),
    pytest.param({"uwsgi_processes": "64", "uwsgi_threads": "64"}, id="highest-numbers"),
    pytest.param({"project_name": HOSTILE_NAME}, id="hostile-project-name"),
    pytest.param({"database": "postgresql", "project_slug": "a-b_c9"}, id="postgresql"),
]


@pytest.mark.parametrize("changes", SUPPORTED)
def test_supported_answers_bake(bake, changes):
    result = bake(**changes)
    assert result.exception is None, result.exception
    tree = result.project_path
    assert (tree / "tasks.py").is_file()
    assert (tree / "config" / "redis.conf").exists() == (changes.get("use_celery", "y") == "y")
    for path in tree.rglob("*"):
        if path.is_file():
            text = path.read_text().replace(HOSTILE_NAME, "")
            # ".cookiecutter.json" is the answers file's name, not a leftover.
            leftover = re.search(r"\{\{|\{%|(?<!\.)cookiecutter\.", text)
            assert leftover is None, f"{leftover} in {path}"


def test_hostile_project_name_is_data_everywhere(bake):
    tree = bake(project_name=HOSTILE_NAME).project_path
    namespace: dict[str, object] = {}
    exec(compile((tree / "eep" / "app.py").read_text(), "app.py", "exec"), namespace)
    assert namespace["PROJECT_NAME"] == HOSTILE_NAME
    assert (tree / "README.md").read_text().splitlines()[0].startswith("# Bob's")
    recorded = json.loads((tree / ".cookiecutter.json").read_text())["cookiecutter"]
    assert recorded["project_name"] == HOSTILE_NAME


def test_generated_python_is_valid_and_ruff_clean(bake):
    tree = bake().project_path
    files = sorted(tree.rglob("*.py"))
    for path in files:
        ast.parse(path.read_text(), str(path))
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "--isolated", "--line-length", "100", *files],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_answers_recorded_without_paths_of_the_baking_machine(bake, answers):
    tree = bake().project_path
    recorded = json.loads((tree / ".cookiecutter.json").read_text())["cookiecutter"]
    assert recorded["project_slug"] == answers["project_slug"]
    assert recorded["__deploy_user"] == f"{answers['project_slug']}-deploy"
    assert "_output_dir" not in recorded and "_repo_dir" not in recorded


def test_tasks_are_listed_and_refuse_to_run_without_a_host(bake):
    tree = bake().project_path
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "status"], cwd=tree, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: no host: pass --host or set eep.deploy_hosts in invoke.yaml"
    )
    listing = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"], cwd=tree, capture_output=True, text=True
    )
    tasks = ("provision", "deploy", "activate", "rollback", "releases", "status", "restart", "logs")
    for name in tasks:
        assert re.search(rf"^\s+{name}\s+\S", listing.stdout, re.M), listing.stdout


def _refused(field: str, message: str, **changes: str):
    return pytest.param(changes, f"ERROR: {field}: {message}", id=f"{field}-{message[:30]}")


INVALID = [
    _refused("project_slug", "'root' is a reserved system name; pick another", project_slug="root"),
    _refused("project_slug", "'www-data' is a reserved", project_slug="www-data"),
    _refused("project_slug", "'Shop' is not a valid user name", project_slug="Shop"),
    _refused("project_slug", "'9shop' is not a valid user name", project_slug="9shop"),
    _refused("project_slug", "'a;b' is not a valid user name", project_slug="a;b"),
    _refused("project_slug", "'../x' is not a valid user name", project_slug="../x"),
    _refused("project_slug", "at most 25 characters", project_slug="a" * 26),
    _refused("project_slug", "must not end in '-deploy'", project_slug="shop-deploy"),
    _refused("project_name", "contains a control character ('\\n')", project_name="a\nb"),
    _refused("project_name", "contains a control character ('\\x00')", project_name="a\0b"),
    _refused("project_name", "must not be empty", project_name="  "),
    _refused("domain", "'bad_host.com' is not a valid host name", domain="bad_host.com"),
    _refused("domain", "'x.com;' is not a valid host name", domain="x.com;"),
    _refused("domain", "'-a.com' is not a valid host name", domain="ok.com -a.com"),
    _refused("domain", "'$(id).com' is not a valid host name", domain="$(id).com"),
    _refused("domain", "give at least one host name", domain=" "),
    _refused("wsgi_module", "'app.wsgi' is not of the form", wsgi_module="app.wsgi"),
    _refused("wsgi_module", "'app/wsgi:app' is not of the form", wsgi_module="app/wsgi:app"),
    _refused("wsgi_module", "'a:b`id`' is not of the form", wsgi_module="a:b`id`"),
    _refused("celery_app", "'x y' is not a dotted module path", celery_app="x y"),
    _refused("celery_beat", "needs use_celery=y", celery_beat="y", use_celery="n"),
    _refused("keep_releases", "'1' must be a whole number from 2 to 50", keep_releases="1"),
    _refused("uwsgi_processes", "'0' must be a whole number from 1 to 64", uwsgi_processes="0"),
    _refused("uwsgi_threads", "'two' must be a whole number", uwsgi_threads="two"),
    _refused("uwsgi_harakiri", "'-5' must be a whole number", uwsgi_harakiri="-5"),
    _refused("uwsgi_max_requests", "'1e9' must be a whole number", uwsgi_max_requests="1e9"),
    _refused(
        "uwsgi_listen", "'70000' must be a whole number from 1 to 65535", uwsgi_listen="70000"
    ),
    _refused("web_root", "'/tmp/apps' is a system directory", web_root="/tmp/apps"),
    _refused("web_root", "'/' is a system directory", web_root="/"),
    _refused("web_root", "'srv' must be an absolute path", web_root="srv"),
    _refused("web_root", "'/srv/../etc' must be an absolute path", web_root="/srv/../etc"),
    _refused("web_root", "'/srv/a b' must be an absolute path", web_root="/srv/a b"),
    _refused("deploy_ssh_key", "required", deploy_ssh_key=""),
    _refused("deploy_ssh_key", "not an OpenSSH public key", deploy_ssh_key="hello world"),
    _refused(
        "deploy_ssh_key", "the key data is not valid base64", deploy_ssh_key="ssh-ed25519 @@@"
    ),
]


@pytest.mark.parametrize(("changes", "message"), INVALID)
def test_invalid_answer_is_refused_with_one_line(
    bake, capfd, monkeypatch, tmp_path, changes, message
):
    monkeypatch.setenv("HOME", str(tmp_path))  # no default SSH key for an empty answer
    result = bake(**changes)
    assert isinstance(result.exception, FailedHookException)
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, errors
    assert errors[0].startswith(message), errors[0]


@pytest.mark.parametrize(
    "changes",
    [
        {"python_version": "2.7"},
        {"use_celery": "yes"},
        {"database": "mysql"},
        {"project_name": "{{ nope }}"},
    ],
    ids=["python-2.7", "use-celery-yes", "database-mysql", "jinja-in-answer"],
)
def test_cookiecutter_itself_refuses(bake, changes):
    # Choices outside the list and Jinja inside an answer stop cookiecutter
    # before the hook runs; nothing is generated.
    result = bake(**changes)
    assert result.exception is not None
    assert result.project_path is None or not result.project_path.exists()


def test_weak_rsa_key_is_refused(bake, capfd, ssh_keys):
    result = bake(deploy_ssh_key=ssh_keys["rsa1024"])
    assert isinstance(result.exception, FailedHookException)
    assert "ERROR: deploy_ssh_key: RSA key of 1024 bits is too weak" in capfd.readouterr().err


def test_every_bad_field_gets_its_own_line(bake, capfd):
    result = bake(project_slug="root", domain="x_y", uwsgi_threads="0")
    assert isinstance(result.exception, FailedHookException)
    fields = [line.split(":")[1].strip() for line in capfd.readouterr().err.splitlines()]
    assert fields == ["project_slug", "domain", "uwsgi_threads"]
