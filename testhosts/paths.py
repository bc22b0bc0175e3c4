"""Where the harness keeps its state, and which names it accepts."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import HarnessError

DEFAULT_STATE_DIR = "/var/lib/eep-testhosts"
STATE_DIR_ENV = "EEP_TESTHOSTS_DIR"

# Host names double as hostname, nspawn machine name and (prefixed) netns name.
HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,22}[a-z0-9]$")
SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class StateDir:
    """Layout of the harness state directory."""

    root: Path

    @property
    def image_dir(self) -> Path:
        return self.root / "image"

    @property
    def bases_dir(self) -> Path:
        return self.root / "base"

    @property
    def hosts_dir(self) -> Path:
        return self.root / "hosts"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def apt_cache(self) -> Path:
        """Machine-side .deb cache shared (as an overlay lower layer) by guests."""
        return self.root / "apt-archives"

    @property
    def lock_file(self) -> Path:
        return self.root / "hosts.lock"

    @property
    def image_lock_file(self) -> Path:
        return self.root / "image.lock"

    def host_dir(self, name: str) -> Path:
        return self.hosts_dir / name

    def console_log(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"


def state_dir(create: bool = True) -> StateDir:
    """Return the state directory layout (from $EEP_TESTHOSTS_DIR or the default)."""
    raw = os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    root = Path(raw)
    if not root.is_absolute():
        raise HarnessError(f"{STATE_DIR_ENV} must be an absolute path, got {raw!r}")
    if re.search(r"[\s,:=\\]", raw):
        raise HarnessError(f"state dir {raw!r} must not contain whitespace, ',', ':', '=' or '\\'")
    layout = StateDir(root)
    if create:
        for path in (
            layout.root,
            layout.image_dir,
            layout.bases_dir,
            layout.hosts_dir,
            layout.snapshots_dir,
            layout.logs_dir,
            layout.keys_dir,
            layout.apt_cache,
        ):
            path.mkdir(mode=0o700, exist_ok=True)
        (layout.apt_cache / "partial").mkdir(exist_ok=True)
    return layout


def check_host_name(name: str) -> str:
    if not HOST_NAME_RE.match(name):
        raise HarnessError(
            f"invalid host name {name!r}: use 2-24 chars of a-z, 0-9 and '-', "
            "starting with a letter"
        )
    return name


def check_snapshot_name(name: str) -> str:
    if not SNAPSHOT_NAME_RE.match(name):
        raise HarnessError(
            f"invalid snapshot name {name!r}: use up to 64 chars of A-Z, a-z, 0-9, '.', '_' and '-'"
        )
    return name


def netns_name(host_name: str) -> str:
    return f"eep-{host_name}"
