"""Check and extract an untrusted release tarball, refusing anything unsafe.

Self-contained on purpose: standard library only, nothing imported from the rest of the
package, and it runs on Debian 12's Python 3.11.2 (no tarfile extraction filters). It runs
locally before the upload and on the host, where its source is fed to `python3 - extract ...`
as the deploy account. tarfile only parses here: every member is checked while the archive
streams by, before anything is written, and extraction is done by this module with
O_EXCL/O_NOFOLLOW relative to directory descriptors, symlinks last.
"""

import bz2
import dataclasses
import gzip
import lzma
import os
import shutil
import stat
import sys
import tarfile
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO, NoReturn, Self, cast

MIB = 1024 * 1024
CHUNK = 64 * 1024
BLOCK = 512
END_OF_ARCHIVE = bytes(BLOCK)
MAX_HEADER_READ = 64 * 1024  # one pax or GNU long-name header, at most
HEADER_BYTES_PER_MEMBER = 8 * 1024
MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 128
MAX_SYMLINK_HOPS = 40
MAX_OPEN_DIRS = 64
DIR_MODE = 0o750
FILE_MODE = 0o640
EXEC_MODE = 0o750
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
SPECIAL_BIT_NAMES = ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid"), (stat.S_ISVTX, "sticky"))
UNSAFE_CHARACTERS = frozenset(("Cc", "Cf", "Zl", "Zp"))  # controls, format, separators
# Made by the host in every release, after the check: the virtualenv link and the
# state directory. A release may hold neither, and no link of it may pass through
# `.venv`: checked here as an absent directory, on the host it leads to <root>/venvs/.
HOST_MADE = (".venv", ".eep")
HOST_LINK = (".venv",)

FILE, DIRECTORY, SYMLINK, HARDLINK = "file", "directory", "symlink", "hard link"
FILE_KINDS = (FILE, HARDLINK)
ALLOWED_TYPES = {
    tarfile.REGTYPE: FILE,
    tarfile.AREGTYPE: FILE,
    tarfile.DIRTYPE: DIRECTORY,
    tarfile.SYMTYPE: SYMLINK,
    tarfile.LNKTYPE: HARDLINK,
}
REFUSED_TYPES = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


class TarballError(Exception):
    """The archive is refused or could not be handled; str() is a one-line reason."""


class _StreamLimit(TarballError):
    """A limit hit below tarfile, before the member it belongs to is known."""


@dataclass(frozen=True)
class Limits:
    """Upper bounds, in bytes and members, checked while the archive is read."""

    max_compressed: int = 200 * MIB
    max_total: int = 1024 * MIB
    max_members: int = 50_000
    max_file: int = 256 * MIB

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{field.name} must be a positive integer")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class ReleaseInfo:
    """What a valid release holds; root_prefix is the top directory stripped, or ""."""

    root_prefix: str
    files: int
    total_bytes: int
    has_uwsgi_ini: bool


@dataclass(frozen=True)
class _Entry:
    """One member as checked: its kind and path split into components (archive root)."""

    name: str
    kind: str
    parts: tuple[str, ...]
    size: int = 0
    executable: bool = False
    symlink_target: str = ""
    hardlink_target: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Plan:
    """The outcome of the checking pass, which the extraction pass must match exactly."""

    entries: tuple[_Entry, ...]
    prefix: tuple[str, ...]
    info: ReleaseInfo

    def release_path(self, parts: tuple[str, ...]) -> tuple[str, ...]:
        """Path below the release root; () for the root itself."""
        return parts[len(self.prefix) :]


def _show(name: str | tuple[str, ...]) -> str:
    """A name quoted for a one-line message, control characters escaped."""
    text = "/".join(name) if isinstance(name, tuple) else name
    shown = repr(text)
    return shown if len(shown) <= 200 else shown[:180] + "..." + shown[-1]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _refuse(name: str, reason: str) -> NoReturn:
    raise TarballError(f"member {_show(name)}: {reason}")


# --- names -------------------------------------------------------------------------------


