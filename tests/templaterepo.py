"""The template as users get it: a git repository (bare, reached by a file:// URL) made in
a temporary directory from this checkout's template files, with versions tagged on demand.
Also the commands a user runs on it: cookiecutter, and the baked tree's invoke."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_FILES = ("cookiecutter.json", "hooks", "{{cookiecutter.project_slug}}")
CACHES = shutil.ignore_patterns("__pycache__", ".ruff_cache", ".mypy_cache", ".pytest_cache")
IDENTITY = {
    "GIT_AUTHOR_NAME": "dev",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "dev",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
}


def run(*command: str | Path, cwd: Path, env: dict[str, str], check: bool = True, answer=""):
    """Run a command as a user would (typing `answer` at its prompts); output captured."""
    proc = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, input=answer
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{command} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


class TemplateRepo:
    """`work` is the maintainers' clone where versions are made; `url` is what users bake."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.env = env
        self.work = root / "eep"
        self.bare = root / "eep.git"
        self.url = f"file://{self.bare}"
        self.commits: dict[str, str] = {}  # tag -> commit
        self.work.mkdir()
        for name in TEMPLATE_FILES:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, self.work / name, ignore=CACHES)
            else:
                shutil.copy2(source, self.work / name)
        self.git("init", "-q", "-b", "main")
        self.git("init", "-q", "--bare", "-b", "main", str(self.bare))
        self.git("remote", "add", "origin", self.url)

    def git(self, *args: str) -> str:
        return run("git", *args, cwd=self.work, env=self.env).stdout.strip()

    def edit(self, path: str, old: str, new: str) -> None:
        """Change a template file (in {{cookiecutter.project_slug}}/ when relative to it)."""
        file = self.work / "{{cookiecutter.project_slug}}" / path
        text = file.read_text()
        assert old in text, f"{old!r} not in {path}"
        file.write_text(text.replace(old, new, 1))

    def add(self, path: str, text: str) -> None:
        file = self.work / "{{cookiecutter.project_slug}}" / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)

    def release(self, tag: str) -> str:
        """Commit what changed, tag it, push both; return the commit."""
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", f"version {tag}")
        self.git("tag", tag)
        self.git("push", "-q", "origin", "main", tag)
        self.commits[tag] = self.git("rev-parse", "HEAD")
        return self.commits[tag]


def user_env(home: Path) -> dict[str, str]:
    """A user's environment: their own HOME (no SSH key unless a test makes one), a
    cookiecutter configuration there (its clones and replay files), a git identity."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / ".cookiecutterrc"
    config.write_text(
        f"cookiecutters_dir: {home / '.cookiecutters'}\n"
        f"replay_dir: {home / '.cookiecutter_replay'}\n"
    )
    env = {**os.environ, **IDENTITY, "HOME": str(home), "COOKIECUTTER_CONFIG": str(config)}
    # The tree's tasks run with this Python (it has the tree's requirements).
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def default_key(home: Path, name: str = "id_ed25519", *options: str) -> str:
    """Give the user a key pair at ~/.ssh/NAME (ssh-keygen OPTIONS); return the public line."""
    path = home / ".ssh" / name
    path.parent.mkdir(mode=0o700, exist_ok=True)
    key_type = name.removeprefix("id_")
    command = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "dev@laptop", "-f", path]
    subprocess.run([*command, *options], check=True, stdin=subprocess.DEVNULL)
    return path.with_suffix(".pub").read_text().strip()


def cookiecutter(*args: str | Path, cwd: Path, env: dict[str, str], check: bool = True):
    # A replay asks whether to download the template again (cookiecutter keeps its
    # clone): yes.
    return run(
        sys.executable, "-m", "cookiecutter", *args, cwd=cwd, env=env, check=check, answer="y\n"
    )


def invoke(tree: Path, *args: str, env: dict[str, str], check: bool = False):
    return run(sys.executable, "-m", "invoke", *args, cwd=tree, env=env, check=check)


def snapshot(tree: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a tree (but .git): mode and content, to compare trees byte for byte."""
    return {
        str(p.relative_to(tree)): (p.stat().st_mode & 0o777, p.read_bytes())
        for p in sorted(tree.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(tree).parts
    }
