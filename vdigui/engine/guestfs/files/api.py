"""The common shape of every guest filesystem's files: entries, extents and the namespace.

Each filesystem reader (ext, FAT, later NTFS) only knows how to find a directory's children,
a file's extents and a symlink's target; everything users do with paths -- resolve them, list,
stat, read byte ranges, walk, find by glob -- lives once in :class:`BaseNamespace`, so the CLI
and the GUI never care which filesystem they look at. See docs/guest-files.md.

Guest metadata is input: names are made safe before anyone sees them (:func:`safe_name`), every
loop is bounded, and anything impossible raises :class:`~vdigui.engine.errors.GuestFsError`
with one plain sentence.
"""

from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from vdigui.engine.errors import GuestFsError, GuestPathError, VdiError

from ..blockmap import Extents
from ..model import DiskReader

#: Symbolic links followed while resolving one path (Linux uses 40 too).
MAX_LINK_HOPS = 40
#: Directory levels a walk descends; deeper trees are reported, not followed.
MAX_DEPTH = 256
#: Bytes a single read call may return (streaming readers use :meth:`BaseNamespace.iter_read`).
MAX_READ = 1 << 30
#: Directory listings kept by a namespace.
_CACHED_DIRS = 64


class EntryKind(Enum):
    """What a directory entry is."""

    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"  # devices, FIFOs, sockets: listed, never read


class ExtentKind(Enum):
    """What a stretch of a file is backed by."""

    DATA = "data"  # bytes on the volume
    SPARSE = "sparse"  # a hole: reads as zeros, nothing stored
    UNWRITTEN = "unwritten"  # allocated but never written (ext4 uninit): reads as zeros
    INLINE = "inline"  # stored inside the metadata record (ext4 inline data, NTFS resident)


@dataclass(frozen=True, slots=True)
class Entry:
    """One file, directory, link or other object of a guest filesystem.

    Attributes:
        name: the name to show and to create on the host; always a single safe path
            component (see :func:`safe_name`); "/" for the root.
        path: the absolute path inside the volume built from safe names ("/etc/hostname").
        kind: file, directory, symlink or other.
        size: bytes of content (the target's length for a symlink).
        mtime, atime, ctime: seconds since the Unix epoch (None when the filesystem has none).
            FAT stores local time without a zone; it is reported as if it were UTC.
        mode: POSIX type and permission bits (ext), or None.
        attributes: DOS attribute bits (FAT), or None.
        uid, gid: owner (ext), or None.
        id: the filesystem's own number for the object (ext inode; FAT: the volume offset of
            its directory entry, 0 for the root); equal ids mean the same object (hard links).
        nlink: hard links to the object (1 where the filesystem has no such count).
        btime: when the object was created (ext4 crtime, FAT creation time), or None.
        target: a symlink's target as stored (made printable), else None.
        raw_name: the name exactly as stored on disk.
        name_note: why ``name`` differs from the stored name, or "" when it does not.
    """

    name: str
    path: str
    kind: EntryKind
    size: int
    mtime: float | None
    atime: float | None
    ctime: float | None
    mode: int | None
    attributes: int | None
    uid: int | None
    gid: int | None
    id: int
    nlink: int = 1
    btime: float | None = None
    target: str | None = None
    raw_name: bytes = b""
    name_note: str = ""

    @property
    def is_dir(self) -> bool:
        """True for directories."""
        return self.kind is EntryKind.DIRECTORY


class _UnfrozenEntry:
    """An :class:`Entry` under construction: the same slots, without the frozen check.

    A frozen dataclass sets each field through ``object.__setattr__``; for Entry's 17 fields
    that is about 1.5 us per entry, 40 % of listing 100,000 files. This class fills the same
    slots with plain assignments, then becomes an Entry (``__class__`` may be reassigned
    between classes with identical slots), frozen from then on like any other.
    """

    __slots__ = Entry.__slots__


def new_entry(
    name: str,
    path: str,
    kind: EntryKind,
    size: int,
    mtime: float | None,
    atime: float | None,
    ctime: float | None,
    mode: int | None,
    attributes: int | None,
    uid: int | None,
    gid: int | None,
    id: int,
    nlink: int,
    btime: float | None,
    target: str | None,
    raw_name: bytes,
    name_note: str,
) -> Entry:
    """``Entry(...)`` with every field given in order, at a third of the cost (for readers
    that list many entries; see :class:`_UnfrozenEntry`)."""
    entry: Any = _UnfrozenEntry()  # its slots are Entry's, which mypy cannot see
    entry.name = name
    entry.path = path
    entry.kind = kind
    entry.size = size
    entry.mtime = mtime
    entry.atime = atime
    entry.ctime = ctime
    entry.mode = mode
    entry.attributes = attributes
    entry.uid = uid
    entry.gid = gid
    entry.id = id
    entry.nlink = nlink
    entry.btime = btime
    entry.target = target
    entry.raw_name = raw_name
    entry.name_note = name_note
    entry.__class__ = Entry
    return entry  # type: ignore[no-any-return]


