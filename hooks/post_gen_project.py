"""Finish the generated tree: drop unused parts, record the answers, say what is next.

Runs inside the freshly generated directory. It touches no server and no network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Files that only make sense with an attached Celery worker and its broker.
CELERY_FILES = ("config/redis.conf",)


def remove_celery_files(tree: Path) -> None:
    for name in CELERY_FILES:
        (tree / name).unlink(missing_ok=True)


def record_answers(tree: Path, answers: dict[str, object]) -> None:
    """Write the public answers to .cookiecutter.json, for `cookiecutter --replay` or updates.

    Private (underscore) entries are left out: they are derived, or hold paths of
    the machine that baked the tree.
    """
    public = {key: value for key, value in answers.items() if not key.startswith("_")}
    (tree / ".cookiecutter.json").write_text(json.dumps(public, indent=2, sort_keys=True) + "\n")


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
    record_answers(tree, answers)
    print(next_steps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path.cwd(), json.loads(r"""{{ cookiecutter | tojson }}""")))
