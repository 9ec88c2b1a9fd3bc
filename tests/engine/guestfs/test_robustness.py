"""Odd content never raises: garbage, truncated and corrupted metadata are kept whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from guestfs_images import MiB, make_fs, make_tree, prefill


def test_garbage_disk_is_kept_whole(analyze, tmp_path: Path) -> None:
    img = prefill(tmp_path / "junk.img", 4 * MiB)
    usage = analyze(img)
    (vol,) = usage.volumes
    assert vol.kind == "unknown" and vol.kept_whole
    assert (usage.used_bytes == MiB).all()


def test_empty_disk_and_odd_sizes(analyze, tmp_path: Path) -> None:
    img = tmp_path / "zero.img"
    img.write_bytes(bytes(3 * MiB + 1234))
    usage = analyze(img)
    assert len(usage.used_bytes) == 4
    assert usage.used_bytes[-1] == 1234  # kept whole, capped at the disk end


@pytest.mark.parametrize("kind", ["ext4", "fat16", "ntfs"])
def test_corrupted_metadata_never_raises(analyze, kind: str, tmp_path: Path) -> None:
    """Flip bytes all over the metadata area; every outcome must be a clean result."""
    img = tmp_path / "fs.img"
    make_fs(kind, img, 16 * MiB, make_tree(tmp_path / "t", big=MiB))
    pristine = img.read_bytes()
    rng = np.random.default_rng(7)
    meta_end = {"ext4": 256 * 1024, "fat16": 128 * 1024, "ntfs": 4 * MiB}[kind]
    for trial in range(40):
        data = bytearray(pristine)
        for off in rng.integers(0, meta_end, size=8 if trial % 2 else 64):
            data[int(off)] = int(rng.integers(0, 256))
        img.write_bytes(bytes(data))
        usage = analyze(img)
        assert usage.used_bytes.dtype == np.uint32
        assert (usage.used_bytes <= MiB).all()


def test_md_raid_member_with_end_superblock_is_kept_whole(analyze, tmp_path: Path) -> None:
    """A RAID1 member (md 1.0: metadata at the end) also shows an ext4 at offset 0."""
    img = tmp_path / "md.img"
    size = 16 * MiB
    make_fs("ext4", img, size, None)
    with open(img, "r+b") as f:
        f.seek((size - 8192) & ~0xFFF)
        f.write((0xA92B4EFC).to_bytes(4, "little"))
    (vol,) = analyze(img).volumes
    assert vol.kind == "md" and vol.kept_whole
