"""What a release's uwsgi.ini may set (eep/release_rules.py): the developer's options only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "{{cookiecutter.project_slug}}/eep/release_rules.py"
spec = importlib.util.spec_from_file_location("release_rules", SOURCE)
release_rules = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release_rules)


def refusal(body: str) -> str:
    with pytest.raises(release_rules.IniError) as error:
        release_rules.check_ini("[uwsgi]\nmodule = app.wsgi\n" + body)
    return str(error.value)


def test_the_options_a_developer_tunes_are_accepted():
    text = (
        "; comment\n[uwsgi]\nmodule = app.wsgi:application\nprocesses = 4\nthreads = 2\n"
        "harakiri = 30\nmax-requests = 5000\nenable-threads = true\nenv = MODE=prod\n"
        "attach-daemon2 = pidfile=/run/shop/uwsgi/x.pid,stopsignal=15,touch=/run/shop/deploy,"
        "chdir=/srv/shop/current,cmd=exec /srv/shop/current/.venv/bin/celery -A app worker\n"
        "skip-atexit-teardown = true\n"
    )
    options = release_rules.check_ini(text)
    assert ("processes", "4") in options and len(options) == 9


@pytest.mark.parametrize(("celery", "beat"), [("y", "n"), ("n", "n"), ("y", "y")])
def test_the_tree_s_own_uwsgi_ini_is_accepted(bake, celery, beat):
    tree = bake(use_celery=celery, celery_beat=beat).project_path
    options = release_rules.check_ini((tree / "uwsgi.ini").read_text())
    daemons = [value for name, value in options if name == "attach-daemon2"]
    beats = [value for value in daemons if " beat " in value]
    assert len(daemons) == (celery == "y") + (beat == "y")
    assert len(beats) == (beat == "y")
    if beats:  # one beat, tracked by the pidfile uWSGI writes, schedule kept in shared/
        assert beats[0].startswith("pidfile=/run/shop/uwsgi/beat.pid,daemonize=1,notifypid=1,")
        assert "touch=/run/shop/deploy," in beats[0]
        assert "--schedule=/srv/shop/shared/var/celerybeat-schedule" in beats[0]


BEAT = "pidfile=/run/x/b.pid,touch=/run/x/deploy,cmd=exec /v/bin/celery -A app beat"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        # celery writes the pidfile: uWSGI starts the next beat as soon as celery removes
        # it, while the old process is still exiting.
        (f"attach-daemon2 = {BEAT} --pidfile=/run/x/b.pid\n", "needs pidfile=PATH and daemon"),
        (f"attach-daemon2 = daemonize=0,{BEAT}\n", "needs pidfile=PATH and daemonize=1"),
        ("attach-daemon2 = daemonize=1,cmd=exec celery -A app beat\n", "needs pidfile"),
        (f"attach-daemon2 = daemonize=1,{BEAT}\n" * 2, "2 lines run celery beat"),
        (
            f"attach-daemon2 = daemonize=1,{BEAT}\n"
            "attach-daemon2 = cmd=exec celery -A app worker -B\n",
            "2 lines run celery beat",
        ),
    ],
)
def test_an_ini_that_could_run_two_beats_is_refused(body, named):
    message = refusal(body)
    assert message.startswith("uwsgi.ini: ") and named in message


def test_one_beat_tracked_by_its_pidfile_is_accepted():
    body = f"attach-daemon2 = daemonize=1,{BEAT} --schedule=/s/x,y\n"
    assert release_rules.check_ini("[uwsgi]\nmodule = app.wsgi\n" + body)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("uid = root\n", "option 'uid' is not allowed"),
        ("gid = root\n", "option 'gid' is not allowed"),
        ("chown-socket = nobody\n", "option 'chown-socket' is not allowed"),
        ("socket = /tmp/x.sock\n", "option 'socket' is not allowed"),
        ("logto = /root/uwsgi.log\n", "option 'logto' is not allowed"),
        ("plugins = router_basicauth\n", "option 'plugins' is not allowed"),
        ("exec-as-root = touch /root/owned\n", "option 'exec-as-root' is not allowed"),
        ("hook-pre-app = exec:false\n", "option 'hook-pre-app' is not allowed"),
        ("need-app = true\n", "option 'need-app' is not allowed: a worker without its app"),
        ("ini = /etc/shadow\n", "option 'ini' is not allowed"),
        ("if-exists = /x\n", "option 'if-exists' is not allowed"),
        ("attach-daemon2 = uid=root,cmd=sleep 1\n", "attach-daemon2 key 'uid' is not allowed"),
        ("env = X=@(/etc/shadow)\n", "env: @(...) and $(...) are not allowed"),
        ("processes = many\n", "processes must be a whole number, not 'many'"),
        ("enable-threads = maybe\n", "enable-threads must be true or false"),
        ("wsgi-file = /etc/x.py\n", "wsgi-file must be a path inside the release"),
        ("[other]\nprocesses = 2\n", "line 3: only the [uwsgi] section is read, not [other]"),
        ("just words\n", "line 3 is not `option = value`"),
    ],
)
def test_anything_else_is_refused_with_one_line_naming_it(body, named):
    message = refusal(body)
    assert message.startswith("uwsgi.ini: ") and named in message
    assert "\n" not in message


def test_an_ini_without_the_uwsgi_section_is_refused():
    with pytest.raises(release_rules.IniError, match="no \\[uwsgi\\] section"):
        release_rules.check_ini("; nothing\n")


def test_requirements_that_stay_in_the_release_are_accepted():
    text = (
        "# pinned\nflask==3.1.3\ncelery[redis]==5.7.0 ; python_version >= '3.11'\n"
        "-r requirements/base.txt\n-c constraints.txt\n--index-url https://pypi.example/simple\n"
        "pkg @ https://example.com/pkg-1.0.tar.gz\n./vendor/tool-1.0-py3-none-any.whl\n"
        "--only-binary :all:\n--require-hashes\n"
    )
    included = release_rules.check_requirements(text)
    assert included == ["requirements/base.txt", "constraints.txt"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("-r /etc/passwd", "line 2: -r must name a file in the release"),
        ("--requirement=../../other/requirements.txt", "--requirement must name a file"),
        ("-c ~/constraints.txt", "-c must name a file in the release"),
        ("-e /srv/other/current", "-e must name a file in the release"),
        ("--index-url file:///etc", "--index-url must be an http(s) URL"),
        ("-f /root", "-f must be an http(s) URL"),
        ("pkg @ file:///etc/passwd", "a direct reference must be an https URL"),
        ("/srv/other/current/pkg.whl", "a path must be inside the release"),
        ("--target /tmp/x", "option --target is not allowed"),
        ("--src /tmp", "option --src is not allowed"),
    ],
)
def test_requirements_reaching_outside_the_release_are_refused(line, problem):
    with pytest.raises(release_rules.RequirementsError) as error:
        release_rules.check_requirements(f"flask==3.1.3\n{line}\n")
    assert str(error.value).startswith("requirements.txt line 2: ")
    assert problem in str(error.value)
