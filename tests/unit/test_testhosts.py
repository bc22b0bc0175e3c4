"""Pure parts of the test-host harness: which release, which mirror, which cached files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from testhosts import aptsources, cli, image, lan, pytest_plugin, releases  # noqa: E402
from testhosts.errors import HarnessError  # noqa: E402
from testhosts.host import _release_of  # noqa: E402
from testhosts.paths import StateDir, netns_name  # noqa: E402

# A bookworm machine as the reference machine has it: deb822 sources of its own release only.
BOOKWORM_SOURCES = """\
Types: deb
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: https://deb.nodesource.example/node_20.x
Suites: nodistro
Components: main
"""


def etc_apt(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / "sources.list.d").mkdir(parents=True, exist_ok=True)
    (tmp_path / "sources.list.d" / name).write_text(text)
    return tmp_path


def test_releases_are_known_by_codename_and_the_default_is_bookworm():
    assert releases.get_release(None).title == "Debian 12 (bookworm)"
    assert releases.get_release("trixie").title == "Debian 13 (trixie)"
    with pytest.raises(HarnessError, match="unknown Debian release 'sid': use one of bookworm"):
        releases.get_release("sid")


def test_another_release_comes_from_the_mirror_the_machine_uses_for_its_own(tmp_path):
    apt = etc_apt(tmp_path, "debian.sources", BOOKWORM_SOURCES)
    mirrors = aptsources.machine_mirrors(apt, suite="trixie")
    assert mirrors.sources_list() == (
        "deb http://mirror.example/debian trixie main\n"
        "deb http://mirror.example/debian trixie-updates main\n"
        "deb http://mirror.example/debian-security trixie-security main\n"
    )
    assert (
        aptsources.machine_mirrors(apt)
        .sources_list()
        .startswith("deb http://mirror.example/debian bookworm main\n")
    )


def test_a_mirror_listed_for_the_release_itself_wins(tmp_path):
    apt = etc_apt(tmp_path, "debian.sources", BOOKWORM_SOURCES)
    (apt / "sources.list").write_text("deb [arch=amd64] http://trixie.example/debian trixie main\n")
    mirrors = aptsources.machine_mirrors(apt, suite="trixie")
    assert (mirrors.debian, mirrors.security) == (
        "http://trixie.example/debian",
        "http://mirror.example/debian-security",
    )
    assert aptsources.machine_mirrors(apt).debian == "http://mirror.example/debian"


def test_without_a_debian_mirror_the_machine_gets_debs_official_one(tmp_path):
    apt = etc_apt(
        tmp_path, "node.list", "deb https://deb.nodesource.example/node_20.x nodistro main\n"
    )
    mirrors = aptsources.machine_mirrors(apt, suite="trixie")
    assert (mirrors.debian, mirrors.security) == (
        aptsources.DEFAULT_MIRROR,
        aptsources.DEFAULT_SECURITY_MIRROR,
    )


def test_each_release_has_its_own_cached_image_and_the_default_keeps_its_old_names(tmp_path):
    layout = StateDir(tmp_path)
    assert image.image_path("bookworm", layout) == tmp_path / "image/bookworm-minbase.tar"
    assert image.meta_path("bookworm", layout) == tmp_path / "image/image.json"
    assert image.image_path("trixie", layout) == tmp_path / "image/trixie-minbase.tar"
    assert image.meta_path("trixie", layout) == tmp_path / "image/trixie-minbase.json"


def test_a_base_names_its_release_and_a_snapshots_host_gets_it_back():
    trixie = image.base_id({"id": "20260101000000", "release": "trixie"})
    bookworm = image.base_id({"id": "20260101000000"})  # a meta written before releases
    assert trixie.startswith("trixie-20260101000000-p") and bookworm.startswith("20260101000000-p")
    assert trixie.removeprefix("trixie-") != bookworm  # another mirror suite, another digest
    assert _release_of(Path("/x/base") / trixie) == "trixie"
    assert _release_of(Path("/x/base") / bookworm) == "bookworm"


def test_the_cli_takes_a_release_and_refuses_an_unknown_one_in_one_line(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["up", "web1", "--release", "trixie"]).release == "trixie"
    assert parser.parse_args(["up", "web1"]).release is None
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["up", "web1", "--release", "sid"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'sid'" in err


def test_a_keyring_without_the_releases_key_is_upgraded_once_then_refused(tmp_path, monkeypatch):
    trixie = releases.get_release("trixie")
    ran: list[list[str]] = []
    monkeypatch.setattr(image.subprocess, "run", lambda command, **_: ran.append(command))
    with pytest.raises(HarnessError, match=r"no archive key of Debian 13 \(trixie\) on this"):
        image.ensure_archive_key(trixie, tmp_path)
    assert ran == [
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "debian-archive-keyring"],
    ]
    ran.clear()
    (tmp_path / "debian-archive-trixie-automatic.gpg").write_bytes(b"key")
    image.ensure_archive_key(trixie, tmp_path)
    assert ran == []


def test_a_new_lan_takes_the_lowest_free_index_and_its_hosts_count_from_ten():
    assert lan.allocate_address("fleet", []) == "10.77.1.10"
    fleet = [("fleet", "10.77.1.10"), ("fleet", "10.77.1.11")]
    assert lan.allocate_address("fleet", fleet) == "10.77.1.12"
    assert lan.allocate_address("other", fleet) == "10.77.2.10"
    # LAN 2 is gone: its index is free again, LAN 3 keeps its own.
    assert lan.allocate_address("new", [*fleet, ("third", "10.77.3.10")]) == "10.77.2.10"
    assert lan.allocate_address("third", [*fleet, ("third", "10.77.3.10")]) == "10.77.3.11"


def test_a_destroyed_hosts_address_is_given_again_and_a_full_lan_is_refused():
    assert lan.allocate_address("fleet", [("fleet", "10.77.4.11")]) == "10.77.4.10"
    full = [("fleet", f"10.77.4.{n}") for n in range(10, 255)]
    with pytest.raises(HarnessError, match="no free address on LAN fleet"):
        lan.allocate_address("fleet", full)


def test_each_lan_address_has_its_own_fixed_mac_and_a_short_bridge_port_name():
    addresses = [f"10.77.{i}.{n}" for i in (1, 2, 254) for n in (10, 11, 254)]
    macs = [lan.mac_address(address) for address in addresses]
    assert len(set(macs)) == len(addresses)
    assert lan.mac_address("10.77.1.10") == lan.mac_address("10.77.1.10")
    # Locally administered unicast: second bit of the first byte set, first bit clear.
    assert all(int(mac.split(":")[0], 16) & 0b11 == 0b10 for mac in macs)
    assert all(len(lan.bridge_port(address)) <= 15 for address in addresses)  # IFNAMSIZ


def test_lan_names_are_checked_and_never_clash_with_a_hosts_netns():
    assert lan.check_lan_name("fleet-1") == "fleet-1"
    for bad in ("Fleet", "x", "a" * 25, "fleet_1", "-fleet", "../x"):
        with pytest.raises(HarnessError, match="invalid LAN name"):
            lan.check_lan_name(bad)
    assert lan.netns_name("x1") != netns_name("lan-x1")
    assert not lan.netns_name("x1").startswith("eep-")


def test_the_cli_puts_a_host_on_a_lan():
    parser = cli.build_parser()
    assert parser.parse_args(["up", "web1", "--lan", "fleet"]).lan == "fleet"
    assert parser.parse_args(["up", "web1"]).lan is None


def test_a_pytest_session_gets_lans_of_its_own_and_keeps_them(monkeypatch):
    monkeypatch.setattr(pytest_plugin, "_session_lans", {})
    monkeypatch.setattr(pytest_plugin, "list_hosts", lambda: [])
    monkeypatch.setattr(pytest_plugin, "list_lans", lambda: [])
    fleet = pytest_plugin.session_lan("fleet")
    assert re.fullmatch(r"fleet-[0-9a-f]{4}", fleet)
    assert pytest_plugin.session_lan("fleet") == fleet
    assert pytest_plugin.session_lan(fleet) == fleet, "host.lan names the same LAN"
    assert pytest_plugin.session_lan("other") != fleet
    assert lan.check_lan_name(pytest_plugin.session_lan("A very long LAN name"))
