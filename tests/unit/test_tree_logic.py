"""Pure logic of the baked tree's `eep` package (no host involved)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from treecode import run_in_tree


@pytest.mark.parametrize("use_celery", ["y", "n"])
def test_every_config_file_goes_to_the_host(bake, use_celery):
    tree = bake(use_celery=use_celery).project_path
    listed = run_in_tree(
        tree,
        "from eep.manifest import HOST_FILES, LB_FILES\n"
        "for f in HOST_FILES + LB_FILES: print(f.source)",
    ).split()
    assert sorted(set(listed)) == sorted(f"config/{p.name}" for p in (tree / "config").iterdir())


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


def test_output_into_a_closed_pipe_ends_quietly_and_the_work_goes_on(bake):
    tree = bake().project_path
    code = (
        "import sys\n"
        "from eep.report import say\n"
        "for i in range(5000): say(f'line {i}')\n"
        "print('finished', file=sys.stderr)\n"
    )
    proc = subprocess.run(
        f"{sys.executable} -c {shlex.quote(code)} | head -n 1",
        shell=True,
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout == "line 0\n"
    assert proc.stderr == "finished\n", proc.stderr


@pytest.mark.parametrize(
    ("roles", "trigger_age", "expected"),
    [
        ([("attached", "celery -A app worker")], None, "running, pid 10 True"),
        # The deploy's restart: the old worker has exited, the new one is not up yet.
        ([("attached", "sleep 100")], 5, "restarting (asked 5 s ago by a deploy or restart) True"),
        ([("attached", "sleep 100")], 600, "NOT RUNNING; see `invoke logs --process celery` False"),
        ([("child", "celery -A app worker")], None, "NOT RUNNING; see"),
    ],
)
def test_status_says_whether_the_celery_worker_runs(bake, roles, trigger_age, expected):
    rows = [(role, str(10 + i), "00:00:01", "1 MiB", cmd) for i, (role, cmd) in enumerate(roles)]
    code = f"from eep.control import celery_state\nprint(*celery_state({rows!r}, {trigger_age!r}))"
    assert run_in_tree(bake().project_path, code).startswith(expected)


@pytest.mark.parametrize(
    ("commands", "trigger_age", "expected"),
    [
        (["celery -A app beat --pidfile=/run/shop/uwsgi/beat.pid"], None, "running, pid 20 True"),
        # The deploy's restart: the old beat has saved its schedule and exited.
        ([], 5, "restarting (asked 5 s ago by a deploy or restart) True"),
        ([], None, "NOT RUNNING; see `invoke logs` False"),
        (["celery -A app beat", "celery -A app beat"], None, "2 RUNNING (pids 20 21): schedul"),
    ],
)
def test_status_lists_the_beat_as_its_own_process_never_as_the_worker(
    bake, commands, trigger_age, expected
):
    venv = "/srv/shop/releases/r1/.venv/bin/python3 /srv/shop/current/.venv/bin/"
    ps = ["S 1 0 50 9000 /usr/bin/uwsgi-core --ini /etc/eep/shop/uwsgi.ini"]
    ps += ["S 2 1 50 9000 /usr/bin/uwsgi-core --ini /etc/eep/shop/uwsgi.ini"]
    ps += [f"S {20 + i} 1 5 9000 {venv}{command}" for i, command in enumerate(commands)]
    listing = "\n".join(ps)
    code = f"""
