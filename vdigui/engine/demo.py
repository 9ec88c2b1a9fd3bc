"""A realistic demo VM folder, built once in the user's cache folder (``vdigui --demo``).

Why it exists: a new user (and the README's pictures) need something to look at that shows what
vdigui is for, without owning a broken VirtualBox VM. So the demo deliberately contains what real
folders contain: a base disk laid out like a guest's (an MBR partition table, filesystem-like
allocation in scattered extents, block groups, a swap partition), block order shuffled the way a
guest writing files in parallel shuffles it, blocks that were zero-filled by the guest and are
worth compacting, three snapshots with a branch, a broken parent link, and an orphan image.

When Debian's filesystem tools are installed (``mke2fs``/``debugfs`` from e2fsprogs,
``mkfs.vfat`` from dosfstools, ``mcopy``/``mdel`` from mtools), the base disk is a real one: an
MBR with an ext4 root made by ``mke2fs -d`` from a populated folder, a FAT32 data partition filled
with ``mcopy``, and a swap partition; then some files are deleted (``debugfs rm``, ``mdel``) so
their blocks keep stale, non-zero data that only filesystem-aware compaction can reclaim, and
the snapshots write temporary files into free space the same way. So the partition bar, the
"guest uses" row and ``vdictl usage`` have something true to show. Without the tools the base
is the synthetic, ext4-like layout (the filesystem views then say the disk is not understood).

Everything is written with the engine's public API (``create_image``, ``DiskChain.write``) so the
files are exactly what the engine itself would produce. The layout is seeded and the tools run
with fixed times, UUIDs and hash seeds, so every build is byte-for-byte the same.

The build happens in a temporary folder beside the target and is renamed into place at the end,
so a build interrupted half-way is never mistaken for a complete demo.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vdigui.engine import fileio
from vdigui.engine.chain import DiskChain, open_paths
from vdigui.engine.format import is_allocated, read_header
from vdigui.engine.image import create_image, open_image

#: Bump when the demo's content changes so old caches are not reused.
DEMO_VERSION = 3
DEMO_NAME = "Demo VM"
MIB = 1 << 20
GIB = 1 << 30
DISK_SIZE = 2 * GIB
DATA_DISK_SIZE = 512 * MIB
BLOCK = MIB
SEED = 20260301
#: Guest blocks per ext4-like block group (128 MiB groups at 1 MiB blocks).
GROUP_BLOCKS = 128
SWAP_BLOCKS = 256
#: The real-filesystem layout: ext4 root, FAT32 data, then swap to the end (in MiB).
ROOT_MIB = 1536
FAT_MIB = 256
#: Tools the real-filesystem base needs; any one missing means the synthetic base.
FS_TOOLS = ("mke2fs", "debugfs", "mkfs.vfat", "mcopy", "mdel")
#: Fixed time for the tools' timestamps (2026-03-02 09:14:05 UTC, the first snapshot).
FS_TIME = 1772442845


def default_cache_folder() -> Path:
    """``$XDG_CACHE_HOME/vdigui`` or ``~/.cache/vdigui``: where the demo is kept."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vdigui"


def build_demo_vm(folder: Path | str | None = None) -> Path:
    """Build the demo VM folder under ``folder`` (default: the cache folder) once; return it.

    A complete demo from an earlier run is reused as it is. Builds go to a temporary folder
    that is renamed into place, so an interrupted build leaves no half-made demo behind.

    Returns:
        The VM folder (it holds ``Demo VM.vbox``).
    """
    root = Path(folder) if folder is not None else default_cache_folder() / "demo"
    target = root / f"v{DEMO_VERSION}" / DEMO_NAME
    if (target / f"{DEMO_NAME}.vbox").is_file():
        _remove_older_versions(root)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        _build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first (or a stale folder is in the way): keep theirs
            # if it is complete, otherwise replace the leftover.
            if not (target / f"{DEMO_NAME}.vbox").is_file():
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _remove_older_versions(root)
    return target


