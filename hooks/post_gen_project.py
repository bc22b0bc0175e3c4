"""Finish the generated tree: drop unused parts, record the answers, say what is next.

Runs inside the freshly generated directory. It touches no server and no network.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

# Files that only make sense with an attached Celery worker and its broker.
CELERY_FILES = (
    "config/redis.conf",
    "config/redis-fleet.conf",
    "config/supervisor-broker.conf",
    "config/firewall.nft",
    "config/firewall.service",
)
# What .cookiecutter.json keeps of cookiecutter's own entries: the template as given
# (a git URL, or a directory), the --checkout asked for, and (added here) the commit.
# The others (_output_dir, _repo_dir) are paths of the machine that baked the tree.
RECORDED_PRIVATE = ("_template", "_checkout")


def remove_celery_files(tree: Path) -> None:
    for name in CELERY_FILES:
        (tree / name).unlink(missing_ok=True)


def write_default_key(tree: Path, answers: dict[str, object]) -> dict[str, object]:
    """An empty deploy_ssh_key answer: write the key the pre-generation hook checked and
    announced into config/authorized_keys, and return the answers with it."""
    if answers.get("deploy_ssh_key") != "":
        return answers
    hook = Path(str(answers["_repo_dir"])) / "hooks" / "pre_gen_project.py"
    spec = importlib.util.spec_from_file_location("pre_gen_project", hook)
    assert spec and spec.loader
    pre = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pre)
    key = pre.default_public_key(Path.home()).read_text().strip()
    (tree / "config" / "authorized_keys").write_text(key + "\n")
    return {**answers, "deploy_ssh_key": key}


def template_commit(repo_dir: str) -> str:
    """The commit the template was baked at: HEAD of its git checkout; "" when it is not
    the top of a git checkout or has uncommitted changes (no commit describes it)."""

    def git(*args: str) -> str:
        try:
            proc = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True)
        except OSError:  # no git on this machine
            return ""
        return proc.stdout.strip() if proc.returncode == 0 else ""

    top = git("rev-parse", "--show-toplevel") if repo_dir else ""
    if not top or Path(top).resolve() != Path(repo_dir).resolve():
        return ""
    if git("status", "--porcelain", "--untracked-files=all") != "":
        return ""
    return git("rev-parse", "HEAD")


def record_answers(tree: Path, answers: dict[str, object]) -> None:
    """Write .cookiecutter.json, a replay file of cookiecutter's (`cookiecutter
    --replay-file .cookiecutter.json TEMPLATE`) and what `invoke update` starts from.

    It holds the answers, the names derived from them (`__` entries: a replay renders
    the files with them), the template, the checkout asked for and the commit.
    """
    recorded = {
        key: value
        for key, value in answers.items()
        if not key.startswith("_") or key.startswith("__") or key in RECORDED_PRIVATE
    }
    recorded["_commit"] = template_commit(str(answers.get("_repo_dir") or ""))
    text = json.dumps({"cookiecutter": recorded}, indent=2, sort_keys=True)
    (tree / ".cookiecutter.json").write_text(text + "\n")


def next_steps(answers: dict[str, object]) -> str:
    slug = answers["project_slug"]
    return f"""
Created the provisioning tree {slug}/. Next:
  cd {slug}
  python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
  .venv/bin/invoke provision --host root@SERVER     # once, as root (or a sudo admin)
  .venv/bin/invoke deploy --release dist/app.tar.gz # every release, as {slug}-deploy
Read README.md in the tree for what each file does and who may edit it.
"""


def main(tree: Path, answers: dict[str, object]) -> int:
    if answers.get("use_celery") != "y":
        remove_celery_files(tree)
    if answers.get("tls") == "none":
        # The site behind a balancer that terminates HTTPS: with tls=none, nginx.conf is it.
        (tree / "config" / "nginx-behind-lb.conf").unlink(missing_ok=True)
    answers = write_default_key(tree, answers)
    record_answers(tree, answers)
    print(next_steps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path.cwd(), json.loads(r"""{{ cookiecutter | tojson }}""")))
