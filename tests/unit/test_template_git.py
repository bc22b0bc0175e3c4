"""The template baked from a git URL at a tag, and baked again from the answers a tree records."""

from __future__ import annotations

import json
import shutil

import pytest
from templaterepo import cookiecutter, default_key, snapshot

SUDOERS_V2 = "# Changed in v2.0.\n"


def recorded(tree) -> dict:
    return json.loads((tree / ".cookiecutter.json").read_text())["cookiecutter"]


def test_bake_from_git_url_at_a_tag_records_template_and_commit(template, user, tmp_path, ssh_keys):
    template.edit("config/sudoers", "# Installed as", SUDOERS_V2 + "# Installed as")
    template.release("v2.0")
    args = [template.url, "--checkout", "v1.0", "--no-input", "project_slug=shop"]
    cookiecutter(*args, f"deploy_ssh_key={ssh_keys['ed25519']}", cwd=tmp_path, env=user)
    tree = tmp_path / "shop"
    record = recorded(tree)
    assert (record["_template"], record["_checkout"]) == (template.url, "v1.0")
    assert record["_commit"] == template.commits["v1.0"]
    assert record["project_slug"] == "shop" and record["deploy_ssh_key"] == ssh_keys["ed25519"]
    # cookiecutter's clone and the output directory are this machine's, not the tree's.
    assert "_repo_dir" not in record and "_output_dir" not in record
    # v1.0's files, not those of the newer tag.
    assert SUDOERS_V2 not in (tree / "config" / "sudoers").read_text()


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param({"use_celery": "y"}, id="celery"),
        # The post-generation hook drops redis.conf and writes the default key.
        pytest.param({"use_celery": "n", "deploy_ssh_key": ""}, id="no-celery-default-key"),
    ],
)
@pytest.mark.parametrize("how", ["replay-file", "replay"])
def test_replay_reproduces_the_tree_byte_for_byte(template, user, tmp_path, ssh_keys, answers, how):
    default_key(tmp_path / "home")
    answers = {"project_slug": "shop", "deploy_ssh_key": ssh_keys["ecdsa"], **answers}
    first, again = tmp_path / "first", tmp_path / "again"
    args = [template.url, "--checkout", "v1.0", "--no-input"]
    cookiecutter(
        *args, *(f"{k}={v}" for k, v in answers.items()), "-o", first, cwd=tmp_path, env=user
    )
    if how == "replay-file":
        # The tree's record holds the key used: the replay needs none of this user's.
        # (cookiecutter's own replay record holds the answers as typed: an empty key.)
        shutil.rmtree(tmp_path / "home" / ".ssh")
    replay = (
        ["--replay"] if how == "replay" else ["--replay-file", first / "shop/.cookiecutter.json"]
    )
    cookiecutter(*replay, template.url, "--checkout", "v1.0", "-o", again, cwd=tmp_path, env=user)
    assert snapshot(again / "shop") == snapshot(first / "shop")
    assert (first / "shop/config/redis.conf").exists() == (answers["use_celery"] == "y")
    key = (first / "shop/config/authorized_keys").read_text().strip()
    assert key == recorded(first / "shop")["deploy_ssh_key"] != ""


def test_a_local_template_records_its_commit_only_when_committed(
    template, user, tmp_path, ssh_keys
):
    answers = ["--no-input", "project_slug=shop", f"deploy_ssh_key={ssh_keys['ed25519']}"]
    cookiecutter(template.work, *answers, "-o", tmp_path / "clean", cwd=tmp_path, env=user)
    assert recorded(tmp_path / "clean/shop")["_commit"] == template.commits["v1.0"]
    assert recorded(tmp_path / "clean/shop")["_template"] == str(template.work)
    template.edit("config/sudoers", "# Installed as", "# Not committed.\n# Installed as")
    cookiecutter(template.work, *answers, "-o", tmp_path / "dirty", cwd=tmp_path, env=user)
    # No commit holds what was baked: the tree says so rather than name a wrong one.
    assert recorded(tmp_path / "dirty/shop")["_commit"] == ""
