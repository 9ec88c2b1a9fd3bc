"""From a VDI block to the files in it (vdigui.engine.guestfs.files.holdings.index_block_files).

The VM is tests/engine/guestfs/files/diffvm.py's: an ext4 partition (p1, 4 KiB blocks) and a
FAT16 one (p2) in a chain of three images. Expected values come only from the Debian tools:

- ext4: the file list and inodes from The Sleuth Kit's ``fls -r``, each file's physical blocks
  from ``debugfs blocks`` and their logical positions from ``debugfs ex``, its size from
  ``debugfs stat``, free blocks from ``dumpe2fs``;
- FAT16: the file list from ``fls -r``, each file's clusters from ``mshowfat``, the volume's
  geometry from ``minfo`` and sizes from ``mdir``;

then ``(partition start + filesystem offset) // 1 MiB`` names the VDI block, as the partition
table written by the builder (sfdisk) says.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffvm import EXT_BLOCK, DiffVm, build
from fsbuild import MiB, debugfs, debugfs_blocks, fls_paths, mkext, need, partitioned, run, to_vdi

from vdigui.cli.common import resolve_source
from vdigui.engine import OperationCancelled
from vdigui.engine.chain import open_paths
from vdigui.engine.guestfs.files import open_namespace
from vdigui.engine.guestfs.files.holdings import BlockFiles, index_block_files, layer_holdings
from vdigui.engine.progress import CancelToken, Progress
from vdigui.engine.usage_report import GuestReader

#: (volume, key) -> bytes held, per VDI block; key is the ext inode or the FAT path.
Expected = dict[int, dict[tuple[str, int | str], int]]


@pytest.fixture(scope="module")
def dvm(tmp_path_factory: pytest.TempPathFactory) -> DiffVm:
    need("fls", "mshowfat", "minfo", "mdir", "dumpe2fs")
    return build(tmp_path_factory.mktemp("blockfiles"))


@pytest.fixture(scope="module")
def index(dvm: DiffVm) -> BlockFiles:
    with open_paths(resolve_source(dvm.folder, None, True)) as chain:
        return index_block_files(chain)


def _sections(output: str) -> list[str]:
    """The outputs of a debugfs command file, one per command (split at its echo)."""
    return re.split(r"^debugfs: .*$", output, flags=re.M)[1:]


def ext_expected(dvm: DiffVm) -> tuple[Expected, dict[str, int]]:
    """Per VDI block, the bytes each ext inode holds there; and path -> inode."""
    ext = dvm.exts["current"]
    base = dvm.starts[0] * 512
    files = {p: ino for p, (kind, ino) in fls_paths(ext).items() if kind == "r/r"}
    inodes = sorted(set(files.values()))
    stats = _sections(debugfs(ext, *(f"stat <{i}>" for i in inodes)))
    extents = _sections(debugfs(ext, *(f"ex <{i}>" for i in inodes)))
    out: Expected = defaultdict(dict)
    leaf = re.compile(
        r"^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+(\d+) -\s*(\d+)\s+(\d+) -\s*(\d+)\s+(\d+)"
    )
    for ino, stat, ex in zip(inodes, stats, extents, strict=True):
        m = re.search(r"Size: (\d+)", stat)
        assert m, stat
        size = int(m.group(1))
        physical: list[int] = []
        for line in ex.splitlines():
            hit = leaf.match(line)
            if not hit or hit.group(1) != hit.group(2) or "Uninit" in line:
                continue  # an index node of a deeper tree, or never-written space
            logical, pstart, length = int(hit.group(3)), int(hit.group(5)), int(hit.group(7))
            for i in range(length):
                held = min(EXT_BLOCK, size - (logical + i) * EXT_BLOCK)
                if held <= 0:
                    continue
                physical.append(pstart + i)
                block = (base + (pstart + i) * EXT_BLOCK) // MiB
                out[block][("p1", ino)] = out[block].get(("p1", ino), 0) + held
        # The extent parse agrees with debugfs' own block list.
        path = next(p for p, i in files.items() if i == ino)
        assert sorted(physical) == sorted(debugfs_blocks(ext, path)), path
    return out, files


def fat_expected(dvm: DiffVm) -> Expected:
    """Per VDI block, the bytes each FAT file holds there (from mtools' cluster chains)."""
    fat = dvm.fats["current"]
    base = dvm.starts[1] * 512
    info = run("minfo", "-i", fat, "::").stdout

    def field(name: str) -> int:
        m = re.search(rf"^{name}: (\d+)", info, flags=re.M)
        assert m, (name, info)
        return int(m.group(1))

    sector = field("sector size")
    cluster = field("cluster size") * sector
    root = field("max available root directory slots") * 32
    data = (field(r"reserved \(boot\) sectors") + field("fats") * field("sectors per fat")) * sector
    data += root
    out: Expected = defaultdict(dict)
    paths = [p for p, (kind, _ino) in fls_paths(fat).items() if kind == "r/r"]
    assert {"/README.TXT", "/KEEP.TXT", "/NEW.TXT"} <= set(paths)
    for path in paths:
        size = _fat_size(fat, path)
        chain = run("mshowfat", "-i", fat, "::" + path).stdout
        clusters: list[int] = []
        for lo, hi in re.findall(r"<(\d+)(?:-(\d+))?>", chain):
            clusters += range(int(lo), int(hi or lo) + 1)
        for i, c in enumerate(clusters):
            held = min(cluster, size - i * cluster)
            offset = base + data + (c - 2) * cluster
            while held > 0:  # a cluster may straddle two VDI blocks
                block = offset // MiB
                piece = min(held, (block + 1) * MiB - offset)
                out[block][("p2", path)] = out[block].get(("p2", path), 0) + piece
                offset += piece
                held -= piece
    return out


def _fat_size(fat: Path, path: str) -> int:
    """A FAT file's size as ``mdir`` lists it."""
    name = path.rsplit("/", 1)[1]
    stem, _, ext = name.partition(".")
    for line in run("mdir", "-i", fat, "::/").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == stem and parts[1] == ext:
            return int(parts[2])
    raise AssertionError(f"mdir does not list {path}")


def got_at(
    index: BlockFiles, block: int, inode_of: dict[str, int]
) -> dict[tuple[str, int | str], int]:
    out: dict[tuple[str, int | str], int] = {}
    for share in index.files_at(block):
        key: int | str = inode_of[share.path] if share.volume == "p1" else share.path
        assert (share.volume, key) not in out, f"{share.path} listed twice in block {block}"
        out[(share.volume, key)] = share.held
    return out


def test_every_block_names_the_files_debugfs_and_mtools_place_there(
    dvm: DiffVm, index: BlockFiles
) -> None:
    ext, inode_of = ext_expected(dvm)
    fat = fat_expected(dvm)
    assert index.complete and index.volumes == ("p1", "p2")
    assert index.examined >= len(inode_of)
    disk_blocks = 48
    checked_ext = checked_fat = 0
    for block in range(disk_blocks):
        expected = {**ext.get(block, {}), **fat.get(block, {})}
        assert got_at(index, block, inode_of) == expected, block
        checked_ext += bool(ext.get(block))
        checked_fat += bool(fat.get(block))
    assert checked_ext >= 5 and checked_fat >= 1
    # Largest share first, then by path.
    for block in range(disk_blocks):
        shares = index.files_at(block)
        keys = [(-s.held, s.volume, s.path) for s in shares]
        assert keys == sorted(keys)
        assert index.files_at(block, 2) == shares[:2] and index.count_at(block) == len(shares)
    assert index.files_at(disk_blocks + 10) == [] and index.files_at(-1) == []
    # The big file (3 MiB + 123 bytes, changed in place in the newest image) is named with
    # its own size wherever it lies.
    big = [s for b in ext for s in index.files_at(b) if s.path == "/big.bin"]
    assert big and all(s.size == 3 * MiB + 123 for s in big)
    assert sum(s.held for s in big) == 3 * MiB + 123


def free_vdi_blocks(dvm: DiffVm) -> list[int]:
    """VDI blocks lying wholly inside the ext volume's free space, as ``dumpe2fs`` lists it."""
    ext = dvm.exts["current"]
    base = dvm.starts[0] * 512
    text = run("dumpe2fs", ext).stdout
    free: set[int] = set()
    for line in re.findall(r"^\s+Free blocks: (.*)$", text, flags=re.M):
        for part in filter(None, (p.strip() for p in line.split(","))):
            lo, _, hi = part.partition("-")
            free.update(range(int(lo), int(hi or lo) + 1))
    count = re.search(r"^Block count:\s+(\d+)", text, flags=re.M)
    assert count, text
    per_vdi = MiB // EXT_BLOCK
    return [
        b
        for b in range(-(-base // MiB), (base + int(count.group(1)) * EXT_BLOCK) // MiB)
        if all((b * MiB - base) // EXT_BLOCK + i in free for i in range(per_vdi))
    ]


def test_a_block_of_free_space_holds_no_file(dvm: DiffVm, index: BlockFiles) -> None:
    empty = free_vdi_blocks(dvm)
    assert empty, "the test volume should have a whole free MiB"
    for block in empty:
        assert index.files_at(block) == []
    cell = index.files_in(empty[0], empty[0] + 1)
    assert cell.count == 0 and cell.empty_blocks == 1 and cell.top == []


def test_a_cell_sums_its_blocks(dvm: DiffVm, index: BlockFiles) -> None:
    ext, inode_of = ext_expected(dvm)
    start, stop = min(ext), min(ext) + 8
    sums: dict[tuple[str, int | str], int] = defaultdict(int)
    for block in range(start, stop):
        for key, held in got_at(index, block, inode_of).items():
            sums[key] += held
    cell = index.files_in(start, stop, top=4)
    assert cell.count == len(sums)
    assert cell.empty_blocks == sum(1 for b in range(start, stop) if not index.files_at(b))
    assert [s.held for s in cell.top] == sorted(sums.values(), reverse=True)[:4]
    for share in cell.top:
        assert sums[("p1", inode_of[share.path])] == share.held


def test_the_file_cap_says_the_index_is_partial(dvm: DiffVm) -> None:
    with open_paths(resolve_source(dvm.folder, None, True)) as chain:
        partial = index_block_files(chain, max_files=5)
        token = CancelToken()
        token.cancel()
        with pytest.raises(OperationCancelled):
            index_block_files(chain, cancel=token)
    assert not partial.complete and partial.examined == 5
    assert 0 < len(partial.files) <= 5


def test_cancelling_mid_walk_stops_both_walks(tmp_path: Path) -> None:
    """Cancelling is checked every 512 files; it must stop the walk, not become a note."""
    need("mke2fs", "sfdisk")
    tree = tmp_path / "tree"
    for d in range(3):
        (tree / f"d{d}").mkdir(parents=True)
        for i in range(400):
            (tree / f"d{d}" / f"f{i}").write_bytes(b"x" * (i + 1))
    ext = mkext(tmp_path / "ext.img", 16 * MiB, tree, "-t", "ext4", "-b", "4096")
    raw = tmp_path / "disk.raw"
    partitioned(raw, 20 * MiB, [(ext, "83")])
    vdi = to_vdi(raw, tmp_path / "disk.vdi")
    with open_paths([vdi]) as chain:
        whole = index_block_files(chain)
        assert whole.complete and whole.examined == 1200
        ns = open_namespace(GuestReader(chain), "p1")
        for run_walk in (
            lambda token, progress: index_block_files(chain, progress=progress, cancel=token),
            lambda token, progress: layer_holdings(chain, 0, [ns], progress=progress, cancel=token),
        ):
            token = CancelToken()
            seen: list[int] = []

            def progress(
                event: Progress, token: CancelToken = token, seen: list[int] = seen
            ) -> None:
                seen.append(event.done)
                token.cancel()

            with pytest.raises(OperationCancelled):
                run_walk(token, progress)
            assert seen == [512]