def _remove_older_versions(root: Path) -> None:
    """Delete demos an earlier vdigui built (``v1``, ``v2``...): nothing reuses them, and each
    takes about 280 MB of the user's cache."""
    for old in root.glob("v*"):
        if old.is_dir() and old.name != f"v{DEMO_VERSION}" and old.name[1:].isdigit():
            fileio.remove_tree(old)


# -- layout --------------------------------------------------------------------------------


@dataclass
class _Plan:
    """The guest layout decided up front, so every layer can refer to it."""

    rng: random.Random
    metadata: list[int] = field(default_factory=list)
    extents: list[list[int]] = field(default_factory=list)
    swap_header: int = 0

    @property
    def file_blocks(self) -> list[int]:
        return [b for extent in self.extents for b in extent]


def _seeded_uuid(rng: random.Random) -> uuidlib.UUID:
    return uuidlib.UUID(int=rng.getrandbits(128), version=4)


def _plan_base(rng: random.Random) -> _Plan:
    """An ext4-like root partition (block groups, files in extents) plus a swap partition."""
    plan = _Plan(rng)
    total = DISK_SIZE // BLOCK
    root_end = total - SWAP_BLOCKS
    # Group metadata (superblock copy, bitmaps, inode table) at the start of each group;
    # block 0 holds the partition table and the first group's superblock region.
    for start in range(1, root_end, GROUP_BLOCKS):
        plan.metadata.extend(range(start, min(start + 2, root_end)))
    plan.metadata.insert(0, 0)
    used = set(plan.metadata)
    # Files: dense near the start (the OS), thinning out towards the end, like a young disk.
    pos = 4
    while pos < root_end - 40:
        density = 1.0 - pos / root_end
        length = min(int(rng.expovariate(1 / 5)) + 1, 24)
        extent = [b for b in range(pos, min(pos + length, root_end)) if b not in used]
        if extent and rng.random() < 0.08 + density * 0.4:
            plan.extents.append(extent)
            used.update(extent)
        pos += length + int(rng.expovariate(1 / (2 + 100 * (1 - density) ** 2)))
    plan.swap_header = root_end
    return plan


def _block_data(block: int, tag: str, noise: bytes) -> bytes:
    """One block of guest data: a readable stamp, then incompressible-looking bytes."""
    stamp = f"vdigui demo: guest block {block} written by {tag}\n".encode()
    return stamp + noise[len(stamp) :]


def _mbr(entries: list[tuple[int, int, int, int]] | None = None) -> bytes:
    """An MBR: boot code area, disk signature, partitions (default: Linux + swap), 0x55AA.

    ``entries`` are (status, type, first LBA, sectors).
    """
    sector = bytearray(512)
    sector[0:3] = b"\xeb\x63\x90"  # jmp over the BPB-sized area, as GRUB's boot.img does
    sector[3:16] = b"vdigui-demo\x00\x00"
    sector[0x1B8:0x1BC] = (0x0D1C5EED).to_bytes(4, "little")
    total = DISK_SIZE // 512
    swap_sectors = SWAP_BLOCKS * BLOCK // 512
    entries = entries or [
        (0x80, 0x83, 2048, total - swap_sectors - 2048),
        (0x00, 0x82, total - swap_sectors, swap_sectors),
    ]
    for i, (status, ptype, lba, count) in enumerate(entries):
        at = 0x1BE + 16 * i
        sector[at] = status
        sector[at + 1 : at + 4] = b"\xfe\xff\xff"  # CHS "use LBA"
        sector[at + 4] = ptype
        sector[at + 5 : at + 8] = b"\xfe\xff\xff"
        sector[at + 8 : at + 12] = lba.to_bytes(4, "little")
        sector[at + 12 : at + 16] = count.to_bytes(4, "little")
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def _swap_header() -> bytes:
    page = bytearray(4096)
    page[1024:1028] = (1).to_bytes(4, "little")  # version
    page[1036:1040] = b"swap"
    page[4086:4096] = b"SWAPSPACE2"
    return bytes(page)


