"""A real guest disk for the filesystem-aware operation tests: ext4 + NTFS + FAT16 in an MBR.

Built at test time with Debian's tools (no mounting), prefilled with a non-zero pattern and
with files deleted afterwards, so the free space of every filesystem holds stale data that only
filesystem awareness can drop. Shared by the operation, CLI and GUI tests.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "guestfs"))

from guestfs_images import (
    MiB,
    extract,
    fs_check,
    make_fs,
    make_tree,
    need,
    place,
    prefill,
    run,
)

from vdigui.engine.chain import open_paths
from vdigui.engine.image import create_image

#: (kind, start sector, size in bytes, MBR type)
LAYOUT = (
    ("ext4", 2048, 40 * MiB, "83"),
    ("ntfs", 2048 + 40 * 2048, 24 * MiB, "7"),
    ("fat16", 2048 + 64 * 2048, 24 * MiB, "e"),
)
DISK = 96 * MiB


@dataclass
class GuestDisk:
    """The raw disk, the VDI holding it, and every filesystem's file hashes."""

    raw: Path
    vdi: Path
    hashes: dict[str, dict[str, str]]


def build_raw(folder: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """The raw disk (stale pattern everywhere) and the file hashes per filesystem."""
    need(
        "sfdisk",
        "mke2fs",
        "debugfs",
        "mkntfs",
        "ntfscp",
        "ntfstruncate",
        "ntfsls",
        "mkfs.vfat",
        "mcopy",
        "mdel",
    )
    folder.mkdir(parents=True, exist_ok=True)
    tree = make_tree(folder / "tree", big=4 * MiB)
    raw = prefill(folder / "disk.raw", DISK)
    script = "label: dos\n" + "".join(
        f"start={start}, size={size // 512}, type={t}\n" for _, start, size, t in LAYOUT
    )
    run("sfdisk", "-q", raw, stdin=script)
    hashes: dict[str, dict[str, str]] = {}
    for kind, start, size, _ in LAYOUT:
        part = folder / f"{kind}.img"
        make_fs(kind, part, size, tree)
        if kind == "ext4":
            run("debugfs", "-w", "-R", "rm /sub/big.bin", part)
            run("debugfs", "-w", "-R", "rm /f03.bin", part)
        elif kind == "fat16":
            run("mdel", "-i", part, "::/sub/big.bin")
        elif kind == "ntfs":
            inode = next(
                line.split()[0]
                for line in run("ntfsls", "-i", part).stdout.splitlines()
                if line.endswith("big.bin")
            )
            run("ntfstruncate", part, inode, "0")
        place(raw, part, start)
    for kind, start, size, _ in LAYOUT:
        hashes[kind] = fs_check(
            kind, extract(raw, start * 512, size, folder / f"x-{kind}"), folder / f"files-{kind}"
        )
    return raw, hashes


def raw_to_vdi(raw: Path, vdi: Path) -> Path:
    """A dynamic VDI holding ``raw`` (every non-zero block allocated), written by the engine."""
    size = raw.stat().st_size
    create_image(vdi, size)
    with open(raw, "rb") as f, open_paths([vdi], writable_top=True) as chain:
        for offset in range(0, size, MiB):
            data = f.read(MiB)
            if data.count(0) != len(data):
                chain.write(offset, data, durable=False)
        chain.top.sync()
    return vdi


def build_guest_disk(folder: Path) -> GuestDisk:
    """Everything at once (about a second with the tools present)."""
    raw, hashes = build_raw(folder / "build")
    return GuestDisk(raw, raw_to_vdi(raw, folder / "guest.vdi"), hashes)


def check_raw(raw: Path, hashes: dict[str, dict[str, str]], work: Path) -> None:
    """Every filesystem checks clean (e2fsck -fn, ntfsfix -n, fsck.vfat -n), same files."""
    work.mkdir(parents=True, exist_ok=True)
    for kind, start, size, _ in LAYOUT:
        part = extract(raw, start * 512, size, work / f"c-{kind}")
        assert fs_check(kind, part, work / f"cf-{kind}") == hashes[kind], kind
