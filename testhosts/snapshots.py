"""Snapshots: a host's disk state kept as a read-only overlay layer.

A snapshot copies the host's overlay upper directory (whiteouts and
trusted.overlay.* xattrs included) into a layer directory once. Hosts booted
from it stack that layer, and the layers of the host it came from, between
their own upper directory and the base image, so a clone costs no copying.
A layer is deleted once neither a snapshot nor a host refers to it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from . import locks
from .errors import HarnessError
from .paths import check_snapshot_name, state_dir

# GNU tar keeps overlay whiteouts (0/0 device nodes), xattrs and ACLs as root.
TAR_OPTIONS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]


def _meta_path(name: str) -> Path:
    return state_dir().snapshots_dir / f"{check_snapshot_name(name)}.json"


def _layers_dir() -> Path:
    path = state_dir().root / "layers"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return total


def copy_tree(source: Path, target: Path) -> None:
    """Copy an overlay upper dir with everything overlayfs stores in it."""
    pack = subprocess.Popen(
        ["tar", "-C", str(source), *TAR_OPTIONS, "-cf", "-", "."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    unpack = subprocess.run(
        ["tar", "-C", str(target), *TAR_OPTIONS, "-xpf", "-"],
        stdin=pack.stdout,
        capture_output=True,
        text=True,
    )
    assert pack.stdout is not None
    pack.stdout.close()
    pack_err = pack.stderr.read().decode(errors="replace") if pack.stderr else ""
    if pack.wait() != 0 or unpack.returncode != 0:
        raise HarnessError(f"copying {source} failed: {(pack_err or unpack.stderr).strip()}")


def save(name: str, upper: Path, host_layers: list[Path], base: Path, source_host: str) -> dict:
    """Make (or replace) snapshot name from a host's upper dir; return its meta."""
    meta_path = _meta_path(name)
    layers = _layers_dir()
    layer_id = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    tmp = layers / f".tmp-{layer_id}"
    tmp.mkdir(mode=0o755)
    try:
        copy_tree(upper, tmp)
        size = _tree_bytes(tmp)
        layer = layers / layer_id
        tmp.rename(layer)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta = {
        "name": name,
        "layers": [str(layer), *(str(p) for p in host_layers)],
        "base": str(base),
        "source_host": source_host,
        "created": time.time(),
        "bytes": size,
    }
    with locks.file_lock(state_dir().lock_file):
        tmp_meta = meta_path.with_name(f".{meta_path.name}.tmp")
        tmp_meta.write_text(json.dumps(meta, indent=2))
        tmp_meta.rename(meta_path)
        remove_unused_layers()
    return meta


def meta(name: str) -> dict:
    try:
        return json.loads(_meta_path(name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise HarnessError(f"no snapshot named {name!r}") from None


def layers_of(name: str) -> tuple[list[Path], Path]:
    """The overlay layers (top first) and base a host booted from name stacks."""
    data = meta(name)
    if "layers" not in data or "base" not in data:
        raise HarnessError(f"snapshot {name!r} has an unknown format; take it again")
    layers = [Path(p) for p in data["layers"]]
    base = Path(data["base"])
    for path in [*layers, base]:
        if not path.is_dir():
            raise HarnessError(f"snapshot {name!r} needs {path}, which is gone; take it again")
    return layers, base


def list_snapshots() -> list[dict]:
    found = []
    for meta_path in sorted(state_dir().snapshots_dir.glob("*.json")):
        try:
            found.append(json.loads(meta_path.read_text()))
        except json.JSONDecodeError:
            continue
    return found


def delete_snapshot(name: str) -> None:
    """Forget snapshot name; its layers go once no host uses them any more."""
    meta_path = _meta_path(name)
    with locks.file_lock(state_dir().lock_file):
        if not meta_path.exists():
            raise HarnessError(f"no snapshot named {name!r}")
        meta_path.unlink()
        remove_unused_layers()


def layers_in_use() -> set[Path]:
    """Layers named by a snapshot or by any host's state (also stopped hosts)."""
    layout = state_dir()
    used: set[Path] = set()
    documents = [*layout.snapshots_dir.glob("*.json"), *layout.hosts_dir.glob("*/state.json")]
    for path in documents:
        try:
            used.update(Path(p) for p in json.loads(path.read_text()).get("layers", []))
        except (FileNotFoundError, json.JSONDecodeError):
            continue
    return used


def remove_unused_layers() -> list[Path]:
    """Delete layer dirs nothing refers to (call with the hosts lock held)."""
    used = layers_in_use()
    removed = []
    for path in _layers_dir().iterdir():
        if path.name.startswith(".tmp-"):
            # A layer being written now has a live tar; one from a crash does not.
            if time.time() - path.stat().st_mtime < 3600:
                continue
        elif path in used:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
