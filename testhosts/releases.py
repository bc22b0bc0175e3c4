"""The Debian releases test hosts can run."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import HarnessError


@dataclass(frozen=True)
class Release:
    codename: str  # the archive's suite name
    version: str  # Debian's release number, as in /etc/os-release

    @property
    def title(self) -> str:
        return f"Debian {self.version} ({self.codename})"


RELEASES = {r.codename: r for r in (Release("bookworm", "12"), Release("trixie", "13"))}
DEFAULT = "bookworm"


def get_release(codename: str | None) -> Release:
    """The release called codename (None: the default one); an unknown name is one clear error."""
    name = codename or DEFAULT
    try:
        return RELEASES[name]
    except KeyError:
        known = ", ".join(r.codename for r in RELEASES.values())
        raise HarnessError(f"unknown Debian release {name!r}: use one of {known}") from None
