"""ext2/3/4 images from mke2fs: exact used counts; zeroing what we call unused is safe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from guestfs_images import (
    MiB,
    assert_consistent,
    need,
    prefill,
    run,
    tree_hashes,
    zero_unused,
)

#: name -> mke2fs options. -g makes several block groups in a small image, so BLOCK_UNINIT,
#: flex_bg placement and backup superblocks all occur.
VARIANTS = {
    "ext4": ["-t", "ext4", "-b", "4096", "-g", "2048"],
    "ext4_1k": ["-t", "ext4", "-b", "1024"],
    "ext3": ["-t", "ext3", "-b", "4096", "-g", "4096"],
    "ext2_1k": ["-t", "ext2", "-b", "1024"],
    "uninit_bg": [
        "-t",
        "ext4",
        "-b",
        "4096",
        "-g",
        "2048",
        "-O",
        "^flex_bg,^metadata_csum,uninit_bg",
    ],
    "sparse_super2": ["-t", "ext4", "-b", "4096", "-g", "2048", "-O", "sparse_super2"],
    "bigalloc": ["-t", "ext4", "-b", "4096", "-O", "bigalloc", "-C", "65536"],
    "meta_bg": ["-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"],
    "meta_bg_64bit": [
        "-t",
        "ext4",
        "-b",
        "4096",
        "-g",
        "1024",
        "-O",
        "meta_bg,^resize_inode,64bit",
    ],
}


def build_ext(path: Path, tree: Path, opts: list[str], size: int = 64 * MiB, stale: bool = True):
    """mke2fs with a tree, delete one file (its blocks keep their data), add one into the hole."""
    need("mke2fs", "debugfs", "dumpe2fs", "e2fsck")
    if stale:
        prefill(path, size)
    else:
        with open(path, "wb") as f:
            f.truncate(size)
    run("mke2fs", "-q", "-F", "-E", "nodiscard", "-L", "tlabel", *opts, "-d", tree, path)
    run("debugfs", "-w", "-R", "rm /f03.bin", path)
    run("debugfs", "-w", "-R", f"write {tree / 'f05.bin'} /late.bin", path)
    (tree / "f03.bin").unlink()
    (tree / "late.bin").write_bytes((tree / "f05.bin").read_bytes())
    return path


def superblock(path: Path) -> dict[str, int]:
    out = run("dumpe2fs", "-h", path).stdout
    get = lambda key: int(re.search(rf"^{key}:\s+(\d+)", out, re.M).group(1))  # noqa: E731
    return {"blocks": get("Block count"), "free": get("Free blocks"), "bs": get("Block size")}


def e2fsck_clean(path: Path) -> None:
    res = run("e2fsck", "-fn", path, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def dump_hashes(path: Path, out: Path) -> dict[str, str]:
    out.mkdir()
    run("debugfs", "-R", f"rdump / {out}", path)
    hashes = tree_hashes(out)
    return {k: v for k, v in hashes.items() if not k.startswith("lost+found")}


def check_zeroing(
    analyze, img: Path, tmp: Path, expect: dict[str, str], offset: int = 0, **kw
) -> None:
    """Zero every block called unused (1 MiB and 64 KiB), then fsck and compare every file."""
    for bs in (MiB, 64 * 1024):
        usage = analyze(img, bs, **kw)
        zeroed = tmp / f"zeroed-{bs}.img"
        n = zero_unused(img, zeroed, usage)
        assert n > 0
        if offset:
            part = tmp / f"part-{bs}.img"
            with open(zeroed, "rb") as f, open(part, "wb") as p:
                f.seek(offset)
                p.write(f.read())
            zeroed = part
        e2fsck_clean(zeroed)
        assert dump_hashes(zeroed, tmp / f"dump-{bs}") == expect


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ext_variant_exact_and_safe(analyze, variant: str, tmp_path: Path, tree: Path) -> None:
    img = build_ext(tmp_path / "fs.img", tree, VARIANTS[variant])
    e2fsck_clean(img)
    usage = analyze(img)
    assert_consistent(usage, img.stat().st_size)
    (vol,) = usage.volumes
    assert not vol.kept_whole, vol.notes
    assert vol.kind == ("ext2" if variant == "ext2_1k" else "ext3" if variant == "ext3" else "ext4")
    assert vol.label == "tlabel"
    sb = superblock(img)
    assert vol.used == (sb["blocks"] - sb["free"]) * sb["bs"]
    assert int(usage.used_bytes.sum(dtype="int64")) == vol.used
    assert (usage.used_bytes == 0).sum() > 0
    check_zeroing(analyze, img, tmp_path, tree_hashes(tree))


def test_block_uninit_groups_are_synthesised(analyze, tmp_path: Path, tree: Path) -> None:
    img = build_ext(tmp_path / "fs.img", tree, VARIANTS["ext4"])
    groups = run("dumpe2fs", img).stdout
    assert groups.count("BLOCK_UNINIT") >= 3
    (vol,) = analyze(img).volumes
    assert vol.notes == ()


def test_block_uninit_with_zero_data(analyze, tmp_path: Path, tree: Path) -> None:
    """Uninitialised groups over a sparse (all-zero) file: same counts, same safety."""
    img = build_ext(tmp_path / "fs.img", tree, VARIANTS["ext4"], stale=False)
    (vol,) = analyze(img).volumes
    sb = superblock(img)
    assert vol.used == (sb["blocks"] - sb["free"]) * sb["bs"]
    check_zeroing(analyze, img, tmp_path, tree_hashes(tree))


def test_partial_group_tail_and_fs_smaller_than_volume(analyze, tmp_path: Path, tree: Path) -> None:
    """A filesystem that ends mid-group and before the end of its volume: the tail is unused."""
    need("mke2fs")
    img = prefill(tmp_path / "fs.img", 48 * MiB)
    run(
        "mke2fs",
        "-q",
        "-F",
        "-E",
        "nodiscard",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-g",
        "4096",
        "-d",
        tree,
        img,
        "9000",
    )
    usage = analyze(img)
    (vol,) = usage.volumes
    sb = superblock(img)
    assert vol.used == (sb["blocks"] - sb["free"]) * sb["bs"]
    assert (usage.used_bytes[40:] == 0).all()


def test_needs_recovery_is_kept_whole(analyze, tmp_path: Path, tree: Path) -> None:
    img = build_ext(tmp_path / "fs.img", tree, VARIANTS["ext4"])
    run("debugfs", "-w", "-R", "feature needs_recovery", img)
    usage = analyze(img)
    (vol,) = usage.volumes
    assert vol.kept_whole and vol.used is None
    assert any("needs recovery" in n for n in vol.notes)
    assert (usage.used_bytes == MiB).all()


def _patch_u32(path: Path, offset: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value.to_bytes(4, "little"))


def _read_u32(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return int.from_bytes(f.read(4), "little")


def test_unknown_incompat_flag_is_kept_whole(analyze, tmp_path: Path, tree: Path) -> None:
    img = build_ext(tmp_path / "fs.img", tree, VARIANTS["ext4"])
    incompat = _read_u32(img, 1024 + 0x60)
    _patch_u32(img, 1024 + 0x60, incompat | 0x1000)  # dirdata: not one we trust
    (vol,) = analyze(img).volumes
    assert vol.kept_whole
    assert any("incompatible features" in n for n in vol.notes)


def test_not_cleanly_unmounted_ext2_is_kept_whole(analyze, tmp_path: Path, tree: Path) -> None:
    img = build_ext(tmp_path / "fs.img", tree, VARIANTS["ext2_1k"])
    run("debugfs", "-w", "-R", "ssv state 0", img)
    (vol,) = analyze(img).volumes
    assert vol.kept_whole
    assert any("cleanly unmounted" in n for n in vol.notes)


def test_group_disagreeing_with_free_count_is_kept_whole(
    analyze, tmp_path: Path, tree: Path
) -> None:
    img = build_ext(tmp_path / "fs.img", tree, VARIANTS["ext4"])
    groups = run("dumpe2fs", img).stdout
    g = int(re.findall(r"^Group (\d+): .*BLOCK_UNINIT", groups, re.M)[-1])
    run("debugfs", "-w", "-R", f"set_bg {g} free_blocks_count 100", img)
    usage = analyze(img)
    (vol,) = usage.volumes
    assert not vol.kept_whole
    assert any("did not match their free counts" in n for n in vol.notes)
    # The whole group (8 MiB) counts as used.
    assert (usage.used_bytes[g * 8 : (g + 1) * 8] == MiB).all()
