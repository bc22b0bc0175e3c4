"""The hook scripts as plain Python: validators and post-generation steps."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import struct

import pytest
from conftest import REPO


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pre = load_hook("pre_gen_project")
post = load_hook("post_gen_project")


def ssh_blob(*parts: bytes) -> str:
    return base64.b64encode(b"".join(struct.pack(">I", len(p)) + p for p in parts)).decode()


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa4096"])
def test_real_public_keys_are_accepted(ssh_keys, kind):
    pre.check_deploy_ssh_key(ssh_keys[kind])


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (f"ssh-ed25519 {ssh_blob(b'ssh-rsa', b'x' * 32)}", "does not hold a ssh-ed25519 key"),
        (f"ssh-ed25519 {ssh_blob(b'ssh-ed25519', b'x' * 31)}", "malformed ssh-ed25519 key"),
        ("ssh-ed25519 " + base64.b64encode(b"\0\0\0\x20abc").decode(), "truncated"),
        (f"ecdsa-sha2-nistp256 {ssh_blob(b'ecdsa-sha2-nistp256', b'nistp384', b'q')}", "malformed"),
        ('command="sh" ssh-ed25519 AAAA', "not an OpenSSH public key"),
        ("ssh-ed25519 AAAA\nssh-ed25519 BBBB", "control character"),
    ],
)
def test_forged_or_odd_keys_are_refused(key, problem):
    with pytest.raises(pre.Refused, match=problem):
        pre.check_deploy_ssh_key(key)


def test_validate_skips_celery_app_without_celery(ssh_keys):
    answers = {name: "" for name in pre.CHECKS}
    answers.update(
        project_name="x",
        project_slug="x",
        domain="x.org",
        wsgi_module="a:b",
        celery_app="not valid!",
        use_celery="n",
        celery_beat="n",
        python_version="3.11",
        deploy_ssh_key=ssh_keys["ed25519"],
        web_root="/srv",
        keep_releases="5",
        keep_backups="10",
        uwsgi_processes="1",
        uwsgi_threads="1",
        uwsgi_harakiri="30",
        uwsgi_max_requests="0",
        uwsgi_listen="100",
        database="none",
        tls="none",
        hsts="n",
    )
    assert pre.validate(answers) == []
    assert pre.validate({**answers, "use_celery": "y"}) == [
        "celery_app: 'not valid!' is not a dotted module path (package.module[:app])"
    ]


@pytest.mark.parametrize(
    ("use_celery", "celery_beat", "refused"),
    [("y", "y", False), ("y", "n", False), ("n", "n", False), ("n", "y", True)],
)
def test_beat_is_refused_without_celery_in_one_line(use_celery, celery_beat, refused):
    errors = pre.check_beat_needs_celery({"use_celery": use_celery, "celery_beat": celery_beat})
    line = "celery_beat: needs use_celery=y (beat only queues jobs; the worker runs them)"
    assert errors == ([line] if refused else [])


def test_domain_names_split_on_spaces_and_commas():
    assert pre.domain_names(" a.org, b.org  c.org,") == ["a.org", "b.org", "c.org"]


def test_post_gen_drops_celery_files_and_records_answers(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "redis.conf").write_text("port 0\n")
    answers = {
        "project_slug": "shop",
        "use_celery": "n",
        "__deploy_user": "shop-deploy",
        "_template": "https://git.example.com/eep.git",
        "_checkout": "v1.0",
        "_repo_dir": str(tmp_path / "not-a-git-checkout"),
        "_output_dir": "/home/dev/projects",
    }
    assert post.main(tmp_path, answers) == 0
    assert not (tmp_path / "config" / "redis.conf").exists()
    # A replay file of cookiecutter's; no path of the machine that baked it.
    assert json.loads((tmp_path / ".cookiecutter.json").read_text()) == {
        "cookiecutter": {
            "project_slug": "shop",
            "use_celery": "n",
            "__deploy_user": "shop-deploy",
            "_template": "https://git.example.com/eep.git",
            "_checkout": "v1.0",
            "_commit": "",
        }
    }


@pytest.mark.parametrize(
    ("slug", "problem"),
    [
        ("all", "reserved system name"),  # supervisorctl: stop all = every program
        ("default", "reserved system name"),  # Debian's nginx site
        ("ssl-cert", "reserved system name"),  # a group that reads TLS private keys
        ("lock", "reserved system name"),  # /run/lock
        ("journal", "reserved system name"),  # /var/log/journal
        ("private", "reserved system name"),  # /var/log/private
        ("dpkg", "reserved system name"),  # /var/lib/dpkg
        ("shop-redis", "must not end in '-redis' (that suffix names an app's broker program)"),
        ("shop-deploy", "must not end in '-deploy' (that suffix names an app's deploy account)"),
    ],
)
def test_slugs_that_name_what_eep_derives_or_the_system_uses_are_refused(slug, problem):
    with pytest.raises(pre.Refused, match=re.escape(problem)):
        pre.check_project_slug(slug)


@pytest.mark.parametrize("slug", ["shop", "redis-cache", "deployer", "allsorts", "my_app"])
def test_ordinary_slugs_are_accepted(slug):
    pre.check_project_slug(slug)


@pytest.mark.parametrize(
    "web_root", ["/var", "/var/lib", "/var/log/apps", "/var/wwwx", "/mnt/apps", "/home", "/run"]
)
def test_system_directories_are_refused_as_web_root(web_root):
    with pytest.raises(pre.Refused, match="is a system directory"):
        pre.check_web_root(web_root)


@pytest.mark.parametrize("web_root", ["/srv", "/srv/apps", "/var/www", "/var/www/apps", "/opt"])
def test_known_safe_web_roots_are_accepted(web_root):
    pre.check_web_root(web_root)


@pytest.mark.parametrize(
    ("field", "value", "refused"),
    [
        ("acme_directory", "https://acme-v02.api.letsencrypt.org/directory", False),
        ("acme_directory", "https://localhost:14000/dir", False),
        ("acme_directory", "http://acme.example.org/directory", True),
        ("acme_directory", "https://x.org/dir; rm -rf /", True),
        ("acme_email", "", False),
        ("acme_email", "ops@shop.example.com", False),
        ("acme_email", "ops at shop", True),
        ("acme_email", "a@b.org --staging", True),
    ],
)
def test_acme_answers_are_checked_only_with_tls_acme(field, value, refused):
    answers = {"tls": "acme", "hsts": "n", field: value}
    errors = [line for line in pre.validate(answers) if line.startswith(field)]
    assert bool(errors) == refused, errors
    assert not [line for line in pre.validate({**answers, "tls": "none"}) if "acme" in line]


def test_tls_and_hsts_are_choices():
    errors = pre.validate({"tls": "letsencrypt", "hsts": "yes"})
    assert "tls: 'letsencrypt' must be one of none, self-signed, acme" in errors
    assert "hsts: 'yes' must be one of n, y" in errors
