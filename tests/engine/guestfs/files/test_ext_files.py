"""ext2/3/4 files against debugfs and The Sleuth Kit.

Every expected listing, byte and block list comes from debugfs (ls -p, cat, blocks, ex) or
from fls/icat, run on the same filesystem image the VDI holds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fsbuild import (
    MiB,
    RawReader,
    debugfs,
    debugfs_blocks,
    debugfs_bytes,
    debugfs_ls,
    fls_paths,
    icat,
    make_tree,
    mkext,
    need,
    partitioned,
    run,
    to_vdi,
)

from vdigui.engine import VdiError, open_paths
from vdigui.engine.guestfs.files import (
    EntryKind,
    ExtentKind,
    Namespace,
    list_volumes,
    open_namespace,
)
from vdigui.engine.guestfs.files.api import BaseNamespace
from vdigui.engine.usage_report import GuestReader


@pytest.fixture(scope="module")
def ext4_disk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An ext4 image (4 KiB blocks) in partition 2 of an MBR disk, wrapped in a VDI."""
    need("mke2fs", "debugfs", "sfdisk", "fls", "icat")
    tmp = tmp_path_factory.mktemp("ext4")
    tree = make_tree(tmp / "tree")
    fs = mkext(tmp / "fs.img", 24 * MiB, tree, "-t", "ext4", "-b", "4096")
    other = mkext(tmp / "other.img", 4 * MiB, None, "-t", "ext2")
    disk = tmp / "disk.raw"
    starts = partitioned(disk, 40 * MiB, [(other, "83"), (fs, "83")])
    vdi = to_vdi(disk, tmp / "disk.vdi")
    return {"fs": fs, "tree": tree, "disk": disk, "vdi": vdi, "start": starts[1]}


def _all_dirs(image: Path, path: str = "/") -> dict[str, dict[str, tuple]]:
    """Every directory's debugfs listing, recursively."""
    out = {path: debugfs_ls(image, path)}
    for name, (_ino, mode, *_rest) in out[path].items():
        if mode & 0o170000 == 0o040000:
            out.update(_all_dirs(image, f"{path.rstrip('/')}/{name}"))
    return out


def _compare_tree(ns: BaseNamespace, image: Path) -> int:
    """Listings, stat fields and contents of every entry equal debugfs'; files compared."""
    expected = _all_dirs(image)
    walked = dict(ns.walk("/"))
    assert set(walked) == set(expected)
    files = 0
    for path, listing in expected.items():
        got = {e.name: e for e in walked[path]}
        assert set(got) == set(listing), path
        for name, (ino, mode, uid, gid, size) in listing.items():
            e = got[name]
            assert (e.id, e.mode, e.uid, e.gid) == (ino, mode, uid, gid), e.path
            if size is not None:
                assert e.size == size, e.path
            if e.kind is EntryKind.FILE:
                data = ns.read(e)
                assert data == debugfs_bytes(image, f'cat "{e.path}"'), e.path
                files += 1
    return files


def test_vdi_state_equals_debugfs(ext4_disk: dict) -> None:
    with open_paths([ext4_disk["vdi"]]) as chain:
        reader = GuestReader(chain)
        vols = list_volumes(reader)
        assert [(v.name, v.kind) for v in vols] == [("p1", "ext"), ("p2", "ext")]
        ns = open_namespace(reader, "p2")
        assert ns.kind == "ext4" and isinstance(ns, Namespace)
        assert _compare_tree(ns, ext4_disk["fs"]) > 300


def test_links_times_and_sparse(ext4_disk: dict) -> None:
    tree: Path = ext4_disk["tree"]
    ns = open_namespace(RawReader(ext4_disk["fs"]))
    fast = ns.stat("/fastlink")
    slow = ns.stat("/slowlink")
    assert fast.kind is EntryKind.SYMLINK and fast.target == str((tree / "fastlink").readlink())
    assert slow.target == str((tree / "slowlink").readlink()) and len(slow.target) > 60
    assert ns.read("/fastlink") == b"guest-one\n"  # followed inside the volume
    assert ns.stat("/hard1").id == ns.stat("/a/hard2").id
    assert ns.stat("/hard1").nlink == 2
    host = (tree / "etc" / "hostname").stat()
    assert int(ns.stat("/etc/hostname").mtime or 0) == int(host.st_mtime)
    sparse = ns.extents("/sparse.img")
    assert sum(x.length for x in sparse) == (tree / "sparse.img").stat().st_size
    assert sparse[0].kind is ExtentKind.SPARSE and sparse[0].length >= 5 * MiB - 4096
    assert ns.read("/sparse.img") == (tree / "sparse.img").read_bytes()
    assert ns.read("/big.bin", 1000, 5000) == (tree / "big.bin").read_bytes()[1000:6000]
    assert {e.path for e in ns.find("bottom.*")} == {"/a/b/c/d/e/bottom.txt"}
    assert len(list(ns.find("/many/file00[0-4]*"))) == 50