from types import SimpleNamespace as NS
from eep.control import _processes, beat_state, celery_state
answers = iter(["1", {listing!r}])
session = NS(remote=NS(run=lambda *a, **k: NS(stdout=next(answers))))
processes = _processes(session)
print(*beat_state(processes, {trigger_age!r}))
print(*[role for role, *_ in processes], sep=",")
print(celery_state(processes, None)[1])
"""
    beat, roles, worker_ok = run_in_tree(bake(celery_beat="y").project_path, code).splitlines()
    assert beat.startswith(expected)
    assert roles == ",".join(["uwsgi master", "uwsgi worker"] + ["celery beat"] * len(commands))
    assert worker_ok == "False"  # a beat is no Celery worker


def test_the_sudo_rules_are_read_from_config_sudoers(bake):
    tree = bake().project_path
    out = run_in_tree(
        tree, "from eep.sudoers import rules\nfor who, cmd in rules(): print(who, '|', cmd)"
    )
    rules = [tuple(part.strip() for part in line.split("|")) for line in out.splitlines()]
    ctl = "/usr/bin/supervisorctl -c /etc/supervisor/supervisord.conf"
    assert ("root", f"{ctl} stop shop") in rules
    assert ("shop", "/etc/eep/shop/reload wait") in rules
    assert ("shop", "/etc/eep/shop/as-app env") in rules
    assert len(rules) == 16 and all(who in ("root", "shop") for who, _ in rules)


def test_logs_show_what_the_app_wrote_without_letting_it_drive_the_terminal(bake):
    # A terminal title, a screen clear, a carriage return over the line, a bidi override.
    hostile = "GET /\x1b]0;owned\x07 \x1b[2J\rok \u202eevil\ttab é\n"
    shown = "GET /\\x1b]0;owned\\x07 \\x1b[2J\\rok \\u202eevil\ttab é\n"
    code = (
        "import shlex\n"
        "from invoke import run\n"
        "from eep.control import _PrintableOutput, printable\n"
        f"print(printable({hostile!r}), end='')\n"
        # `logs --follow` streams through invoke's runner, as this local command does.
        f"run('printf %s ' + shlex.quote({hostile!r}), out_stream=_PrintableOutput(), pty=False)\n"
    )
    out = run_in_tree(bake().project_path, code)
    assert out == shown * 2


# Facts of a host where nothing of the app exists yet (eep.claims.read_facts's shape).
FRESH_HOST = """
import json
from eep import app, claims
from eep.accounts import MARK
from eep.pathstate import PathState
S = PathState.observed
root_dir = S(["directory", "0755", "root", "root"])
paths = {p: None for p in [*claims.FILES, claims.ENABLED]}
for top in claims.TOP_DIRS:
    paths.update({p: root_dir for p in claims.ancestors(top)}, **{top: None})
f = {"accounts": {app.RUNTIME_USER: None, app.DEPLOY_USER: None}, "group": None,
     "primary": None, "paths": paths, "texts": dict.fromkeys(claims.FILES), "link": None,
     "supervisor": [], "nginx": [], "tmpfiles": ""}