def _write_blocks(chain_paths: list[Path], writes: list[tuple[int, bytes]]) -> None:
    """Write whole blocks into the top of a chain in the given order (the physical order)."""
    chain = open_paths(chain_paths, writable_top=True)
    try:
        for block, data in writes:
            chain.write(block * BLOCK, data, durable=False)
        chain.top.sync()
    finally:
        chain.close()


def _build(folder: Path) -> None:
    rng = random.Random(SEED)
    noise = rng.randbytes(BLOCK)
    snaps = folder / "Snapshots"
    snaps.mkdir()
    uuids = {
        name: _seeded_uuid(rng)
        for name in (
            "machine",
            "base",
            "d1",
            "d2",
            "d4",
            "d5",
            "orphan",
            "missing",
            "data",
            "s1",
            "s2",
            "s3",
            "s4",
        )
    }
    base = folder / f"{DEMO_NAME}.vdi"

    def diff_path(key: str) -> Path:
        return snaps / f"{{{uuids[key]}}}.vdi"

    # Base disk: real filesystems when the tools are there, else the synthetic layout.
    real = _real_base(base, uuids["base"], rng, folder)
    if real is not None:
        files, scratch = real
        metadata: list[tuple[int, str]] = []
    else:
        files, scratch = _synthetic_base(base, uuids["base"], rng, noise)
        metadata = [(1, "(metadata)")]
    # The snapshots write into whole file blocks (file contents change, the filesystem stays
    # consistent) and into free space (temporary files, deleted again: stale data in the
    # differencing images, which filesystem-aware compaction of those images drops).
    temp = iter(rng.sample(scratch, 21))

    # "Updates": package updates rewrite some files, add new ones, delete a few (ZERO entries).
    d1 = diff_path("d1")
    create_image(d1, parent=base, uuid=uuids["d1"])
    changes = rng.sample(files, 18) + [next(temp) for _ in range(10)]
    writes = [(b, _block_data(b, "Updates", noise)) for b in changes]
    writes += [(b, bytes(BLOCK)) for b in rng.sample(files, 4)]
    writes += [(b, _block_data(b, f"Updates {what}", noise)) for b, what in metadata]
    _write_blocks([base, d1], writes)

    # "Before experiment": the state frozen before trying something risky.
    d2 = diff_path("d2")
    create_image(d2, parent=d1, uuid=uuids["d2"])
    writes = [(b, _block_data(b, "the experiment", noise)) for b in rng.sample(files, 10)]
    writes += [
        (b, _block_data(b, "the experiment", noise)) for b in sorted(next(temp) for _ in range(6))
    ]
    _write_blocks([base, d1, d2], writes)

    # Branch: "Updates" was restored (a fresh diff under d1), then "Alternative" was taken.
    d4 = diff_path("d4")
    create_image(d4, parent=d1, uuid=uuids["d4"])
    writes = [(b, _block_data(b, "Alternative", noise)) for b in rng.sample(files, 8)]
    writes += [
        (b, _block_data(b, "Alternative", noise)) for b in sorted(next(temp) for _ in range(5))
    ]
    _write_blocks([base, d1, d4], writes)
    d5 = diff_path("d5")
    create_image(d5, parent=d4, uuid=uuids["d5"])
    writes = [(b, _block_data(b, "the current state", noise)) for b in rng.sample(files, 5)]
    writes += [(b, _block_data(b, f"the current state {what}", noise)) for b, what in metadata]
    _write_blocks([base, d1, d4, d5], writes)

    # An orphan: a leftover diff of the base that no registry knows about.
    orphan = diff_path("orphan")
    create_image(orphan, parent=base, uuid=uuids["orphan"])
    _write_blocks(
        [base, orphan],
        [(b, _block_data(b, "a deleted snapshot", noise)) for b in rng.sample(files, 3)],
    )

    # A writethrough data disk: attached directly, never frozen by snapshots.
    data = folder / "data.vdi"
    create_image(data, DATA_DISK_SIZE, uuid=uuids["data"])
    _write_blocks(
        [data],
        [
            (b, _block_data(b, "the data disk", noise))
            for b in (0, 1, 2, 3, 64, 65, 200, 201, 202, 450)
        ],
    )

    _fix_modify_uuids(rng, [base, d1, d2, d4, d5, orphan, data])
    # The broken link: d2 names a parent UUID that no file has (as after a careless copy).
    with open_image(d2, writable=True) as image:
        image.write_header(image.header.replace(parent_uuid=uuids["missing"]))
        image.sync()

    vbox = folder / f"{DEMO_NAME}.vbox"
    vbox.write_text(_vbox_text(uuids), encoding="utf-8")