if new_entry.__code__.co_varnames[:17] != Entry.__slots__:
    raise TypeError("new_entry must take Entry's fields, in Entry's order.")


@dataclass(frozen=True, slots=True)
class FileExtent:
    """One stretch of a file and where it lives.

    Attributes:
        file_offset: where the stretch starts in the file (bytes).
        length: bytes of the file it covers.
        kind: data, sparse, unwritten or inline.
        volume_offset: where its bytes start in the volume (None for sparse stretches).
        disk_offset: where its bytes start on the guest disk (None for sparse stretches).
    """

    file_offset: int
    length: int
    kind: ExtentKind
    volume_offset: int | None
    disk_offset: int | None


@runtime_checkable
class Namespace(Protocol):
    """The files of one guest filesystem, read-only. Paths are "/"-separated, from its root."""

    kind: str
    label: str
    volume: str

    def stat(self, path: str) -> Entry:
        """The entry ``path`` names (a final symlink is not followed)."""
        ...

    def listdir(self, path: str) -> list[Entry]:
        """The entries of the directory ``path`` ("." and ".." left out)."""
        ...

    def read(self, what: str | Entry, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[offset, offset+length)`` of a file, clipped to its size."""
        ...

    def iter_read(self, what: str | Entry, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The whole content of a file, in pieces of at most ``chunk`` bytes."""
        ...

    def walk(
        self, path: str = "/", onerror: Callable[[str, VdiError], None] | None = None
    ) -> Iterator[tuple[str, list[Entry]]]:
        """Every directory under ``path`` (itself first) with its entries, depth first."""
        ...

    def find(self, pattern: str, path: str = "/") -> Iterator[Entry]:
        """Entries under ``path`` whose name (or, with a "/" in ``pattern``, path) matches."""
        ...

    def extents(self, what: str | Entry) -> list[FileExtent]:
        """The file's stretches in file order, covering ``[0, size)`` exactly."""
        ...


# -- names --------------------------------------------------------------------------------
_UNSAFE = re.compile("[\x00-\x1f\x7f/\\\\\udc80-\udcff]")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code - 0xDC00 if code >= 0xDC00 else code:02x}"


def decode_name(raw: bytes, encoding: str = "utf-8") -> str:
    """Stored bytes as text; bytes that are not valid text survive as surrogate escapes."""
    return raw.decode(encoding, "surrogateescape")


def printable(text: str) -> str:
    """``text`` with control characters and undecodable bytes as ``\\xNN`` (for output)."""
    return re.sub("[\x00-\x1f\x7f\udc80-\udcff]", lambda m: _escape(m.group()), text)


def safe_name(raw: str) -> tuple[str, str]:
    """Make a stored name safe to show and to create as one host path component.

    Returns ``(name, note)``. Control characters, "/", "\\", NUL and bytes that are not valid
    text become ``\\xNN`` escapes (the backslash too, so an escaped form cannot be mistaken
    for a real name); ".", ".." and the empty name get an escape too. ``note`` says what was
    changed, or is "".
    """
    if raw.isprintable() and "/" not in raw and "\\" not in raw and raw not in ("", ".", ".."):
        return raw, ""  # most names (printable excludes controls and undecodable bytes)
    name = _UNSAFE.sub(lambda m: _escape(m.group()), raw)
    notes = []
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in raw):
        notes.append("the stored name is not valid text")
    shown = sorted({repr(c) for c in raw if _UNSAFE.match(c) and ord(c) < 0xDC00})
    if shown:
        notes.append(f"the stored name holds {', '.join(shown)}")
    if name in ("", ".", ".."):
        notes.append(f"the stored name is {name or 'empty'!r}")
        name = f"\\x2e{name[1:]}" if name else "\\x00"
    return name, "; ".join(notes)


