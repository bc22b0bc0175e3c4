"""Disposable Debian test hosts for end-to-end tests.

Each host is a real Debian 12 (bookworm, the default) or Debian 13 (trixie)
system with systemd as PID 1, booted with systemd-nspawn in its own network
namespace and reachable over real ssh on a loopback port. See README.md in
this directory.
"""

from .cleanup import cleanup_leftovers
from .deps import ensure_ready
from .errors import CommandError, HarnessError
from .host import BootError, Host, create_host, get_host, list_hosts
from .image import build_image
from .paths import state_dir
from .snapshots import delete_snapshot, list_snapshots

__all__ = [
    "BootError",
    "CommandError",
    "HarnessError",
    "Host",
    "build_image",
    "cleanup_leftovers",
    "create_host",
    "delete_snapshot",
    "ensure_ready",
    "get_host",
    "list_hosts",
    "list_snapshots",
    "state_dir",
]
