"""ext2/3/4 files: inodes, extent trees, indirect blocks, inline data, directories, symlinks.

Read-only and bounded: every structure the disk describes is checked against the filesystem's
own geometry before it is followed (an extent or block pointer outside the filesystem, an
extent tree deeper than ext4 allows or whose levels do not step down one by one, overlapping
extents, a directory entry running out of its block) and refused with one plain sentence.
htree directories are read as linear ones: their index blocks look like a single empty entry.
The on-disk layout is summarised in docs/guest-files.md.

Listing is the hot path (a diff or ``ls -R`` of 100,000 files): a directory's inodes are read
in inode-table order with one read per run of neighbours, decoded together with numpy, and
kept (bounded) for the extents and reads asked for next, so each inode is parsed once.
"""

from __future__ import annotations

import gc
import struct
from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vdigui.engine.errors import GuestFsError, GuestPathError

from .. import ext as ext_usage
from ..blockmap import Unsupported, View
from .api import (
    BaseNamespace,
    Entry,
    EntryKind,
    ExtentKind,
    FileExtent,
    VolumeView,
    decode_name,
    new_entry,
    place_extents,
    stored_name,
)

_ROOT_INO = 2
_INCOMPAT_FILETYPE = 0x2
_INCOMPAT_RECOVER = 0x4
_INCOMPAT_64BIT = 0x80
_INCOMPAT_META_BG = 0x10
_INCOMPAT_LARGEDIR = 0x4000
_INCOMPAT_ENCRYPT = 0x10000

_FL_EXTENTS = 0x80000
_FL_INLINE = 0x10000000
_FL_EA_INODE = 0x200000
_EXTENT_MAGIC = 0xF30A
_MAX_EXTENT_DEPTH = 5
_INIT_MAX_LEN = 32768
#: Directories larger than this are refused (ext4's largedir tops out far below it).
_MAX_DIR_BYTES = 1 << 30
#: Extent-tree nodes read for one file before it is called hostile.
_MAX_TREE_NODES = 1 << 20
#: Inodes a namespace keeps as read (a few hundred bytes each): a listing reads its entries'
#: inodes once, and the extents, link targets and reads asked for next reuse them.
_CACHED_INODES = 1 << 15
#: Inodes this close in the inode table are fetched in the same read (the gap read too).
_INODE_GAP = 64 << 10
#: Bytes of inode table fetched by one read at most.
_INODE_SPAN = 4 << 20
#: Inodes read and decoded together at most (bounds the memory a huge directory takes).
_INODE_BATCH = 1 << 14
#: Bytes of a directory read at once.
_DIR_CHUNK = 1 << 20

_EXTENT_HEADER = struct.Struct("<HHHH")  # magic, entries, capacity, depth
_EXTENT_LEAF = struct.Struct("<IHHI")  # first logical block, length, start (high, low)

_S_IFMT = 0xF000
_KINDS = {0x4000: EntryKind.DIRECTORY, 0x8000: EntryKind.FILE, 0xA000: EntryKind.SYMLINK}


@dataclass(frozen=True, slots=True)
class Inode:
    """The fields of an inode this module uses."""

    number: int
    mode: int
    uid: int
    gid: int
    size: int
    atime: float
    ctime: float
    mtime: float
    btime: float | None
    links: int
    blocks: int
    flags: int
    file_acl: int
    block: bytes  # i_block, 60 bytes
    raw: bytes  # the whole on-disk inode (for in-inode extended attributes)


class _Columns(NamedTuple):
    """The decoded fields of a batch of inodes, one list per field (see :meth:`_decode`)."""

    mode: list[int]
    uid: list[int]
    gid: list[int]
    size: list[int]
    ctime: list[float]
    mtime: list[float]
    atime: list[float]
    btime: list[float | None]
    links: list[int]
    blocks: list[int]
    flags: list[int]
    file_acl: list[int]


