"""`invoke env`, `env.set`, `env.unset`, and what runs as the app (`run`, `shell`, release
steps): the settings reach every process of the app and nobody else.

One host for the module; the tests run in order.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest
from e2e_support import audit_as_root, audit_fails_on_mode, bake_tree
from test_deploy import build

pytestmark = pytest.mark.e2e

SLUG = "cfg"
SECRET = "Zq8-unique-secret-7Hk"  # grepped for everywhere it must not be


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return bake_tree(tmp_path_factory.mktemp("trees"), SLUG)


@pytest.fixture(scope="module")
def host(testhost_factory_module, tree, tmp_path_factory):
    host = testhost_factory_module("cfg")
    result = tree.provision(host)
    assert result.returncode == 0, result.stdout + result.stderr
    dist = tmp_path_factory.mktemp("dist")
    deployed = app(tree, host, "deploy", "--release", str(build("v1", dist)))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return host


def app(tree, host, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    # Options right after the task: everything after `--` belongs to the task.
    login = [
        "--host",
        f"{SLUG}-deploy@127.0.0.1:{host.ssh_port}",
        "--identity",
        str(tree.deploy_key),
    ]
    return tree.invoke(args[0], *login, *args[1:], input=input)


def get(host, path: str) -> tuple[str, str]:
    """(status, body) of a GET through nginx."""
    url = shlex.quote(f"http://127.0.0.1{path}")
    out = host.run(f"curl -s -w '\\n%{{http_code}}' -H 'Host: {SLUG}.example.com' {url}").stdout
    body, _, status = out.rpartition("\n")
    return status, body.removesuffix("\n")


def test_set_takes_effect_at_the_restart_and_list_shows_names_only(tree, host):
    done = app(tree, host, "env.set", "SAMPLE_COLOR=blue", "--", "SAMPLE_SIZE=10")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SAMPLE_COLOR, SAMPLE_SIZE: takes effect at the next restart or deploy" in done.stdout
    assert get(host, "/setting/color")[0] == "404"  # not before a restart
    restarted = app(tree, host, "restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert get(host, "/setting/color") == ("200", "blue")
    listed = app(tree, host, "env")
    assert listed.returncode == 0 and listed.stdout.split() == ["SAMPLE_COLOR", "SAMPLE_SIZE"]
    shown = app(tree, host, "env", "--show")
    assert shown.stdout.split() == ["SAMPLE_COLOR=blue", "SAMPLE_SIZE=10"]


def test_a_secret_typed_at_the_prompt_reaches_web_workers_celery_and_run(tree, host):
    # No value on the command line: it is read from stdin (a prompt on a terminal).
    done = app(tree, host, "env.set", "SAMPLE_TOKEN", "--restart", input=SECRET + "\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert get(host, "/setting/token") == ("200", SECRET)
    ran = app(tree, host, "run", "--", "sh", "-c", "echo $SAMPLE_TOKEN; id -un")
    assert ran.stdout.split() == [SECRET, SLUG], ran.stdout + ran.stderr
    celery = host.run(f"pgrep -u {SLUG} -f 'celery.*worker' | head -1").stdout.strip()
    environ = host.run(f"tr '\\0' '\\n' < /proc/{celery}/environ").stdout.splitlines()
    assert f"SAMPLE_TOKEN={SECRET}" in environ


def test_the_secret_is_only_in_the_apps_settings_file(tree, host):
    settings = f"/srv/{SLUG}/shared/env"
    assert host.run(f"stat -c '%U:%G %a' {settings}").stdout.split() == [f"{SLUG}:{SLUG}", "600"]
    places = f"/srv/{SLUG} /etc /var/log /home /root /tmp /run"
    found = host.run(f"grep -rlsF {SECRET} {places} || true").stdout.split()
    assert found == [settings]
    assert SECRET not in host.run("ps -eo args").stdout
    assert SECRET not in host.run("journalctl --no-pager -q 2>/dev/null || true").stdout
    for user in (f"{SLUG}-deploy", "www-data", "nobody"):
        denied = host.run(f"runuser -u {user} -- cat {settings}", check=False)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, user


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["1X=1"], "error: bad setting name '1X'"),
        (["A-B=1"], "error: bad setting name 'A-B'"),
        (["SAMPLE_COLOR=a\nb"], "error: the value of SAMPLE_COLOR contains a newline or NUL"),
        (["PATH=/tmp"], "error: PATH is set by eep itself and cannot be changed"),
        (["EEP_SHARED_DIR=/tmp"], "error: EEP_SHARED_DIR is set by eep itself"),
    ],
)
def test_a_bad_setting_gets_one_line_and_changes_nothing(tree, host, words, message):
    before = host.run(f"cat /srv/{SLUG}/shared/env").stdout
    done = app(tree, host, "env.set", "SAMPLE_SIZE=11", "--", *words)
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and message.removeprefix("error: ") in line, done.stderr
    assert host.run(f"cat /srv/{SLUG}/shared/env").stdout == before


def test_unset_and_a_deploy_apply_it(tree, host, tmp_path):
    done = app(tree, host, "env.unset", "SAMPLE_COLOR")
    assert done.returncode == 0 and "unset" in done.stdout, done.stdout + done.stderr
    again = app(tree, host, "env.unset", "SAMPLE_COLOR")
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert get(host, "/setting/color") == ("200", "blue")  # until the next deploy
    deployed = app(tree, host, "deploy", "--release", str(build("v2", tmp_path)))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert get(host, "/setting/color")[0] == "404"
    assert get(host, "/setting/token") == ("200", SECRET)


def test_release_steps_and_the_health_check_run_as_the_app_with_its_settings(tree, host, tmp_path):
    steps = (
        b"[release]\n"
        b'build = ["id -un > built-by"]\n'
        b'pre_activate = ["echo $(id -un) $SAMPLE_TOKEN $(cat built-by) > $HOME/var/step"]\n'
        b'health = "/setting/token"\n'
    )
    deployed = app(
        tree, host, "deploy", "--release", str(build("v3", tmp_path, **{"eep.toml": steps}))
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "GET /setting/token (Host: cfg.example.com): 200 OK" in deployed.stdout
    step = host.run(f"cat /srv/{SLUG}/shared/var/step").stdout.split()
    assert step == [SLUG, SECRET, f"{SLUG}-deploy"]
    # The health URL fails without the setting: the release is refused, v3 keeps serving.
    app(tree, host, "env.unset", "SAMPLE_TOKEN")
    failed = app(
        tree, host, "deploy", "--release", str(build("v4", tmp_path, **{"eep.toml": steps}))
    )
    assert failed.returncode == 1
    assert (
        "health check GET /setting/token failed (exit 1): answered 404 NOT FOUND" in failed.stderr
    )
    assert get(host, "/setting/token") == ("200", SECRET)
    assert get(host, "/")[1].startswith("sample v3 ")


def test_the_audit_fails_when_the_settings_file_is_opened_up(tree, host):
    assert audit_as_root(tree, host).returncode == 0
    audit_fails_on_mode(tree, host, f"/srv/{SLUG}/shared/env", "regular file", "0640", "0600")