def _synthetic_base(
    base: Path, uuid: uuidlib.UUID, rng: random.Random, noise: bytes
) -> tuple[list[int], list[int]]:
    """The ext4-like base without real filesystems: (file blocks, free blocks)."""
    plan = _plan_base(rng)
    create_image(base, DISK_SIZE, uuid=uuid)
    writes: list[tuple[int, bytes]] = [(0, _mbr() + _block_data(0, "mkfs", noise)[512:])]
    writes += [(b, _block_data(b, "mkfs", noise)) for b in plan.metadata if b != 0]
    extents = list(plan.extents)
    rng.shuffle(extents)
    for extent in extents:
        writes += [(b, _block_data(b, "the installer", noise)) for b in extent]
    swap = _swap_header() + bytes(BLOCK - 4096)
    writes.append((plan.swap_header, swap))
    # Files deleted later and zero-filled by the guest: allocated blocks that are all zero.
    zeroed = [e for e in plan.extents if len(e) >= 3]
    rng.shuffle(zeroed)
    for extent in zeroed[:4]:
        writes += [(b, bytes(BLOCK)) for b in extent]
    _write_blocks([base], writes)
    used = set(plan.file_blocks) | set(plan.metadata)
    return plan.file_blocks, [b for b in range(600, 1700) if b not in used]


def _run_tool(*args: str | Path, cwd: Path | None = None) -> None:
    env = {
        **os.environ,
        "E2FSPROGS_FAKE_TIME": str(FS_TIME),
        "MTOOLS_SKIP_CHECK": "1",
        "TZ": "UTC",
        "LC_ALL": "C",
    }
    subprocess.run(
        [str(a) for a in args], check=True, capture_output=True, env=env, cwd=cwd, timeout=60
    )


