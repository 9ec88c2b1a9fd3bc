"""Hostile metadata: loops, extents off the filesystem, absurd sizes, unsafe names.

The damage is done by hand to images built with mke2fs/debugfs and mkfs.fat/mtools, at places
found with debugfs (imap, blocks) or from the boot sector read here. Every check runs under an
alarm, so a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from fsbuild import MiB, RawReader, debugfs, debugfs_blocks, mkext, need, run

from vdigui.engine.errors import GuestFsError, VdiError
from vdigui.engine.guestfs.files import EntryKind, open_namespace
from vdigui.engine.guestfs.files.extract import plan_extract


@contextlib.contextmanager
def deadline(seconds: int = 20) -> Iterator[None]:
    """Fail (instead of hanging) when the block takes longer than ``seconds``."""

    def expired(_signum: int, _frame: object) -> None:
        raise AssertionError(f"did not finish within {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _imap(fs: Path, path: str) -> int:
    """Byte offset of an inode in the image, from debugfs's imap."""
    out = debugfs(fs, f"imap {path}")
    block = int(out.split("located at block ")[1].split(",")[0])
    offset = int(out.split("offset ")[1].split()[0], 16)
    return block * 4096 + offset


def _poke(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture
def ext_fs(tmp_path: Path) -> Path:
    need("mke2fs", "debugfs")
    tree = tmp_path / "tree"
    (tree / "d" / "e").mkdir(parents=True)
    (tree / "d" / "e" / "f.txt").write_bytes(b"inside\n")
    (tree / "victim").write_bytes(b"v" * 10000)
    for name in ("aaaa", "bbbb", "cc", "dddd"):
        (tree / name).write_bytes(name.encode())
    return mkext(
        tmp_path / "fs.img", 8 * MiB, tree, "-t", "ext4", "-b", "4096", "-O", "^metadata_csum"
    )


def test_directory_loop_is_reported_not_followed(ext_fs: Path, tmp_path: Path) -> None:
    debugfs(ext_fs, "ln /d /d/e/loop", write=True)  # a hard link to a directory: a cycle
    assert "loop" in debugfs(ext_fs, "ls /d/e")
    ns = open_namespace(RawReader(ext_fs))
    with deadline():
        problems: list[str] = []
        walked = [p for p, _ in ns.walk("/", onerror=lambda p, e: problems.append(str(e)))]
        assert "/d/e/loop" not in walked and "/d/e" in walked
        assert len(problems) == 1 and "loop" in problems[0]
        assert ns.stat("/d/e/loop/e/loop/e/f.txt").kind is EntryKind.FILE
        plan = plan_extract([(ns, ns.stat("/d"))], tmp_path / "out")
        assert any("loop" in p for p in plan.problems)
        with pytest.raises(GuestFsError, match="loop"):
            list(ns.walk("/d"))


def test_extent_outside_the_filesystem(ext_fs: Path) -> None:
    at = _imap(ext_fs, "/victim")
    # i_block: extent header (12 bytes), then the first leaf: start_hi at +6, start_lo at +8.
    _poke(ext_fs, at + 0x28 + 12 + 6, struct.pack("<HI", 0x7FFF, 0x12345678))
    ns = open_namespace(RawReader(ext_fs))
    with deadline(), pytest.raises(GuestFsError, match="outside the filesystem"):
        ns.read("/victim")
    assert ns.stat("/victim").size == 10000  # the rest of the filesystem still reads


def test_absurd_sizes(ext_fs: Path) -> None:
    debugfs(ext_fs, "sif /victim size 0x7fffffffffff", "sif /d size 0x7fffffffffff", write=True)
    ns = open_namespace(RawReader(ext_fs))
    with deadline():
        victim = ns.stat("/victim")
        assert victim.size == 0x7FFFFFFFFFFF
        assert sum(x.length for x in ns.extents(victim)) == victim.size
        assert ns.read(victim, victim.size - 10, 100) == bytes(10)
        assert ns.read(victim, 0, 10) == b"v" * 10
        with pytest.raises(VdiError):
            ns.read(victim)  # far more than one read may return: a clear error
        with pytest.raises(GuestFsError, match="claims"):
            ns.listdir("/d")


def test_unsafe_names_get_visible_substitutes(ext_fs: Path, tmp_path: Path) -> None:
    root_block = debugfs_blocks(ext_fs, "/")[0]
    with open(ext_fs, "r+b") as f:
        f.seek(root_block * 4096)
        block = bytearray(f.read(4096))
        for old, new in (
            (b"aaaa", b"a/.."),
            (b"cc", b".."),
            (b"dddd", b"d\x00\x1bd"),
            (b"bbbb", b"b\xff\xfeb"),
        ):
            at = block.index(old)
            block[at : at + len(old)] = new
        f.seek(root_block * 4096)
        f.write(block)
    ns = open_namespace(RawReader(ext_fs))
    with deadline():
        names = {e.name: e for e in ns.listdir("/")}
    assert {"a\\x2f..", "\\x2e.", "d\\x00\\x1bd", "b\\xff\\xfeb"} <= set(names)
    assert names["a\\x2f.."].raw_name == b"a/.." and "'/'" in names["a\\x2f.."].name_note
    assert "not valid text" in names["b\\xff\\xfeb"].name_note
    assert ns.read("/a\\x2f..") == b"aaaa"
    # Extracted under the escaped names, inside DEST only.
    plan = plan_extract([(ns, ns.stat("/"))], tmp_path / "out")
    assert not plan.problems
    rels = {"/".join(item.rel) for item in plan.items}
    assert "a\\x2f.." in rels and "\\x2e." in rels
    assert all(".." not in item.rel and "/" not in "".join(item.rel) for item in plan.items)


def _fat16(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    need("mkfs.fat", "mcopy", "mmd")
    img = tmp_path / "fat.img"
    run("mkfs.fat", "-C", "-F", "16", "-s", "1", img, "20000")
    src = tmp_path / "src"
    src.write_bytes(bytes(range(256)) * 8)  # 2048 bytes: clusters 2..5 of 512 bytes
    run("mcopy", "-i", img, src, "::/CHAIN.BIN")
    run("mmd", "-i", img, "::/D")
    boot = img.read_bytes()[:512]
    bps, spc, reserved, nfats, root_entries = struct.unpack_from("<HBHBH", boot, 11)
    fatsz = struct.unpack_from("<H", boot, 22)[0]
    geo = {
        "fat": reserved * bps,
        "root": (reserved + nfats * fatsz) * bps,
        "data": (reserved + nfats * fatsz) * bps + root_entries * 32,
        "cs": bps * spc,
    }
    return img, geo


def test_fat_chain_loop(tmp_path: Path) -> None:
    img, geo = _fat16(tmp_path)
    _poke(img, geo["fat"] + 3 * 2, struct.pack("<H", 2))  # cluster 3 -> cluster 2
    ns = open_namespace(RawReader(img))
    with deadline(), pytest.raises(GuestFsError, match="loops"):
        ns.read("/CHAIN.BIN")


def test_fat_chain_shorter_than_size(tmp_path: Path) -> None:
    img, geo = _fat16(tmp_path)
    _poke(img, geo["fat"] + 3 * 2, struct.pack("<H", 0xFFFF))  # ends after 2 clusters
    ns = open_namespace(RawReader(img))
    with deadline(), pytest.raises(GuestFsError, match="before its size"):
        ns.read("/CHAIN.BIN")


def test_fat_directory_pointing_to_itself(tmp_path: Path) -> None:
    img, geo = _fat16(tmp_path)
    raw = img.read_bytes()
    root = raw[geo["root"] : geo["root"] + 512]
    at = root.index(b"D          ")
    cluster = struct.unpack_from("<H", root, at + 26)[0]
    d_off = geo["data"] + (cluster - 2) * geo["cs"]
    entry = bytearray(root[at : at + 32])
    entry[:11] = b"LOOP       "
    _poke(img, d_off + 64, bytes(entry))  # after "." and ".."
    ns = open_namespace(RawReader(img))
    with deadline():
        problems: list[str] = []
        walked = [p for p, _ in ns.walk("/", onerror=lambda p, e: problems.append(str(e)))]
    assert "/D/LOOP" in walked and len(problems) == 1 and "loop" in problems[0]


def _exercise(image: bytes) -> None:
    """Open, walk, stat, read and map everything; only VdiError may come out."""

    class Reader:
        size = len(image)

        def read(self, offset: int, length: int) -> bytes:
            assert offset >= 0 and offset + length <= self.size
            return image[offset : offset + length]

    try:
        ns = open_namespace(Reader())
        for _path, entries in ns.walk("/", onerror=lambda _p, _e: None):
            for entry in entries:
                try:
                    if entry.kind is EntryKind.FILE:
                        ns.extents(entry)
                        ns.read(entry, 0, 1 << 16)
                    ns.stat(entry.path)
                except VdiError:
                    pass
    except VdiError:
        pass


@pytest.mark.parametrize("kind", ["ext4", "ext2", "fat12", "fat32"])
def test_fuzzed_metadata_gives_clear_errors(tmp_path: Path, kind: str) -> None:
    """Random bytes over the metadata: no exception but VdiError, and no hang."""
    import numpy as np

    need("mke2fs", "mkfs.fat", "mcopy", "mmd")
    tree = tmp_path / "tree"
    (tree / "d1" / "d2").mkdir(parents=True)
    for i in range(40):
        (tree / ("d1" if i % 2 else "d1/d2") / f"file number {i}.txt").write_bytes(
            bytes([i]) * (i * 300)
        )
    if kind.startswith("ext"):
        img = mkext(tmp_path / "fs.img", 4 * MiB, tree, "-t", kind, "-b", "1024")
        meta = (1024, 300 * 1024)
    else:
        img = tmp_path / "fs.img"
        run(
            "mkfs.fat", "-C", "-F", kind[3:], "-s", "1", img, "40000" if kind == "fat32" else "1500"
        )
        run("mcopy", "-s", "-i", img, tree / "d1", "::/")
        meta = (0, 600 * 1024)
    clean = img.read_bytes()
    rng = np.random.default_rng(sum(map(ord, kind)))
    for _ in range(int(os.environ.get("VDIGUI_FUZZ_ROUNDS", "60"))):
        data = bytearray(clean)
        for at in rng.integers(meta[0], meta[1], size=int(rng.integers(1, 40))).tolist():
            data[at] = int(rng.integers(0, 256))
        with deadline(30):
            _exercise(bytes(data))


def test_longest_names_extract(tmp_path: Path) -> None:
    """A 255-byte name (85 three-byte characters) is extracted; its temporary name fits too."""
    from vdigui.engine.guestfs.files.extract import run_extract

    need("mke2fs")
    tree = tmp_path / "tree"
    tree.mkdir()
    name = "中" * 85
    (tree / name).write_bytes(b"longest\n")
    fs = mkext(tmp_path / "fs.img", 4 * MiB, tree, "-t", "ext4")
    ns = open_namespace(RawReader(fs))
    plan = plan_extract([(ns, ns.stat("/" + name))], tmp_path / "out")
    assert not plan.problems
    run_extract(plan)
    assert (tmp_path / "out" / name).read_bytes() == b"longest\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]


@pytest.mark.parametrize("native", [True, False])
def test_guest_links_become_links_never_hard_links_to_their_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """A guest link to /etc/passwd, extracted where renameat2 is missing too, stays a link."""
    from vdigui.engine import fileio
    from vdigui.engine.guestfs.files.extract import run_extract

    need("mke2fs")
    if not native:
        monkeypatch.setattr(fileio, "_RENAMEAT2", [None])
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "evil").symlink_to("/etc/passwd")
    (tree / "plain.txt").write_bytes(b"plain\n")
    image = mkext(tmp_path / "fs.img", 4 * MiB, tree, "-t", "ext4")
    ns = open_namespace(RawReader(image))
    out = tmp_path / "out"
    run_extract(plan_extract([(ns, ns.stat("/"))], out))
    assert str((out / "evil").readlink()) == "/etc/passwd"
    assert (out / "plain.txt").read_bytes() == b"plain\n"
    assert not (out / "plain.txt").is_symlink() and (out / "plain.txt").stat().st_nlink == 1
    assert sorted(p.name for p in out.iterdir()) == ["evil", "lost+found", "plain.txt"]