def _check_text(label: str, text: str) -> None:
    """Refuse empty, non-UTF-8, control-character, backslash and overlong names."""
    if not text:
        raise TarballError(f"{label} is empty")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise TarballError(f"{label} is not valid UTF-8") from None
    plain = text.isascii() and text.isprintable()
    if not plain and any(unicodedata.category(char) in UNSAFE_CHARACTERS for char in text):
        raise TarballError(f"{label} contains a control character")
    if "\\" in text:
        raise TarballError(f"{label} contains a backslash")
    if size > MAX_NAME_BYTES:
        raise TarballError(f"{label} is longer than {MAX_NAME_BYTES} bytes")


def _split_path(label: str, text: str, *, is_dir: bool = False) -> tuple[str, ...]:
    """Components of a relative archive path; "." components are dropped, ".." refused."""
    _check_text(label, text)
    if text.startswith("/"):
        raise TarballError(f"{label} is an absolute path")
    if is_dir:
        text = text.rstrip("/")
    components = text.split("/")
    if ".." in components:
        raise TarballError(f"{label} contains a '..' component")
    if "" in components:
        raise TarballError(f"{label} has an empty component")
    if any(len(part.encode("utf-8")) > MAX_COMPONENT_BYTES for part in components):
        raise TarballError(f"{label} has a component longer than {MAX_COMPONENT_BYTES} bytes")
    parts = tuple(part for part in components if part != ".")
    if len(parts) > MAX_DEPTH:
        raise TarballError(f"{label} is more than {MAX_DEPTH} directories deep")
    return parts


def _symlink_target(label: str, text: str) -> str:
    """A symlink target that may be resolved later: relative, printable, bounded."""
    _check_text(label, text)
    if text.startswith("/"):
        raise TarballError(f"{label} is an absolute path")
    return text


# --- one member ----------------------------------------------------------------------------


def _kind_of(member: tarfile.TarInfo) -> str:
    """FILE, DIRECTORY, SYMLINK or HARDLINK; any other type is refused."""
    if member.sparse is not None or any(
        key.startswith("GNU.sparse.") for key in member.pax_headers
    ):
        _refuse(member.name, "a sparse file is not allowed")
    kind = ALLOWED_TYPES.get(member.type)
    if kind is None:
        what = REFUSED_TYPES.get(member.type, f"member type {member.type!r}")
        _refuse(member.name, f"{what} is not allowed (only files, directories and links)")
    return kind


def _describe(member: tarfile.TarInfo, limits: Limits) -> _Entry:
    """Check everything about one member that does not depend on the others."""
    label = f"member {_show(member.name)}: name"
    parts = _split_path(label, member.name, is_dir=member.type == tarfile.DIRTYPE)
    kind = _kind_of(member)
    if not parts and kind != DIRECTORY:
        _refuse(member.name, "name refers to the archive root itself")
    if member.mode & SPECIAL_BITS:
        bits = [word for bit, word in SPECIAL_BIT_NAMES if member.mode & bit]
        _refuse(member.name, f"{' and '.join(bits)} bit set (mode {member.mode & 0o7777:05o})")
    if kind == FILE:
        if member.size < 0:
            _refuse(member.name, f"invalid size {member.size}")
        if member.size > limits.max_file:
            _refuse(
                member.name,
                f"{member.size} bytes, over the single-file limit of {limits.max_file} bytes",
            )
        return _Entry(member.name, kind, parts, member.size, bool(member.mode & 0o111))
    if kind == SYMLINK:
        where = f"member {_show(member.name)}: symlink target {_show(member.linkname)}"
        target = _symlink_target(where, member.linkname)
        return _Entry(member.name, kind, parts, symlink_target=target)
    if kind == HARDLINK:
        where = f"member {_show(member.name)}: hard link target {_show(member.linkname)}"
        target_parts = _split_path(where, member.linkname)
        if not target_parts:
            raise TarballError(f"{where} refers to the archive root")
        return _Entry(member.name, kind, parts, hardlink_target=target_parts)
    return _Entry(member.name, kind, parts)