def stored_name(raw: bytes) -> tuple[str, str]:
    """``safe_name(decode_name(raw))`` (UTF-8), without the work for names that are plain
    printable ASCII without "/" or "\\" (most names; a listing of 100,000 files calls this
    100,000 times)."""
    if raw.isascii():
        name = raw.decode("ascii")
        if (
            name.isprintable()
            and "/" not in name
            and "\\" not in name
            and name not in ("", ".", "..")
        ):
            return name, ""
    return safe_name(decode_name(raw))


def split_path(path: str) -> list[str]:
    """Path components, with "." dropped; ".." is kept for the resolver."""
    return [p for p in path.split("/") if p not in ("", ".")]


def join(parent: str, name: str) -> str:
    """``parent`` + "/" + ``name`` without doubling the slash at the root."""
    return f"{parent.rstrip('/')}/{name}"


# -- the shared implementation -------------------------------------------------------------
@dataclass(slots=True)
class VolumeView:
    """A volume's bytes in volume-local coordinates, plus where each local byte is on the disk."""

    reader: DiskReader
    extents: Extents
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = self.extents.size

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset``; outside the volume is a GuestFsError."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise GuestFsError(
                f"The filesystem points to bytes {offset}..{offset + length} outside its "
                f"{self.size}-byte volume."
            )
        if length == 0:
            return b""
        parts = []
        end = offset + length
        for p_local, p_disk, p_len in self.extents.pieces:
            lo, hi = max(offset, p_local), min(end, p_local + p_len)
            if lo < hi:
                parts.append(self.reader.read(p_disk + lo - p_local, hi - lo))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def disk_pieces(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """``(local offset, disk offset, length)`` pieces of a local range (LVs may split)."""
        out = []
        end = offset + length
        for p_local, p_disk, p_len in self.extents.pieces:
            lo, hi = max(offset, p_local), min(end, p_local + p_len)
            if lo < hi:
                out.append((lo, p_disk + lo - p_local, hi - lo))
        return out


class BaseNamespace:
    """Paths, reading, walking and finding, over three primitives each filesystem provides.

    Subclasses implement :meth:`root`, :meth:`children`, :meth:`_raw_extents` and (for inline
    content) :meth:`_inline`; symlink targets are filled in by the subclass on each entry.
    """

    kind = "unknown"
    label = ""

    def __init__(self, view: VolumeView, volume: str) -> None:
        self.view = view
        self.volume = volume
        #: Plain sentences about the volume for the user (e.g. "not cleanly unmounted").
        self.notes: list[str] = []
        self._cache: OrderedDict[tuple[int, str], list[Entry]] = OrderedDict()
        #: The last file's extents: copying a file asks for them, then reads through them.
        self._last_extents: tuple[Entry, list[FileExtent]] | None = None

    # -- to implement -----------------------------------------------------------------
    def root(self) -> Entry:
        """The root directory."""
        raise NotImplementedError

    def _list(self, directory: Entry) -> list[Entry]:
        """The entries of ``directory`` (without "." and ".."), names already safe."""
        raise NotImplementedError

    def children(self, directory: Entry) -> list[Entry]:
        """The entries of ``directory``; the few listed most recently are kept (path lookups
        list the same directories again and again)."""
        key = (directory.id, directory.path)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._list(directory)
            self._cache[key] = cached
            if len(self._cache) > _CACHED_DIRS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return list(cached)

    def _raw_extents(self, entry: Entry) -> list[FileExtent]:
        """The stretches of a file's content, in file order, covering ``[0, size)``."""
        raise NotImplementedError

    def layout_key(self, entry: Entry) -> Hashable | None:
        """A value that alone decides ``extents(entry)``, or None when there is no cheap one.

        Entries with equal keys -- in this namespace or in another over the same disk (the
        other state of a diff) -- have equal extents, so a comparison lists them only once.
        """
        return None

    def _inline(self, entry: Entry) -> bytes:
        """Content stored inside the metadata record (only asked for INLINE extents)."""
        raise GuestFsError(f"{entry.path} has no inline content.")

    # -- paths ------------------------------------------------------------------------
    def resolve(self, path: str, *, follow: bool = False) -> Entry:
        """The entry ``path`` names; symlinks in the middle are followed inside the volume.

        ``follow`` also follows a final symlink. Absolute link targets are taken from this
        volume's root (the guest may mount it elsewhere; that cannot be known here).
        """
        hops = 0
        stack: list[Entry] = [self.root()]
        todo = split_path(path)
        while todo:
            part = todo.pop(0)
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            current = stack[-1]
            if not current.is_dir:
                raise GuestPathError(f"{current.path} in {self.volume} is not a directory.")
            found = self._lookup(current, part)
            if found is None:
                raise GuestPathError(f"{join(current.path, part)} does not exist in {self.volume}.")
            if found.kind is EntryKind.SYMLINK and (todo or follow):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise GuestPathError(
                        f"{found.path} in {self.volume} leads through more "
                        f"than {MAX_LINK_HOPS} symbolic links."
                    )
                target = found.target or ""
                if target.startswith("/"):
                    stack = stack[:1]
                todo = split_path(target) + todo
                continue
            stack.append(found)
        return stack[-1]

    def _lookup(self, directory: Entry, name: str) -> Entry | None:
        for child in self.children(directory):
            if child.name == name:
                return child
        return None

    def _entry(self, what: str | Entry, *, follow: bool = True) -> Entry:
        return what if isinstance(what, Entry) else self.resolve(what, follow=follow)

    # -- the Namespace protocol ------------------------------------------------------
    def stat(self, path: str) -> Entry:
        """The entry ``path`` names (a final symlink is not followed)."""
        return self.resolve(path)

    def listdir(self, path: str) -> list[Entry]:
        """The entries of the directory ``path`` (a final symlink to a directory is followed)."""
        entry = self.resolve(path, follow=True)
        if not entry.is_dir:
            raise GuestPathError(f"{entry.path} in {self.volume} is not a directory.")
        return self.children(entry)

    def extents(self, what: str | Entry) -> list[FileExtent]:
        """The file's stretches in file order, covering ``[0, size)`` exactly."""
        entry = self._entry(what)
        if entry.kind is EntryKind.DIRECTORY:
            raise GuestPathError(f"{entry.path} in {self.volume} is a directory.")
        if entry.kind is not EntryKind.FILE:
            return []
        return list(self._extents_of(entry))

    def _extents_of(self, entry: Entry) -> list[FileExtent]:
        """``_raw_extents``, kept for the last file asked (one tuple: safe across threads)."""
        last = self._last_extents
        if last is not None and last[0] is entry:
            return last[1]
        runs = self._raw_extents(entry)
        self._last_extents = (entry, runs)
        return runs

    def read(self, what: str | Entry, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[offset, offset+length)`` of a file, clipped to its size."""
        entry = self._entry(what)
        end = entry.size if length is None else min(entry.size, offset + max(0, length))
        if offset < 0:
            raise GuestPathError(f"Offset {offset} in {entry.path} is negative.")
        if end - offset > MAX_READ:
            raise GuestPathError(
                f"Reading {end - offset} bytes of {entry.path} at once is too "
                "much; read it in pieces."
            )
        return b"".join(self._pieces(entry, offset, end, 1 << 20))

    def iter_read(self, what: str | Entry, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The whole content of a file, in pieces of at most ``chunk`` bytes."""
        entry = self._entry(what)
        return self._pieces(entry, 0, entry.size, chunk)

    def stored_pieces(self, entry: Entry, chunk: int = 4 << 20) -> Iterator[tuple[int, bytes]]:
        """``(file offset, bytes)`` of a file's stored content only: holes and unwritten
        extents are skipped, so a copy made from these stays sparse."""
        for ext in list(self.extents(entry)):
            if ext.kind not in (ExtentKind.DATA, ExtentKind.INLINE):
                continue
            pos = ext.file_offset
            for piece in self._pieces(entry, pos, pos + ext.length, chunk):
                yield pos, piece
                pos += len(piece)

    def _pieces(self, entry: Entry, start: int, end: int, chunk: int) -> Iterator[bytes]:
        if entry.kind is EntryKind.DIRECTORY:
            raise GuestPathError(f"{entry.path} in {self.volume} is a directory.")
        if entry.kind is EntryKind.SYMLINK:
            data = (entry.target or "").encode("utf-8", "surrogateescape")
            yield data[start:end]
            return
        if entry.kind is not EntryKind.FILE:
            raise GuestPathError(
                f"{entry.path} in {self.volume} is a device, FIFO or socket, "
                "which has no content to read."
            )
        if start >= end:
            return
        for ext in self._extents_of(entry):
            lo = max(start, ext.file_offset)
            hi = min(end, ext.file_offset + ext.length)
            if lo >= hi:
                continue
            if ext.kind is ExtentKind.INLINE:
                data = self._inline(entry)
                yield data[lo:hi].ljust(hi - lo, b"\0")
                continue
            pos = lo
            while pos < hi:
                take = min(chunk, hi - pos)
                if ext.kind is ExtentKind.DATA:
                    assert ext.volume_offset is not None
                    yield self.view.read(ext.volume_offset + pos - ext.file_offset, take)
                else:
                    yield bytes(take)
                pos += take

    def walk(
        self, path: str = "/", onerror: Callable[[str, VdiError], None] | None = None
    ) -> Iterator[tuple[str, list[Entry]]]:
        """Every directory under ``path`` (itself first) with its entries, depth first.

        A directory met twice (a loop in hostile metadata, or a directory hard link) is not
        entered again; it is reported through ``onerror`` (or raised without one).
        """
        top = self.resolve(path, follow=True)
        if not top.is_dir:
            raise GuestPathError(f"{top.path} in {self.volume} is not a directory.")
        seen: set[int] = set()
        stack: list[tuple[Entry, int]] = [(top, 0)]
        while stack:
            directory, depth = stack.pop()
            problem: VdiError | None = None
            if directory.id in seen:
                problem = GuestFsError(
                    f"{directory.path} in {self.volume} leads back to a "
                    "directory already listed (a loop); it was skipped."
                )
            elif depth > MAX_DEPTH:
                problem = GuestFsError(
                    f"{directory.path} in {self.volume} is nested more than "
                    f"{MAX_DEPTH} levels deep; it was skipped."
                )
            if problem is not None:
                if onerror is None:
                    raise problem
                onerror(directory.path, problem)
                continue
            seen.add(directory.id)
            try:
                entries = self.children(directory)
            except VdiError as exc:
                if onerror is None:
                    raise
                onerror(directory.path, exc)
                continue
            yield directory.path, entries
            for child in reversed(entries):
                if child.is_dir:
                    stack.append((child, depth + 1))

    def find(self, pattern: str, path: str = "/") -> Iterator[Entry]:
        """Entries under ``path`` whose name (or, with a "/" in ``pattern``, path) matches.

        Glob rules are :mod:`fnmatch`'s and case-sensitive; FAT names are matched without
        regard to case, as the guest itself would.
        """
        by_path = "/" in pattern
        fold = self.kind.startswith("fat")
        pat = pattern.casefold() if fold else pattern
        for _dirpath, entries in self.walk(path, onerror=lambda _p, _e: None):
            for entry in entries:
                subject = entry.path if by_path else entry.name
                if fold:
                    subject = subject.casefold()
                if fnmatch.fnmatchcase(subject, pat):
                    yield entry


def merge_extents(runs: list[FileExtent]) -> list[FileExtent]:
    """Join neighbours that continue each other (same kind, contiguous in file and volume)."""
    out: list[FileExtent] = []
    for r in runs:
        if r.length <= 0:
            continue
        if out:
            p = out[-1]
            if (
                p.kind is r.kind
                and p.file_offset + p.length == r.file_offset
                and r.kind is not ExtentKind.INLINE
                and (p.volume_offset is None) == (r.volume_offset is None)
                and (
                    p.volume_offset is None
                    or r.volume_offset is None
                    or p.volume_offset + p.length == r.volume_offset
                )
                and (
                    p.disk_offset is None
                    or r.disk_offset is None
                    or p.disk_offset + p.length == r.disk_offset
                )
            ):
                out[-1] = FileExtent(
                    p.file_offset, p.length + r.length, p.kind, p.volume_offset, p.disk_offset
                )
                continue
        out.append(r)
    return out


def place_extents(
    view: VolumeView, runs: list[tuple[int, int, ExtentKind, int | None]]
) -> list[FileExtent]:
    """Turn ``(file offset, length, kind, volume offset)`` runs into extents with disk offsets.

    A run crossing a piece boundary of a split logical volume becomes several extents.
    """
    pieces = view.extents.pieces
    if len(pieces) == 1 and pieces[0][0] == 0:
        # One piece (every volume but a split logical one): a run inside it is not cut.
        _local, shift, limit = pieces[0]
        fast: list[FileExtent] = []
        for foff, length, kind, voff in runs:
            if voff is None or kind is ExtentKind.INLINE:
                fast.append(FileExtent(foff, length, kind, voff, None))
            elif voff >= 0 and voff + length <= limit:
                fast.append(FileExtent(foff, length, kind, voff, voff + shift))
            else:
                break
        else:
            return merge_extents(fast)
    out: list[FileExtent] = []
    for foff, length, kind, voff in runs:
        if voff is None or kind is ExtentKind.INLINE:
            out.append(FileExtent(foff, length, kind, voff, None))
            continue
        for lo, disk, n in view.disk_pieces(voff, length):
            out.append(FileExtent(foff + lo - voff, n, kind, lo, disk))
    return merge_extents(out)
