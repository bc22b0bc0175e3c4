"""The host-side release manager (eep/releases.py) on a local directory tree."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = (
    Path(__file__).resolve().parents[2] / "{{cookiecutter.project_slug}}" / "eep" / "releases.py"
)


def agent(root: Path, *args: str, ok: bool = True) -> dict | str:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    return proc.stderr.strip()


def make_release(root: Path, release_id: str, *, ini: str = "[uwsgi]\n", state="ready") -> None:
    release = root / "releases" / release_id
    (release / ".eep").mkdir(parents=True)
    (release / "uwsgi.ini").write_text(ini)
    if state:
        (release / ".eep" / state).write_text("why" if state == "failed" else "now")


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "releases").mkdir()
    return tmp_path


def test_lock_refuses_a_second_holder_and_names_the_first(root):
    agent(root, "lock", "alice@laptop")
    message = agent(root, "lock", "bob@desk", ok=False)
    assert message.startswith("error: another deploy holds the lock: alice@laptop since 20")
    assert "--break-lock" in message
    agent(root, "unlock")
    agent(root, "lock", "bob@desk")


def test_first_activation_needs_a_full_reload_then_a_workers_reload(root):
    make_release(root, "20260101T000000Z-v1")
    make_release(root, "20260102T000000Z-v2")
    first = agent(root, "activate", "20260101T000000Z-v1")
    assert first == {"previous": None, "current": "20260101T000000Z-v1", "reload": "full"}
    second = agent(root, "activate", "20260102T000000Z-v2")
    assert second["reload"] == "workers" and second["previous"] == "20260101T000000Z-v1"
    assert (root / "current").readlink() == Path("releases/20260102T000000Z-v2")


def test_changed_uwsgi_ini_needs_a_full_reload(root):
    make_release(root, "20260101T000000Z-v1")
    make_release(root, "20260102T000000Z-v2", ini="[uwsgi]\nprocesses = 4\n")
    agent(root, "activate", "20260101T000000Z-v1")
    result = agent(root, "activate", "20260102T000000Z-v2")
    assert result["reload"] == "full"


@pytest.mark.parametrize("state", ["failed", None], ids=["failed", "incomplete"])
def test_only_ready_releases_can_be_activated(root, state):
    make_release(root, "20260101T000000Z-v1", state=state)
    message = agent(root, "activate", "20260101T000000Z-v1", ok=False)
    assert "is not ready" in message
    assert not (root / "current").exists()


def test_rollback_activates_the_release_activated_before_current(root):
    for day in ("01", "02", "03"):
        make_release(root, f"202601{day}T000000Z-v{day}")
        agent(root, "activate", f"202601{day}T000000Z-v{day}")
    make_release(root, "20260104T000000Z-bad", state="failed")
    back = agent(root, "rollback")
    assert (back["current"], back["previous"]) == ("20260102T000000Z-v02", "20260103T000000Z-v03")
    assert (root / "current").readlink() == Path("releases/20260102T000000Z-v02")
    oldest = agent(root, "rollback", "--to", "20260101T000000Z-v01")
    assert oldest["current"] == "20260101T000000Z-v01"
    assert "no release" in agent(root, "rollback", "--to", "nope", ok=False)
    assert (root / "current").readlink() == Path("releases/20260101T000000Z-v01")


def test_list_marks_current_failed_and_activation_times(root):
    make_release(root, "20260101T000000Z-1.0")
    make_release(root, "20260102T000000Z-1.1", state="failed")
    agent(root, "activate", "20260101T000000Z-1.0")
    listed = agent(root, "list")["releases"]
    assert [(r["id"], r["version"], r["state"], r["current"]) for r in listed] == [
        ("20260101T000000Z-1.0", "1.0", "ready", True),
        ("20260102T000000Z-1.1", "1.1", "failed", False),
    ]
    assert listed[0]["activated"][0].startswith("20") and listed[1]["reason"] == "why"


def test_cleanup_keeps_newest_current_and_previous_and_drops_failed(root):
    ids = [f"202601{day:02d}T000000Z-v{day}" for day in range(1, 8)]
    for release_id in ids:
        make_release(root, release_id)
    make_release(root, "20260108T000000Z-bad1", state="failed")
    make_release(root, "20260100T000000Z-bad0", state="failed")
    (root / "venvs" / "unused").mkdir(parents=True)
    (root / "venvs" / "used").mkdir()
    (root / "releases" / ids[0] / ".venv").symlink_to("../../venvs/used")
    # v1 was current, then v2 was activated: v1 is "the one before" and must stay.
    agent(root, "activate", ids[0])
    agent(root, "activate", ids[1])
    removed = agent(root, "cleanup", "--keep", "3")["removed"]
    left = sorted(p.name for p in (root / "releases").iterdir())
    assert left == [ids[0], ids[1], *ids[4:], "20260108T000000Z-bad1"]
    assert "20260100T000000Z-bad0" in removed and "venv unused" in removed
    assert (root / "venvs" / "used").exists()


def test_bad_release_ids_are_refused(root):
    assert "bad release id" in agent(root, "ready", "../etc", ok=False)


def test_serve_answers_each_line_with_one_json_line_and_survives_errors(root):
    make_release(root, "20260101T000000Z-v1")
    requests = [
        ["lock", "alice@laptop"],
        ["lock", "bob@desk"],
        ["activate", "20260101T000000Z-v1"],
        ["no-such-command"],
        ["list"],
        ["unlock"],
    ]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), "serve"],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        timeout=30,
    )
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and len(answers) == len(requests)
    assert answers[0] == {"ok": {"locked": True}}
    assert answers[1]["error"].startswith("another deploy holds the lock: alice@laptop")
    assert answers[2]["ok"]["current"] == "20260101T000000Z-v1"
    assert answers[3] == {"error": 'not a command: ["no-such-command"]'}
    assert [r["current"] for r in answers[4]["ok"]["releases"]] == [True]
    assert "ok" in answers[5] and not (root / ".deploy-lock").exists()


def test_ini_refuses_an_option_the_release_does_not_own(root):
    make_release(root, "20260101T000000Z-v1", ini="[uwsgi]\nmodule = app.wsgi\nprocesses = 4\n")
    assert agent(root, "ini", "20260101T000000Z-v1") == {"options": 2}
    make_release(root, "20260102T000000Z-v2", ini="[uwsgi]\nmodule = app.wsgi\nuid = root\n")
    error = agent(root, "ini", "20260102T000000Z-v2", ok=False)
    assert error.startswith("error: uwsgi.ini: option 'uid' is not allowed")


def test_venv_refuses_requirements_that_include_a_file_outside_the_release(root):
    make_release(root, "20260101T000000Z-v1")
    release = root / "releases" / "20260101T000000Z-v1"
    (release / "requirements.txt").write_text("flask==3.1.3\n-r more.txt\n")
    (release / "more.txt").write_text("-r /etc/passwd\n")
    error = agent(root, "venv", "20260101T000000Z-v1", ok=False)
    assert error == "error: more.txt line 1: -r must name a file in the release"
    assert not (root / "venvs").exists() or not any((root / "venvs").iterdir())


def test_a_venv_ends_with_nothing_the_group_or_others_can_write(tmp_path):
    venv, outside = tmp_path / "venv", tmp_path / "outside.txt"
    (venv / "lib" / "pkg").mkdir(parents=True)
    (venv / "lib" / "pkg" / "mod.py").write_text("")
    (venv / "bin").mkdir()
    (venv / "bin" / "tool").write_text("#!/bin/sh\n")
    outside.write_text("")
    (venv / "bin" / "python").symlink_to(outside)
    for path, mode in [
        (venv / "lib", 0o777),
        (venv / "lib" / "pkg", 0o775),
        (venv / "lib" / "pkg" / "mod.py", 0o666),
        (venv / "bin" / "tool", 0o777),
        (outside, 0o666),
    ]:
        path.chmod(mode)
    sys.path.insert(0, str(SCRIPT.parent))  # it imports release_rules beside it, as on the host
    spec = importlib.util.spec_from_file_location("eep_releases_under_test", SCRIPT)
    releases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(releases)
    releases.no_group_write(venv)
    modes = {
        str(path.relative_to(venv)): oct(path.lstat().st_mode & 0o777)
        for path in [venv / "lib", venv / "lib/pkg", venv / "lib/pkg/mod.py", venv / "bin/tool"]
    }
    assert modes == {
        "lib": "0o755",
        "lib/pkg": "0o755",
        "lib/pkg/mod.py": "0o644",
        "bin/tool": "0o755",
    }
    assert outside.stat().st_mode & 0o777 == 0o666  # a link's target is not the venv's


def test_list_says_how_and_by_whom_each_release_was_last_activated(root):
    make_release(root, "20260101T000000Z-v1")
    make_release(root, "20260102T000000Z-v2")
    agent(root, "activate", "20260101T000000Z-v1", "--how", "deploy", "--by", "alice@laptop")
    agent(root, "activate", "20260102T000000Z-v2", "--how", "deploy", "--by", "bob@desk")
    agent(root, "rollback", "--how", "rollback", "--by", "carol@ci")
    listed = {r["id"]: r for r in agent(root, "list")["releases"]}
    assert listed["20260101T000000Z-v1"]["last_by"] == "rollback carol@ci"
    assert len(listed["20260101T000000Z-v1"]["activated"]) == 2
    assert listed["20260102T000000Z-v2"]["last_by"] == "deploy bob@desk"
