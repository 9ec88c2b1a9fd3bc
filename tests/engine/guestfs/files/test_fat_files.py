"""FAT12/16/32 files against mtools (mdir, mtype) and The Sleuth Kit (fls, icat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fsbuild import MiB, RawReader, fls_paths, icat, need, partitioned, run, to_vdi

from vdigui.engine import open_paths
from vdigui.engine.guestfs.files import EntryKind, ExtentKind, open_namespace
from vdigui.engine.usage_report import GuestReader

NAMES = [
    "README.TXT",
    "Long file name with spaces.txt",
    "ünïcødé-ñame.dat",
    "lower.txt",
    "Mixed.Case.Name.tar.gz",
    "a",
]


def _build(tmp: Path, bits: int, size_kib: int) -> tuple[Path, dict[str, bytes]]:
    need("mkfs.fat", "mcopy", "mmd", "mdir", "mtype")
    img = tmp / f"fat{bits}.img"
    run("mkfs.fat", "-C", "-F", str(bits), "-n", f"VOL{bits}", img, str(size_kib))
    rng = np.random.default_rng(bits)
    files: dict[str, bytes] = {}
    run("mmd", "-i", img, "::/Deep Folder", "::/Deep Folder/Sub folder two", "::/EMPTY")
    for i, name in enumerate(NAMES):
        data = rng.bytes(int(rng.integers(0, 40_000)) if i else 70_000)
        src = tmp / f"src{bits}_{i}"
        src.write_bytes(data)
        target = f"/{name}" if i % 2 == 0 else f"/Deep Folder/Sub folder two/{name}"
        run("mcopy", "-i", img, src, f"::{target}")
        files[target] = data
    # A fragmented file: delete every other small file, then write a big one into the gaps.
    for i in range(20):
        src = tmp / f"s{bits}_{i}"
        src.write_bytes(bytes([i]) * 2000)
        run("mcopy", "-i", img, src, f"::/S{i:02d}.BIN")
        if i % 2 == 0:
            files[f"/S{i:02d}.BIN"] = bytes([i]) * 2000
    run("mdel", "-i", img, *[f"::/S{i:02d}.BIN" for i in range(1, 20, 2)])
    big = rng.bytes(300_000)
    (tmp / f"big{bits}").write_bytes(big)
    run("mcopy", "-i", img, tmp / f"big{bits}", "::/FRAG.BIN")
    files["/FRAG.BIN"] = big
    return img, files


@pytest.mark.parametrize(("bits", "size_kib"), [(12, 2000), (16, 20_000), (32, 40_000)])
def test_fat_listing_and_content(tmp_path: Path, bits: int, size_kib: int) -> None:
    img, files = _build(tmp_path, bits, size_kib)
    ns = open_namespace(RawReader(img))
    assert ns.kind == f"fat{bits}" and ns.label == f"VOL{bits}"
    # mdir -/ -b lists every path (folders with a trailing slash), long names preferred.
    listed = run("mdir", "-i", img, "-/", "-b", "::/").stdout.splitlines()
    expected = {line.removeprefix("::").rstrip("/") for line in listed}
    mine = {e.path for _p, es in ns.walk("/") for e in es}
    assert mine == expected
    for path, data in files.items():
        assert ns.read(path) == data
        assert ns.read(path) == run("mtype", "-i", img, f"::{path}", text=False).stdout
    assert ns.stat("/EMPTY").kind is EntryKind.DIRECTORY and ns.listdir("/EMPTY") == []
    frag = ns.extents("/FRAG.BIN")
    assert all(x.kind is ExtentKind.DATA for x in frag)
    if bits != 32:  # FAT32's next-free hint puts the new file after the old ones
        assert len(frag) > 1
    # Case-insensitive find, like the guest.
    assert {e.path for e in ns.find("readme.*")} == {"/README.TXT"}


def test_fat32_in_vdi_matches_sleuthkit(tmp_path: Path) -> None:
    need("fls", "icat", "sfdisk")
    img, files = _build(tmp_path, 32, 40_000)
    disk = tmp_path / "disk.raw"
    starts = partitioned(disk, 48 * MiB, [(img, "c")])
    vdi = to_vdi(disk, tmp_path / "disk.vdi")
    fls = fls_paths(disk, starts[0])
    with open_paths([vdi]) as chain:
        ns = open_namespace(GuestReader(chain))
        mine = {e.path: e for _p, es in ns.walk("/") for e in es}
        assert set(mine) == set(fls)
        for path in files:
            assert ns.read(path) == icat(disk, fls[path][1], starts[0])
        for x in ns.extents("/FRAG.BIN"):
            assert x.disk_offset == starts[0] * 512 + (x.volume_offset or 0)


def test_long_name_with_wrong_checksum_falls_back_to_8_3(tmp_path: Path) -> None:
    """A long name whose checksum does not match its 8.3 entry is ignored, as Windows does."""
    need("mkfs.fat", "mcopy", "mdir")
    img = tmp_path / "fat.img"
    run("mkfs.fat", "-C", "-F", "16", img, "20000")
    (tmp_path / "x").write_bytes(b"content\n")
    run("mcopy", "-i", img, tmp_path / "x", "::/A long name here.txt")
    run("mcopy", "-i", img, tmp_path / "x", "::/Another long one.txt")
    data = bytearray(img.read_bytes())
    # mdir shows the 8.3 alias of the first file; corrupt the checksum byte of its LFN entries.
    short = next(
        line.split()[0]
        for line in run("mdir", "-i", img, "::/").stdout.splitlines()
        if line.startswith("ALONGN")
    )
    at = data.index(short.ljust(8).encode() + b"TXT")
    lfn = at - 32
    while data[lfn + 11] == 0x0F:
        data[lfn + 13] ^= 0xFF
        lfn -= 32
    img.write_bytes(bytes(data))
    names = {e.name for e in open_namespace(RawReader(img)).listdir("/")}
    assert names == {f"{short}.TXT", "Another long one.txt"}