def _inode_dtype(inode_size: int) -> np.dtype:
    """One on-disk inode as a numpy record (the extra fields only where the inode has room)."""
    fields = [
        ("mode", "<u2", 0x00),
        ("uid_lo", "<u2", 0x02),
        ("size_lo", "<u4", 0x04),
        ("atime", "<i4", 0x08),
        ("ctime", "<i4", 0x0C),
        ("mtime", "<i4", 0x10),
        ("gid_lo", "<u2", 0x18),
        ("links", "<u2", 0x1A),
        ("blocks_lo", "<u4", 0x1C),
        ("flags", "<u4", 0x20),
        ("acl_lo", "<u4", 0x68),
        ("size_hi", "<u4", 0x6C),
        ("blocks_hi", "<u2", 0x74),
        ("acl_hi", "<u2", 0x76),
        ("uid_hi", "<u2", 0x78),
        ("gid_hi", "<u2", 0x7A),
    ]
    if inode_size > 128:  # 256 or more: room for every field below
        fields += [
            ("extra", "<u2", 0x80),
            ("ctime_x", "<u4", 0x84),
            ("mtime_x", "<u4", 0x88),
            ("atime_x", "<u4", 0x8C),
            ("crtime", "<i4", 0x90),
            ("crtime_x", "<u4", 0x94),
        ]
    return np.dtype(
        {
            "names": [f[0] for f in fields],
            "formats": [f[1] for f in fields],
            "offsets": [f[2] for f in fields],
            "itemsize": inode_size,
        }
    )


