"""Every generated config is accepted by the real tool that will read it on the host,
and the same check refuses a deliberately broken copy (so the check can fail)."""

from __future__ import annotations

import re

import configcheck
import pytest

CASES = [pytest.param("y", id="with-celery"), pytest.param("n", id="no-celery")]

# (file in the tree, check, a breakage that tool must refuse)
CHECKS = [
    pytest.param(
        "config/sudoers", configcheck.check_sudoers, ("NOPASSWD:", "NOPASSWD"), id="sudoers"
    ),
    pytest.param(
        "config/nginx.conf", configcheck.check_nginx_site, ("listen 80;", "listen 80"), id="nginx"
    ),
    pytest.param(
        "config/supervisor.conf",
        configcheck.check_supervisor_conf,
        ("stopsignal = QUIT", "stopsignal = SOFTLY"),
        id="supervisor",
    ),
    pytest.param(
        "uwsgi.ini", configcheck.check_uwsgi_ini, ("harakiri =", "harakiry ="), id="uwsgi-app"
    ),
    pytest.param(
        "config/uwsgi-base.ini",
        configcheck.check_uwsgi_base_ini,
        ("lazy-apps = true", "lazy-apps-please = true"),
        id="uwsgi-base",
    ),
]


@pytest.mark.parametrize("use_celery", CASES)
@pytest.mark.parametrize(("name", "check", "breakage"), CHECKS)
def test_real_tool_accepts_generated_and_refuses_broken(bake, use_celery, name, check, breakage):
    path = bake(use_celery=use_celery).project_path / name
    assert check(path) is None
    old, new = breakage
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    assert check(path) is not None


def sudoers_commands(text: str) -> list[str]:
    """The commands of the sudoers user specs, one per list item."""
    joined = re.sub(r"\\\n\s*", "", text)
    commands = []
    for line in joined.splitlines():
        if line and not line.startswith("#"):
            commands += [c.strip() for c in line.split("NOPASSWD:", 1)[1].split(",")]
    return commands


AS_APP_VERBS = ("check", "steps", "health", "run", "shell", "env")


def test_sudoers_allows_only_literal_supervisorctl_verbs_for_this_app(bake):
    text = (bake().project_path / "config" / "sudoers").read_text()
    ctl = "/usr/bin/supervisorctl -c /etc/supervisor/supervisord.conf"
    assert sudoers_commands(text) == [
        f"{ctl} status shop",
        f"{ctl} start shop",
        f"{ctl} stop shop",
        f"{ctl} status shop-redis",
        "/etc/eep/shop/stop-app warm",
        "/etc/eep/shop/stop-app now",
        "/etc/eep/shop/reload chain",
        "/etc/eep/shop/reload all",
        "/etc/eep/shop/reload full",
        "/etc/eep/shop/reload wait",
        *(f"/etc/eep/shop/as-app {verb}" for verb in AS_APP_VERBS),
    ]
    assert all(line.startswith(("#", "shop-deploy ", "    ")) for line in text.splitlines())
    # The one rule that is not a supervisorctl verb runs as the app user, never as root.
    assert re.search(
        r"^shop-deploy ALL = \(shop\) NOPASSWD: /etc/eep/shop/stop-app warm", text, re.M
    )
    assert text.count("(root)") == 2
    assert not re.search(r"[*?\[\]]", text.replace("#", "\n#").split("\n#")[0])


def test_supervisor_runs_uwsgi_as_app_user_with_a_supervisor_made_socket(bake):
    conf = (bake().project_path / "config" / "supervisor.conf").read_text()
    assert "[fcgi-program:shop]" in conf
    settings = dict(re.findall(r"^(\w+) = (.*)$", conf.split("[program:shop-redis]")[0], re.M))
    assert settings["user"] == "shop"
    assert settings["socket"] == "unix:///run/shop/web.sock"
    assert settings["socket_owner"] == "www-data:shop"
    assert settings["socket_mode"] == "0660"
    assert settings["command"] == "/usr/bin/uwsgi-core --ini /etc/eep/shop/uwsgi.ini"
    assert settings["stopasgroup"] == settings["killasgroup"] == "false"


def test_no_runtime_file_in_tmp(bake):
    tree = bake().project_path
    for path in [tree / "uwsgi.ini", *sorted((tree / "config").iterdir())]:
        assert not re.search(r"(?<![\w.])/tmp/", path.read_text()), path


def test_with_the_database_the_backup_verbs_are_literal_rules_too(bake):
    sudoers = bake(database="postgresql").project_path / "config" / "sudoers"
    commands = sudoers_commands(sudoers.read_text())
    verbs = [*AS_APP_VERBS, "backup", "backups", "restore", "download"]
    assert [c for c in commands if "as-app" in c] == [f"/etc/eep/shop/as-app {v}" for v in verbs]
    assert configcheck.check_sudoers(sudoers) is None
