"""How the ext reader reads inodes: each once, a directory's inodes together.

Listing a folder of files and then asking each file's extents used to read and parse every
inode twice (once for the listing, once for the extents), one small read each. The inode
table's place and the inode numbers come from debugfs (``stats``, ``ls -p``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from fsbuild import MiB, RawReader, debugfs, debugfs_ls, mkext, need

from vdigui.engine.guestfs.files import EntryKind, open_namespace
from vdigui.engine.guestfs.files.api import Entry


class CountingReader(RawReader):
    """A raw image reader that records every range read through it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.ranges: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.ranges.append((offset, length))
        return super().read(offset, length)


def _inode_table(image: Path) -> tuple[int, int]:
    """Byte offset of group 0's inode table and the inode size, from debugfs."""
    out = debugfs(image, "stats")
    found = [
        re.search(pattern, out)
        for pattern in (r"Block size:\s+(\d+)", r"Inode size:\s+(\d+)", r"inode table at (\d+)")
    ]
    block_size, inode_size, table = (int(m.group(1)) for m in found if m is not None)
    return table * block_size, inode_size


@pytest.fixture
def many_files(tmp_path: Path) -> Path:
    need("mke2fs", "debugfs")
    tree = tmp_path / "tree"
    (tree / "many" / "sub").mkdir(parents=True)
    for i in range(300):
        (tree / "many" / f"f{i:03d}.txt").write_bytes(bytes([i % 251]) * (1 + i * 7))
    (tree / "many" / "sub" / "inner.txt").write_bytes(b"inner\n")
    # 16 MiB of 4 KiB blocks is a single group: every inode is in one table.
    return mkext(tmp_path / "fs.img", 16 * MiB, tree, "-t", "ext4", "-b", "4096", "-N", "512")


def test_each_inode_is_read_once(many_files: Path) -> None:
    table, inode_size = _inode_table(many_files)
    expected = debugfs_ls(many_files, "/many")
    reader = CountingReader(many_files)
    ns = open_namespace(reader)
    listing = ns.listdir("/many")
    assert {e.name: e.id for e in listing} == {n: v[0] for n, v in expected.items()}
    for entry in listing:
        if entry.kind is EntryKind.FILE:
            assert sum(x.length for x in ns.extents(entry)) == entry.size
            assert ns.read(entry) == bytes([int(entry.name[1:4]) % 251]) * entry.size
    # How often each listed inode's bytes were fetched from the image.
    for name, (ino, *_rest) in expected.items():
        start = table + (ino - 1) * inode_size
        fetched = sum(1 for o, n in reader.ranges if o <= start and start + inode_size <= o + n)
        assert fetched == 1, name
    # And together: the 301 inodes of the folder in a read or two, not one read each.
    in_table = [(o, n) for o, n in reader.ranges if table <= o < table + 512 * inode_size]
    assert len(in_table) <= 4
    # Entries built in bulk are ordinary frozen entries.
    entry = listing[0]
    assert entry == dataclasses.replace(entry) and hash(entry) == hash(dataclasses.replace(entry))
    assert type(entry) is Entry
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.size = 1  # type: ignore[misc]


def test_sizes_use_all_64_bits(many_files: Path) -> None:
    """A size with the top bit set (hostile) is huge, as debugfs shows it, never negative."""
    debugfs(many_files, "sif /many/f001.txt size 0xfffffffff0000010", write=True)
    shown = re.search(r"Size: (\d+)", debugfs(many_files, "stat /many/f001.txt"))
    assert shown is not None and int(shown.group(1)) == 0xFFFFFFFFF0000010
    ns = open_namespace(RawReader(many_files))
    by_name = {e.name: e for e in ns.listdir("/many")}
    assert by_name["f001.txt"].size == int(shown.group(1))
    assert ns.stat("/many/f001.txt").size == int(shown.group(1))
    assert by_name["f002.txt"].size == 15