# --- reading the archive -------------------------------------------------------------------


class _RawFile:
    """The archive file, read by offset from its descriptor, no further than the limit."""

    def __init__(self, fd: int, limit: int) -> None:
        self._fd = fd
        self._limit = limit
        self._offset = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit + 1 - self._offset
        data = os.pread(self._fd, max(size, 0), self._offset)
        self._offset += len(data)
        if self._offset > self._limit:
            raise _StreamLimit(f"archive is larger than the limit of {self._limit} bytes")
        return data


class _TarReader:
    """The uncompressed tar stream as tarfile sees it: forward only, headers capped."""

    def __init__(self, source: BinaryIO | _RawFile, header_budget: int) -> None:
        self._source = source
        self._position = 0
        self._pushed_back = b""
        self._recent = b""
        self._header_budget = header_budget
        self.last_header = b""

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise OSError("tar stream only seeks to absolute offsets")
        if offset < self._position:
            back = self._position - offset
            if back > len(self._recent):
                raise _StreamLimit("corrupt archive: it would need seeking backwards")
            self._pushed_back = self._recent[-back:] + self._pushed_back
            self._recent = self._recent[:-back]
            self._position = offset
        while self._position < offset:
            if not self.read(min(CHUNK, offset - self._position)):
                break
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        """Header data for tarfile: one bounded block at a time, counted against the budget."""
        if size is None or size < 0 or size > MAX_HEADER_READ:
            shown = "unbounded" if size is None or size < 0 else f"{size}-byte"
            raise _StreamLimit(f"{shown} tar header is larger than {MAX_HEADER_READ} bytes")
        data = self._take(size)
        self._header_budget -= len(data)
        if self._header_budget < 0:
            raise _StreamLimit("too much tar header data for the member limit")
        self.last_header = data
        return data

    def read_data(self, size: int) -> bytes:
        """Member data for this module, counted by the caller."""
        return self._take(size)

    def _take(self, size: int) -> bytes:
        pieces = [self._pushed_back[:size]]
        self._pushed_back = self._pushed_back[size:]
        missing = size - len(pieces[0])
        while missing > 0:
            piece = self._source.read(missing)
            if not piece:
                break
            pieces.append(piece)
            missing -= len(piece)
        data = b"".join(pieces)
        self._position += len(data)
        self._recent = (self._recent + data)[-BLOCK:]
        return data


def _decompressor(fd: int, raw: _RawFile) -> BinaryIO | _RawFile:
    """Pick the decompression from the magic bytes, not the file name."""
    magic = os.pread(fd, 6, 0)
    if magic.startswith(b"\x1f\x8b"):
        return cast(BinaryIO, gzip.GzipFile(fileobj=cast(BinaryIO, raw), mode="rb"))
    if magic.startswith(b"BZh"):
        return cast(BinaryIO, bz2.BZ2File(cast(BinaryIO, raw)))
    if magic.startswith(b"\xfd7zXZ\x00"):
        return cast(BinaryIO, lzma.LZMAFile(cast(BinaryIO, raw)))
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        raise TarballError("zstd-compressed archives are not supported: use gzip, bzip2 or xz")
    return raw


