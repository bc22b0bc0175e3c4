"""Package the sample app as a release tarball: build_release.py VERSION OUT_DIR.

Besides the code, the release carries static files that name its version, as
`collectstatic` would leave them: static/version.txt, its precompressed .gz, and
static/version.<content hash>.css (a hashed name, as Django's manifest storage makes).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ["app/__init__.py", "app/wsgi.py", "app/tasks.py", "requirements.txt"]


def static_files(version: str) -> dict[str, bytes]:
    """static/ of the release: name -> content."""
    text = f"sample {version}\n".encode()
    css = f'body::after {{ content: "sample {version}"; }}\n'.encode()
    digest = hashlib.md5(css, usedforsecurity=False).hexdigest()[:12]
    return {
        "static/version.txt": text,
        "static/version.txt.gz": gzip.compress(text, mtime=0),
        f"static/version.{digest}.css": css,
    }


def build(version: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"sample-{version}.tar.gz"
    generated = {"app/version.py": f'VERSION = "{version}"\n'.encode(), **static_files(version)}
    with tarfile.open(target, "w:gz") as tar:
        for name in FILES:
            tar.add(HERE / name, arcname=f"sample-{version}/{name}")
        for name, data in generated.items():
            info = tarfile.TarInfo(f"sample-{version}/{name}")
            # The build time, as tar.add() gives the files above.
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return target


if __name__ == "__main__":
    print(build(sys.argv[1], Path(sys.argv[2])))
