"""ext2/3/4 files: inodes, extent trees, indirect blocks, inline data, directories, symlinks.

Read-only and bounded: every structure the disk describes is checked against the filesystem's
own geometry before it is followed (an extent or block pointer outside the filesystem, an
extent tree deeper than ext4 allows or whose levels do not step down one by one, overlapping
extents, a directory entry running out of its block) and refused with one plain sentence.
htree directories are read as linear ones: their index blocks look like a single empty entry.
The on-disk layout is summarised in docs/guest-files.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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
    join,
    place_extents,
    safe_name,
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


def _time(raw: bytes, base: int, extra: int | None) -> float:
    secs = int(struct.unpack_from("<i", raw, base)[0])
    if extra is None:
        return float(secs)
    word = int(struct.unpack_from("<I", raw, extra)[0])
    return float(secs + ((word & 3) << 32)) + (word >> 2) / 1e9


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
        if not 1 <= number <= self.inodes:
            raise GuestFsError(
                f"Inode {number} is outside the filesystem in {self.volume} (it has {self.inodes})."
            )
        group, index = divmod(number - 1, self.ipg)
        table = int(self.inode_tables[group])
        where = table * self.bs + index * self.inode_size
        if table <= 0 or table >= self.blocks or where + self.inode_size > self.view.size:
            raise GuestFsError(
                f"The inode table of group {group} in {self.volume} lies outside the filesystem."
            )
        raw = self.view.read(where, self.inode_size)
        mode, uid_lo, size_lo = struct.unpack_from("<HHI", raw, 0)
        gid_lo, links, blocks_lo, flags = struct.unpack_from("<HHII", raw, 0x18)
        acl_lo, size_hi = struct.unpack_from("<II", raw, 0x68)
        blocks_hi, acl_hi, uid_hi, gid_hi = struct.unpack_from("<HHHH", raw, 0x74)
        extra = struct.unpack_from("<H", raw, 0x80)[0] if self.inode_size > 128 else 0
        extras = [
            0x84 if extra >= 8 else None,
            0x88 if extra >= 12 else None,
            0x8C if extra >= 16 else None,
        ]
        return Inode(
            number=number,
            mode=mode,
            uid=uid_lo | uid_hi << 16,
            gid=gid_lo | gid_hi << 16,
            # Before largedir, a directory's high size word was i_dir_acl: not a size.
            size=size_lo
            if mode & _S_IFMT == 0x4000 and not self.largedir
            else size_lo | size_hi << 32,
            ctime=_time(raw, 0x0C, extras[0]),
            mtime=_time(raw, 0x10, extras[1]),
            atime=_time(raw, 0x08, extras[2]),
            btime=_time(raw, 0x90, 0x94) if extra >= 24 else None,
            links=links,
            blocks=blocks_lo | blocks_hi << 32,
            flags=flags,
            file_acl=acl_lo | acl_hi << 32,
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
        runs = self._runs(ino, path)
        return b"".join(self._read_runs(runs, ino, 0, ino.size))

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
        ino = self.inode(entry.id)
        if ino.flags & _FL_INLINE:
            return [FileExtent(0, ino.size, ExtentKind.INLINE, None, None)] if ino.size else []
        runs = self._runs(ino, entry.path)
        return place_extents(self.view, runs)

    def _runs(self, ino: Inode, path: str) -> list[tuple[int, int, ExtentKind, int | None]]:
        """``(file offset, length, kind, volume offset)`` covering ``[0, size)``."""
        bs = self.bs
        size = ino.size
        nblocks = -(-size // bs)
        if ino.flags & _FL_EXTENTS:
            leaves = self._extent_leaves(ino, path)
        else:
            leaves = self._indirect_leaves(ino, path, nblocks)
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

    def _extent_leaves(self, ino: Inode, path: str) -> list[tuple[int, int, int, bool]]:
        out: list[tuple[int, int, int, bool]] = []
        nodes = 0
        stack: list[tuple[bytes, int | None]] = [(ino.block, None)]
        while stack:
            node, want_depth = stack.pop()
            nodes += 1
            if nodes > _MAX_TREE_NODES:
                raise GuestFsError(f"The extent tree of {path} in {self.volume} is too large.")
            magic, entries, cap, depth = struct.unpack_from("<HHHH", node, 0)
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
                    lblk, length, start_hi, start_lo = struct.unpack_from("<IHHI", node, at)
                    unwritten = length > _INIT_MAX_LEN
                    if unwritten:
                        length -= _INIT_MAX_LEN
                    pblk = start_lo | start_hi << 32
                    if length:
                        self._check_blocks(pblk, length, path)
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
        self, ino: Inode, path: str, nblocks: int
    ) -> list[tuple[int, int, int, bool]]:
        """Runs of ext2/3 block pointers: 12 direct, then single, double, triple indirect."""
        ptrs = self.bs // 4
        pointers = struct.unpack_from("<15I", ino.block, 0)
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
        for level, block in ((1, pointers[12]), (2, pointers[13]), (3, pointers[14])):
            if base >= nblocks:
                break
            descend(block, level, base)
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
        self, runs: list[tuple[int, int, ExtentKind, int | None]], ino: Inode, start: int, end: int
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
        if ino.flags & _FL_INLINE:
            data = self._inline_bytes(ino)
            # The first four bytes are the parent's inode number; entries follow, then more
            # entries in the attribute's value.
            self._parse_block(data[4:60], directory.path, found)
            if len(data) > 60:
                self._parse_block(data[60:], directory.path, found)
        else:
            runs = self._runs(ino, directory.path)
            bs = self.bs
            for foff, length, kind, voff in runs:
                if kind is not ExtentKind.DATA or voff is None:
                    continue
                for k in range(0, length, bs):
                    block = self.view.read(voff + k, min(bs, length - k))
                    self._parse_block(block, directory.path, found, foff + k)
        out: list[Entry] = []
        dots = {b".", b".."}
        for number, raw in found:
            if raw in dots:
                # The real "." and "..": once each. A second one is hostile and is shown
                # under an escaped name rather than hidden.
                dots.discard(raw)
                continue
            name, note = safe_name(decode_name(raw))
            out.append(self._make_entry(number, name, join(directory.path, name), raw, note))
        return out

    def _parse_block(
        self, block: bytes, path: str, found: list[tuple[int, bytes]], where: int = 0
    ) -> None:
        pos = 0
        size = len(block)
        while pos + 8 <= size:
            number, rec_len = struct.unpack_from("<IH", block, pos)
            if self.filetype:
                name_len = block[pos + 6]
            else:
                name_len = struct.unpack_from("<H", block, pos + 6)[0]
            if rec_len in (0, 65535) and self.bs == 65536:
                rec_len = 65536 - pos
            if rec_len < 8 or rec_len % 4 or pos + rec_len > size or 8 + name_len > rec_len:
                raise GuestFsError(
                    f"The directory {path} in {self.volume} has a damaged entry "
                    f"at byte {where + pos}."
                )
            if number:
                if number > self.inodes:
                    raise GuestFsError(
                        f"The directory {path} in {self.volume} has an entry "
                        f"pointing to inode {number}, outside the filesystem."
                    )
                found.append((number, block[pos + 8 : pos + 8 + name_len]))
            pos += rec_len


def open_ext(view: VolumeView, volume: str) -> ExtNamespace:
    """The namespace of the ext filesystem at the start of ``view``."""
    try:
        return ExtNamespace(view, volume)
    except (struct.error, ValueError, IndexError) as exc:
        raise GuestFsError(f"The ext filesystem in {volume} cannot be read ({exc}).") from None


__all__ = ["ExtNamespace", "GuestPathError", "Inode", "open_ext"]
