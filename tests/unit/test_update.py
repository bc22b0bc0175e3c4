"""`invoke update` of a baked tree: the template's changes arrive, the user's edits stay."""

from __future__ import annotations

import json

import pytest
from templaterepo import cookiecutter, invoke, run, snapshot

BODY_20M = "client_max_body_size 20m;"
BODY_50M = "client_max_body_size 50m;"  # the user's edit
SUDOERS_NOTE = "# Read back by eep/sudoers.py (v2.0).\n"


@pytest.fixture
def tree(template, user, tmp_path, ssh_keys):
    """A tree baked from v1.0, committed in its own git repository."""
    answers = ["--no-input", "project_slug=shop", f"deploy_ssh_key={ssh_keys['ed25519']}"]
    cookiecutter(template.url, "--checkout", "v1.0", *answers, cwd=tmp_path, env=user)
    path = tmp_path / "shop"
    git(path, user, "init", "-q", "-b", "main")
    commit(path, user, "shop, from eep v1.0")
    return path


def git(tree, env, *args: str) -> str:
    return run("git", *args, cwd=tree, env=env).stdout


def commit(tree, env, message: str) -> None:
    git(tree, env, "add", "-A")
    git(tree, env, "commit", "-q", "-m", message)


def user_edit(tree, env, old: str = BODY_20M, new: str = BODY_50M) -> None:
    nginx = tree / "config" / "nginx.conf"
    assert old in nginx.read_text()
    nginx.write_text(nginx.read_text().replace(old, new))
    commit(tree, env, "uploads up to 50 MB")


def record(tree) -> dict:
    return json.loads((tree / ".cookiecutter.json").read_text())["cookiecutter"]


def test_template_change_arrives_and_user_edit_stays(template, user, tree):
    user_edit(tree, user)
    template.edit("config/sudoers", "# Installed as", SUDOERS_NOTE + "# Installed as")
    template.add("config/motd", "Managed by eep: {{ cookiecutter.project_slug }}\n")
    template.release("v2.0")
    result = invoke(tree, "update", "--to", "v2.0", env=user)
    assert result.returncode == 0, result.stderr
    assert BODY_50M in (tree / "config" / "nginx.conf").read_text()
    assert SUDOERS_NOTE in (tree / "config" / "sudoers").read_text()
    assert (tree / "config" / "motd").read_text() == "Managed by eep: shop\n"
    assert record(tree)["_commit"] == template.commits["v2.0"]
    assert record(tree)["_checkout"] == "v2.0"
    lines = result.stdout.splitlines()
    assert "  kept      config/nginx.conf (your edit)" in lines
    assert "  updated   config/sudoers" in lines
    assert "  added     config/motd" in lines
    # Exactly those files changed: what `git diff` shows the user to review.
    changed = git(tree, user, "status", "--porcelain", "--untracked-files=all").split("\n")
    assert sorted(line[3:] for line in changed if line) == [
        ".cookiecutter.json",
        "config/motd",
        "config/sudoers",
    ]


def test_a_second_update_with_nothing_new_changes_nothing(template, user, tree):
    template.edit("config/sudoers", "# Installed as", SUDOERS_NOTE + "# Installed as")
    template.release("v2.0")
    assert invoke(tree, "update", "--to", "v2.0", env=user).returncode == 0
    commit(tree, user, "eep v2.0")
    before = snapshot(tree)
    result = invoke(tree, "update", "--to", "v2.0", env=user)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"nothing to update: the template at v2.0 ({template.commits['v2.0'][:12]}) is the one"
        " this tree was baked from"
    )
    assert snapshot(tree) == before
    assert git(tree, user, "status", "--porcelain", "--untracked-files=all") == ""


def test_same_lines_changed_on_both_sides_is_a_conflict_never_lost(template, user, tree):
    user_edit(tree, user)
    template.edit("config/nginx.conf", BODY_20M, "client_max_body_size 100m;")
    template.edit("config/sudoers", "# Installed as", SUDOERS_NOTE + "# Installed as")
    template.release("v2.0")
    result = invoke(tree, "update", "--to", "v2.0", env=user)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: conflicts to resolve (<<<<<<< markers), then commit: config/nginx.conf"
    ]
    nginx = (tree / "config" / "nginx.conf").read_text()
    assert "<<<<<<< this tree\n" in nginx and ">>>>>>> template v2.0" in nginx
    assert BODY_50M in nginx and "client_max_body_size 100m;" in nginx
    # The rest of the update went through.
    assert SUDOERS_NOTE in (tree / "config" / "sudoers").read_text()
    assert record(tree)["_commit"] == template.commits["v2.0"]


