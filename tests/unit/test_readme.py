"""The commands of the root README's "Using the template" section, run as written."""

from __future__ import annotations

import json
import re
import sys

from conftest import REPO
from templaterepo import default_key, run

NOTE = "# Read back by eep/sudoers.py (v1.1).\n"


def readme_commands() -> list[str]:
    """The first indented block of the section, one command a line."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Using the template: versions, replay, updates\n", 1)[1]
    block = re.search(r"\n\n((?:    .*\n)+)", section)
    assert block, "no command block in the section"
    return [line[4:] for line in block.group(1).splitlines()]


def test_readme_commands_bake_from_a_tag_replay_and_update(template, user, tmp_path):
    commands = readme_commands()
    # What the section promises: a tag, a replay, an update.
    assert any(c.startswith("cookiecutter gh:org/eep --checkout v1.0") for c in commands)
    assert any(c.startswith("cookiecutter --replay-file .cookiecutter.json") for c in commands)
    assert any(c.startswith(".venv/bin/invoke update --to v1.1") for c in commands)
    template.edit("config/sudoers", "# Installed as", NOTE + "# Installed as")
    template.release("v1.1")
    default_key(tmp_path / "home")  # the README gives no deploy_ssh_key: the default is used
    venv = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
    assert venv in commands
    script = "\n".join(
        # Offline: the tree's virtualenv is this one (it holds the tree's requirements).
        f"ln -s {sys.prefix} .venv" if c == venv else c.replace("gh:org/eep", template.url)
        for c in commands
    )
    work = tmp_path / "work"
    work.mkdir()
    # The replay asks whether to download the template again; the user says yes.
    bash = ["bash", "-euo", "pipefail", "-c", script]
    result = run(*bash, cwd=work, env=user, check=False, answer="y\n")
    assert result.returncode == 0, result.stdout + result.stderr
    tree = work / "shop"
    assert "client_max_body_size 50m;" in (tree / "config" / "nginx.conf").read_text()
    assert NOTE in (tree / "config" / "sudoers").read_text()
    record = json.loads((tree / ".cookiecutter.json").read_text())["cookiecutter"]
    assert (record["_checkout"], record["_commit"]) == ("v1.1", template.commits["v1.1"])
    assert run("git", "status", "--porcelain", cwd=tree, env=user).stdout == ""
    # The replay made the tree of the first commit again, byte for byte.
    first = run("git", "rev-list", "--max-parents=0", "HEAD", cwd=tree, env=user).stdout.strip()
    listing = run("git", "ls-tree", "-r", first, cwd=tree, env=user).stdout.splitlines()
    again = work / "again" / "shop"
    replayed = {str(p.relative_to(again)): p for p in again.rglob("*") if p.is_file()}
    assert sorted(replayed) == sorted(line.split("\t")[1] for line in listing)
    for line in listing:
        mode, _, blob, path = line.split(None, 3)
        committed = run("git", "cat-file", "blob", blob, cwd=tree, env=user).stdout
        assert replayed[path].read_text() == committed, path
        assert (replayed[path].stat().st_mode & 0o111 != 0) == (mode == "100755"), path
