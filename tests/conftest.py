"""Shared fixtures: SSH keys to answer the template with, and baking helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_ssh_key(directory: Path, key_type: str = "ed25519", bits: int | None = None) -> str:
    """Generate a key pair with ssh-keygen and return the public key line."""
    path = directory / f"id_{key_type}_{bits or 0}"
    cmd = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "dev@laptop", "-f", str(path)]
    if bits:
        cmd += ["-b", str(bits)]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("keys")
    return {
        "ed25519": make_ssh_key(directory),
        "ecdsa": make_ssh_key(directory, "ecdsa", 256),
        "rsa4096": make_ssh_key(directory, "rsa", 4096),
        "rsa1024": make_ssh_key(directory, "rsa", 1024),
    }


@pytest.fixture
def answers(ssh_keys) -> dict[str, str]:
    """Valid answers: what a user types for a typical Flask app with Celery."""
    return {
        "project_name": "Shop",
        "project_slug": "shop",
        "domain": "shop.example.com www.shop.example.com",
        "deploy_ssh_key": ssh_keys["ed25519"],
    }


@pytest.fixture
def bake(cookies, answers):
    """Bake with the valid answers updated by `changes`; return the result."""

    def _bake(**changes: str):
        return cookies.bake(extra_context={**answers, **changes}, template=str(REPO))

    return _bake


@pytest.fixture
def user(tmp_path) -> dict[str, str]:
    """The environment of a user of the template (see tests/templaterepo.py)."""
    from templaterepo import user_env

    return user_env(tmp_path / "home")


@pytest.fixture
def template(tmp_path, user):
    """The template in a git repository with one version, tagged v1.0."""
    from templaterepo import TemplateRepo

    repo = TemplateRepo(tmp_path, user)
    repo.release("v1.0")
    return repo
