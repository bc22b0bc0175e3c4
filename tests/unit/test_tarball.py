"""eep/tarball.py: untrusted release tarballs are checked, then extracted, or refused."""

from __future__ import annotations

import importlib.util
import io
import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

SOURCE = (
    Path(__file__).resolve().parents[2] / "{{cookiecutter.project_slug}}" / "eep" / "tarball.py"
)
WSGI = "app.wsgi:application"
DEBIAN_PYTHON = Path("/usr/bin/python3")


def load_module():
    spec = importlib.util.spec_from_file_location("eep_tarball_under_test", SOURCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tb = load_module()

Member = tuple[tarfile.TarInfo, bytes | None]


def reg(name: str, data: bytes = b"x\n", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    return info, data


def node(name: str, kind: bytes, mode: int = 0o755, link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, link, 1_700_000_000
    return info, None


def folder(name: str, mode: int = 0o755) -> Member:
    return node(name, tarfile.DIRTYPE, mode)


def sym(name: str, target: str) -> Member:
    return node(name, tarfile.SYMTYPE, 0o777, target)


def hard(name: str, target: str) -> Member:
    return node(name, tarfile.LNKTYPE, 0o644, target)


def pax(name: str, headers: dict[str, str]) -> Member:
    info, data = reg(name)
    info.pax_headers = headers
    return info, data


BASE = [
    reg("requirements.txt", b"flask\n"),
    folder("app"),
    reg("app/__init__.py", b""),
    reg("app/wsgi.py", b"application = None\n"),
]


def make_tar(
    path: Path, members: list[Member], compression: str = "gz", fmt: int = tarfile.GNU_FORMAT
) -> Path:
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode, format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture
def release(tmp_path):
    """Build a tarball in tmp_path from members (PAX when a member has pax headers)."""

    def build(members: list[Member], compression: str = "gz", name: str = "r.tar.gz") -> Path:
        fmt = tarfile.PAX_FORMAT if any(i.pax_headers for i, _ in members) else tarfile.GNU_FORMAT
        return make_tar(tmp_path / name, members, compression, fmt)

    return build


def refusal(call, *args, **kwargs) -> str:
    with pytest.raises(tb.TarballError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    return message


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _prefixed(info: tarfile.TarInfo, prefix: str) -> tarfile.TarInfo:
    copy = tarfile.TarInfo(prefix + info.name)
    for field in ("size", "mode", "type", "linkname", "mtime"):
        setattr(copy, field, getattr(info, field))
    return copy


# --- good releases ------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""], ids=["gz", "bz2", "xz", "tar"])
def test_flat_release_extracts_with_safe_modes(release, tmp_path, compression):
    members = [
        *BASE,
        reg("run.sh", b"#!/bin/sh\n", mode=0o777),
        folder("static", mode=0o777),
        reg("static/site.css", b"body {}\n", mode=0o666),
        sym("current.py", "app/wsgi.py"),
        hard("app/same.py", "app/wsgi.py"),
        reg("uwsgi.ini", b"[uwsgi]\n"),
    ]
    dest = tmp_path / "out"
    info = tb.extract(str(release(members, compression)), str(dest), WSGI)
    assert info == tb.ReleaseInfo(root_prefix="", files=6, total_bytes=51, has_uwsgi_ini=True)
    assert mode_of(dest) == 0o750
    assert {p: mode_of(dest / p) for p in ("app", "static")} == {"app": 0o750, "static": 0o750}
    assert mode_of(dest / "requirements.txt") == 0o640
    assert mode_of(dest / "static/site.css") == 0o640
    assert mode_of(dest / "run.sh") == 0o750
    assert (dest / "app/wsgi.py").read_bytes() == b"application = None\n"
    assert os.readlink(dest / "current.py") == "app/wsgi.py"
    assert (dest / "app/same.py").stat().st_ino == (dest / "app/wsgi.py").stat().st_ino


def test_single_top_directory_is_stripped(release, tmp_path):
    top = [folder("app-1.2"), *[(_prefixed(i, "app-1.2/"), d) for i, d in BASE]]
    dest = tmp_path / "out"
    info = tb.extract(str(release(top)), str(dest), WSGI)
    assert info.root_prefix == "app-1.2/"
    assert sorted(p.name for p in dest.iterdir()) == ["app", "requirements.txt"]
    assert (dest / "app/wsgi.py").read_bytes() == b"application = None\n"
    assert (mode_of(dest / "app"), mode_of(dest / "app/wsgi.py")) == (0o750, 0o640)
    assert tb.inspect(str(release(top)), WSGI) == info


def test_dot_entries_as_written_by_tar_c_dot(release, tmp_path):
    members = [folder("."), *[(_prefixed(i, "./"), d) for i, d in BASE], reg("./a/./b.txt")]
    info = tb.extract(str(release(members)), str(tmp_path / "out"), WSGI)
    assert info.root_prefix == "" and (tmp_path / "out/a/b.txt").is_file()


def test_module_as_package_and_top_level_module(release):
    package = [reg("requirements.txt"), reg("site/web/__init__.py")]
    assert tb.inspect(str(release(package)), "site.web:app").files == 2
    top_level = [reg("requirements.txt"), reg("wsgi.py")]
    assert tb.inspect(str(release(top_level)), "wsgi:application").has_uwsgi_ini is False


def test_symlinks_may_come_first_and_are_created_last(release, tmp_path):
    members = [sym("media", "static/media"), *BASE, folder("static"), reg("static/media")]
    tb.extract(str(release(members)), str(tmp_path / "out"), WSGI)
    assert (tmp_path / "out/media").is_symlink() and (tmp_path / "out/media").is_file()


def test_symlinks_inside_the_release_are_allowed(release):
    members = [
        *BASE,
        sym("app/up", ".."),
        sym("app/self", "."),
        sym("docs", "app/up/app/self/./"),
        sym("dangling", "not/there"),
    ]
    assert tb.inspect(str(release(members)), WSGI).files == 3


# --- refusals -----------------------------------------------------------------------------

LONG_PATH = "/".join(["d" * 250] * 17)
DEEP_PATH = "d/" * 129 + "f"
REFUSED = [
    pytest.param([reg("/etc/cron.d/x")], "absolute path", "/etc/cron.d/x", id="absolute"),
    pytest.param([reg("../evil.py")], "'..'", "../evil.py", id="dotdot"),
    pytest.param([reg("app/../../evil.py")], "'..'", "app/../../evil.py", id="dotdot-inside"),
    pytest.param([reg("")], "is empty", "", id="empty-name"),
    pytest.param([reg(".")], "archive root", ".", id="dot-as-file"),
    pytest.param([reg("app//x.py")], "empty component", "app//x.py", id="empty-component"),
    pytest.param([reg("x\n.py")], "control character", "x\n.py", id="newline"),
    pytest.param([reg("x\t.py")], "control character", "x\t.py", id="tab"),
    pytest.param([pax("ok.py", {"path": "x\0.py"})], "control", "x\0.py", id="nul"),
    pytest.param([reg("x\x7f.py")], "control character", "x\x7f.py", id="del"),
    pytest.param([reg("x\x85.py")], "control character", "x\x85.py", id="nel"),
    pytest.param([reg("x\u2028.py")], "control character", "x\u2028.py", id="line-sep"),
    pytest.param([reg("x\u2029.py")], "control character", "x\u2029.py", id="para-sep"),
    pytest.param([reg("x\u202eyp.txt")], "control character", "x\u202eyp.txt", id="bidi"),
    pytest.param([reg("app\\x.py")], "backslash", "app\\x.py", id="backslash"),
    pytest.param([reg("bad\udcff.py")], "not valid UTF-8", "bad\udcff.py", id="not-utf8"),
    pytest.param([reg("c" * 256)], "longer than 255", "c" * 256, id="long-component"),
    pytest.param([reg(LONG_PATH)], "longer than 4096", LONG_PATH, id="long-path"),
    pytest.param([reg(DEEP_PATH)], "128 directories deep", DEEP_PATH, id="too-deep"),
    pytest.param([sym("etc", "/etc")], "absolute path", "etc", id="symlink-absolute"),
    pytest.param([sym("app/x", "../../x")], "outside", "app/x", id="symlink-dotdot"),
    pytest.param([sym("up", "..")], "outside", "up", id="symlink-parent"),
    pytest.param([sym("a", "app/../..")], "outside", "a", id="symlink-lexical"),
    pytest.param([sym("a", "b/../x"), sym("b", ".")], "outside", "a", id="symlink-via-later-link"),
    pytest.param([sym("b", "app/.."), sym("a", "b/../x")], "outside", "a", id="symlink-via-link"),
    pytest.param([sym("x", "y"), sym("y", "x")], "loop", "x", id="symlink-loop"),
    pytest.param([sym("e", "")], "is empty", "e", id="symlink-empty-target"),
    pytest.param([sym("e", "a\nb")], "control character", "e", id="symlink-target-newline"),
    pytest.param([hard("pw", "/etc/passwd")], "absolute path", "pw", id="hardlink-absolute"),
    pytest.param([hard("pw", "../etc/passwd")], "'..'", "pw", id="hardlink-dotdot"),
    pytest.param([hard("pw", "nothere")], "earlier regular file", "pw", id="hardlink-missing"),
    pytest.param([hard("pw", "l.txt"), reg("l.txt")], "earlier regular", "pw", id="hardlink-later"),
    pytest.param([hard("pw", "app")], "earlier regular file", "pw", id="hardlink-to-dir"),
    pytest.param(
        [sym("s", "app"), hard("pw", "s")], "earlier regular", "pw", id="hardlink-to-link"
    ),
    pytest.param([node("dev/null", tarfile.CHRTYPE)], "character device", "dev/null", id="chardev"),
    pytest.param([node("sda", tarfile.BLKTYPE)], "block device", "sda", id="blockdev"),
    pytest.param([node("pipe", tarfile.FIFOTYPE)], "FIFO", "pipe", id="fifo"),
    pytest.param([node("c.dat", tarfile.CONTTYPE)], "contiguous", "c.dat", id="contiguous"),
    pytest.param([node("s.dat", tarfile.GNUTYPE_SPARSE)], "sparse", "s.dat", id="gnu-sparse"),
    pytest.param(
        [pax("p.dat", {"GNU.sparse.map": "0,1", "GNU.sparse.realsize": "1"})],
        "sparse",
        "p.dat",
        id="pax-sparse",
    ),
    pytest.param([node("vol", b"V")], "type b'V'", "vol", id="gnu-volume-header"),
    pytest.param([node("old", b"N")], "type b'N'", "old", id="gnu-old-longname"),
    pytest.param([reg("su", mode=0o4755)], "setuid", "su", id="setuid"),
    pytest.param([reg("sg", mode=0o2755)], "setgid", "sg", id="setgid"),
    pytest.param([folder("tmp", mode=0o1777)], "sticky", "tmp", id="sticky-dir"),
    pytest.param([reg("requirements.txt")], "duplicate", "requirements.txt", id="duplicate-file"),
    pytest.param([folder("app")], "duplicate", "app", id="duplicate-dir"),
    pytest.param([reg("app")], "duplicate", "app", id="file-over-dir"),
    pytest.param([folder("requirements.txt")], "duplicate", "requirements.txt", id="dir-over-file"),
    pytest.param(
        [reg("p/a.py"), reg("p")], "directory of earlier", "p", id="file-over-implied-dir"
    ),
    pytest.param(
        [reg("requirements.txt/x")], "not a directory", "requirements.txt/x", id="under-file"
    ),
    pytest.param([sym("l", "app"), reg("l/evil.py")], "is a symlink", "l/evil.py", id="under-link"),
    pytest.param([reg(".venv/bin/python")], ".venv", ".venv/bin/python", id="venv"),
    pytest.param([folder(".venv")], ".venv", ".venv", id="venv-dir"),
    pytest.param([sym(".venv", "app")], ".venv", ".venv", id="venv-link"),
    pytest.param([reg(".eep/ready")], ".eep", ".eep/ready", id="state-file"),
    pytest.param([sym(".eep", "app")], ".eep", ".eep", id="state-link"),
    # On the host .venv is a link to ../../venvs/<hash>: through it, a link leaves the release.
    pytest.param([sym("static", ".venv/..")], "through .venv", "static", id="via-venv"),
    pytest.param([sym("env", ".venv")], "through .venv", "env", id="to-venv"),
    pytest.param([sym("s", "app/../.venv/bin")], "through .venv", "s", id="via-venv-lexical"),
    pytest.param(
        [sym("b", "app/.."), sym("a", "b/.venv/..")], "through .venv", "a", id="via-link-venv"
    ),
]


@pytest.mark.parametrize(("extra", "problem", "offender"), REFUSED)
def test_refused_member_is_named_and_nothing_is_created(
    release, tmp_path, extra, problem, offender
):
    tarball = str(release([*BASE, *extra]))
    dest = tmp_path / "out"
    message = refusal(tb.extract, tarball, str(dest), WSGI)
    assert problem in message
    assert repr(offender)[:60] in message
    assert not dest.exists()
    assert refusal(tb.inspect, tarball, WSGI) == message


def test_symlink_may_not_climb_out_of_a_stripped_top_directory(release, tmp_path):
    members = [
        folder("app-1.2"),
        *[(_prefixed(i, "app-1.2/"), d) for i, d in BASE],
        sym("app-1.2/x", "../app-1.2/app"),
    ]
    message = refusal(tb.extract, str(release(members)), str(tmp_path / "out"), WSGI)
    assert "'app-1.2/x'" in message and "outside" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("members", "wsgi", "problem"),
    [
        pytest.param(BASE[1:], WSGI, "requirements.txt at its root", id="no-requirements"),
        pytest.param([folder("requirements.txt"), *BASE[1:]], WSGI, "requirements", id="req-dir"),
        pytest.param(
            BASE, "app.web:application", "app/web.py or app/web/__init__.py", id="no-module"
        ),
        pytest.param(BASE, "wsgi:app", "'wsgi' (wsgi.py or wsgi/__init__.py)", id="no-top-module"),
        pytest.param([*BASE, folder("docs")], "app.wsgi", "invalid WSGI module", id="no-callable"),
        pytest.param(BASE, "app/wsgi:app", "invalid WSGI module", id="bad-spec"),
        pytest.param([folder(".")], WSGI, "no files", id="empty"),
    ],
)
def test_release_must_hold_requirements_and_wsgi_module(release, tmp_path, members, wsgi, problem):
    message = refusal(tb.extract, str(release(members)), str(tmp_path / "out"), wsgi)
    assert problem in message
    assert not (tmp_path / "out").exists()


# --- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "extra", "problem", "offender"),
    [
        pytest.param(
            {"max_members": 5}, [reg("5"), reg("6")], "more than 5 members", "6", id="count"
        ),
        pytest.param(
            {"max_file": 100}, [reg("big", b"b" * 101)], "single-file limit", "big", id="file"
        ),
        pytest.param(
            {"max_total": 1000},
            [reg("a", b"a" * 600), reg("b", b"b" * 600)],
            "1000",
            "b",
            id="total",
        ),
    ],
)
def test_limits_are_enforced_and_named(release, tmp_path, limits, extra, problem, offender):
    message = refusal(
        tb.extract, str(release([*BASE, *extra])), str(tmp_path / "out"), WSGI, tb.Limits(**limits)
    )
    assert problem in message and repr(offender) in message
    assert not (tmp_path / "out").exists()


def test_compressed_size_limit(release, tmp_path):
    tarball = str(release([*BASE, reg("noise", os.urandom(5000))]))
    limits = tb.Limits(max_compressed=4000)
    message = refusal(tb.extract, tarball, str(tmp_path / "out"), WSGI, limits)
    assert f"{tarball!r} is " in message and "over the limit of 4000 bytes" in message
    assert not (tmp_path / "out").exists()


def test_gzip_bomb_is_refused_while_streaming(release, tmp_path):
    tarball = release([*BASE, reg("bomb.bin", bytes(20 * 1024 * 1024))])
    assert tarball.stat().st_size < 100_000
    started = time.monotonic()
    message = refusal(
        tb.extract, str(tarball), str(tmp_path / "out"), WSGI, tb.Limits(max_total=2**20)
    )
    assert time.monotonic() - started < 1.0
    assert "'bomb.bin'" in message and "limit of 1048576 bytes" in message
    assert not (tmp_path / "out").exists()


def test_data_is_counted_as_it_streams_not_taken_from_headers(release):
    tarball = release([*BASE, reg("a", b"a" * 3000)])
    limits = tb.Limits(max_total=2000)
    with (
        tb._open_archive(str(tarball), limits) as fd,
        tb._TarStream(fd, limits) as stream,
        pytest.raises(tb.TarballError, match="'a': uncompressed data exceeds"),
    ):
        for member in stream.members():
            for _ in stream.chunks(member):
                pass


def test_huge_pax_header_is_refused_without_reading_it(release):
    tarball = release([pax("x", {"comment": "z" * 10_000_000}), *BASE])
    assert "tar header is larger than 65536 bytes" in refusal(tb.inspect, str(tarball), WSGI)


def _raw_header(kind: bytes, data: bytes) -> bytes:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = kind, len(data)
    padding = -len(data) % tarfile.BLOCKSIZE
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(padding)


def _pax_record(key: str, value: str) -> bytes:
    """'<length> key=value\n', the length counting its own digits."""
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _tar_with_headers(tmp_path: Path, headers: bytes) -> Path:
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in BASE:
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "headers.tar"
    path.write_bytes(headers + body.getvalue())
    return path


def test_flood_of_header_data_is_refused(tmp_path):
    record = _pax_record("comment", "c" * 60_000)
    tarball = _tar_with_headers(tmp_path, _raw_header(tarfile.XGLTYPE, record) * 20)
    limits = tb.Limits(max_members=2)
    assert "too much tar header data" in refusal(tb.inspect, str(tarball), WSGI, limits)


def test_deeply_chained_headers_give_a_clean_error(tmp_path):
    record = _pax_record("comment", "c")
    tarball = _tar_with_headers(tmp_path, _raw_header(tarfile.XHDTYPE, record) * 1500)
    assert "tar headers nested too deeply" in refusal(tb.inspect, str(tarball), WSGI)


# --- broken input and destinations --------------------------------------------------------


def test_truncated_gzip(release):
    tarball = release([*BASE, reg("noise", os.urandom(30_000))])
    tarball.write_bytes(tarball.read_bytes()[:20_000])
    assert "truncated" in refusal(tb.inspect, str(tarball), WSGI)


# BASE as plain tar: headers at 0, 1024, 1536, 2048; "noise" header at 3072, data from 3584.
@pytest.mark.parametrize(
    ("cut", "problem"),
    [
        pytest.param(3584 + 4000, "'noise': truncated data", id="inside-data"),
        pytest.param(3584 + 8192, "no end-of-archive marker", id="at-member-boundary"),
        pytest.param(3072 + 100, "no end-of-archive marker", id="inside-header"),
    ],
)
def test_truncated_plain_tar(release, cut, problem):
    tarball = release([*BASE, reg("noise", os.urandom(8000))], compression="", name="r.tar")
    tarball.write_bytes(tarball.read_bytes()[:cut])
    assert problem in refusal(tb.inspect, str(tarball), WSGI)


def test_garbage_header_in_the_middle(release):
    tarball = release(BASE, compression="", name="r.tar")
    data = bytearray(tarball.read_bytes())
    data[2048:2560] = b"\x01" * 512
    tarball.write_bytes(bytes(data))
    message = refusal(tb.inspect, str(tarball), WSGI)
    assert "corrupt or truncated archive after member" in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(b"#!/bin/sh\necho not a tarball\n" * 40, "not a valid tar archive", id="text"),
        pytest.param(b"", "not a valid tar archive: empty file", id="empty"),
        pytest.param(b"\x1f\x8bgarbage" * 10, "not a valid tar archive", id="bad-gzip"),
        pytest.param(b"\x28\xb5\x2f\xfd" + bytes(600), "zstd", id="zstd"),
    ],
)
def test_not_a_tar_file(tmp_path, content, problem):
    path = tmp_path / "release.tar.gz"
    path.write_bytes(content)
    assert problem in refusal(tb.inspect, str(path), WSGI)


