"""The machine-side .deb cache shared by all guests.

Each guest sees /var/cache/apt/archives as an overlay: the shared cache is the
read-only lower layer and the host's own `apt-upper` directory the upper one.
Guests therefore never share apt's lock file or half-downloaded files, and one
guest cannot alter a cached .deb another guest uses. After a guest stops, the
.deb files it downloaded are moved from its upper layer into the shared cache.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def harvest(apt_upper: Path, cache: Path) -> int:
    """Move new .deb files from a stopped guest's layer into the cache."""
    moved = 0
    try:
        entries = list(os.scandir(apt_upper))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.endswith(".deb") or entry.name.startswith("."):
            continue
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or st.st_nlink != 1:
            continue
        target = cache / entry.name
        try:
            os.link(entry.path, target, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError:
            continue
        os.chmod(target, 0o644)
        os.unlink(entry.path)
        moved += 1
    return moved
