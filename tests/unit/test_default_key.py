"""An empty deploy_ssh_key answer: the developer's default public key, or one line of refusal."""

from __future__ import annotations

import json

import pytest
from cookiecutter.exceptions import FailedHookException
from templaterepo import default_key


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The developer's home directory, with no SSH key yet (the hooks read $HOME)."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


def test_empty_answer_takes_the_default_key_and_says_which(bake, home, capfd):
    rsa = default_key(home, "id_rsa", "-b", "3072")
    ed25519 = default_key(home, "id_ed25519")
    result = bake(deploy_ssh_key="")
    assert result.exception is None, result.exception
    assert f"deploy_ssh_key: none given, using {home}/.ssh/id_ed25519.pub" in capfd.readouterr().out
    tree = result.project_path
    assert (tree / "config" / "authorized_keys").read_text() == ed25519 + "\n" != rsa + "\n"
    recorded = json.loads((tree / ".cookiecutter.json").read_text())["cookiecutter"]
    assert recorded["deploy_ssh_key"] == ed25519


def test_ecdsa_comes_before_rsa(bake, home, capfd):
    default_key(home, "id_rsa", "-b", "3072")
    ecdsa = default_key(home, "id_ecdsa", "-b", "256")
    tree = bake(deploy_ssh_key="").project_path
    assert (tree / "config" / "authorized_keys").read_text() == ecdsa + "\n"
    assert "using" in capfd.readouterr().out


def test_a_given_key_is_used_as_given(bake, home, capfd, ssh_keys):
    default_key(home, "id_ed25519")
    tree = bake(deploy_ssh_key=ssh_keys["rsa4096"]).project_path
    assert (tree / "config" / "authorized_keys").read_text() == ssh_keys["rsa4096"] + "\n"
    assert "none given" not in capfd.readouterr().out


def test_no_default_key_is_refused_with_one_line(bake, home, capfd):
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_dsa.pub").write_text("ssh-dss AAAA dev@laptop\n")  # not looked at
    result = bake(deploy_ssh_key="")
    assert isinstance(result.exception, FailedHookException)
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR:")]
    assert errors == [
        "ERROR: deploy_ssh_key: required: paste the developer's OpenSSH public key; none in"
        " ~/.ssh either (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub)"
    ]
    assert result.project_path is None or not result.project_path.exists()


def test_a_default_key_file_holding_a_private_key_is_refused_unread(bake, home, capfd):
    default_key(home, "id_ed25519")
    private = (home / ".ssh" / "id_ed25519").read_text()
    (home / ".ssh" / "id_ed25519.pub").write_text(private)  # a copy gone wrong
    result = bake(deploy_ssh_key="")
    assert isinstance(result.exception, FailedHookException)
    out, err = capfd.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert errors == [
        f"ERROR: deploy_ssh_key: {home}/.ssh/id_ed25519.pub: this is a private key: give the"
        " public one (the .pub file)"
    ]
    assert private.splitlines()[1] not in out + err