class _TarStream:
    """One pass over the archive: members in order, and the data of each regular file."""

    def __init__(self, fd: int, limits: Limits) -> None:
        self._fd = fd
        self._limits = limits
        self._source: BinaryIO | _RawFile | None = None
        self._reader: _TarReader | None = None
        self._last: str | None = None
        self._data_bytes = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if isinstance(self._source, gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile):
            self._source.close()

    def _where(self) -> str:
        if self._last is None:
            return "at the start of the archive"
        return f"after member {_show(self._last)}"

    @contextmanager
    def _reading(self, member: str | None = None) -> Iterator[None]:
        """Turn whatever parsing the archive raises into a one-line TarballError."""
        try:
            yield
        except _StreamLimit as error:
            if member is not None:
                _refuse(member, str(error))
            raise TarballError(f"{error} ({self._where()})") from None
        except TarballError:
            raise
        except Exception as error:  # noqa: BLE001 - tarfile on hostile input may raise anything
            detail = _one_line(error)
            if isinstance(error, RecursionError):
                detail = "tar headers nested too deeply"
            if member is not None:
                _refuse(member, f"corrupt or truncated data: {detail}")
            if self._last is None:
                raise TarballError(f"not a valid tar archive: {detail}") from None
            raise TarballError(f"corrupt or truncated archive {self._where()}: {detail}") from None

    def members(self) -> Iterator[tarfile.TarInfo]:
        """Every member in archive order; an archive without its end marker is refused."""
        header_budget = self._limits.max_members * HEADER_BYTES_PER_MEMBER + MIB
        with self._reading():
            raw = _RawFile(self._fd, self._limits.max_compressed)
            self._source = _decompressor(self._fd, raw)
            self._reader = _TarReader(self._source, header_budget)
            tar = tarfile.TarFile(
                fileobj=self._reader,  # type: ignore[arg-type]
                mode="r",
                encoding="utf-8",
                errors="surrogateescape",
            )
        while True:
            with self._reading():
                member = tar.next()
            if member is None:
                break
            self._last = member.name
            yield member
        if self._reader.last_header != END_OF_ARCHIVE:
            raise TarballError(
                f"corrupt or truncated archive {self._where()}: no end-of-archive marker"
            )

    def chunks(self, member: tarfile.TarInfo) -> Iterator[bytes]:
        """The data of the current regular file, counted against max_total as it streams."""
        assert self._reader is not None
        left = member.size
        while left > 0:
            with self._reading(member.name):
                data = self._reader.read_data(min(left, CHUNK))
            if not data:
                _refuse(member.name, "truncated data: the archive ends inside it")
            self._data_bytes += len(data)
            if self._data_bytes > self._limits.max_total:
                _refuse(
                    member.name,
                    f"uncompressed data exceeds the limit of {self._limits.max_total} bytes",
                )
            left -= len(data)
            yield data


# --- the release as a whole ----------------------------------------------------------------


def _wsgi_candidates(spec: str) -> tuple[str, tuple[tuple[str, ...], ...]]:
    """'pkg.mod:app' -> ('pkg.mod', (pkg/mod.py, pkg/mod/__init__.py))."""
    module, _, attribute = spec.partition(":")
    names = module.split(".")
    if not (
        attribute
        and all(name.isidentifier() for name in names)
        and all(name.isidentifier() for name in attribute.split("."))
    ):
        raise TarballError(f"invalid WSGI module {spec!r}: expected package.module:callable")
    return module, ((*names[:-1], names[-1] + ".py"), (*names, "__init__.py"))


def _release_prefix(entries: list[_Entry]) -> tuple[str, ...]:
    """The single top-level directory holding every member, if there is one."""
    tops = {entry.parts[0] for entry in entries if entry.parts}
    if len(tops) != 1:
        return ()
    top = (tops.pop(),)
    if any(entry.parts == top and entry.kind != DIRECTORY for entry in entries):
        return ()
    return top


