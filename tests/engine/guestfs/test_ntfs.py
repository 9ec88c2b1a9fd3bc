"""NTFS images from mkntfs + ntfscp: exact used counts; zeroing unused space is safe."""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
from pathlib import Path

import pytest
from guestfs_images import (
    MiB,
    assert_consistent,
    need,
    ntfs_free_bytes,
    prefill,
    run,
    zero_unused,
)

#: name -> (image size, cluster size)
VARIANTS = {"ntfs_4k": (32 * MiB, 4096), "ntfs_64k": (64 * MiB, 65536)}


def flat_files(tree: Path) -> dict[str, bytes]:
    """ntfscp cannot create directories, so NTFS images get a flat copy of the tree."""
    return {p.name: p.read_bytes() for p in sorted(tree.rglob("*.bin"))}


def build_ntfs(
    path: Path, tree: Path, size: int, cluster: int, extra: dict[str, bytes] | None = None
) -> dict[str, bytes]:
    extra = extra or {}
    need("mkntfs", "ntfscp", "ntfsls", "ntfstruncate", "ntfscat", "ntfsfix", "ntfscluster")
    prefill(path, size)
    run("mkntfs", "-F", "-f", "-q", "-c", str(cluster), "-L", "TLABEL", path)
    files = flat_files(tree)
    src = tree.parent / "ntfs-src"
    src.mkdir(exist_ok=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
        run("ntfscp", "-q", path, src / name, name)
    # Free one file's clusters in place: the stale data stays on disk.
    inode = ntfs_inode(path, "f03.bin")
    run("ntfstruncate", path, str(inode), "0")
    files["f03.bin"] = b""
    # Last, since ntfs-3g refuses to touch a volume with a hibernated hiberfil.sys.
    for name, data in extra.items():
        (src / name).write_bytes(data)
        run("ntfscp", "-q", path, src / name, name)
        files[name] = data
    return files


def ntfs_inode(path: Path, name: str) -> int:
    out = run("ntfsls", "-i", path).stdout
    return int(re.search(rf"^\s*(\d+)\s+{re.escape(name)}$", out, re.M).group(1))


def ntfs_clusters(path: Path) -> int:
    with open(path, "rb") as f:
        boot = f.read(512)
    spc = boot[0x0D]
    return struct.unpack_from("<Q", boot, 0x28)[0] // spc


def ntfs_check(path: Path, files: dict[str, bytes]) -> None:
    res = run("ntfsfix", "-n", path, check=False)
    assert res.returncode == 0 and "successfully" in res.stdout, res.stdout + res.stderr
    for name, data in files.items():
        raw = subprocess.run(["ntfscat", str(path), name], capture_output=True, check=True).stdout
        assert hashlib.sha256(raw).digest() == hashlib.sha256(data).digest(), name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ntfs_variant_exact_and_safe(analyze, variant: str, tmp_path: Path, tree: Path) -> None:
    size, cluster = VARIANTS[variant]
    img = tmp_path / "fs.img"
    files = build_ntfs(img, tree, size, cluster)
    usage = analyze(img)
    assert_consistent(usage, size)
    (vol,) = usage.volumes
    assert not vol.kept_whole, vol.notes
    assert (vol.kind, vol.label) == ("ntfs", "TLABEL")
    free = ntfs_free_bytes(img)
    clusters = ntfs_clusters(img)
    # $Bitmap's used clusters plus the backup boot sector in the last sector.
    assert vol.used == clusters * cluster - free + 512
    assert (usage.used_bytes == 0).any()
    for bs in (MiB, 64 * 1024):
        zeroed = tmp_path / f"zeroed-{bs}.img"
        assert zero_unused(img, zeroed, analyze(img, bs)) > 0
        ntfs_check(zeroed, files)
        assert ntfs_free_bytes(zeroed) == free


def _patch_volume_flags(path: Path, flags: int) -> None:
    """Set the $Volume flags by finding record 3's $VOLUME_INFORMATION value (resident)."""
    data = bytearray(path.read_bytes())
    spc = data[0x0D]
    mft = struct.unpack_from("<Q", data, 0x30)[0] * 512 * spc
    rec = mft + 3 * 1024
    assert data[rec : rec + 4] == b"FILE"
    off = struct.unpack_from("<H", data, rec + 0x14)[0]
    while True:
        atype, alen = struct.unpack_from("<II", data, rec + off)
        assert atype != 0xFFFFFFFF
        if atype == 0x70:
            voff = struct.unpack_from("<H", data, rec + off + 20)[0]
            struct.pack_into("<H", data, rec + off + voff + 10, flags)
            break
        off += alen
    path.write_bytes(bytes(data))


def test_dirty_volume_is_kept_whole(analyze, tmp_path: Path, tree: Path) -> None:
    img = tmp_path / "fs.img"
    build_ntfs(img, tree, 32 * MiB, 4096)
    _patch_volume_flags(img, 0x0001)
    usage = analyze(img)
    (vol,) = usage.volumes
    assert vol.kept_whole and any("dirty" in n for n in vol.notes)
    assert (usage.used_bytes == MiB).all()


@pytest.mark.parametrize("magic", [b"hibr", b"HIBR"])
def test_hibernated_windows_is_kept_whole(analyze, magic: bytes, tmp_path: Path, tree: Path):
    img = tmp_path / "fs.img"
    build_ntfs(img, tree, 32 * MiB, 4096, {"hiberfil.sys": magic + bytes(200_000)})
    (vol,) = analyze(img).volumes
    assert vol.kept_whole and any("Fast Startup" in n for n in vol.notes)


def test_woken_hiberfil_is_fine(analyze, tmp_path: Path, tree: Path) -> None:
    img = tmp_path / "fs.img"
    build_ntfs(img, tree, 32 * MiB, 4096, {"hiberfil.sys": bytes(200_000)})
    (vol,) = analyze(img).volumes
    assert not vol.kept_whole, vol.notes