"""
# The same host once eep provisioned the app `shop`.
PROVISIONED = """
f["accounts"] = {"shop": [MARK, 990, "/srv/shop"], "shop-deploy": [MARK, 990, "/home/x"]}
f["group"], f["primary"] = [990, ["www-data"]], ["shop", "shop-deploy"]
f["paths"].update({p: S(["directory", "0750", "root", "shop"]) for p in claims.TOP_DIRS})
f["paths"].update({p: S(["regular file", "0644", "root", "root"]) for p in claims.FILES})
f["texts"] = {p: "# eep: a file of eep\\n" for p in claims.FILES}
f["paths"][claims.ENABLED] = S(["symbolic link", "0777", "root", "root"])
f["link"] = "/etc/nginx/sites-available/shop"
own = "[fcgi-program:shop]\\n[program:shop-redis]"
f["supervisor"] = [["/etc/supervisor/conf.d/shop.conf", own]]
f["nginx"] = [["/etc/nginx/sites-enabled/shop", "server_name shop.example.com;"]]
f["tmpfiles"] = "# /etc/tmpfiles.d/eep-shop.conf\\nd /run/shop 0750 root shop -\\n"
"""


@pytest.mark.parametrize(
    ("host", "change", "refusal"),
    [
        ("", "", ""),
        (PROVISIONED, "", ""),
        ("", 'f["group"], f["primary"] = [110, []], []', "group shop exists and was not made"),
        (PROVISIONED, 'f["accounts"]["shop"][1] = 1', "group shop exists and was not made"),
        ("", 'f["accounts"]["shop"] = ["", 5, "/"]', "user shop exists and was not made"),
        (
            "",
            'f["paths"]["/run/shop"] = S(["directory", "1777", "root", "root"])',
            "/run/shop exists (root:root 1777) and is not eep's",
        ),
        (
            PROVISIONED,
            'f["paths"]["/var/log/shop"] = S(["directory", "2755", "root", "systemd-journal"])',
            "/var/log/shop exists (root:systemd-journal 2755) and is not eep's",
        ),
        (
            "",
            'f["paths"]["/srv"] = S(["directory", "0755", "alice", "alice"])',
            "/srv (directory alice:alice 0755) is not a directory only root can change",
        ),
        (
            PROVISIONED,
            'f["texts"]["/etc/sudoers.d/shop"] = "alice ALL=(ALL) ALL"',
            "/etc/sudoers.d/shop exists and was not written by eep",
        ),
        (
            PROVISIONED,
            'f["texts"]["/etc/sudoers.d/shop"] = ""',
            "/etc/sudoers.d/shop exists and was not written by eep",
        ),
        (
            PROVISIONED,
            'f["link"] = "/etc/nginx/sites-available/default"',
            "/etc/nginx/sites-enabled/shop exists and is not eep's link",
        ),
        (
            PROVISIONED,
            'f["supervisor"].append(["/etc/supervisor/conf.d/x.conf", " [program:shop-redis]"])',
            "supervisor program shop-redis is already defined in /etc/supervisor/conf.d/x.conf",
        ),
        (
            PROVISIONED,
            'f["nginx"].append(["/etc/nginx/sites-enabled/x",'
            ' "server_name a\\n WWW.shop.example.com;"])',
            "server name www.shop.example.com is already served by /etc/nginx/sites-enabled/x",
        ),
        ("", 'f["nginx"].append(["/etc/nginx/conf.d/x", "# server_name shop.example.com;"])', ""),
        (
            PROVISIONED,
            'f["tmpfiles"] += "# /usr/lib/tmpfiles.d/x.conf\\nz /var/log/shop/x 0755 - - -\\n"',
            "/var/log/shop/x is also managed by /usr/lib/tmpfiles.d/x.conf",
        ),
    ],
)
def test_provisioning_refuses_what_eep_did_not_make(bake, host, change, refusal):
    code = f"{FRESH_HOST}{host}{change}\nprint(json.dumps(claims.adoption_problems(f)))"
    found = json.loads(
        run_in_tree(bake(domain="shop.example.com www.shop.example.com").project_path, code)
    )
    # The first problem is the line the user sees.
    assert found[0].startswith(refusal) if refusal else found == [], found


def test_the_app_group_has_exactly_its_accounts_and_nginx(bake):
    code = (
        f"{FRESH_HOST}{PROVISIONED}\nprint(json.dumps(claims.membership_problems(f)))\n"
        'f["group"][1].append("alice"); f["primary"].append("bob")\n'
        "print(json.dumps(claims.membership_problems(f)))"
    )
    ok, extra = run_in_tree(bake().project_path, code).splitlines()
    assert json.loads(ok) == []
    assert json.loads(extra) == [
        "group shop is the primary group of bob",
        "group shop's members are alice, www-data, not www-data alone",
    ]


@pytest.mark.parametrize("use_celery", ["y", "n"])
def test_every_config_outside_the_apps_directories_carries_eeps_mark(bake, use_celery):
    code = (
        "from eep import claims, manifest\n"
        "for f in manifest.HOST_FILES:\n"
        "    if f.path in claims.FILES:\n"
        "        print(bool(claims.MARKER.match(manifest.render(f))), f.path)"
    )
    marks = run_in_tree(bake(use_celery=use_celery).project_path, code).splitlines()
    # With Celery: the broker's supervisor program and its firewall's unit too.
    count = 9 if use_celery == "y" else 7
    assert len(marks) == count and all(line.startswith("True ") for line in marks), marks


def test_a_long_step_says_it_is_still_running(bake):
    code = (
        "import time\nfrom eep import report\nreport.PROGRESS_EVERY = 0.1\n"
        "with report.progress(lambda secs: f'apt-get install nginx ({secs:.1f} s so far)'):\n"
        "    time.sleep(0.35)\n"
        "time.sleep(0.3)\nprint('done')\n"
    )
    lines = run_in_tree(bake().project_path, code).splitlines()
    # A line per tick while the step runs, none once it is over.
    assert 2 <= len(lines) - 1 <= 4 and lines[-1] == "done", lines
    assert all(line.startswith("apt-get install nginx (") for line in lines[:-1])
