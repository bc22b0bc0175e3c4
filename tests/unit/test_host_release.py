"""Which host releases a baked tree provisions: read from /etc/os-release, before any change."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
DEBIAN_13 = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n'
UBUNTU_2404 = (
    'PRETTY_NAME="Ubuntu 24.04.2 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n'
    "ID_LIKE=debian\n"
)
# Debian testing has no VERSION_ID.
DEBIAN_TESTING = 'PRETTY_NAME="Debian GNU/Linux forky/sid"\nID=debian\n'
DEBIAN_11 = 'PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nID=debian\nVERSION_ID="11"\n'
UBUNTU_2204 = 'PRETTY_NAME="Ubuntu 22.04.5 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"\n'
MINT = 'PRETTY_NAME="Linux Mint 22"\nID=linuxmint\nID_LIKE="ubuntu debian"\nVERSION_ID="22"\n'
FEDORA = 'NAME="Fedora Linux"\nVERSION_ID=41\nID=fedora\nPRETTY_NAME="Fedora Linux 41"\n'

KNOWN = "(it knows Debian 12, Debian 13, Ubuntu 24.04)"


def known_release(tree, os_release: str) -> str:
    code = (
        "import json, sys\n"
        "from eep.packages import known_release\n"
        "from eep.remote import HostError\n"
        "try: print(json.dumps(known_release(sys.stdin.read())))\n"
        "except HostError as e: print(json.dumps(f'HostError: {e}'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, input=os_release, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    return found if isinstance(found, str) else " / ".join(found)


@pytest.mark.parametrize(
    ("python", "os_release", "expected"),
    [
        ("3.11", DEBIAN_12, "Debian GNU/Linux 12 (bookworm) / 3.11"),
        ("3.13", DEBIAN_13, "Debian GNU/Linux 13 (trixie) / 3.13"),
        ("3.12", UBUNTU_2404, "Ubuntu 24.04.2 LTS (expected to work, untested) / 3.12"),
    ],
)
def test_a_known_release_with_the_baked_python_is_accepted(bake, python, os_release, expected):
    tree = bake(python_version=python).project_path
    assert known_release(tree, os_release) == expected


@pytest.mark.parametrize(
    ("python", "os_release", "refusal"),
    [
        (
            "3.11",
            DEBIAN_13,
            "the host runs Debian GNU/Linux 13 (trixie), whose python3 is 3.13; this tree"
            " was made for 3.11 (re-bake with python_version=3.13)",
        ),
        (
            "3.13",
            DEBIAN_12,
            "the host runs Debian GNU/Linux 12 (bookworm), whose python3 is 3.11; this tree"
            " was made for 3.13 (re-bake with python_version=3.11)",
        ),
        ("3.11", DEBIAN_11, f"the host runs Debian GNU/Linux 11 (bullseye), {{}} {KNOWN}"),
        ("3.13", DEBIAN_TESTING, f"the host runs Debian GNU/Linux forky/sid, {{}} {KNOWN}"),
        ("3.12", UBUNTU_2204, f"the host runs Ubuntu 22.04.5 LTS, {{}} {KNOWN}"),
        ("3.12", MINT, f"the host runs Linux Mint 22, {{}} {KNOWN}"),
        ("3.11", FEDORA, f"the host runs Fedora Linux 41, {{}} {KNOWN}"),
        ("3.11", "", f"the host runs an unknown system, {{}} {KNOWN}"),
    ],
)
def test_another_release_or_python_is_refused_in_one_line(bake, python, os_release, refusal):
    tree = bake(python_version=python).project_path
    expected = "HostError: " + refusal.format("a release eep does not know")
    assert known_release(tree, os_release) == expected
