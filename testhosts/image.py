"""The base image of each Debian release: an mmdebstrap tar, cached, unpacked once
per machine.

Hosts never write to the unpacked base: each host mounts an overlayfs with its
own upper directory on top of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import aptsources, guest, locks, network, releases
from .errors import HarnessError
from .paths import StateDir, state_dir

log = logging.getLogger("testhosts")

INCLUDES = (
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
    "ca-certificates",
    "procps",
    "curl",
)
# Bump when prepare_base() changes, so existing machines unpack a fresh base.
PREPARE_VERSION = 1
MACHINE_CA_DIR = Path("/usr/local/share/ca-certificates")
# mmdebstrap checks the archive with the machine's debian-archive-keyring.
KEYRINGS = Path("/usr/share/keyrings")

KEEP_DEBS_CONF = """\
// Written by the eep test-host harness: keep downloaded .deb files, so the
// machine-side cache layered under /var/cache/apt/archives can collect them.
APT::Keep-Downloaded-Packages "true";
Binary::apt::APT::Keep-Downloaded-Packages "true";
"""


def image_path(release: str, layout: StateDir | None = None) -> Path:
    return (layout or state_dir()).image_dir / f"{release}-minbase.tar"


def meta_path(release: str, layout: StateDir | None = None) -> Path:
    # The default release keeps the name it had when it was the only image, so a
    # machine's cached image (and the bases unpacked from it) stay in use.
    name = "image.json" if release == releases.DEFAULT else f"{release}-minbase.json"
    return (layout or state_dir()).image_dir / name


def image_meta(release: str, layout: StateDir | None = None) -> dict | None:
    try:
        return json.loads(meta_path(release, layout).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_image(release: str | None = None, rebuild: bool = False) -> dict:
    """Build (or with rebuild=True, replace) the cached image tar of a release; return its meta."""
    distro = releases.get_release(release)
    layout = state_dir()
    with locks.file_lock(layout.image_lock_file):
        meta = image_meta(distro.codename, layout)
        target = image_path(distro.codename, layout)
        if meta and target.is_file() and not rebuild:
            return meta
        ensure_archive_key(distro)
        mirrors = aptsources.machine_mirrors(suite=distro.codename)
        options = aptsources.machine_apt_options()
        tmp = target.with_name(target.name + ".tmp")
        tmp.unlink(missing_ok=True)
        command = [
            "mmdebstrap",
            "--variant=minbase",
            "--format=tar",
            f"--include={','.join(INCLUDES)}",
            *(f"--aptopt={aptsources.as_aptopt(o)}" for o in options),
            distro.codename,
            str(tmp),
            *mirrors.mmdebstrap_sources(),
        ]
        log_path = layout.logs_dir / f"image-build-{distro.codename}.log"
        log.info("image: building %s with mmdebstrap from %s", distro.title, mirrors.debian)
        started = time.monotonic()
        with open(log_path, "wb") as out:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise HarnessError(f"mmdebstrap failed (log {log_path}): {' | '.join(tail)}")
        seconds = time.monotonic() - started
        tmp.rename(target)
        meta = {
            "id": time.strftime("%Y%m%d%H%M%S"),
            "release": distro.codename,
            "seconds": round(seconds, 1),
            "bytes": target.stat().st_size,
            "mirror": mirrors.debian,
            "security_mirror": mirrors.security,
            "includes": list(INCLUDES),
        }
        final = meta_path(distro.codename, layout)
        final.with_suffix(".tmp").write_text(json.dumps(meta, indent=2))
        final.with_suffix(".tmp").rename(final)
        log.info("image: built in %.1f s (%d MB)", seconds, meta["bytes"] // 1_000_000)
        return meta


def ensure_archive_key(distro: releases.Release, keyrings: Path = KEYRINGS) -> None:
    """The machine's keyring must hold the release's archive key: Debian 12's has trixie's
    from 2023.3+deb12u2 on (a stable update), so an older one is upgraded once."""
    key = keyrings / f"debian-archive-{distro.codename}-automatic.gpg"
    if key.is_file():
        return
    log.info("image: %s has no key of %s, upgrading debian-archive-keyring", keyrings, distro.title)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    upgrade = ["apt-get", "install", "-y", "-q", "debian-archive-keyring"]
    for command in (["apt-get", "update", "-q"], upgrade):
        subprocess.run(command, capture_output=True, env=env, stdin=subprocess.DEVNULL)
    if not key.is_file():
        raise HarnessError(
            f"no archive key of {distro.title} on this machine ({key} is missing, also after"
            " upgrading debian-archive-keyring): install a debian-archive-keyring that has it"
        )


def _machine_cas() -> list[Path]:
    if not MACHINE_CA_DIR.is_dir():
        return []
    return sorted(p for p in MACHINE_CA_DIR.rglob("*.crt") if p.is_file())


def base_id(meta: dict) -> str:
    """Names an unpacked base: image plus everything machine-specific put into it."""
    release = meta.get("release", releases.DEFAULT)
    digest = hashlib.sha256()
    mirrors = aptsources.machine_mirrors(suite=release)
    parts = [mirrors.sources_list(), *aptsources.machine_apt_options()]
    for ca in _machine_cas():
        parts += [ca.name, ca.read_text(errors="replace")]
    for part in parts:
        digest.update(part.encode() + b"\0")
    name = f"{meta['id']}-p{PREPARE_VERSION}-{digest.hexdigest()[:10]}"
    # Other releases are named in full; the default one keeps its existing bases' names.
    return name if release == releases.DEFAULT else f"{release}-{name}"


def prepare_base(root: Path, release: str) -> None:
    """Machine-specific setup of a freshly unpacked image tree."""
    mirrors = aptsources.machine_mirrors(suite=release)
    guest.remove_files(root, "etc/ssh", "ssh_host_")
    conf_dir = root / "etc/apt/apt.conf.d"
    for name in ("docker-clean",):
        (conf_dir / name).unlink(missing_ok=True)
    guest.write_file(root, "etc/apt/apt.conf.d/90eep-keep-debs", KEEP_DEBS_CONF)
    options = aptsources.machine_apt_options()
    if options:
        guest.write_file(
            root,
            "etc/apt/apt.conf.d/90eep-machine-apt",
            "// Copied from the machine's apt setup by the eep test-host harness.\n"
            + "\n".join(aptsources.as_aptopt(o) for o in options)
            + "\n",
        )
    guest.write_file(root, "etc/apt/sources.list", mirrors.sources_list())
    guest.write_file(root, "etc/machine-id", "", 0o444)
    guest.write_file(root, "etc/resolv.conf", f"nameserver {network.GUEST_DNS}\n")
    cas = _machine_cas()
    if cas:
        # The machine reaches HTTPS through these extra CAs; guests need them too.
        for ca in cas:
            guest.write_file(root, f"usr/local/share/ca-certificates/{ca.name}", ca.read_bytes())
        result = subprocess.run(
            ["chroot", str(root), "update-ca-certificates"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise HarnessError(
                f"update-ca-certificates in the base failed: {result.stderr.strip()}"
            )


def ensure_base(release: str | None = None) -> Path:
    """Build the release's image if needed and return the unpacked, prepared base tree."""
    distro = releases.get_release(release)
    layout = state_dir()
    with locks.file_lock(layout.image_lock_file):
        meta = build_image(distro.codename)
        base = layout.bases_dir / base_id(meta)
        if base.is_dir():
            return base
        tmp = base.with_name(base.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(mode=0o755)
        log.info("image: unpacking into %s", base)
        started = time.monotonic()
        result = subprocess.run(
            [
                "tar", "-C", str(tmp), "--numeric-owner", "--xattrs",
                "--xattrs-include=*", "-xpf", str(image_path(distro.codename, layout)),
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if result.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise HarnessError(f"unpacking the image failed: {result.stderr.strip()}")
        prepare_base(tmp, distro.codename)
        tmp.rename(base)
        log.info("image: base ready in %.1f s", time.monotonic() - started)
        return base


def current_base(release: str | None = None) -> Path | None:
    """The base new hosts of a release would use, if it exists already."""
    layout = state_dir()
    meta = image_meta(releases.get_release(release).codename, layout)
    if meta is None:
        return None
    base = layout.bases_dir / base_id(meta)
    return base if base.is_dir() else None


def remove_unused_bases(keep: set[Path]) -> list[Path]:
    """Delete unpacked bases not in keep (nor the current one of a release); return them."""
    layout = state_dir()
    current = {current_base(release) for release in releases.RELEASES}
    removed = []
    with locks.file_lock(layout.image_lock_file):
        for path in layout.bases_dir.iterdir():
            if path in current or path in keep:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