def test_archive_must_be_a_regular_file(tmp_path):
    assert "not a regular file" in refusal(tb.inspect, str(tmp_path), WSGI)
    assert "cannot open" in refusal(tb.inspect, str(tmp_path / "missing.tgz"), WSGI)


def test_existing_destination_is_refused_and_left_alone(release, tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    assert "already exists" in refusal(tb.extract, str(release(BASE)), str(dest), WSGI)
    assert (dest / "keep").read_text() == "mine"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    assert "already exists" in refusal(tb.extract, str(release(BASE)), str(link), WSGI)


def test_failure_midway_removes_the_partial_destination(release, tmp_path, monkeypatch):
    written = []
    original = tb._Tree.file

    def fail_on_second_file(self, path, chunks, mode):
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        original(self, path, chunks, mode)

    monkeypatch.setattr(tb._Tree, "file", fail_on_second_file)
    dest = tmp_path / "out"
    message = refusal(tb.extract, str(release(BASE)), str(dest), WSGI)
    assert "'app/__init__.py': cannot extract" in message and "No space left" in message
    assert "removed the partial" in message
    assert written and not dest.exists()


def test_archive_changed_after_checking_is_refused(release, tmp_path, monkeypatch):
    tarball = release(BASE)
    other = make_tar(tmp_path / "other.tgz", [*BASE, reg("added.py")])
    original = tb._check

    def check_then_swap(fd, wsgi, limits):
        plan = original(fd, wsgi, limits)
        with open(tarball, "r+b") as same_inode:
            same_inode.write(other.read_bytes())
            same_inode.truncate()
        return plan

    monkeypatch.setattr(tb, "_check", check_then_swap)
    message = refusal(tb.extract, str(tarball), str(tmp_path / "out"), WSGI)
    assert "changed between checking and extraction" in message
    assert not (tmp_path / "out").exists()


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_total"):
        tb.Limits(max_total=0)


def test_source_has_no_jinja_markers():
    text = SOURCE.read_text()
    for marker in ("{" + "{", "{" + "%", "{" + "#"):
        assert marker not in text


# --- command line, fed on stdin as on the host ---------------------------------------------

PYTHONS = [pytest.param(sys.executable, id="this-python")]
if DEBIAN_PYTHON.exists():
    PYTHONS.append(pytest.param(str(DEBIAN_PYTHON), id="usr-bin-python3"))


def run_cli(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-", *args],
        input=SOURCE.read_text(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("python", PYTHONS)
def test_cli_extracts_what_it_checked(release, tmp_path, python):
    tarball = str(release([*BASE, reg("uwsgi.ini", b"[uwsgi]\n")]))
    extracted = run_cli(python, "extract", tarball, str(tmp_path / "out"), WSGI)
    assert (extracted.returncode, extracted.stdout) == (0, "ok: 4 files, 33 bytes\n")
    assert (tmp_path / "out/app/wsgi.py").is_file()


@pytest.mark.parametrize("python", PYTHONS)
def test_cli_refusal_is_one_line_with_status_1(release, tmp_path, python):
    tarball = str(release([*BASE, hard("pw", "/etc/passwd")]))
    result = run_cli(python, "extract", tarball, str(tmp_path / "out"), WSGI)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "error: member 'pw': hard link target '/etc/passwd' is an absolute path\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="nothing"),
        pytest.param(["extract", "x.tgz", "out"], id="missing-module"),
        pytest.param(["unpack", "x", "y", WSGI], id="unknown-command"),
        pytest.param(["check", "x.tgz", WSGI], id="check-is-not-a-command"),
    ],
)
def test_cli_usage_error_is_one_line_with_status_2(args):
    result = run_cli(sys.executable, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