def test_extents_equal_debugfs_blocks(ext4_disk: dict) -> None:
    fs: Path = ext4_disk["fs"]
    start = ext4_disk["start"] * 512
    with open_paths([ext4_disk["vdi"]]) as chain:
        ns = open_namespace(GuestReader(chain), "p2")
        for path in ("/big.bin", "/sparse.img", "/etc/hostname", "/many/file0007.dat"):
            blocks = []
            for x in ns.extents(path):
                if x.kind is ExtentKind.DATA:
                    assert x.volume_offset is not None and x.disk_offset is not None
                    assert x.disk_offset == start + x.volume_offset
                    first = x.volume_offset // 4096
                    blocks += range(first, first + -(-x.length // 4096))
            assert blocks == debugfs_blocks(fs, path), path


def test_sleuthkit_agrees(ext4_disk: dict) -> None:
    """fls -r lists the same paths and inodes; icat gives the same bytes."""
    disk: Path = ext4_disk["disk"]
    fls = fls_paths(disk, ext4_disk["start"])
    with open_paths([ext4_disk["vdi"]]) as chain:
        ns = open_namespace(GuestReader(chain), "p2")
        mine = {e.path: e for _p, es in ns.walk("/") for e in es}
        assert set(mine) == set(fls)
        for path, (_kind, ino) in fls.items():
            assert mine[path].id == ino
        for path in ("/big.bin", "/Ünïcødé ñame.txt", "/sparse.img", "/a/hard2"):
            got = hashlib.sha256(ns.read(path)).hexdigest()
            assert got == hashlib.sha256(icat(disk, fls[path][1], ext4_disk["start"])).hexdigest()


def test_ext2_indirect_blocks(tmp_path: Path) -> None:
    """1 KiB ext2: direct, single, double and triple indirect blocks (a sparse file)."""
    need("mke2fs", "debugfs")
    tree = tmp_path / "tree"
    tree.mkdir()
    payload = bytes(range(256)) * 1024
    with open(tree / "huge", "wb") as f:
        for off in (0, 20 * 1024, 300 * 1024, 70 * MiB):
            f.seek(off)
            f.write(payload[: 3000 + off % 7])
    (tree / "plain.bin").write_bytes(payload * 2)  # 512 KiB: up to double indirect
    fs = mkext(tmp_path / "e2.img", 16 * MiB, tree, "-t", "ext2", "-b", "1024")
    stat = debugfs(fs, "stat /huge")
    assert "(TIND)" in stat and "(DIND)" in stat and "(IND)" in stat
    ns = open_namespace(RawReader(fs))
    assert ns.kind == "ext2"
    for path in ("/huge", "/plain.bin"):
        assert ns.read(path) == (tree / path[1:]).read_bytes()
        blocks = []
        for x in ns.extents(path):
            if x.kind is ExtentKind.DATA:
                assert x.volume_offset is not None
                first = x.volume_offset // 1024
                blocks += range(first, first + -(-x.length // 1024))
        # debugfs lists the indirect blocks too; the file's own blocks are a subset, in order.
        listed = debugfs_blocks(fs, path)
        assert set(blocks) <= set(listed)
        assert len(listed) - len(blocks) <= 8


def test_inline_data(tmp_path: Path) -> None:
    need("mke2fs", "debugfs")
    tree = tmp_path / "tree"
    (tree / "tiny").mkdir(parents=True)
    (tree / "tiny" / "a").write_bytes(b"A" * 40)
    (tree / "tiny" / "b").write_bytes(b"B" * 100)  # spills into the system.data attribute
    (tree / "c").write_bytes(b"C" * 5000)
    fs = mkext(tmp_path / "in.img", 8 * MiB, tree, "-t", "ext4", "-O", "inline_data", "-I", "256")
    assert (
        "Inline data" in debugfs(fs, "stat /tiny/a")
        or "inline" in debugfs(fs, "stat /tiny/a").lower()
    )
    ns = open_namespace(RawReader(fs))
    assert {e.name for e in ns.listdir("/tiny")} == set(debugfs_ls(fs, "/tiny"))
    need("icat")
    inodes = {
        **{f"/tiny/{k}": v[0] for k, v in debugfs_ls(fs, "/tiny").items()},
        **{f"/{k}": v[0] for k, v in debugfs_ls(fs, "/").items()},
    }
    for path in ("/tiny/a", "/tiny/b", "/c"):
        # debugfs's cat pads inline files to the 60-byte i_block; icat honours the size.
        size = (tree / path[1:]).stat().st_size
        assert debugfs_bytes(fs, f"cat {path}")[:size] == (tree / path[1:]).read_bytes()
        assert ns.read(path) == icat(fs, inodes[path]) == (tree / path[1:]).read_bytes()
    assert ns.extents("/tiny/a")[0].kind is ExtentKind.INLINE


def test_deep_extent_tree_and_unwritten(tmp_path: Path) -> None:
    """A file in 400 fragments (an extent tree of depth 2 with 1 KiB blocks), and fallocate."""
    need("mke2fs", "debugfs")
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(900):
        (tree / f"s{i:04d}").write_bytes(b"x" * 1000)
    fs = mkext(tmp_path / "frag.img", 8 * MiB, tree, "-t", "ext4", "-b", "1024", "-O", "^flex_bg")
    debugfs(fs, *[f"rm /s{i:04d}" for i in range(0, 900, 2)], write=True)
    src = tmp_path / "frag.src"
    src.write_bytes(bytes((i * 7) % 251 for i in range(400 * 1024)))
    debugfs(
        fs,
        f"write {src} /frag",
        "write /dev/null /prealloc",
        "fallocate /prealloc 0 39",
        "sif /prealloc size 40960",
        write=True,
    )
    ex = debugfs(fs, "ex /frag")
    depth = max(
        int(line.split("/")[0].split()[-1])
        for line in ex.splitlines()[1:]
        if "/" in line.split()[0]
        if line.strip()
    )
    assert depth >= 2, ex
    ns = open_namespace(RawReader(fs))
    assert ns.read("/frag") == debugfs_bytes(fs, "cat /frag") == src.read_bytes()
    data_blocks = []
    for x in ns.extents("/frag"):
        assert x.volume_offset is not None
        data_blocks += range(x.volume_offset // 1024, x.volume_offset // 1024 + x.length // 1024)
    listed = debugfs_blocks(fs, "/frag")
    assert [b for b in listed if b in set(data_blocks)] == data_blocks
    assert "Uninit" in debugfs(fs, "ex /prealloc")
    kinds = {x.kind for x in ns.extents("/prealloc")}
    assert ExtentKind.UNWRITTEN in kinds
    assert ns.read("/prealloc") == bytes(40960) == debugfs_bytes(fs, "cat /prealloc")


def test_htree_directory_reads_as_linear(tmp_path: Path) -> None:
    """e2fsck -D indexes a large directory; the listing still equals debugfs'."""
    need("mke2fs", "debugfs", "e2fsck")
    tree = tmp_path / "tree"
    (tree / "big").mkdir(parents=True)
    for i in range(600):
        (tree / "big" / f"a rather long file name number {i:05d}").write_bytes(b"%d\n" % i)
    fs = mkext(tmp_path / "ht.img", 8 * MiB, tree, "-t", "ext4", "-b", "1024")
    run("e2fsck", "-fyD", fs, check=False)
    assert "Root node dump" in debugfs(fs, "htree /big")
    ns = open_namespace(RawReader(fs))
    got = {e.name: e.id for e in ns.listdir("/big")}
    assert got == {k: v[0] for k, v in debugfs_ls(fs, "/big").items()}
    assert len(got) == 600
    assert ns.read("/big/a rather long file name number 00321") == b"321\n"


def test_gpt_volume_names(tmp_path: Path) -> None:
    """GPT entries are named by their entry number: p1 (FAT32 ESP) and p3 (ext4)."""
    need("sgdisk", "mkfs.fat", "mke2fs", "mcopy")
    disk = tmp_path / "gpt.raw"
    with open(disk, "wb") as f:
        f.truncate(80 * MiB)
    run("sgdisk", "-n", "1:2048:+34M", "-t", "1:ef00", "-n", "3:0:+20M", "-t", "3:8300", disk)
    info = {n: run("sgdisk", "-i", str(n), disk).stdout for n in (1, 3)}
    first = {n: int(info[n].split("First sector: ")[1].split()[0]) for n in (1, 3)}
    esp = tmp_path / "esp.img"
    run("mkfs.fat", "-C", "-F", "32", esp, str(34 * 1024))
    (tmp_path / "x").write_bytes(b"efi\n")
    run("mcopy", "-i", esp, tmp_path / "x", "::/BOOTX64.EFI")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "root.txt").write_bytes(b"root fs\n")
    ext = mkext(tmp_path / "ext.img", 20 * MiB, tree, "-t", "ext4")
    with open(disk, "r+b") as f:
        for n, image in ((1, esp), (3, ext)):
            f.seek(first[n] * 512)
            f.write(image.read_bytes())
    vdi = to_vdi(disk, tmp_path / "gpt.vdi")
    with open_paths([vdi]) as chain:
        reader = GuestReader(chain)
        assert [(v.name, v.kind) for v in list_volumes(reader)] == [("p1", "fat"), ("p3", "ext")]
        assert open_namespace(reader, "p1").read("/BOOTX64.EFI") == b"efi\n"
        assert open_namespace(reader, "p3").read("/root.txt") == b"root fs\n"
        with pytest.raises(VdiError, match="2 filesystems"):
            open_namespace(reader)
