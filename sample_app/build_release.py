"""Package the sample app as a release tarball: build_release.py VERSION OUT_DIR."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ["app/__init__.py", "app/wsgi.py", "app/tasks.py", "requirements.txt"]


def build(version: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"sample-{version}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for name in FILES:
            tar.add(HERE / name, arcname=f"sample-{version}/{name}")
        data = f'VERSION = "{version}"\n'.encode()
        info = tarfile.TarInfo(f"sample-{version}/app/version.py")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return target


if __name__ == "__main__":
    print(build(sys.argv[1], Path(sys.argv[2])))
