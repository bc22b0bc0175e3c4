"""`invoke update`: bring a newer version of the eep template into this tree, keeping your edits.

A three-way merge, file by file, of three versions of the tree:
  base   the template at the commit .cookiecutter.json records, baked with its answers
  theirs the template at the new version, baked with the same answers
  ours   this tree, with your edits
A file the template did not change (base = theirs) stays as it is here; a file you did
not change (ours = base) takes the new version; a file both changed goes through
`git merge-file`, and lines both changed become a conflict between <<<<<<< and >>>>>>>
markers. Files the template never made (known_hosts, .venv) are not looked at.

It runs on your machine only (git and cookiecutter from requirements.txt), never on a server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from eep.report import say

RECORD = ".cookiecutter.json"


class UpdateError(Exception):
    """Why the update cannot run; the tree is unchanged."""


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], check=False, cwd=cwd, capture_output=True, text=True)
    except OSError:
        raise UpdateError("invoke update needs git (apt-get install git)") from None


def recorded(tree: Path) -> dict[str, str]:
    """The answers, template and commit this tree was baked from."""
    try:
        record = json.loads((tree / RECORD).read_text())["cookiecutter"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UpdateError(
            f"{RECORD} is missing or is not a cookiecutter replay file (one an older eep"
            " wrote records no template): bake again from a git URL"
        ) from None
    if not record.get("_template") or not record.get("_commit"):
        raise UpdateError(
            f"{RECORD} records no template commit (baked from a template directory with"
            " uncommitted changes, or by an older eep): bake again from a git URL"
        )
    return record


def refuse_uncommitted(tree: Path) -> None:
    """In a git repository, the tree must be committed: then `git status` and `git diff`
    show exactly what the update changed, and `git restore . && git clean -fd .` undoes it.
    Elsewhere nothing is checked."""
    if git("rev-parse", "--is-inside-work-tree", cwd=tree).stdout.strip() != "true":
        return
    status = git("status", "--porcelain", "--untracked-files=all", "--", ".", cwd=tree)
    if status.returncode != 0 or status.stdout.strip():
        raise UpdateError(
            "this tree has uncommitted changes (git status): commit or stash them first"
        )


def bake(template: str, checkout: str, answers: dict[str, str], work: Path) -> Path:
    """Bake `template` at `checkout` with `answers` under `work`; return the tree."""
    work.mkdir()
    # A configuration of our own: the clone and cookiecutter's replay file stay in `work`,
    # and ~/.cookiecutterrc's default answers do not apply.
    config = work / "cookiecutterrc"
    config.write_text(
        f"cookiecutters_dir: {json.dumps(str(work / 'templates'))}\n"
        f"replay_dir: {json.dumps(str(work / 'replay'))}\n"
    )
    command = [sys.executable, "-m", "cookiecutter", template, "--no-input"]
    command += ["--config-file", str(config), "--output-dir", str(work / "out")]
    command += ["--checkout", checkout] if checkout else []
    command += [f"{name}={value}" for name, value in answers.items()]
    # GIT_TERMINAL_PROMPT=0: a clone that needs a password fails instead of waiting for
    # an answer to a prompt that is not shown (the output is captured).
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    trees = list((work / "out").glob("*/" + RECORD))
    if proc.returncode != 0 or len(trees) != 1:
        lines = (proc.stderr + proc.stdout).strip().splitlines() or ["no tree was made"]
        # git's reason when the clone failed, the hook's when it refused an answer (the new
        # version may refuse what the old one took), else cookiecutter's last word.
        reason = [line for line in lines if line.startswith("fatal: ")]
        reason += [line for line in lines if line.startswith("ERROR: ") and ": " in line[7:]]
        reason += lines[-1:]
        where = f"{template} at {checkout}" if checkout else template
        raise UpdateError(f"cannot bake the template {where}: {reason[0].strip()}")
    return trees[0].parent


def files(tree: Path) -> set[str]:
    return {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()} - {RECORD}


def read(path: Path) -> tuple[bytes | None, int]:
    """Content and mode of a file; (None, 0) when absent."""
    if not path.is_file():
        return None, 0
    return path.read_bytes(), path.stat().st_mode & 0o777


@dataclass
class Change:
    """What the update does to one file of this tree."""

    path: str
    what: str  # updated, added, removed, merged, conflict, kept (the last two: your edit)
    content: bytes | None = None  # what to write; None: leave the file as it is, or remove
    mode: int = 0
    note: str = ""


def merge_file(ours: bytes, base: bytes, theirs: bytes, labels: tuple[str, str, str]) -> Change:
    with tempfile.TemporaryDirectory(prefix="eep-merge-") as tmp:
        paths = []
        for name, content in zip(("ours", "base", "theirs"), (ours, base, theirs), strict=True):
            paths.append(Path(tmp, name))
            paths[-1].write_bytes(content)
        proc = subprocess.run(
            ["git", "merge-file", "-p", "-L", labels[0], "-L", labels[1], "-L", labels[2]]
            + [str(p) for p in paths],
            check=False,
            capture_output=True,
        )
    if proc.returncode > 127:  # an error, e.g. a binary file: keep ours, flag it
        return Change("", "conflict", note="could not merge: resolve by hand")
    if proc.returncode:
        return Change("", "conflict", proc.stdout)
    return Change("", "merged", proc.stdout)


def plan(base: Path, theirs: Path, ours: Path, labels: tuple[str, str, str]) -> list[Change]:
    """Decide, for every file either bake holds, what happens to it here."""
    changes = []
    for path in sorted(files(base) | files(theirs)):
        (b, base_mode), (t, new_mode), (o, mode) = (
            read(base / path),
            read(theirs / path),
            read(ours / path),
        )
        if (b, base_mode) == (t, new_mode):  # the template did not change it
            if (o, mode) != (b, base_mode):
                changes.append(
                    Change(path, "kept", note="your edit" if o is not None else "removed here")
                )
            continue
        # An executable bit the template changed follows, unless you changed it too.
        new_mode = new_mode if o is None or mode == base_mode else mode
        if o == t:
            if o is not None and mode != new_mode:
                changes.append(Change(path, "updated", t, new_mode, "mode"))
            continue
        if o == b:
            what = "added" if b is None else "removed" if t is None else "updated"
            changes.append(Change(path, what, t, new_mode))
        elif t is None:
            changes.append(Change(path, "conflict", note="edited here, removed by the template"))
        elif o is None:
            changes.append(Change(path, "conflict", note="removed here, changed by the template"))
        else:
            change = merge_file(o, b or b"", t, labels)
            change.path, change.mode = path, new_mode
            changes.append(change)
    return changes


def apply(tree: Path, changes: list[Change]) -> None:
    for change in changes:
        target = tree / change.path
        if change.content is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(change.content)
            target.chmod(change.mode)
        elif change.what == "removed":
            target.unlink()
            for parent in target.parents:
                if parent == tree or any(parent.iterdir()):
                    break
                parent.rmdir()


def update(tree: Path, to: str = "", template: str = "") -> list[str]:
    """Update `tree` to the template at `to` (default: its default branch) from `template`
    (default: the one recorded). Return the files left in conflict (empty: all merged)."""
    record = recorded(tree)
    refuse_uncommitted(tree)
    source = template or record["_template"]
    answers = {name: value for name, value in record.items() if not name.startswith("_")}
    old = f"{record.get('_checkout') or 'commit'} ({record['_commit'][:12]})"
    with tempfile.TemporaryDirectory(prefix="eep-update-") as tmp:
        theirs = bake(source, to, answers, Path(tmp, "new"))
        new_record = json.loads((theirs / RECORD).read_text())["cookiecutter"]
        new = f"{to or 'the default branch'} ({new_record['_commit'][:12]})"
        if new_record["_commit"] == record["_commit"]:
            say(f"nothing to update: the template at {new} is the one this tree was baked from")
            return []
        base = bake(source, record["_commit"], answers, Path(tmp, "base"))
        changes = plan(base, theirs, tree, ("this tree", f"template {old}", f"template {new}"))
        apply(tree, changes)
        (tree / RECORD).write_bytes((theirs / RECORD).read_bytes())
    say(f"updated from the template at {old} to {new}:")
    for change in changes:
        say(f"  {change.what:<9} {change.path}" + (f" ({change.note})" if change.note else ""))
    for name in sorted(set(new_record) - set(record)):
        if not name.startswith("_"):
            say(f"  new answer {name} = {new_record[name]!r} (the template's default)")
    say(f"  recorded  {RECORD}: {new_record['_template']} at {new}")
    return [c.path + (f" ({c.note})" if c.note else "") for c in changes if c.what == "conflict"]
