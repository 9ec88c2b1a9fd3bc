"""FAT12/16/32 images from mkfs.vfat + mtools: exact used counts; zeroing unused space is safe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from guestfs_images import MiB, assert_consistent, need, prefill, run, tree_hashes, zero_unused

#: name -> (image size, mkfs.vfat options, expected kind)
VARIANTS = {
    "fat12": (8 * MiB, ["-F", "12"], "fat12"),
    "fat16": (32 * MiB, ["-F", "16"], "fat16"),
    "fat16_4k_clusters": (64 * MiB, ["-F", "16", "-s", "8"], "fat16"),
    "fat32": (64 * MiB, ["-F", "32", "-s", "1"], "fat32"),
}


def build_fat(path: Path, tree: Path, size: int, opts: list[str]) -> Path:
    need("mkfs.vfat", "mcopy", "mdel", "fsck.vfat")
    prefill(path, size)
    run("mkfs.vfat", *opts, "-n", "TLABEL", path)
    if size < 16 * MiB:
        (tree / "sub" / "big.bin").write_bytes((tree / "sub" / "big.bin").read_bytes()[:MiB])
    run("mcopy", "-s", "-Q", "-i", path, *sorted(tree.iterdir()), "::/")
    run("mdel", "-i", path, "::/f03.bin")
    (tree / "f03.bin").unlink()
    run("mcopy", "-Q", "-i", path, tree / "f05.bin", "::/late.bin")
    (tree / "late.bin").write_bytes((tree / "f05.bin").read_bytes())
    return path


def fsck_used_clusters(path: Path) -> int:
    res = run("fsck.vfat", "-n", path, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return int(re.search(r"(\d+)/(\d+) clusters", res.stdout).group(1))


def geometry(path: Path) -> tuple[int, int]:
    """(bytes before the data area, bytes per cluster) from the boot sector."""
    boot = path.read_bytes()[:512]
    bps = int.from_bytes(boot[11:13], "little")
    spc = boot[13]
    reserved = int.from_bytes(boot[14:16], "little")
    nfats = boot[16]
    root = int.from_bytes(boot[17:19], "little")
    fatsz = int.from_bytes(boot[22:24], "little") or int.from_bytes(boot[36:40], "little")
    return (reserved + nfats * fatsz + -(-root * 32 // bps)) * bps, bps * spc


def mcopy_hashes(path: Path, out: Path) -> dict[str, str]:
    out.mkdir()
    run("mcopy", "-s", "-n", "-i", path, "::/*", out)
    return tree_hashes(out)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fat_variant_exact_and_safe(analyze, variant: str, tmp_path: Path, tree: Path) -> None:
    size, opts, kind = VARIANTS[variant]
    img = build_fat(tmp_path / "fs.img", tree, size, opts)
    usage = analyze(img)
    assert_consistent(usage, size)
    (vol,) = usage.volumes
    assert not vol.kept_whole, vol.notes
    assert (vol.kind, vol.label) == (kind, "TLABEL")
    before_data, cluster = geometry(img)
    assert vol.used == before_data + fsck_used_clusters(img) * cluster
    expect = tree_hashes(tree)
    for bs in (MiB, 64 * 1024):
        usage = analyze(img, bs)
        zeroed = tmp_path / f"zeroed-{bs}.img"
        assert zero_unused(img, zeroed, usage) > 0
        fsck_used_clusters(zeroed)
        assert mcopy_hashes(zeroed, tmp_path / f"out-{bs}") == expect


def test_fat32_active_fat_flag(analyze, tmp_path: Path, tree: Path) -> None:
    """With mirroring off, only the FAT named in ext_flags counts (here FAT #1)."""
    img = build_fat(tmp_path / "fs.img", tree, 64 * MiB, ["-F", "32", "-s", "1"])
    (expected,) = analyze(img).volumes
    data = bytearray(img.read_bytes())
    reserved = int.from_bytes(data[14:16], "little")
    fatsz = int.from_bytes(data[36:40], "little")
    fat0 = reserved * 512
    # Make FAT #0 claim everything and mark FAT #1 the only active one.
    data[fat0 + 8 : fat0 + fatsz * 512] = b"\xff" * (fatsz * 512 - 8)
    data[0x28:0x2A] = (0x80 | 1).to_bytes(2, "little")
    img.write_bytes(bytes(data))
    (vol,) = analyze(img).volumes
    assert vol.used == expected.used
    assert any("FAT #1" in n for n in vol.notes)