def test_a_file_the_template_removes(template, user, tree):
    (tree / "config" / "logrotate.conf").write_text("# mine now\n")
    commit(tree, user, "own rotation")
    (template.work / "{{cookiecutter.project_slug}}/config/logrotate.conf").unlink()
    (template.work / "{{cookiecutter.project_slug}}/config/no-release.py").unlink()
    template.release("v2.0")
    result = invoke(tree, "update", "--to", "v2.0", env=user)
    # Untouched here: removed. Edited here: kept, and named as a conflict.
    assert not (tree / "config" / "no-release.py").exists()
    assert (tree / "config" / "logrotate.conf").read_text() == "# mine now\n"
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: conflicts to resolve (<<<<<<< markers), then commit:"
        " config/logrotate.conf (edited here, removed by the template)"
    )


def test_an_executable_bit_the_template_sets_arrives(template, user, tree):
    (template.work / "{{cookiecutter.project_slug}}/config/no-release.py").chmod(0o755)
    template.release("v2.0")
    result = invoke(tree, "update", "--to", "v2.0", env=user)
    assert result.returncode == 0, result.stderr
    assert "  updated   config/no-release.py (mode)" in result.stdout.splitlines()
    assert (tree / "config" / "no-release.py").stat().st_mode & 0o777 == 0o755


def test_uncommitted_changes_are_refused_and_nothing_changes(template, user, tree):
    template.edit("config/sudoers", "# Installed as", SUDOERS_NOTE + "# Installed as")
    template.release("v2.0")
    (tree / "invoke.yaml").write_text((tree / "invoke.yaml").read_text() + "# not committed\n")
    before = snapshot(tree)
    result = invoke(tree, "update", "--to", "v2.0", env=user)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: this tree has uncommitted changes (git status): commit or stash them first"
    )
    assert snapshot(tree) == before


def test_a_tree_outside_git_is_updated_too(template, user, tree):
    # Documented: without git there is nothing to check; a conflict still has markers.
    run("rm", "-rf", ".git", cwd=tree, env=user)
    template.edit("config/sudoers", "# Installed as", SUDOERS_NOTE + "# Installed as")
    template.release("v2.0")
    assert invoke(tree, "update", "--to", "v2.0", env=user).returncode == 0
    assert SUDOERS_NOTE in (tree / "config" / "sudoers").read_text()


def test_default_is_the_template_default_branch(template, user, tree):
    template.edit("config/sudoers", "# Installed as", SUDOERS_NOTE + "# Installed as")
    template.git("commit", "-q", "-am", "not released yet")
    template.git("push", "-q", "origin", "main")
    result = invoke(tree, "update", env=user)
    assert result.returncode == 0, result.stderr
    assert SUDOERS_NOTE in (tree / "config" / "sudoers").read_text()
    assert record(tree)["_commit"] == template.git("rev-parse", "HEAD")
    assert record(tree)["_checkout"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "v9.9"], "error: cannot bake the template file://"),  # cookiecutter's words
        (
            ["--to", "v1.0", "--template", "file:///nonexistent/eep.git"],
            "error: cannot bake the template file:///nonexistent/eep.git at v1.0:"
            " fatal: '/nonexistent/eep.git' does not appear to be a git repository",
        ),
    ],
    ids=["unknown-version", "unknown-template"],
)
def test_a_version_that_cannot_be_baked_is_one_line_and_changes_nothing(user, tree, args, message):
    before = snapshot(tree)
    result = invoke(tree, "update", *args, env=user)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert snapshot(tree) == before


def test_answers_the_new_version_refuses_are_named_and_change_nothing(template, user, tree):
    hook = template.work / "hooks" / "pre_gen_project.py"
    hook.write_text(hook.read_text().replace("    all default\n", "    all default shop\n"))
    template.release("v2.0")
    before = snapshot(tree)
    result = invoke(tree, "update", "--to", "v2.0", env=user)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: cannot bake the template {template.url} at v2.0:"
        " ERROR: project_slug: 'shop' is a reserved system name; pick another\n"
    )
    assert snapshot(tree) == before


def test_a_tree_that_records_no_commit_is_refused(user, tree):
    data = json.loads((tree / ".cookiecutter.json").read_text())
    data["cookiecutter"]["_commit"] = ""
    (tree / ".cookiecutter.json").write_text(json.dumps(data))
    commit(tree, user, "baked from a work in progress")
    result = invoke(tree, "update", env=user)
    assert result.returncode == 1
    assert result.stderr.startswith("error: .cookiecutter.json records no template commit")