class _Symlinks:
    """Resolves paths lexically inside the release root, following its symlinks."""

    def __init__(self, links: dict[tuple[str, ...], _Entry]) -> None:
        self._links = links
        self._resolved: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._resolving: list[tuple[str, ...]] = []

    def check_all(self) -> None:
        for path in self._links:
            self.resolve_link(path)

    def resolve_link(self, path: tuple[str, ...]) -> tuple[str, ...]:
        """Where the symlink at `path` finally points, as a path below the root."""
        if path in self._resolved:
            return self._resolved[path]
        entry = self._links[path]
        if path in self._resolving:
            _refuse(entry.name, "symlink loop")
        if len(self._resolving) >= MAX_SYMLINK_HOPS:
            _refuse(entry.name, f"symlink chain longer than {MAX_SYMLINK_HOPS} links")
        self._resolving.append(path)
        target = self.walk(path[:-1], tuple(entry.symlink_target.split("/")), entry)
        self._resolving.pop()
        self._resolved[path] = target
        return target

    def walk(
        self, start: tuple[str, ...], steps: tuple[str, ...], origin: _Entry | None
    ) -> tuple[str, ...]:
        """Follow `steps` from directory `start`; leaving the root is refused."""
        current = list(start)
        for step in steps:
            if step in ("", "."):
                continue
            if step == "..":
                if not current:
                    name, target = (origin.name, origin.symlink_target) if origin else ("?", "?")
                    _refuse(name, f"symlink target {_show(target)} points outside the release")
                current.pop()
                continue
            current.append(step)
            if tuple(current) == HOST_LINK and origin is not None:
                _refuse(
                    origin.name,
                    f"symlink target {_show(origin.symlink_target)} passes through .venv,"
                    " a link to the virtualenv on the host",
                )
            if tuple(current) in self._links:
                current = list(self.resolve_link(tuple(current)))
        return tuple(current)