def _populate(root: Path, rng: random.Random, prefix: str, count: int, largest: int) -> list[Path]:
    """``count`` seeded files (text-like heads, incompressible bodies) with a fixed mtime."""
    root.mkdir(parents=True)
    out = []
    for i in range(count):
        size = int(rng.triangular(16 << 10, largest, largest // 6))
        path = root / f"{prefix}{i:03d}.bin"
        path.write_bytes(f"vdigui demo file {prefix}{i:03d}\n".encode() + rng.randbytes(size))
        os.utime(path, (FS_TIME, FS_TIME))
        out.append(path)
    return out


def _real_base(
    base: Path, uuid: uuidlib.UUID, rng: random.Random, folder: Path
) -> tuple[list[int], list[int]] | None:
    """Build the base from real filesystems; None when the tools are missing or fail.

    Returns:
        (blocks the root filesystem fills completely with file data, free blocks of the root
        filesystem past its metadata), for the snapshots to write into.
    """
    if any(shutil.which(tool) is None for tool in FS_TOOLS):
        return None
    work = Path(tempfile.mkdtemp(prefix=".fs-", dir=folder))
    try:
        return _real_base_in(base, uuid, rng, work)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        with contextlib.suppress(FileNotFoundError):
            base.unlink()
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _real_base_in(
    base: Path, uuid: uuidlib.UUID, rng: random.Random, work: Path
) -> tuple[list[int], list[int]]:
    from vdigui.engine.usage_report import chain_usage

    root_lba, root_sectors = 2048, ROOT_MIB * MIB // 512
    fat_lba, fat_sectors = root_lba + root_sectors, FAT_MIB * MIB // 512
    swap_lba = fat_lba + fat_sectors
    swap_sectors = DISK_SIZE // 512 - swap_lba
    # ext4: a populated tree, then a few deletions (their blocks keep the old data).
    tree = work / "root"
    groups = {"usr": (48, 6 << 20), "var": (24, 3 << 20), "home": (16, 8 << 20)}
    files = {
        name: _populate(tree / name, rng, name[0], n, big) for name, (n, big) in groups.items()
    }
    for d in [tree, *(tree / n for n in groups)]:
        os.utime(d, (FS_TIME, FS_TIME))
    root = work / "root.img"
    with open(root, "wb") as f:
        f.truncate(root_sectors * 512)
    _run_tool(
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-L",
        "demo-root",
        "-U",
        "6a1d1e05-0d2c-4d3e-9e59-2026d3e7e5a1",
        "-E",
        "nodiscard,hash_seed=5f1e0b9e-7c1a-4f0d-8a59-0d1c5eed0001",
        "-d",
        tree,
        root,
    )
    doomed = sorted(rng.sample(files["var"], 12) + rng.sample(files["home"], 9))
    script = work / "rm.cmd"
    # mke2fs -d copies each source file's ctime, which no one can set: pin it (determinism).
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(FS_TIME))
    kept = [p for p in sorted(tree.rglob("*")) if p not in doomed]
    (work / "ls.cmd").write_text("ls -p /var\nls -p /home\n")
    listing = subprocess.run(
        ["debugfs", "-f", str(work / "ls.cmd"), str(root)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    inodes = {
        name: int(ino) for ino, name in re.findall(r"^/(\d+)/\d+/\d+/\d+/([^/]+)/", listing, re.M)
    }
    script.write_text(
        "".join(f"sif /{p.relative_to(tree)} ctime {stamp}\n" for p in kept)
        + "".join(f"rm /{p.relative_to(tree)}\n" for p in doomed)
        # rm stamps the freed inodes with the clock: pin those too.
        + "".join(f"sif <{inodes[p.name]}> ctime {stamp}\n" for p in doomed)
    )
    _run_tool("debugfs", "-w", "-f", script, root)
    # FAT32: flat files (-m keeps their times), then deletions.
    data = _populate(work / "data", rng, "d", 20, 2 << 20)
    fat = work / "fat.img"
    with open(fat, "wb") as f:
        f.truncate(fat_sectors * 512)
    _run_tool("mkfs.vfat", "-F", "32", "-n", "DEMO-DATA", "-i", "0D1C5EED", "-h", str(fat_lba), fat)
    _run_tool("mcopy", "-m", "-Q", "-i", fat, *data, "::/")
    _run_tool("mdel", "-i", fat, *(f"::/{p.name}" for p in rng.sample(data, 6)))
    _pin_fat_times(fat)

    create_image(base, DISK_SIZE, uuid=uuid)
    chain = open_paths([base], writable_top=True)
    try:
        mbr = _mbr(
            [
                (0x80, 0x83, root_lba, root_sectors),
                (0x00, 0x0C, fat_lba, fat_sectors),
                (0x00, 0x82, swap_lba, swap_sectors),
            ]
        )
        chain.write(0, mbr, durable=False)
        # mkfs metadata first, then file data in shuffled runs, as an installer writes them.
        runs = [*_data_runs(root, root_lba * 512), *_data_runs(fat, fat_lba * 512)]
        head, rest = runs[:2], runs[2:]
        rng.shuffle(rest)
        for offset, payload in head + rest:
            chain.write(offset, payload, durable=False)
        chain.write(swap_lba * 512, _swap_header(), durable=False)
        chain.top.sync()
        usage = chain_usage(chain)
        used = usage.used_bytes
        first = (root_lba * 512) // BLOCK + 8
        last = (root_lba * 512 + root_sectors * 512) // BLOCK
        full = [b for b in _file_data_blocks(chain) if first <= b < last]
        free = [b for b in range(first, last) if used[b] == 0]
        # The guest zero-filled part of its free space once: allocated all-zero blocks,
        # which plain compaction already drops.
        stale = [b for b in free if is_allocated(chain.top.block_map[b])]
        for block in sorted(rng.sample(stale, min(6, len(stale)))):
            chain.write(block * BLOCK, bytes(BLOCK), durable=False)
        chain.top.sync()
    finally:
        chain.close()
    return full, free


def _file_data_blocks(chain: DiskChain) -> list[int]:
    """Guest blocks made entirely of regular files' data on the ext4 volume.

    The snapshots rewrite these to model changed file contents; a block the filesystem's own
    structures share (a directory, an inode table) must never be one of them, or the demo's
    later states would hold a damaged filesystem.
    """
    from vdigui.engine.guestfs.files import EntryKind, ExtentKind, open_namespace
    from vdigui.engine.usage_report import GuestReader

    covered = np.zeros(chain.guest_blocks, dtype=np.int64)
    names = open_namespace(GuestReader(chain), "p1")
    for _folder, entries in names.walk("/"):
        for entry in entries:
            if entry.kind is not EntryKind.FILE:
                continue
            for ext in names.extents(entry):
                if ext.kind is not ExtentKind.DATA or ext.disk_offset is None:
                    continue
                start, end = ext.disk_offset, ext.disk_offset + ext.length
                for block in range(start // BLOCK, (end - 1) // BLOCK + 1):
                    lo, hi = max(start, block * BLOCK), min(end, (block + 1) * BLOCK)
                    covered[block] += hi - lo
    return [int(b) for b in np.flatnonzero(covered == BLOCK)]


def _pin_fat_times(image: Path) -> None:
    """Give every FAT32 root directory entry the demo's fixed time (write, creation, access).

    mkfs.vfat and mcopy stamp entries with the clock; the demo must be the same every build.
    """
    with open(image, "r+b") as f:
        boot = f.read(512)
        bps = int.from_bytes(boot[11:13], "little")
        spc = boot[13]
        reserved = int.from_bytes(boot[14:16], "little")
        fats = boot[16]
        fat_size = int.from_bytes(boot[36:40], "little")
        root_cluster = int.from_bytes(boot[44:48], "little")
        start = (reserved + fats * fat_size + (root_cluster - 2) * spc) * bps
        f.seek(start)
        raw = bytearray(f.read(spc * bps))
        t = time.gmtime(FS_TIME)
        dos = (t.tm_hour << 11 | t.tm_min << 5 | t.tm_sec // 2).to_bytes(2, "little") + (
            (t.tm_year - 1980) << 9 | t.tm_mon << 5 | t.tm_mday
        ).to_bytes(2, "little")
        for at in range(0, len(raw), 32):
            entry = raw[at : at + 32]
            if entry[0] == 0:
                break
            if entry[11] == 0x0F:  # a long-name piece: no times
                continue
            entry[13] = 0
            entry[14:18] = entry[22:26] = dos
            entry[18:20] = dos[2:]
            raw[at : at + 32] = entry
        f.seek(start)
        f.write(raw)


def _data_runs(image: Path, disk_offset: int, chunk: int = 4 * MIB) -> list[tuple[int, bytes]]:
    """The non-zero pieces of a (sparse) filesystem image, as (disk offset, bytes) runs.

    Holes are skipped with SEEK_DATA/SEEK_HOLE, so a mostly empty 1.5 GiB image costs only
    what mkfs and the files wrote; runs are cut at ``chunk`` bytes so they can be shuffled.
    """
    out: list[tuple[int, bytes]] = []
    fd = os.open(image, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            start -= start % BLOCK
            for at in range(start, end, chunk):
                piece = os.pread(fd, min(chunk, end - at), at)
                if piece.count(0) != len(piece):
                    out.append((disk_offset + at, piece))
            pos = max(end, pos + 1)
    finally:
        os.close(fd)
    return out


def _fix_modify_uuids(rng: random.Random, paths: list[Path]) -> None:
    """Give every image a seeded uuidModify and point children's uuidParentModify at it.

    ``create_image`` draws uuidModify at random; the demo must be identical on every build.
    ``paths`` are parents before children.
    """
    modify: dict[uuidlib.UUID, uuidlib.UUID] = {}
    for path in paths:
        with open_image(path, writable=True) as image:
            header = image.header
            new_modify = _seeded_uuid(rng)
            changes: dict[str, object] = {"modify_uuid": new_modify}
            if header.parent_uuid in modify:
                changes["parent_modify_uuid"] = modify[header.parent_uuid]
            image.write_header(header.replace(**changes))
            image.sync()
            modify[header.uuid] = new_modify
    for path in paths:  # sanity: every header still validates
        read_header(path)


# -- the .vbox -----------------------------------------------------------------------------


def _attachments(disk: uuidlib.UUID, data: uuidlib.UUID, indent: str) -> str:
    return (
        f"{indent}<Hardware>\n"
        f'{indent}  <CPU count="2"><PAE enabled="true"/><LongMode enabled="true"/></CPU>\n'
        f'{indent}  <Memory RAMSize="2048"/>\n'
        f'{indent}  <Display controller="VMSVGA" VRAMSize="16"/>\n'
        f"{indent}  <StorageControllers>\n"
        f'{indent}    <StorageController name="SATA" type="AHCI" PortCount="2" '
        f'useHostIOCache="false" Bootable="true">\n'
        f'{indent}      <AttachedDevice type="HardDisk" hotpluggable="false" port="0" '
        f'device="0" nonrotational="true" discard="true">\n'
        f'{indent}        <Image uuid="{{{disk}}}"/>\n'
        f"{indent}      </AttachedDevice>\n"
        f'{indent}      <AttachedDevice type="HardDisk" hotpluggable="false" port="1" '
        f'device="0">\n'
        f'{indent}        <Image uuid="{{{data}}}"/>\n'
        f"{indent}      </AttachedDevice>\n"
        f"{indent}    </StorageController>\n"
        f"{indent}  </StorageControllers>\n"
        f"{indent}</Hardware>\n"
    )


def _vbox_text(u: dict[str, uuidlib.UUID]) -> str:
    """The machine settings, in VirtualBox 7.0's layout (settings version 1.19)."""

    def loc(key: str) -> str:
        return f"Snapshots/{{{u[key]}}}.vdi"

    i6, i10, i14 = " " * 6, " " * 10, " " * 14
    s3 = (
        f'{i10}<Snapshot uuid="{{{u["s3"]}}}" name="Before experiment" '
        f'timeStamp="2026-05-20T21:03:47Z">\n'
        f"{i10}  <Description>Taken before trying the new kernel. The experiment failed; this "
        f"state is kept for reference.</Description>\n"
        + _attachments(u["d2"], u["data"], i10 + "  ")
        + f"{i10}</Snapshot>\n"
    )
    s4 = (
        f'{i10}<Snapshot uuid="{{{u["s4"]}}}" name="Alternative" '
        f'timeStamp="2026-06-01T10:12:09Z">\n'
        f'{i10}  <Description>Restored "Updates" and took the other road.</Description>\n'
        + _attachments(u["d4"], u["data"], i10 + "  ")
        + f"{i10}</Snapshot>\n"
    )
    s2 = (
        f'{i6}  <Snapshot uuid="{{{u["s2"]}}}" name="Updates" timeStamp="2026-04-11T18:40:22Z">\n'
        f"{i6}    <Description>All updates installed, guest additions 7.0."
        f"</Description>\n"
        + _attachments(u["d1"], u["data"], i6 + "    ")
        + f"{i6}    <Snapshots>\n"
        + s3
        + s4
        + f"{i6}    </Snapshots>\n"
        + f"{i6}  </Snapshot>\n"
    )
    s1 = (
        f'    <Snapshot uuid="{{{u["s1"]}}}" name="Fresh install" '
        f'timeStamp="2026-03-02T09:14:05Z">\n'
        f"      <Description>Clean install, nothing configured yet.</Description>\n"
        + _attachments(u["base"], u["data"], i6)
        + f"{i6}<Snapshots>\n"
        + s2
        + f"{i6}</Snapshots>\n"
        + "    </Snapshot>\n"
    )
    registry = (
        "    <MediaRegistry>\n"
        "      <HardDisks>\n"
        f'        <HardDisk uuid="{{{u["base"]}}}" location="{DEMO_NAME}.vdi" format="VDI" '
        'type="Normal">\n'
        f'          <HardDisk uuid="{{{u["d1"]}}}" location="{loc("d1")}" format="VDI">\n'
        f'            <HardDisk uuid="{{{u["d2"]}}}" location="{loc("d2")}" format="VDI"/>\n'
        f'            <HardDisk uuid="{{{u["d4"]}}}" location="{loc("d4")}" format="VDI">\n'
        f'{i14}<HardDisk uuid="{{{u["d5"]}}}" location="{loc("d5")}" format="VDI"/>\n'
        "            </HardDisk>\n"
        "          </HardDisk>\n"
        "        </HardDisk>\n"
        f'        <HardDisk uuid="{{{u["data"]}}}" location="data.vdi" format="VDI" '
        'type="Writethrough"/>\n'
        "      </HardDisks>\n"
        "    </MediaRegistry>\n"
    )
    return (
        '<?xml version="1.0"?>\n'
        "<!--\n"
        "** DO NOT EDIT THIS FILE.\n"
        "** If you make changes to this file while any VirtualBox related application\n"
        "** is running, your changes will be overwritten later, without taking effect.\n"
        "** Use VBoxManage or the VirtualBox Manager GUI to make changes.\n"
        "-->\n"
        '<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">\n'
        f'  <Machine uuid="{{{u["machine"]}}}" name="{DEMO_NAME}" OSType="Ubuntu_64" '
        f'currentSnapshot="{{{u["s4"]}}}" snapshotFolder="Snapshots" '
        'lastStateChange="2026-06-03T08:30:00Z">\n' + registry + "    <ExtraData>\n"
        '      <ExtraDataItem name="GUI/LastCloseAction" value="PowerOff"/>\n'
        "    </ExtraData>\n" + s1 + _attachments(u["d5"], u["data"], "    ") + "  </Machine>\n"
        "</VirtualBox>\n"
    )


def remove_demo(folder: Path | str | None = None) -> int | None:
    """Delete the cached demo, every version of it (``vdigui --demo --clean``, and tests).

    Returns:
        The host disk space its files took (allocated blocks, as ``du`` counts them: the
        space a user gets back, not the files' apparent sizes), or None when there was no
        demo folder.
    """
    root = Path(folder) if folder is not None else default_cache_folder() / "demo"
    if not root.is_dir():
        return None
    allocated = 0
    for base, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                allocated += (Path(base) / name).lstat().st_blocks * 512
    fileio.remove_tree(root)
    return allocated
