"""Whole disks: MBR with an EBR chain, GPT (backup, hybrid MBR), unaligned partitions, swap."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from guestfs_images import (
    MiB,
    assert_consistent,
    extract,
    flat_hashes,
    fs_check,
    fs_used_bytes,
    make_fs,
    make_tree,
    need,
    place,
    prefill,
    run,
    tree_hashes,
    zero_unused,
)

ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MSR = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
BASIC = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"


def build_disk(tmp: Path, size: int, label: str, parts: list[tuple[int, str, str | None]]):
    """Partition a prefilled disk with sfdisk and fill each partition with its filesystem.

    Args:
        parts: (partition number, sfdisk fields, filesystem kind or None).

    Returns:
        (disk path, {number: (start byte, size bytes, kind, expected hashes, expected used)}).
    """
    need("sfdisk")
    disk = prefill(tmp / "disk.img", size)
    script = [f"label: {label}"] + [f"{disk}{n} : {fields}" for n, fields, _ in parts]
    res = run("sfdisk", "-q", disk, env={"LC_ALL": "C"}, check=False, stdin="\n".join(script))
    assert res.returncode == 0, res.stderr
    table = json.loads(run("sfdisk", "-J", disk).stdout)["partitiontable"]["partitions"]
    by_node = {p["node"]: p for p in table}
    info = {}
    for n, _fields, kind in parts:
        p = by_node[f"{disk}{n}"]
        start, length = p["start"] * 512, p["size"] * 512
        if kind is None:
            continue
        fs = tmp / f"p{n}.img"
        tree = None
        if kind not in ("swap", "raw"):
            tree = make_tree(tmp / f"tree{n}", seed=n, big=MiB if length > 12 * MiB else 64 * 1024)
        make_fs(kind, fs, length, tree)
        hashes = {} if tree is None else flat_hashes(tree) if kind == "ntfs" else tree_hashes(tree)
        used = fs_used_bytes(kind, fs) if kind not in ("swap", "raw") else None
        place(disk, fs, p["start"])
        info[n] = (start, length, kind, hashes, used)
    return disk, info


def check_disk(analyze, disk: Path, info: dict, tmp: Path, **kw) -> None:
    """Per-volume used counts, then zero unused blocks and re-check every filesystem."""
    usage = analyze(disk, **kw)
    assert_consistent(usage, disk.stat().st_size)
    by_start = {v.start: v for v in usage.volumes if v.kind not in ("partition-table", "free")}
    for start, _length, kind, _hashes, used in info.values():
        vol = by_start[start]
        if kind == "swap":
            assert vol.kind == "swap"
            assert vol.label == "tswap"
            continue
        if kind == "raw":
            assert vol.kept_whole
            continue
        assert not vol.kept_whole, vol.notes
        assert vol.kind == kind, vol
        assert vol.used == used, (vol, used)
    table_before = run("sfdisk", "-d", disk).stdout
    for bs in (MiB, 64 * 1024):
        usage = analyze(disk, bs, **kw)
        zeroed = tmp / f"zeroed-{bs}.img"
        assert zero_unused(disk, zeroed, usage) > 0
        assert run("sfdisk", "-d", zeroed).stdout == table_before.replace(str(disk), str(zeroed))
        for n, (start, length, kind, hashes, _used) in info.items():
            part = extract(zeroed, start, length, tmp / f"x{bs}-{n}.img")
            if kind in ("swap", "raw"):
                orig = extract(disk, start, length, tmp / f"o{bs}-{n}.img").read_bytes()
                keep = 4096 if kw.get("discard_swap") and kind == "swap" else length
                assert part.read_bytes()[:keep] == orig[:keep]
                continue
            assert fs_check(kind, part, tmp / f"out{bs}-{n}") == hashes, (kind, n)


MBR_PARTS = [
    (1, "start=2048, size=16MiB, type=83", "ext4"),
    (2, "start=36864, size=12MiB, type=e", "fat16"),
    (3, "start=63488, size=24MiB, type=5", None),
    (5, "size=6MiB, type=1", "fat12"),
    (6, "size=4MiB, type=82", "swap"),
    (7, "size=8MiB, type=83", "ext2"),
]


@pytest.fixture
def mbr_disk(tmp_path: Path):
    return build_disk(tmp_path, 64 * MiB, "dos", MBR_PARTS)


def test_mbr_with_ebr_chain(analyze, mbr_disk, tmp_path: Path) -> None:
    disk, info = mbr_disk
    usage = analyze(disk)
    names = [(v.kind, v.partition) for v in usage.volumes]
    assert names == [
        ("partition-table", "MBR"),
        ("ext4", "MBR #1"),
        ("free", "unpartitioned"),
        ("fat16", "MBR #2"),
        ("free", "unpartitioned"),
        ("partition-table", "MBR"),  # EBR of #5
        ("free", "unpartitioned"),
        ("fat12", "EBR logical #5"),
        ("partition-table", "MBR"),  # EBR of #6
        ("free", "unpartitioned"),
        ("swap", "EBR logical #6"),
        ("partition-table", "MBR"),  # EBR of #7
        ("free", "unpartitioned"),
        ("ext2", "EBR logical #7"),
        ("free", "unpartitioned"),
    ]
    assert [v.label for v in usage.volumes if v.kind == "partition-table"] == [
        "MBR and boot-loader gap",
        "EBR",
        "EBR",
        "EBR",
    ]
    swap = next(v for v in usage.volumes if v.kind == "swap")
    assert swap.kept_whole and swap.used is None
    # The gap after partition 1 (blocks 17) and the tail after the extended partition are unused.
    assert usage.used_bytes[17] == 0
    assert (usage.used_bytes[56:] == 0).all()
    # MBR + boot-loader gap (the first MiB) is kept.
    assert usage.used_bytes[0] == MiB
    check_disk(analyze, disk, info, tmp_path)


def test_discard_swap_keeps_only_the_header_page(analyze, mbr_disk, tmp_path: Path) -> None:
    disk, info = mbr_disk
    usage = analyze(disk, discard_swap=True)
    swap = next(v for v in usage.volumes if v.kind == "swap")
    assert not swap.kept_whole and swap.used == 4096
    check_disk(analyze, disk, info, tmp_path, discard_swap=True)


def test_hibernated_swap_is_kept_whole_even_when_discarding(analyze, mbr_disk) -> None:
    disk, info = mbr_disk
    start = next(i[0] for i in info.values() if i[2] == "swap")
    with open(disk, "r+b") as f:
        f.seek(start + 4096 - 10)
        f.write(b"S1SUSPEND\0")
    usage = analyze(disk, discard_swap=True)
    swap = next(v for v in usage.volumes if v.kind == "swap")
    assert swap.kept_whole
    assert any("HIBERNATED" in n for n in swap.notes)
    first, last = start // MiB, (start + 4 * MiB - 1) // MiB
    assert (usage.used_bytes[first : last + 1] == MiB).all()


def test_ebr_loop_is_cut(analyze, mbr_disk) -> None:
    disk, _info = mbr_disk
    data = bytearray(disk.read_bytes())
    ext_start = 63488
    # Walk to the last EBR and point its link back at the second one.
    second = struct.unpack_from("<I", data, ext_start * 512 + 446 + 16 + 8)[0]
    ebr = ext_start
    while True:
        link_type = data[ebr * 512 + 446 + 16 + 4]
        if link_type == 0:
            break
        ebr = ext_start + struct.unpack_from("<I", data, ebr * 512 + 446 + 16 + 8)[0]
    struct.pack_into("<B3xB3xII", data, ebr * 512 + 446 + 16, 0, 5, second, 2048)
    disk.write_bytes(bytes(data))
    usage = analyze(disk)
    assert any("loops" in n for n in usage.notes)
    logical = [v.partition for v in usage.volumes if v.partition.startswith("EBR")]
    assert logical == ["EBR logical #5", "EBR logical #6", "EBR logical #7"]
    # A damaged chain may hide partitions: the whole extended partition (31..55 MiB) is kept.
    assert (usage.used_bytes[31:55] == MiB).all()


GPT_PARTS = [
    (1, f"size=8MiB, type={ESP}, name=ESP", "fat16"),
    (2, f"size=1MiB, type={MSR}", "raw"),
    (3, f"size=16MiB, type={BASIC}", "ntfs"),
    (4, f"size=16MiB, type={LINUX}", "ext4"),
    (5, f"size=4MiB, type={SWAP}", "swap"),
]


@pytest.fixture
def gpt_disk(tmp_path: Path):
    return build_disk(tmp_path, 64 * MiB, "gpt", GPT_PARTS)


def sgdisk_clean(disk: Path) -> None:
    need("sgdisk")
    res = run("sgdisk", "-v", disk, check=False)
    assert res.returncode == 0 and "No problems found" in res.stdout, res.stdout + res.stderr


def test_gpt_disk_with_free_tail(analyze, gpt_disk, tmp_path: Path) -> None:
    disk, info = gpt_disk
    usage = analyze(disk)
    parts = [(v.kind, v.partition) for v in usage.volumes if v.kind not in ("free",)]
    assert parts == [
        ("partition-table", "GPT"),
        ("fat16", "GPT #1 'ESP'"),
        ("msr", "GPT #2 'Microsoft reserved'"),
        ("ntfs", "GPT #3 'Microsoft basic data'"),
        ("ext4", "GPT #4 'Linux filesystem'"),
        ("swap", "GPT #5 'Linux swap'"),
        ("partition-table", "GPT"),
    ]
    # Free tail: 46 MiB of partitions after the first MiB; the backup GPT keeps the last block.
    assert (usage.used_bytes[47:63] == 0).all()
    assert 0 < usage.used_bytes[63] < MiB
    check_disk(analyze, disk, info, tmp_path)
    for bs in (MiB, 64 * 1024):
        zeroed = tmp_path / "gpt-zeroed.img"
        zero_unused(disk, zeroed, analyze(disk, bs))
        sgdisk_clean(zeroed)


def test_gpt_damaged_primary_uses_backup(analyze, gpt_disk) -> None:
    disk, _info = gpt_disk
    good = [(v.kind, v.start, v.used) for v in analyze(disk).volumes if v.kind != "partition-table"]
    with open(disk, "r+b") as f:
        f.seek(512 + 8)
        f.write(b"\xff\xff\xff\xff")  # breaks the header CRC
    usage = analyze(disk)
    assert any("backup GPT" in n for n in usage.notes)
    got = [(v.kind, v.start, v.used) for v in usage.volumes if v.kind != "partition-table"]
    assert got == good


def test_hybrid_mbr_trusts_gpt(analyze, gpt_disk) -> None:
    need("sgdisk")
    disk, _info = gpt_disk
    run("sgdisk", "-h", "4", disk)
    usage = analyze(disk)
    assert any("hybrid MBR" in n for n in usage.notes)
    assert [v.kind for v in usage.volumes if v.partition.startswith("GPT #")] == [
        "fat16",
        "msr",
        "ntfs",
        "ext4",
        "swap",
    ]


def test_unaligned_sector_63_partitions(analyze, tmp_path: Path) -> None:
    """Partitions at sector 63 and at odd sizes: units straddle block edges; both blocks count."""
    parts = [
        (1, "start=63, size=40001, type=83", "ext4"),
        (2, "start=40064, size=30001, type=e", "fat16"),
    ]
    disk, info = build_disk(tmp_path, 40 * MiB, "dos", parts)
    usage = analyze(disk)
    assert usage.used_bytes[0] == MiB  # MBR + 63-sector gap + start of partition 1
    check_disk(analyze, disk, info, tmp_path)
    # Compare with a per-unit reference built from the ext bitmap at 4 KiB granularity.
    fine = analyze(disk, 4096)
    coarse = fine.used_bytes.astype(np.int64).reshape(-1, 256).sum(axis=1)
    assert (coarse == usage.used_bytes).all()


def _gpt_4kn(disk: bytearray, part_first: int, part_last: int) -> None:
    """Write a GPT with 4096-byte logical sectors (no Debian tool makes one on a plain file)."""
    ss = 4096
    total = len(disk) // ss
    entries = bytearray(128 * 128)
    type_guid = bytes.fromhex("A2A0D0EBE5B9334487C068B6B72699C7")  # Microsoft basic data
    entries[0:16] = type_guid
    entries[16:32] = bytes(range(1, 17))
    struct.pack_into("<QQQ", entries, 32, part_first, part_last, 0)
    entries[56 : 56 + 8] = "data".encode("utf-16-le")
    ecrc = zlib.crc32(entries)
    elen = len(entries) // ss

    def header(my: int, alt: int, entries_lba: int) -> bytes:
        h = bytearray(92)
        h[0:8] = b"EFI PART"
        struct.pack_into("<IIIIQQQQ", h, 8, 0x10000, 92, 0, 0, my, alt, 2 + elen, total - 2 - elen)
        h[56:72] = bytes(range(16, 32))
        struct.pack_into("<QIII", h, 72, entries_lba, 128, 128, ecrc)
        struct.pack_into("<I", h, 16, zlib.crc32(h))
        return bytes(h) + bytes(ss - 92)

    mbr = bytearray(512)
    struct.pack_into("<B3xB3xII", mbr, 446, 0, 0xEE, 1, total - 1)
    mbr[510:512] = b"\x55\xaa"
    disk[0:ss] = bytes(mbr) + bytes(ss - 512)
    disk[ss : 2 * ss] = header(1, total - 1, 2)
    disk[2 * ss : (2 + elen) * ss] = entries
    disk[(total - 1 - elen) * ss : (total - 1) * ss] = entries
    disk[(total - 1) * ss :] = header(total - 1, 1, total - 1 - elen)


def test_gpt_with_4096_byte_sectors(analyze, tmp_path: Path) -> None:
    disk = prefill(tmp_path / "4kn.img", 32 * MiB)
    fs = tmp_path / "p1.img"
    need("mkfs.vfat", "mcopy")
    prefill(fs, 16 * MiB)
    run("mkfs.vfat", "-F", "16", "-S", "4096", "-s", "1", fs)
    tree = make_tree(tmp_path / "tree", big=MiB)
    run("mcopy", "-s", "-Q", "-i", fs, *sorted(tree.iterdir()), "::/")
    data = bytearray(disk.read_bytes())
    _gpt_4kn(data, 256, 256 + 4096 - 1)
    data[MiB : MiB + 16 * MiB] = fs.read_bytes()
    disk.write_bytes(bytes(data))
    usage = analyze(disk)
    assert any("4096-byte" in n for n in usage.notes)
    vol = next(v for v in usage.volumes if v.partition.startswith("GPT #1"))
    assert (vol.kind, vol.start, vol.size) == ("fat16", MiB, 16 * MiB)
    assert vol.used == fs_used_bytes("fat16", fs)
    assert usage.used_bytes[-1] > 0  # backup GPT
    assert (usage.used_bytes[17:31] == 0).all()
