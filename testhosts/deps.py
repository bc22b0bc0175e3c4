"""Preconditions of the harness, and installing what the machine lacks."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from . import cgroups, image
from .errors import HarnessError
from .paths import state_dir

log = logging.getLogger("testhosts")

# command -> Debian package providing it
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "slirp4netns": "slirp4netns",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "tar": "tar",
    "mount": "mount",
    "chroot": "coreutils",
}

_ready = False


def check_root() -> None:
    if os.geteuid() != 0:
        raise HarnessError("test hosts need root (systemd-nspawn, mounts, netns)")


def missing_packages() -> list[str]:
    return sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})


def install_packages() -> None:
    """apt-get install whatever TOOLS are missing (without recommends)."""
    packages = missing_packages()
    if not packages:
        return
    if shutil.which("apt-get") is None:
        raise HarnessError(f"missing {', '.join(packages)} and no apt-get to install")
    log.info("deps: installing %s", " ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0 or missing_packages():
        last = (result.stderr or result.stdout).strip().splitlines()[-1:]
        raise HarnessError(f"apt-get install {' '.join(packages)} failed: {last}")


def check_overlayfs() -> None:
    def supported() -> bool:
        return "overlay" in Path("/proc/filesystems").read_text().split()

    if not supported():
        subprocess.run(["modprobe", "overlay"], capture_output=True)
    if not supported():
        raise HarnessError("the kernel has no overlayfs (modprobe overlay failed)")


def check_tun() -> None:
    if not Path("/dev/net/tun").exists():
        raise HarnessError("/dev/net/tun is missing (slirp4netns needs TUN)")


def ensure_ready(build: bool = True) -> None:
    """Check every precondition, install host packages, build the image.

    Raises HarnessError with one clear line for anything unmet. Repeated
    calls in one process are free.
    """
    global _ready
    if _ready:
        return
    check_root()
    state_dir()
    install_packages()
    check_overlayfs()
    cgroups.check_available()
    check_tun()
    if build:
        image.ensure_base()
        _ready = True
