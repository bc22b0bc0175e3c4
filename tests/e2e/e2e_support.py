"""Helpers of the end-to-end tests: baked trees that provision test hosts, host state snapshots."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cookiecutter.main import cookiecutter

REPO = Path(__file__).resolve().parents[2]


def deploy_key(directory: Path) -> Path:
    """The developer's key pair used for the deploy account of test trees."""
    key = directory / "deploy_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dev@e2e", "-f", str(key)],
            check=True,
        )
    return key


@dataclass
class BakedTree:
    path: Path
    slug: str
    deploy_key: Path

    def invoke(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def trust(self, host) -> None:
        """Pin the test host's key in the tree, as a user would after verifying it."""
        known = self.path / "known_hosts"
        line = Path(host.known_hosts_path).read_text()
        if line not in (known.read_text() if known.exists() else ""):
            with known.open("a") as handle:
                handle.write(line)

    def provision(self, host, *args: str) -> subprocess.CompletedProcess:
        self.trust(host)
        spec = f"root@127.0.0.1:{host.ssh_port}"
        return self.invoke("provision", "--host", spec, "--identity", str(host.key_path), *args)

    def copy(self, destination: Path) -> BakedTree:
        shutil.copytree(self.path, destination)
        return BakedTree(destination, self.slug, self.deploy_key)


def bake_tree(directory: Path, slug: str, **answers: str) -> BakedTree:
    key = deploy_key(directory)
    context = {
        "project_name": slug.title(),
        "project_slug": slug,
        "domain": f"{slug}.example.com",
        "deploy_ssh_key": key.with_suffix(".pub").read_text().strip(),
        **answers,
    }
    path = cookiecutter(str(REPO), no_input=True, output_dir=str(directory), extra_context=context)
    return BakedTree(Path(path), slug, key)


# Everything provisioning may touch, except /run (pids change) and logs.
WATCHED = "/etc/eep /etc/nginx /etc/supervisor /etc/sudoers.d /etc/tmpfiles.d /srv /home"
WATCHED_FILES = "/etc/passwd /etc/group /etc/shadow /etc/gshadow"


def snapshot_state(host) -> str:
    """Paths, owners, modes, mtimes and checksums of what provisioning manages, plus packages."""
    return host.run(
        f"find {WATCHED} {WATCHED_FILES} -xdev -printf '%p %M %u %g %T@\\n' 2>/dev/null | sort;"
        f" find {WATCHED} -xdev -type f -exec md5sum {{}} + | sort; "
        " dpkg-query -W -f='${Package} ${Version} ${Status}\\n' | md5sum;"
        " systemctl list-unit-files --state=enabled --no-legend | md5sum"
    ).stdout