class ExtNamespace(BaseNamespace):
    """The files of one ext2/3/4 filesystem."""

    def __init__(self, view: VolumeView, volume: str) -> None:
        super().__init__(view, volume)
        sb = view.read(1024, 1024)
        if struct.unpack_from("<H", sb, 0x38)[0] != ext_usage.EXT_MAGIC:
            raise GuestFsError(f"{volume} holds no ext superblock.")
        inodes, blocks_lo = struct.unpack_from("<II", sb, 0)
        first_data_block, log_bs = struct.unpack_from("<II", sb, 0x14)
        bpg, _cpg, ipg = struct.unpack_from("<III", sb, 0x20)
        state = struct.unpack_from("<H", sb, 0x3A)[0]
        rev = struct.unpack_from("<I", sb, 0x4C)[0]
        inode_size = struct.unpack_from("<H", sb, 0x58)[0] if rev else 128
        compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C) if rev else (0, 0, 0)
        self.label = decode_name(sb[0x78:0x88].split(b"\0", 1)[0])
        self.kind = (
            "ext4"
            if incompat & ext_usage._INCOMPAT_EXT4 or ro_compat & ext_usage._RO_EXT4
            else "ext3"
            if compat & 0x4
            else "ext2"
        )
        if log_bs > 6:
            raise GuestFsError(
                f"The ext filesystem in {volume} has an impossible block size field ({log_bs})."
            )
        self.bs = bs = 1024 << log_bs
        self.blocks = blocks_lo
        is64 = bool(incompat & _INCOMPAT_64BIT)
        if is64:
            self.blocks |= struct.unpack_from("<I", sb, 0x150)[0] << 32
        desc_size = struct.unpack_from("<H", sb, 0xFE)[0] if is64 else 32
        if (
            inode_size < 128
            or inode_size > bs
            or inode_size & (inode_size - 1)
            or ipg == 0
            or bpg == 0
            or self.blocks <= first_data_block
            or inodes == 0
            or desc_size < 32
            or desc_size > bs
            or first_data_block > 1
        ):
            raise GuestFsError(f"The ext superblock of {volume} describes an impossible geometry.")
        if self.blocks * bs > view.size:
            self.notes.append(
                "The filesystem claims to be larger than its volume; data past "
                "the end of the volume cannot be read."
            )
        self.inodes = inodes
        self.ipg = ipg
        self.inode_size = inode_size
        self._dtype = _inode_dtype(inode_size)
        self._young: dict[int, bytes] = {}
        self._old: dict[int, bytes] = {}
        self.filetype = bool(incompat & _INCOMPAT_FILETYPE)
        self.largedir = bool(incompat & _INCOMPAT_LARGEDIR)
        ngroups = -(-(self.blocks - first_data_block) // bpg)
        if ngroups * ipg < inodes:
            raise GuestFsError(
                f"The ext superblock of {volume} counts more inodes than its groups hold."
            )
        meta_bg = bool(incompat & _INCOMPAT_META_BG)
        first_meta_bg = struct.unpack_from("<I", sb, 0x104)[0] if meta_bg else 0
        sparse = bool(ro_compat & 0x1)
        sparse2 = bool(compat & 0x200)
        backups = set(struct.unpack_from("<II", sb, 0x24C)) if sparse2 else set()

        def has_super(g: int) -> bool:
            if g == 0:
                return True
            if sparse2:
                return g in backups
            if g == 1 or not sparse:
                return True
            return any(ext_usage._is_power(g, p) for p in (3, 5, 7))

        try:
            raw = ext_usage._read_descriptors(
                View(view.reader, view.extents),
                bs,
                desc_size,
                ngroups,
                bs // desc_size,
                first_data_block,
                meta_bg,
                first_meta_bg,
                has_super,
                lambda g: int(first_data_block + g * bpg),
            )
        except Unsupported as exc:
            raise GuestFsError(
                f"The ext group descriptors of {volume} cannot be read: {exc}"
            ) from None
        if len(raw) < ngroups * desc_size:
            raise GuestFsError(f"The ext group descriptors of {volume} are cut short.")
        self.inode_tables = ext_usage._decode_descriptors(raw, desc_size, ngroups, is64)[2]
        if incompat & _INCOMPAT_RECOVER:
            self.notes.append(
                "The journal was not replayed (the guest did not shut down "
                "cleanly): the newest changes may be missing or files may read "
                "as they were before them."
            )
        elif not state & 1:
            self.notes.append(
                "The filesystem was not cleanly unmounted; recent changes may be missing."
            )
        if incompat & _INCOMPAT_ENCRYPT:
            self.notes.append(
                "The filesystem may hold encrypted directories; their names and "
                "contents are shown as stored (scrambled)."
            )

    # -- inodes ----------------------------------------------------------------------
    def inode(self, number: int) -> Inode:
        """Read inode ``number`` (1-based)."""
        raw = self._inode_raw(number)
        c = self._decode(np.frombuffer(raw, dtype=np.uint8).reshape(1, -1))
        return Inode(
            number=number,
            mode=c.mode[0],
            uid=c.uid[0],
            gid=c.gid[0],
            size=c.size[0],
            ctime=c.ctime[0],
            mtime=c.mtime[0],
            atime=c.atime[0],
            btime=c.btime[0],
            links=c.links[0],
            blocks=c.blocks[0],
            flags=c.flags[0],
            file_acl=c.file_acl[0],
            block=raw[0x28:0x64],
            raw=raw,
        )

    def _inode_raw(self, number: int) -> bytes:
        """The on-disk bytes of inode ``number``, from the cache or read alone."""
        raw = self._young.get(number)
        if raw is None:
            raw = self._old.get(number)
            if raw is None:
                rows = self._rows(np.array([number], dtype=np.int64))
                raw = rows.tobytes()
                self._remember([number], [raw])
        return raw

    def _remember(self, numbers: list[int], raws: list[bytes]) -> None:
        """Keep inodes just read; two generations bound the cache at :data:`_CACHED_INODES`."""
        young = self._young
        young.update(zip(numbers, raws, strict=True))
        if len(young) > _CACHED_INODES // 2:
            self._old = young
            self._young = {}

    def _rows(self, numbers: np.ndarray) -> np.ndarray:
        """``(n, inode_size)`` bytes: the on-disk inodes ``numbers`` (int64), in that order.

        The inodes are fetched in inode-table order, neighbours (up to :data:`_INODE_GAP`
        apart) in one read of at most :data:`_INODE_SPAN` bytes, so a directory's inodes --
        usually allocated side by side -- cost a read or two instead of one per entry.
        """
        isz = self.inode_size
        n = numbers.size
        bad = (numbers < 1) | (numbers > self.inodes)
        if bad.any():
            number = int(numbers[int(np.argmax(bad))])
            raise GuestFsError(
                f"Inode {number} is outside the filesystem in {self.volume} (it has {self.inodes})."
            )
        group, index = np.divmod(numbers - 1, self.ipg)
        tables = self.inode_tables[group]
        # Checked before multiplying, so a hostile table number cannot overflow int64.
        limit = min(self.blocks, self.view.size // self.bs + 1)
        ok = (tables > 0) & (tables < limit)
        where = np.where(ok, tables, 0) * self.bs + index * isz
        bad = ~ok | (where + isz > self.view.size)
        if bad.any():
            g = int(group[int(np.argmax(bad))])
            raise GuestFsError(
                f"The inode table of group {g} in {self.volume} lies outside the filesystem."
            )
        out = np.empty((n, isz), dtype=np.uint8)
        if n == 1:
            out[0] = np.frombuffer(self.view.read(int(where[0]), isz), dtype=np.uint8)
            return out
        order = np.argsort(where, kind="stable")
        spots = where[order].tolist()
        i = 0
        while i < n:
            lo = spots[i]
            j = i + 1
            while (
                j < n
                and spots[j] - spots[j - 1] <= _INODE_GAP
                and spots[j] + isz - lo <= _INODE_SPAN
            ):
                j += 1
            hi = spots[j - 1] + isz
            # Every inode starts at a multiple of the inode size (tables are block-aligned).
            table = np.frombuffer(self.view.read(lo, hi - lo), dtype=np.uint8).reshape(-1, isz)
            out[order[i:j]] = table[(where[order[i:j]] - lo) // isz]
            i = j
        return out

    def _decode(self, rows: np.ndarray) -> _Columns:
        """The fields of inodes given as ``(n, inode_size)`` bytes, as Python lists."""
        rec = rows.view(self._dtype).reshape(-1)

        def u(name: str) -> np.ndarray:
            return rec[name].astype(np.int64)

        mode = u("mode")
        # Unsigned: a hostile high word must give a huge size, not a negative one.
        size_lo = rec["size_lo"].astype(np.uint64)
        size = size_lo | rec["size_hi"].astype(np.uint64) << np.uint64(32)
        if not self.largedir:
            # Before largedir, a directory's high size word was i_dir_acl: not a size.
            size = np.where(mode & _S_IFMT == 0x4000, size_lo, size)
        if self.inode_size > 128:
            extra = u("extra")

            def stamp(base: str, word: str, need: int) -> np.ndarray:
                secs = u(base)
                w = u(word)
                with_extra = (secs + ((w & 3) << 32)).astype(np.float64) + (w >> 2) / 1e9
                return np.where(extra >= need, with_extra, secs.astype(np.float64))

            ctime, mtime, atime = (
                stamp("ctime", "ctime_x", 8),
                stamp("mtime", "mtime_x", 12),
                stamp("atime", "atime_x", 16),
            )
            crtime = stamp("crtime", "crtime_x", 0).tolist()
            btime = [b if e >= 24 else None for b, e in zip(crtime, extra.tolist(), strict=True)]
        else:
            ctime, mtime, atime = (u(k).astype(np.float64) for k in ("ctime", "mtime", "atime"))
            btime = [None] * rows.shape[0]
        return _Columns(
            mode=mode.tolist(),
            uid=(u("uid_lo") | u("uid_hi") << 16).tolist(),
            gid=(u("gid_lo") | u("gid_hi") << 16).tolist(),
            size=size.tolist(),
            ctime=ctime.tolist(),
            mtime=mtime.tolist(),
            atime=atime.tolist(),
            btime=btime,
            links=u("links").tolist(),
            blocks=(u("blocks_lo") | u("blocks_hi") << 32).tolist(),
            flags=u("flags").tolist(),
            file_acl=(u("acl_lo") | u("acl_hi") << 32).tolist(),
        )

    def _entries(self, parent: str, found: list[tuple[int, bytes]]) -> list[Entry]:
        """Entries for ``(inode, stored name)`` pairs of the directory ``parent``.

        All their inodes are read in one batch (:meth:`_rows`), decoded at once and kept for
        the extents, targets and reads asked for next, so each is parsed once.
        """
        if len(found) > _INODE_BATCH:  # a huge (or hostile) directory: bounded batches
            return [
                entry
                for at in range(0, len(found), _INODE_BATCH)
                for entry in self._entries(parent, found[at : at + _INODE_BATCH])
            ]
        if not found:
            return []
        # The entries hold no references that could form a cycle: the collector, which would
        # otherwise run every 700 of them and revisit the ones already built, waits until
        # the batch is done (a fifth of a large listing's time).
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._build(parent, found)
        finally:
            if paused:
                gc.enable()

    def _build(self, parent: str, found: list[tuple[int, bytes]]) -> list[Entry]:
        numbers = [number for number, _ in found]
        rows = self._rows(np.array(numbers, dtype=np.int64))
        c = self._decode(rows)
        isz = self.inode_size
        flat = rows.tobytes()
        raws = [flat[k : k + isz] for k in range(0, len(flat), isz)]
        self._remember(numbers, raws)
        prefix = parent.rstrip("/") + "/"
        out: list[Entry] = []
        append = out.append
        kinds = _KINDS
        other, symlink = EntryKind.OTHER, EntryKind.SYMLINK
        columns = zip(
            found,
            c.mode,
            c.size,
            c.mtime,
            c.atime,
            c.ctime,
            c.uid,
            c.gid,
            c.links,
            c.btime,
            strict=True,
        )
        for k, (
            (number, stored),
            mode,
            size,
            mtime,
            atime,
            ctime,
            uid,
            gid,
            links,
            btime,
        ) in enumerate(columns):
            name, note = stored_name(stored)
            path = prefix + name
            kind = kinds.get(mode & _S_IFMT, other)
            target = None
            if kind is symlink:
                ino = self._inode_of(number, raws[k], c, k)
                target = decode_name(self._symlink_target(ino, path))
            append(
                new_entry(
                    name,
                    path,
                    kind,
                    size,
                    mtime,
                    atime,
                    ctime,
                    mode,
                    None,
                    uid,
                    gid,
                    number,
                    links,
                    btime,
                    target,
                    stored,
                    note,
                )
            )
        return out

    @staticmethod
    def _inode_of(number: int, raw: bytes, c: _Columns, k: int) -> Inode:
        return Inode(
            number=number,
            mode=c.mode[k],
            uid=c.uid[k],
            gid=c.gid[k],
            size=c.size[k],
            ctime=c.ctime[k],
            mtime=c.mtime[k],
            atime=c.atime[k],
            btime=c.btime[k],
            links=c.links[k],
            blocks=c.blocks[k],
            flags=c.flags[k],
            file_acl=c.file_acl[k],
            block=raw[0x28:0x64],
            raw=raw,
        )

    def _make_entry(self, number: int, name: str, path: str, raw_name: bytes, note: str) -> Entry:
        ino = self.inode(number)
        kind = _KINDS.get(ino.mode & _S_IFMT, EntryKind.OTHER)
        target = None
        if kind is EntryKind.SYMLINK:
            target = decode_name(self._symlink_target(ino, path))
        return Entry(
            name=name,
            path=path,
            kind=kind,
            size=ino.size,
            mtime=ino.mtime,
            atime=ino.atime,
            ctime=ino.ctime,
            mode=ino.mode,
            attributes=None,
            uid=ino.uid,
            gid=ino.gid,
            id=number,
            nlink=ino.links,
            btime=ino.btime,
            target=target,
            raw_name=raw_name,
            name_note=note,
        )

    def root(self) -> Entry:
        """The root directory (inode 2)."""
        entry = self._make_entry(_ROOT_INO, "/", "/", b"/", "")
        if not entry.is_dir:
            raise GuestFsError(f"The root inode of {self.volume} is not a directory.")
        return entry

    # -- symlinks --------------------------------------------------------------------
    def _symlink_target(self, ino: Inode, path: str) -> bytes:
        if ino.size > self.bs * 16:
            raise GuestFsError(
                f"The symbolic link {path} in {self.volume} claims a target of {ino.size} bytes."
            )
        if ino.flags & _FL_INLINE:
            return self._inline_bytes(ino)[: ino.size]
        ea_blocks = (self.bs >> 9) if ino.file_acl else 0
        fast = ino.blocks - ea_blocks == 0 if not ino.flags & _FL_EA_INODE else 0 < ino.size < 60
        if fast and ino.size <= 60:
            return ino.block[: ino.size]
        runs = self._runs(ino.size, ino.flags, ino.block, path)
        return b"".join(self._read_runs(runs, 0, ino.size))

    # -- content ---------------------------------------------------------------------
    def _inline_bytes(self, ino: Inode) -> bytes:
        """i_block followed by the value of the in-inode "system.data" attribute."""
        return ino.block + self._xattr(ino, 7, b"data")

    def _xattr(self, ino: Inode, index: int, name: bytes) -> bytes:
        raw = ino.raw
        if len(raw) <= 128:
            return b""
        extra = struct.unpack_from("<H", raw, 0x80)[0]
        start = 128 + extra
        if start + 4 > len(raw) or struct.unpack_from("<I", raw, start)[0] != 0xEA020000:
            return b""
        base = start + 4
        pos = base
        while pos + 16 <= len(raw):
            name_len, name_index, value_offs = struct.unpack_from("<BBH", raw, pos)
            value_inum, value_size = struct.unpack_from("<II", raw, pos + 4)
            if name_len == 0 and name_index == 0 and value_offs == 0:
                break
            ename = raw[pos + 16 : pos + 16 + name_len]
            if name_index == index and ename == name:
                if value_inum or base + value_offs + value_size > len(raw):
                    raise GuestFsError(
                        f"Inode {ino.number} in {self.volume} has a damaged inline-data attribute."
                    )
                return raw[base + value_offs : base + value_offs + value_size]
            pos += (16 + name_len + 3) & ~3
        return b""

    def _inline(self, entry: Entry) -> bytes:
        return self._inline_bytes(self.inode(entry.id))

    def _raw_extents(self, entry: Entry) -> list[FileExtent]:
        # Only the fields the content needs, from the inode the listing already read.
        raw = self._inode_raw(entry.id)
        mode, _uid, size = struct.unpack_from("<HHI", raw, 0)
        flags = struct.unpack_from("<I", raw, 0x20)[0]
        if mode & _S_IFMT != 0x4000 or self.largedir:
            size |= struct.unpack_from("<I", raw, 0x6C)[0] << 32
        if flags & _FL_INLINE:
            return [FileExtent(0, size, ExtentKind.INLINE, None, None)] if size else []
        runs = self._runs(size, flags, raw[0x28:0x64], entry.path)
        return place_extents(self.view, runs)

    def layout_key(self, entry: Entry) -> Hashable | None:
        """For a file whose extents all sit in the inode (a depth-0 extent tree): the volume's
        place and size and the inode bytes the extents come from."""
        if entry.kind is not EntryKind.FILE:
            return None
        raw = self._inode_raw(entry.id)
        flags = struct.unpack_from("<I", raw, 0x20)[0]
        if flags & _FL_INLINE or not flags & _FL_EXTENTS or raw[0x2E:0x30] != b"\0\0":
            return None
        # Size (0x04, 0x6C), flags (0x20) and i_block (0x28..0x64), with their neighbours.
        return (self.view.extents.pieces, self.blocks, self.bs, raw[0x04:0x08] + raw[0x20:0x70])

    def _runs(
        self, size: int, flags: int, block: bytes, path: str
    ) -> list[tuple[int, int, ExtentKind, int | None]]:
        """``(file offset, length, kind, volume offset)`` covering ``[0, size)``."""
        bs = self.bs
        nblocks = -(-size // bs)
        if flags & _FL_EXTENTS:
            leaves = self._extent_leaves(block, path)
        else:
            leaves = self._indirect_leaves(block, path, nblocks)
        runs: list[tuple[int, int, ExtentKind, int | None]] = []
        pos = 0  # in blocks
        for lblk, length, pblk, unwritten in leaves:
            if lblk >= nblocks:
                break
            if lblk < pos:
                raise GuestFsError(f"{path} in {self.volume} has overlapping extents.")
            if lblk > pos:
                runs.append((pos * bs, (lblk - pos) * bs, ExtentKind.SPARSE, None))
            length = min(length, nblocks - lblk)
            kind = ExtentKind.UNWRITTEN if unwritten else ExtentKind.DATA
            runs.append((lblk * bs, length * bs, kind, pblk * bs))
            pos = lblk + length
        if pos < nblocks:
            runs.append((pos * bs, (nblocks - pos) * bs, ExtentKind.SPARSE, None))
        # The last block is only partly the file's.
        if runs and nblocks * bs != size:
            foff, length, kind, voff = runs[-1]
            runs[-1] = (foff, length - (nblocks * bs - size), kind, voff)
        return [r for r in runs if r[1] > 0]

    def _check_blocks(self, pblk: int, count: int, path: str) -> None:
        if pblk <= 0 or pblk + count > self.blocks or (pblk + count) * self.bs > self.view.size:
            raise GuestFsError(
                f"{path} in {self.volume} points to blocks {pblk}..{pblk + count} "
                f"outside the filesystem ({self.blocks} blocks)."
            )

    def _extent_leaves(self, block: bytes, path: str) -> list[tuple[int, int, int, bool]]:
        out: list[tuple[int, int, int, bool]] = []
        # The last block inside both the filesystem and the volume (see _check_blocks).
        limit = min(self.blocks, self.view.size // self.bs)
        nodes = 0
        stack: list[tuple[bytes, int | None]] = [(block, None)]
        while stack:
            node, want_depth = stack.pop()
            nodes += 1
            if nodes > _MAX_TREE_NODES:
                raise GuestFsError(f"The extent tree of {path} in {self.volume} is too large.")
            magic, entries, cap, depth = _EXTENT_HEADER.unpack_from(node, 0)
            if (
                magic != _EXTENT_MAGIC
                or entries > cap
                or 12 + 12 * cap > len(node)
                or depth > _MAX_EXTENT_DEPTH
                or (want_depth is not None and depth != want_depth)
            ):
                raise GuestFsError(
                    f"The extent tree of {path} in {self.volume} is damaged (bad node header)."
                )
            children = []
            for i in range(entries):
                at = 12 + 12 * i
                if depth == 0:
                    lblk, length, start_hi, start_lo = _EXTENT_LEAF.unpack_from(node, at)
                    unwritten = length > _INIT_MAX_LEN
                    if unwritten:
                        length -= _INIT_MAX_LEN
                    pblk = start_lo | start_hi << 32
                    if length:
                        if pblk <= 0 or pblk + length > limit:
                            self._check_blocks(pblk, length, path)  # raises
                        out.append((lblk, length, pblk, unwritten))
                else:
                    lblk, leaf_lo, leaf_hi = struct.unpack_from("<IIH", node, at)
                    child = leaf_lo | leaf_hi << 32
                    self._check_blocks(child, 1, path)
                    children.append(child)
            # Depth first, in order: push in reverse.
            for child in reversed(children):
                stack.append((self.view.read(child * self.bs, self.bs), depth - 1))
        out.sort()
        return out

    def _indirect_leaves(
        self, block: bytes, path: str, nblocks: int
    ) -> list[tuple[int, int, int, bool]]:
        """Runs of ext2/3 block pointers: 12 direct, then single, double, triple indirect."""
        ptrs = self.bs // 4
        pointers = struct.unpack_from("<15I", block, 0)
        lblks: list[np.ndarray] = []
        pblks: list[np.ndarray] = []
        budget = [self.blocks]  # indirect blocks we may still read

        def take(base: int, values: np.ndarray) -> None:
            n = min(len(values), nblocks - base)
            if n <= 0:
                return
            vals = values[:n].astype(np.int64)
            idx = np.flatnonzero(vals)
            if idx.size:
                bad = vals[idx][(vals[idx] >= self.blocks)]
                if bad.size:
                    self._check_blocks(int(bad[0]), 1, path)
                lblks.append(idx + base)
                pblks.append(vals[idx])

        def descend(block: int, level: int, base: int) -> None:
            if block == 0 or base >= nblocks:
                return
            self._check_blocks(block, 1, path)
            budget[0] -= 1
            if budget[0] < 0:
                raise GuestFsError(f"The block pointers of {path} in {self.volume} loop.")
            values = np.frombuffer(self.view.read(block * self.bs, self.bs), dtype="<u4")
            if level == 1:
                take(base, values)
                return
            span = ptrs ** (level - 1)
            for j in np.flatnonzero(values).tolist():
                if base + j * span >= nblocks:
                    break
                descend(int(values[j]), level - 1, base + j * span)

        take(0, np.array(pointers[:12], dtype=np.uint32))
        base = 12
        for level, top in ((1, pointers[12]), (2, pointers[13]), (3, pointers[14])):
            if base >= nblocks:
                break
            descend(top, level, base)
            base += ptrs**level
        if not lblks:
            return []
        lb = np.concatenate(lblks)
        pb = np.concatenate(pblks)
        cut = np.flatnonzero((np.diff(lb) != 1) | (np.diff(pb) != 1)) + 1
        starts = np.concatenate(([0], cut))
        ends = np.concatenate((cut, [lb.size]))
        return [
            (int(lb[s]), int(e - s), int(pb[s]), False)
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
        ]

    def _read_runs(
        self, runs: list[tuple[int, int, ExtentKind, int | None]], start: int, end: int
    ) -> list[bytes]:
        out = []
        for foff, length, kind, voff in runs:
            lo, hi = max(start, foff), min(end, foff + length)
            if lo >= hi:
                continue
            if kind is ExtentKind.DATA and voff is not None:
                out.append(self.view.read(voff + lo - foff, hi - lo))
            else:
                out.append(bytes(hi - lo))
        return out

    # -- directories -----------------------------------------------------------------
    def _list(self, directory: Entry) -> list[Entry]:
        ino = self.inode(directory.id)
        if ino.size > _MAX_DIR_BYTES:
            raise GuestFsError(
                f"The directory {directory.path} in {self.volume} claims "
                f"{ino.size} bytes, more than any real directory."
            )
        found: list[tuple[int, bytes]] = []
        path = directory.path
        if ino.flags & _FL_INLINE:
            data = self._inline_bytes(ino)
            # The first four bytes are the parent's inode number; entries follow, then more
            # entries in the attribute's value.
            self._parse_block(data, 4, min(60, len(data)), path, found, 0)
            if len(data) > 60:
                self._parse_block(data, 60, len(data), path, found, 0)
        else:
            bs = self.bs
            for foff, length, kind, voff in self._runs(ino.size, ino.flags, ino.block, path):
                if kind is not ExtentKind.DATA or voff is None:
                    continue
                for at in range(0, length, _DIR_CHUNK):
                    chunk = self.view.read(voff + at, min(_DIR_CHUNK, length - at))
                    for k in range(0, len(chunk), bs):
                        end = min(k + bs, len(chunk))
                        self._parse_block(chunk, k, end, path, found, foff + at)
        kept: list[tuple[int, bytes]] = []
        dots = {b".", b".."}
        for number, raw in found:
            if raw in dots:
                # The real "." and "..": once each. A second one is hostile and is shown
                # under an escaped name rather than hidden.
                dots.discard(raw)
                continue
            kept.append((number, raw))
        return self._entries(path, kept)

    def _parse_block(
        self,
        data: bytes,
        start: int,
        end: int,
        path: str,
        found: list[tuple[int, bytes]],
        where: int,
    ) -> None:
        """The entries of one directory block, ``data[start:end]`` (``where``: its
        directory offset minus ``start``, for the error message)."""
        pos = start
        filetype = self.filetype
        inodes = self.inodes
        unpack = struct.unpack_from
        while pos + 8 <= end:
            if filetype:
                number, rec_len, name_len = unpack("<IHB", data, pos)
            else:
                number, rec_len, name_len = unpack("<IHH", data, pos)
            if rec_len in (0, 65535) and self.bs == 65536:
                rec_len = 65536 - (pos - start)
            if rec_len < 8 or rec_len % 4 or pos + rec_len > end or 8 + name_len > rec_len:
                raise GuestFsError(
                    f"The directory {path} in {self.volume} has a damaged entry "
                    f"at byte {where + pos}."
                )
            if number:
                if number > inodes:
                    raise GuestFsError(
                        f"The directory {path} in {self.volume} has an entry "
                        f"pointing to inode {number}, outside the filesystem."
                    )
                found.append((number, data[pos + 8 : pos + 8 + name_len]))
            pos += rec_len


def open_ext(view: VolumeView, volume: str) -> ExtNamespace:
    """The namespace of the ext filesystem at the start of ``view``."""
    try:
        return ExtNamespace(view, volume)
    except (struct.error, ValueError, IndexError) as exc:
        raise GuestFsError(f"The ext filesystem in {volume} cannot be read ({exc}).") from None


__all__ = ["ExtNamespace", "GuestPathError", "Inode", "open_ext"]
