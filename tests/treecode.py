"""Running code inside a baked tree, as its tasks do: the tests' one way to call its `eep`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_in_tree(tree: Path, code: str, stdin: object = None) -> str:
    """What `python -c code` prints, run in the tree (its `eep` package importable), with
    `stdin` as JSON on its standard input; a failure fails the test with its stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        input=json.dumps(stdin),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
