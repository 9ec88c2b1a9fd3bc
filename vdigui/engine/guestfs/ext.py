"""ext2/ext3/ext4: used blocks from the block bitmaps, with BLOCK_UNINIT groups synthesised.

The allocation bitmaps are trusted only when the superblock says the filesystem was cleanly
unmounted, its journal needs no recovery and every feature flag is one we understand; otherwise
the volume is kept whole. Groups whose bitmap was never initialised (BLOCK_UNINIT) are rebuilt the
way the kernel does and checked against the group's free count; a mismatch keeps that group whole.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from .blockmap import POPCOUNT, FsResult, Marker, Unsupported, View

EXT_MAGIC = 0xEF53

_COMPAT_HAS_JOURNAL = 0x4
_COMPAT_SPARSE_SUPER2 = 0x200

_INCOMPAT_RECOVER = 0x4
_INCOMPAT_JOURNAL_DEV = 0x8
_INCOMPAT_META_BG = 0x10
_INCOMPAT_64BIT = 0x80
_INCOMPAT_FLEX_BG = 0x200
#: filetype, recover, meta_bg, extents, 64bit, mmp, flex_bg, ea_inode, csum_seed, largedir,
#: inline_data, encrypt, casefold: none changes what the block bitmap means.
_INCOMPAT_KNOWN = 0x2 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000
_INCOMPAT_KNOWN |= 0x8000 | 0x10000 | 0x20000
_INCOMPAT_EXT4 = 0x40 | 0x80 | 0x200 | 0x100 | 0x400 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000

_RO_SPARSE_SUPER = 0x1
_RO_GDT_CSUM = 0x10
_RO_BIGALLOC = 0x200
_RO_METADATA_CSUM = 0x400
#: Everything but has_snapshot (0x80), whose snapshot blocks we would not know how to treat.
_RO_KNOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x800
_RO_KNOWN |= 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000
_RO_EXT4 = 0x8 | 0x10 | 0x20 | 0x40 | 0x200 | 0x400 | 0x2000 | 0x8000 | 0x10000

_BG_BLOCK_UNINIT = 0x2

#: Read bitmaps in runs of at most this many filesystem blocks.
_MAX_RUN_BLOCKS = 4096


def probe(head: bytes) -> bool:
    """True when the superblock magic is present (``head`` holds at least the first 2 KiB)."""
    return len(head) >= 2048 and struct.unpack_from("<H", head, 1024 + 0x38)[0] == EXT_MAGIC


def _is_power(n: int, base: int) -> bool:
    while n > 1 and n % base == 0:
        n //= base
    return n == 1


def analyze(view: View, marker: Marker, res: FsResult) -> None:
    """Mark every used block of the ext filesystem at the start of ``view``."""
    sb = view.read(1024, 1024)
    blocks_lo = struct.unpack_from("<I", sb, 0x04)[0]
    first_data_block, log_bs, log_cs, bpg, cpg, ipg = struct.unpack_from("<6I", sb, 0x14)
    state = struct.unpack_from("<H", sb, 0x3A)[0]
    rev = struct.unpack_from("<I", sb, 0x4C)[0]
    inode_size = struct.unpack_from("<H", sb, 0x58)[0]
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    if rev == 0:
        compat = incompat = ro_compat = 0
        inode_size = 128
    res.label = sb[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", "replace")
    if incompat & _INCOMPAT_EXT4 or ro_compat & _RO_EXT4:
        res.kind = "ext4"
    elif compat & _COMPAT_HAS_JOURNAL:
        res.kind = "ext3"
    else:
        res.kind = "ext2"
    if incompat & _INCOMPAT_JOURNAL_DEV:
        res.kind = "ext-journal"
        raise Unsupported("This is an external ext journal device; its blocks are all kept.")
    if incompat & ~_INCOMPAT_KNOWN:
        raise Unsupported(
            f"The filesystem uses incompatible features we do not know "
            f"(flags {incompat & ~_INCOMPAT_KNOWN:#x})."
        )
    if ro_compat & ~_RO_KNOWN:
        raise Unsupported(
            f"The filesystem uses read-only-compatible features we do not know "
            f"(flags {ro_compat & ~_RO_KNOWN:#x})."
        )
    if incompat & _INCOMPAT_RECOVER:
        raise Unsupported(
            "The journal needs recovery (the guest was not shut down cleanly, or is running or "
            "suspended), so the on-disk block bitmaps may be stale."
        )
    journal_inum, journal_dev = struct.unpack_from("<II", sb, 0xE0)
    if compat & _COMPAT_HAS_JOURNAL and (journal_inum == 0 or journal_dev != 0):
        raise Unsupported(
            "The journal is on another device, so we cannot tell whether it needs recovery."
        )
    if not state & 1:
        raise Unsupported(
            "The filesystem was not cleanly unmounted (it may be in use), so its bitmaps may be "
            "stale."
        )
    if state & 2:
        raise Unsupported("The filesystem is marked as having errors; run fsck in the guest first.")
    if log_bs > 6:
        raise Unsupported(f"The block size field ({log_bs}) is impossible.")
    bs = 1024 << log_bs
    bigalloc = bool(ro_compat & _RO_BIGALLOC)
    if bigalloc:
        if log_cs < log_bs or log_cs > 20 or first_data_block != 0:
            raise Unsupported("The bigalloc cluster size fields are inconsistent.")
        ratio = 1 << (log_cs - log_bs)
    else:
        ratio = 1
        cpg = bpg
    cs = bs * ratio
    is64 = bool(incompat & _INCOMPAT_64BIT)
    blocks = blocks_lo
    if is64:
        blocks |= struct.unpack_from("<I", sb, 0x150)[0] << 32
    desc_size = struct.unpack_from("<H", sb, 0xFE)[0] if is64 else 32
    if (
        blocks <= first_data_block
        or first_data_block not in (0, 1)
        or (first_data_block == 1) != (bs == 1024)
        or cpg == 0
        or cpg % 8
        or cpg > 8 * bs
        or bpg != cpg * ratio
        or ipg == 0
        or desc_size < 32
        or desc_size > bs
        or not _is_power(desc_size, 2)
        or inode_size < 128
    ):
        raise Unsupported("The superblock geometry is inconsistent.")
    if blocks * bs > view.size:
        raise Unsupported("The filesystem claims to be larger than its partition.")
    ngroups = -(-(blocks - first_data_block) // bpg)
    dpb = bs // desc_size
    meta_bg = bool(incompat & _INCOMPAT_META_BG)
    first_meta_bg = struct.unpack_from("<I", sb, 0x104)[0] if meta_bg else 0
    reserved_gdt = struct.unpack_from("<H", sb, 0xCE)[0]
    sparse = bool(ro_compat & _RO_SPARSE_SUPER)
    sparse2 = bool(compat & _COMPAT_SPARSE_SUPER2)
    backup_bgs = set(struct.unpack_from("<II", sb, 0x24C)) if sparse2 else set()
    csum = bool(ro_compat & (_RO_GDT_CSUM | _RO_METADATA_CSUM))

    def has_super(g: int) -> bool:
        if g == 0:
            return True
        if sparse2:
            return g in backup_bgs
        if g == 1 or not sparse:
            return True
        return any(_is_power(g, p) for p in (3, 5, 7))

    def gfirst(g: int) -> int:
        return int(first_data_block + g * bpg)

    raw = _read_descriptors(
        view,
        bs,
        desc_size,
        ngroups,
        dpb,
        first_data_block,
        meta_bg,
        first_meta_bg,
        has_super,
        gfirst,
    )
    d = _decode_descriptors(raw, desc_size, ngroups, is64)
    bb, ib, it, free, flags = d
    itb = -(-ipg * inode_size // bs)
    if (bb >= blocks).any() or (ib >= blocks).any() or (it + itb > blocks).any():
        raise Unsupported("A group descriptor points outside the filesystem.")

    group_bytes = cpg // 8
    bits = np.zeros(ngroups * group_bytes, dtype=np.uint8)
    uninit = np.zeros(ngroups, dtype=bool)
    if csum:
        uninit = (flags & _BG_BLOCK_UNINIT) != 0
    # Bitmaps of initialised groups, read in a few large runs.
    _read_bitmaps(view, bs, group_bytes, bb, np.nonzero(~uninit)[0], bits)
    # Clusters per group (the last group is short).
    total_clusters = -(-(blocks - first_data_block) // ratio)
    cig = np.full(ngroups, cpg, dtype=np.int64)
    cig[-1] = total_clusters - (ngroups - 1) * cpg

    bad: list[int] = []
    if uninit.any():
        old_desc = first_meta_bg if meta_bg else -(-ngroups // dpb) + reserved_gdt
        buckets = _bucket_metadata(bb, ib, it, itb, first_data_block, bpg, uninit)
        for g in np.nonzero(uninit)[0].tolist():
            start = gfirst(g)
            marks: list[tuple[int, int]] = []
            sup = has_super(g)
            if sup:
                marks.append((start, 1))
            if meta_bg and g // dpb >= first_meta_bg:
                if g % dpb in (0, 1, dpb - 1):
                    marks.append((start + int(sup), 1))
            elif sup:
                marks.append((start + 1, old_desc))
            marks.extend(buckets.get(g, ()))
            synth = np.zeros(int(cig[g]), dtype=bool)
            end = start + int(cig[g]) * ratio
            for blk, n in marks:
                lo, hi = max(blk, start), min(blk + n, end)
                if lo < hi:
                    synth[(lo - start) // ratio : (hi - 1 - start) // ratio + 1] = True
            packed = np.packbits(synth, bitorder="little")
            bits[g * group_bytes : g * group_bytes + len(packed)] = packed
    # Check every group against its free count; distrust any group that disagrees.
    pad = np.arange(cpg, dtype=np.int64)
    per_group = POPCOUNT[bits].reshape(ngroups, group_bytes).sum(axis=1, dtype=np.int64)
    if cig[-1] != cpg:
        last = np.unpackbits(bits[-group_bytes:], bitorder="little").astype(bool)
        per_group[-1] = int(np.count_nonzero(last & (pad < cig[-1])))
    mismatch = np.nonzero(per_group != cig - free)[0]
    for g in mismatch.tolist():
        bits[g * group_bytes : (g + 1) * group_bytes] = 0xFF
        bad.append(g)
    if bad:
        what = "uninitialised " if all(uninit[g] for g in bad) else ""
        res.note(
            f"{len(bad)} {what}block group(s) did not match their free counts "
            f"(first: group {bad[0]}); they are kept whole."
        )
    if first_data_block:
        marker.used_range(0, first_data_block * bs)
    marker.used_units(first_data_block * bs, cs, bits, total_clusters)
    if bigalloc:
        res.note(f"bigalloc: allocation is tracked in {cs // 1024} KiB clusters.")


def _read_descriptors(
    view: View,
    bs: int,
    desc_size: int,
    ngroups: int,
    dpb: int,
    first_data_block: int,
    meta_bg: bool,
    first_meta_bg: int,
    has_super: Callable[[int], bool],
    gfirst: Callable[[int], int],
) -> bytes:
    """The group descriptor table, from the classic GDT and, with meta_bg, each meta group."""
    if not meta_bg:
        return view.read((first_data_block + 1) * bs, ngroups * desc_size)
    parts = []
    n_meta = -(-ngroups // dpb)
    old = min(first_meta_bg, n_meta)
    if old:
        parts.append(view.read((first_data_block + 1) * bs, old * bs))
    for m in range(old, n_meta):
        g = m * dpb
        parts.append(view.read((gfirst(g) + int(has_super(g))) * bs, bs))
    return b"".join(parts)[: ngroups * desc_size]


def _decode_descriptors(
    raw: bytes, desc_size: int, ngroups: int, is64: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Block bitmap, inode bitmap, inode table, free clusters and flags of every group."""
    names = ["bb", "ib", "it", "free", "flags"]
    formats = ["<u4", "<u4", "<u4", "<u2", "<u2"]
    offsets = [0, 4, 8, 12, 18]
    if is64 and desc_size >= 64:
        names += ["bb_hi", "ib_hi", "it_hi", "free_hi"]
        formats += ["<u4", "<u4", "<u4", "<u2"]
        offsets += [0x20, 0x24, 0x28, 0x2C]
    dt = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": desc_size})
    arr = np.frombuffer(raw, dtype=dt, count=ngroups)
    bb = arr["bb"].astype(np.int64)
    ib = arr["ib"].astype(np.int64)
    it = arr["it"].astype(np.int64)
    free = arr["free"].astype(np.int64)
    if "bb_hi" in names:
        bb |= arr["bb_hi"].astype(np.int64) << 32
        ib |= arr["ib_hi"].astype(np.int64) << 32
        it |= arr["it_hi"].astype(np.int64) << 32
        free |= arr["free_hi"].astype(np.int64) << 16
    return bb, ib, it, free, arr["flags"].astype(np.int64)


