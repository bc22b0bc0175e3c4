"""pytest fixtures for disposable Debian test hosts.

Fixtures:
- testhosts_ready (session): checks preconditions, installs host packages,
  builds the image, and removes leftovers of crashed runs, once per session.
- testhost_factory (function): make(name_prefix, from_snapshot=None,
  release=None, lan=None) -> Host (release: a Debian codename, default
  bookworm; lan: a private LAN's name, see below); every host it made is
  destroyed when the test ends.
- testhost_factory_module (module): the same, destroyed after the module.
- session_testhost (session): one Host shared by the whole session.

A host that cannot be booted makes the test ERROR (HarnessError), never skip.

LAN names are per pytest process: lan="fleet" becomes "fleet-XXXX" (the same
suffix for every host of the session, in any factory), so that two sessions
running the same tests at once never share a LAN. host.lan has the real name.
Hosts belong to the pytest process: if it dies, the next session's
cleanup_leftovers() removes them.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator

import pytest

from .cleanup import cleanup_leftovers
from .deps import ensure_ready
from .errors import HarnessError
from .host import Host, create_host, get_host, list_hosts
from .lan import LAN_NAME_RE, list_lans
from .paths import HOST_NAME_RE

HostFactory = Callable[..., Host]


def unique_name(prefix: str) -> str:
    """prefix plus a short random suffix, usable as hostname and netns name."""
    clean = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:14] or "t"
    if not clean[0].isalpha():
        clean = f"t{clean}"[:14]
    for _ in range(20):
        name = f"{clean}-{secrets.token_hex(2)}"
        if not HOST_NAME_RE.match(name):
            raise HarnessError(f"cannot make a host name from prefix {prefix!r}")
        try:
            get_host(name)
        except HarnessError:
            return name
    raise HarnessError(f"no free host name for prefix {prefix!r}")


_session_lans: dict[str, str] = {}


def session_lan(name: str) -> str:
    """The LAN this pytest process means by name: name plus a random suffix
    no existing LAN has, the same for the whole session."""
    if name in _session_lans:
        return _session_lans[name]
    if name in _session_lans.values():  # host.lan of a host made in this session
        return name
    taken = set(list_lans()) | {host.lan for host in list_hosts() if host.lan}
    clean = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:14] or "lan"
    if not clean[0].isalpha():
        clean = f"l{clean}"[:14]
    for _ in range(20):
        candidate = f"{clean}-{secrets.token_hex(2)}"
        if not LAN_NAME_RE.match(candidate):
            raise HarnessError(f"cannot make a LAN name from {name!r}")
        if candidate not in taken:
            _session_lans[name] = candidate
            return candidate
    raise HarnessError(f"no free LAN name for {name!r}")


class _Factory:
    """Creates hosts owned by this pytest process and destroys them at the end."""

    def __init__(self) -> None:
        self.hosts: list[Host] = []

    def __call__(
        self,
        name_prefix: str = "t",
        from_snapshot: str | None = None,
        timeout: float = 90,
        release: str | None = None,
        lan: str | None = None,
    ) -> Host:
        host = create_host(
            unique_name(name_prefix),
            from_snapshot=from_snapshot,
            release=release,
            lan=session_lan(lan) if lan else None,
            timeout=timeout,
            owner_pid=os.getpid(),
        )
        self.hosts.append(host)
        return host

    def destroy_all(self) -> None:
        errors = []
        while self.hosts:
            host = self.hosts.pop()
            try:
                host.destroy()
            except HarnessError as exc:
                errors.append(str(exc))
        if errors:
            raise HarnessError("; ".join(errors))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end test on real disposable Debian hosts (needs root; slow)"
    )


@pytest.fixture(scope="session")
def testhosts_ready() -> None:
    ensure_ready()
    cleanup_leftovers()


def _factory() -> Iterator[_Factory]:
    factory = _Factory()
    try:
        yield factory
    finally:
        factory.destroy_all()


@pytest.fixture
def testhost_factory(testhosts_ready: None) -> Iterator[HostFactory]:
    yield from _factory()


@pytest.fixture(scope="module")
def testhost_factory_module(testhosts_ready: None) -> Iterator[HostFactory]:
    yield from _factory()


@pytest.fixture(scope="session")
def session_testhost(testhosts_ready: None) -> Iterator[Host]:
    factory = _Factory()
    try:
        yield factory("session")
    finally:
        factory.destroy_all()