class _Checker:
    """The checking pass: each member as it streams by, then the release as a whole."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.entries: list[_Entry] = []
        self._kinds: dict[tuple[str, ...], str] = {}
        self._implied_dirs: set[tuple[str, ...]] = set()
        self._total = 0

    def add(self, member: tarfile.TarInfo) -> _Entry:
        if len(self.entries) >= self._limits.max_members:
            _refuse(member.name, f"archive has more than {self._limits.max_members} members")
        entry = _describe(member, self._limits)
        self._total += entry.size
        if self._total > self._limits.max_total:
            _refuse(
                member.name,
                f"total uncompressed size would exceed the limit of {self._limits.max_total} bytes",
            )
        if entry.parts:
            self._place(entry)
        self.entries.append(entry)
        return entry

    def _place(self, entry: _Entry) -> None:
        """Refuse overwrites, file/directory clashes and members below files or symlinks."""
        parts = entry.parts
        new_dirs = []
        ancestor = parts[:-1]
        while ancestor and ancestor not in self._kinds and ancestor not in self._implied_dirs:
            new_dirs.append(ancestor)
            ancestor = ancestor[:-1]
        parent_kind = self._kinds.get(ancestor, DIRECTORY)
        if parent_kind != DIRECTORY:
            _refuse(entry.name, f"{_show(ancestor)} above it is a {parent_kind}, not a directory")
        earlier = self._kinds.get(parts)
        if earlier is not None:
            _refuse(entry.name, f"duplicate: an earlier {earlier} member has the same path")
        if parts in self._implied_dirs and entry.kind != DIRECTORY:
            _refuse(entry.name, f"a {entry.kind} cannot replace the directory of earlier members")
        if entry.kind == HARDLINK and self._kinds.get(entry.hardlink_target) not in FILE_KINDS:
            _refuse(
                entry.name,
                f"hard link target {_show(entry.hardlink_target)} is not an earlier regular file",
            )
        self._kinds[parts] = entry.kind
        self._implied_dirs.update(new_dirs)

    def finish(self, wsgi_module: str) -> _Plan:
        """Checks that need every member: root, .venv, symlink targets, required files."""
        if not any(entry.parts for entry in self.entries):
            raise TarballError("archive holds no files")
        prefix = _release_prefix(self.entries)
        release = {
            entry.parts[len(prefix) :]: entry
            for entry in self.entries
            if len(entry.parts) > len(prefix)
        }
        for path, entry in release.items():
            if path[0] in HOST_MADE:
                _refuse(entry.name, f"{path[0]} is not allowed in a release (the host makes it)")
        symlinks = _Symlinks({path: e for path, e in release.items() if e.kind == SYMLINK})
        symlinks.check_all()

        def is_file(path: tuple[str, ...]) -> bool:
            found = release.get(symlinks.walk((), path, None))
            return found is not None and found.kind in FILE_KINDS

        _require_files(is_file, wsgi_module)
        files = [entry for entry in self.entries if entry.kind == FILE]
        info = ReleaseInfo(
            root_prefix=prefix[0] + "/" if prefix else "",
            files=len(files),
            total_bytes=sum(entry.size for entry in files),
            has_uwsgi_ini=is_file(("uwsgi.ini",)),
        )
        return _Plan(tuple(self.entries), prefix, info)


def _require_files(is_file: Callable[[tuple[str, ...]], bool], wsgi_module: str) -> None:
    """requirements.txt and the WSGI module must be regular files in the release."""
    module, candidates = _wsgi_candidates(wsgi_module)
    missing = []
    if not is_file(("requirements.txt",)):
        missing.append("requirements.txt at its root")
    if not any(is_file(path) for path in candidates):
        expected = " or ".join("/".join(path) for path in candidates)
        missing.append(f"the WSGI module {module!r} ({expected})")
    if missing:
        raise TarballError("release is missing " + " and ".join(missing))


# --- writing the release -------------------------------------------------------------------


def _open_child_dir(parent_fd: int, name: str) -> int:
    """Create (if needed) and open a directory below `parent_fd`, never through a symlink."""
    with suppress(FileExistsError):
        os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=parent_fd)
    try:
        os.fchmod(fd, DIR_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Tree:
    """The destination being filled, reached only through directory descriptors."""

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._open: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()

    def _dir(self, path: tuple[str, ...]) -> int:
        if not path:
            return self._root_fd
        fd = self._open.get(path)
        if fd is None:
            fd = _open_child_dir(self._dir(path[:-1]), path[-1])
            self._open[path] = fd
        return fd

    def _make_room(self) -> None:
        if len(self._open) >= MAX_OPEN_DIRS:
            self.close()

    def directory(self, path: tuple[str, ...]) -> None:
        self._make_room()
        self._dir(path)

    def file(self, path: tuple[str, ...], chunks: Iterator[bytes], mode: int) -> None:
        self._make_room()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path[-1], flags, 0o600, dir_fd=self._dir(path[:-1]))
        with open(fd, "wb") as out:
            out.writelines(chunks)
            os.fchmod(fd, mode)

    def hard_link(self, target: tuple[str, ...], path: tuple[str, ...]) -> None:
        self._make_room()
        os.link(
            target[-1],
            path[-1],
            src_dir_fd=self._dir(target[:-1]),
            dst_dir_fd=self._dir(path[:-1]),
            follow_symlinks=False,
        )

    def symlink(self, path: tuple[str, ...], target: str) -> None:
        self._make_room()
        os.symlink(target, path[-1], dir_fd=self._dir(path[:-1]))


def _write_member(
    tree: _Tree, plan: _Plan, entry: _Entry, stream: _TarStream, member: tarfile.TarInfo
) -> None:
    """Create one directory, file or hard link (symlinks come last, elsewhere)."""
    path = plan.release_path(entry.parts)
    if entry.kind == DIRECTORY:
        tree.directory(path)
    elif entry.kind == FILE:
        tree.file(path, stream.chunks(member), EXEC_MODE if entry.executable else FILE_MODE)
    elif entry.kind == HARDLINK:
        tree.hard_link(plan.release_path(entry.hardlink_target), path)


def _write_release(fd: int, root_fd: int, plan: _Plan, limits: Limits) -> None:
    """The extraction pass: members must match the checked plan one for one."""
    tree = _Tree(root_fd)
    symlinks: list[_Entry] = []
    count = 0
    try:
        with _TarStream(fd, limits) as stream:
            for member in stream.members():
                entry = _describe(member, limits)
                if count >= len(plan.entries) or entry != plan.entries[count]:
                    _refuse(member.name, "archive changed between checking and extraction")
                count += 1
                if not plan.release_path(entry.parts):
                    continue
                if entry.kind == SYMLINK:
                    symlinks.append(entry)
                    continue
                try:
                    _write_member(tree, plan, entry, stream, member)
                except OSError as error:
                    _refuse(member.name, f"cannot extract: {_one_line(error)}")
        if count != len(plan.entries):
            raise TarballError("archive changed between checking and extraction")
        for entry in symlinks:
            try:
                tree.symlink(plan.release_path(entry.parts), entry.symlink_target)
            except OSError as error:
                _refuse(entry.name, f"cannot extract: {_one_line(error)}")
    finally:
        tree.close()


# --- the public interface ------------------------------------------------------------------


@contextmanager
def _open_archive(path: str, limits: Limits) -> Iterator[int]:
    """A descriptor on the archive, which must be a regular file within max_compressed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        raise TarballError(f"cannot open {_show(path)}: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TarballError(f"{_show(path)} is not a regular file")
        if info.st_size > limits.max_compressed:
            raise TarballError(
                f"{_show(path)} is {info.st_size} bytes, over the limit of "
                f"{limits.max_compressed} bytes"
            )
        yield fd
    finally:
        os.close(fd)


def _check(fd: int, wsgi_module: str, limits: Limits) -> _Plan:
    """The checking pass over the whole archive; nothing is written."""
    _wsgi_candidates(wsgi_module)
    checker = _Checker(limits)
    with _TarStream(fd, limits) as stream:
        for member in stream.members():
            if checker.add(member).kind == FILE:
                for _ in stream.chunks(member):
                    pass
    return checker.finish(wsgi_module)


def inspect(path: str, wsgi_module: str, limits: Limits = DEFAULT_LIMITS) -> ReleaseInfo:
    """Check the release tarball at `path` completely; extracts nothing."""
    with _open_archive(path, limits) as fd:
        return _check(fd, wsgi_module, limits).info


def _create_destination(dest: str) -> int:
    """Make the new, empty release directory (0750) and open it without following links."""
    try:
        os.mkdir(dest, DIR_MODE)
    except FileExistsError:
        raise TarballError(f"destination {_show(dest)} already exists") from None
    except OSError as error:
        raise TarballError(f"cannot create {_show(dest)}: {error.strerror or error}") from None
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        os.fchmod(fd, DIR_MODE)
    except OSError as error:
        shutil.rmtree(dest, ignore_errors=True)
        raise TarballError(f"cannot open {_show(dest)}: {error.strerror or error}") from None
    return fd


def _reason(error: BaseException) -> str:
    if isinstance(error, TarballError):
        return str(error)
    return f"{type(error).__name__}: {_one_line(error)}"


def _discard(dest: str, reason: str) -> str:
    """Remove a partial destination; the message says whether that worked."""
    try:
        shutil.rmtree(dest)
    except OSError as error:
        return f"{reason}; could not remove the partial {_show(dest)}: {_one_line(error)}"
    return f"{reason}; removed the partial {_show(dest)}"


def extract(path: str, dest: str, wsgi_module: str, limits: Limits = DEFAULT_LIMITS) -> ReleaseInfo:
    """Check the tarball completely, then extract it into `dest`, which must not exist."""
    if os.path.lexists(dest):
        raise TarballError(f"destination {_show(dest)} already exists")
    with _open_archive(path, limits) as fd:
        plan = _check(fd, wsgi_module, limits)
        root_fd = _create_destination(dest)
        try:
            _write_release(fd, root_fd, plan, limits)
        except BaseException as error:
            os.close(root_fd)
            reason = _discard(dest, _reason(error))
            if isinstance(error, Exception):
                raise TarballError(reason) from None
            raise
        os.close(root_fd)
    return plan.info


# --- command line: what `invoke deploy` runs on the host -------------------------------

USAGE = "tarball.py extract TARBALL DEST WSGI_MODULE"


def main(argv: list[str]) -> int:
    """Check, then extract into a new DEST; 0, 1 when the tarball is refused, 2 on misuse."""
    if len(argv) != 4 or argv[0] != "extract":
        print(f"error: usage: {USAGE}", file=sys.stderr)
        return 2
    _, tarball, dest, wsgi_module = argv
    try:
        info = extract(tarball, dest, wsgi_module)
    except TarballError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - a one-line error, never a traceback
        print(f"error: unexpected {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return 1
    print(f"ok: {info.files} files, {info.total_bytes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