def _read_bitmaps(
    view: View, bs: int, group_bytes: int, bb: np.ndarray, groups: np.ndarray, bits: np.ndarray
) -> None:
    """Read the on-disk bitmaps of ``groups``, merging neighbouring blocks into one read."""
    if not len(groups):
        return
    order = groups[np.argsort(bb[groups], kind="stable")]
    locs = bb[order]
    i = 0
    n = len(order)
    while i < n:
        j = i + 1
        while j < n and locs[j] - locs[i] == j - i and j - i < _MAX_RUN_BLOCKS:
            j += 1
        data = view.read(int(locs[i]) * bs, int(locs[j - 1] - locs[i] + 1) * bs)
        run = np.frombuffer(data, dtype=np.uint8).reshape(j - i, bs)[:, :group_bytes]
        bits.reshape(-1, group_bytes)[order[i:j]] = run
        i = j


def _bucket_metadata(
    bb: np.ndarray,
    ib: np.ndarray,
    it: np.ndarray,
    itb: int,
    first_data_block: int,
    bpg: int,
    uninit: np.ndarray,
) -> dict[int, list[tuple[int, int]]]:
    """Every group's bitmaps and inode table, filed under the uninitialised groups they lie in."""
    buckets: dict[int, list[tuple[int, int]]] = {}
    ngroups = len(uninit)
    for starts, length in ((bb, 1), (ib, 1), (it, itb)):
        g0 = (starts - first_data_block) // bpg
        g1 = (starts + length - 1 - first_data_block) // bpg
        g0c = np.clip(g0, 0, ngroups - 1)
        g1c = np.clip(g1, 0, ngroups - 1)
        hit = uninit[g0c] | uninit[g1c] | (g1 - g0 > 1)
        for idx in np.nonzero(hit)[0].tolist():
            s = int(starts[idx])
            for g in range(int(g0c[idx]), int(g1c[idx]) + 1):
                if uninit[g]:
                    buckets.setdefault(g, []).append((s, length))
    return buckets
