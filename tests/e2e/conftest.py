"""Fixtures of the end-to-end tests: disposable Debian 12 hosts (testhosts).

pytest only honours `pytest_plugins` in the top-level conftest, so the
plugin's fixtures are imported here instead; that keeps them local to tests/e2e.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testhosts.pytest_plugin import (  # noqa: E402, F401
    pytest_configure,
    session_testhost,
    testhost_factory,
    testhost_factory_module,
    testhosts_ready,
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """A directory for a module's release tarballs."""
    return tmp_path_factory.mktemp("dist")
