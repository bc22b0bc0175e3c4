"""Read the machine's own apt setup, so guests reach the archive the same way."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import releases

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# apt settings about *how* the archive is reached, copied into guests.
_COPIED_OPTION = re.compile(
    r"^Acquire::(https?|ftp)::Proxy(::[^ ]+)? |"
    r"^Acquire::(Check-Valid-Until|Check-Date|ForceIPv4|ForceIPv6) ",
)


@dataclass(frozen=True)
class Mirrors:
    debian: str
    security: str
    suite: str = releases.DEFAULT

    def sources_list(self) -> str:
        return (
            f"deb {self.debian} {self.suite} main\n"
            f"deb {self.debian} {self.suite}-updates main\n"
            f"deb {self.security} {self.suite}-security main\n"
        )

    def mmdebstrap_sources(self) -> list[str]:
        return [line for line in self.sources_list().splitlines() if line]


def _one_line_entries(text: str) -> list[tuple[str, list[str]]]:
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)
        parts = line.split()
        if len(parts) >= 3:
            entries.append((parts[1], [parts[2]]))
    return entries


def _deb822_entries(text: str) -> list[tuple[str, list[str]]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                continue
            key, value = raw.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        for uri in fields.get("uris", "").split():
            entries.append((uri, fields.get("suites", "").split()))
    return entries


def machine_mirrors(etc_apt: Path = Path("/etc/apt"), suite: str = releases.DEFAULT) -> Mirrors:
    """Mirrors for suite and suite-security as the machine's apt uses them.

    A machine lists the suites of its own release only: for another release the
    mirror that serves any known Debian suite is used (one archive holds them all).
    """
    entries: list[tuple[str, list[str]]] = []
    main_list = etc_apt / "sources.list"
    if main_list.is_file():
        entries += _one_line_entries(main_list.read_text(errors="replace"))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                entries += _one_line_entries(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                entries += _deb822_entries(path.read_text(errors="replace"))
    known = [suite, *(name for name in releases.RELEASES if name != suite)]
    debian = _first_serving(entries, known)
    security = _first_serving(entries, [f"{name}-security" for name in known])
    return Mirrors(debian or DEFAULT_MIRROR, security or DEFAULT_SECURITY_MIRROR, suite)


def _first_serving(entries: list[tuple[str, list[str]]], wanted: list[str]) -> str | None:
    """The URI of the first entry serving wanted[0], else wanted[1], and so on."""
    for name in wanted:
        for uri, suites in entries:
            if name in suites:
                return uri.rstrip("/")
    return None


def machine_apt_options() -> list[str]:
    """apt options (proxy, date checks) the machine uses to reach its mirror."""
    try:
        dump = subprocess.run(
            ["apt-config", "dump"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line for line in dump.splitlines() if _COPIED_OPTION.match(line)]


def as_aptopt(line: str) -> str:
    """Turn an `apt-config dump` line into mmdebstrap's --aptopt form."""
    return line if line.endswith(";") else f"{line};"
