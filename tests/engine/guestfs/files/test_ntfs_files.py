"""NTFS files against ntfs-3g's tools (ntfsls, ntfscat, the FUSE driver) and The Sleuth Kit.

Images are made by mkntfs and populated through ntfs-3g's FUSE driver (ntfscp cannot create
folders, streams in folders, compressed files or reparse points), then unmounted and read
while nothing has them mounted. ntfsfallocate makes a file whose initialized size is below
its size. Expected names come from ``ntfsls -R`` and ``fls -r``, expected bytes from
``ntfscat`` and ``icat`` (both decompress LZNT1), expected clusters from ``istat``, and link
targets from ``readlink`` on the mounted volume. Hostile cases edit MFT records and index
blocks of a copy with the small record editor below (fixups re-applied by the test).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fsbuild import MiB, RawReader, need, partitioned, run, to_vdi
from test_hostile_files import deadline

from vdigui.engine import open_paths
from vdigui.engine.errors import GuestFsError, GuestPathError
from vdigui.engine.guestfs.files import EntryKind, ExtentKind, FileExtent, open_namespace
from vdigui.engine.guestfs.files.ntfs import nt_time
from vdigui.engine.usage_report import GuestReader

#: As tests/support.py decides: in CI every tool must be there.
IN_CI = bool(os.environ.get("CI"))

CLUSTER = 4096
#: MFT numbers of NTFS's own metadata files, which vdigui does not list (nor does ntfs-3g).
FIRST_USER = 16


# -- building ------------------------------------------------------------------------------
def need_fuse() -> None:
    """ntfs-3g's FUSE driver is the only Debian tool that creates NTFS folders and streams."""
    need("mkntfs", "ntfs-3g", "ntfsls", "ntfscat", "ntfsfallocate", "fls", "icat", "istat")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        message = "/dev/fuse is not usable here, so NTFS test volumes cannot be populated"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _unmount(mnt: Path) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    run(*([tool, "-u"] if tool else ["umount"]), mnt)


@contextlib.contextmanager
def mounted(img: Path, mnt: Path) -> Iterator[Path]:
    mnt.mkdir(exist_ok=True)
    run("ntfs-3g", "-o", "streams_interface=windows", img, mnt)
    try:
        yield mnt
    finally:
        _unmount(mnt)


def mkntfs(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    run("mkntfs", "-F", "-f", "-Q", "-q", "-c", str(CLUSTER), "-L", "Guest NTFS", path)
    return path


def reparse(tag: int, target: str, shown: str, flags: int | None) -> bytes:
    """A symbolic link's or junction's reparse buffer (the layout Windows documents)."""
    sub, pr = target.encode("utf-16-le"), shown.encode("utf-16-le")
    body = struct.pack("<HHHH", 0, len(sub), len(sub), len(pr))
    if flags is not None:
        body += struct.pack("<I", flags)
    body += sub + pr
    return struct.pack("<IHH", tag, len(body), 0) + body


def populate(m: Path) -> None:
    """Fill a mounted volume."""
    rng = np.random.default_rng(5)
    # Two files grown in turns, 4 KiB at a time: hundreds of runs each, more than one MFT
    # record holds, so ntfs-3g moves their runlists into extension records ($ATTRIBUTE_LIST).
    fds = [os.open(m / name, os.O_WRONLY | os.O_CREAT, 0o644) for name in ("fragA", "fragB")]
    for i in range(500):
        for k, fd in enumerate(fds):
            os.write(fd, bytes([(i * 7 + k) % 251]) * CLUSTER)
            os.fsync(fd)
    for fd in fds:
        os.close(fd)
    (m / "a/b/c/d/e").mkdir(parents=True)
    (m / "a/b/c/d/e/bottom.txt").write_bytes(b"deep down\n")
    (m / "Ünïcødé ñame.txt").write_bytes("grüße\n".encode())
    (m / "日本語のファイル名.txt").write_bytes("こんにちは\n".encode())
    (m / ("long" * 63 + "end")).write_bytes(b"long name\n")  # 255 UTF-16 units
    (m / "many").mkdir()
    for i in range(300):  # far more than $INDEX_ROOT holds: $INDEX_ALLOCATION
        (m / "many" / f"file{i:04d}.dat").write_bytes(rng.bytes(int(rng.integers(0, 3000))))
    (m / "big.bin").write_bytes(rng.bytes(3 * MiB + 123))
    with open(m / "sparse.img", "wb") as f:
        f.seek(5 * MiB)
        f.write(b"after the hole\n")
        f.seek(9 * MiB)
        f.write(b"end")
    (m / "x.txt").write_bytes(b"main stream\n")
    (m / "x.txt:ads").write_bytes(b"alternate stream data\n")
    (m / "x.txt:Zone.Identifier").write_bytes(rng.bytes(5000))  # a non-resident stream
    (m / "a" / "b:folder stream").write_bytes(b"a stream on a folder\n")
    (m / "hard1").write_bytes(b"linked twice\n")
    os.link(m / "hard1", m / "a" / "hard2")
    (m / "ilink").symlink_to("a/b/c/d/e/bottom.txt")  # ntfs-3g writes an Interix link
    (m / "winlink").write_bytes(b"")
    os.setxattr(
        m / "winlink", "system.ntfs_reparse_data", reparse(0xA000000C, "a\\b\\c", "a\\b\\c", 1)
    )
    (m / "junction").mkdir()
    os.setxattr(
        m / "junction",
        "system.ntfs_reparse_data",
        reparse(0xA0000003, "\\??\\C:\\many", "C:\\many", None),
    )
    (m / "comp").mkdir()
    os.setxattr(m / "comp", "system.ntfs_attrib_be", (0x800).to_bytes(4, "big"))
    (m / "comp" / "text.txt").write_bytes(b"hello compressed world " * 5000)
    (m / "comp" / "mixed.bin").write_bytes(b"A" * 70000 + rng.bytes(70000) + bytes(70000) + b"tail")
    (m / "Long File Name.txt").write_bytes(b"with an 8.3 name\n")
    (m / "Some Folder").mkdir()
    # Win32 + DOS name pairs, as Windows makes them (ntfs-3g's names are POSIX by default).
    os.setxattr(m / "Long File Name.txt", "system.ntfs_dos_name", b"LONGFI~1.TXT")
    os.setxattr(m / "Some Folder", "system.ntfs_dos_name", b"SOMEFO~1")
    (m / "hidden.txt").write_bytes(b"h\n")
    os.setxattr(m / "hidden.txt", "system.ntfs_attrib_be", (0x22).to_bytes(4, "big"))
    os.utime(m / "x.txt", (1600000000, 1600000000))
    (m / "init.bin").write_bytes(b"hello init")


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    need_fuse()
    tmp = tmp_path_factory.mktemp("ntfs")
    img = mkntfs(tmp / "ntfs.img", 32 * MiB)  # larger volumes do not fragment fragA
    with mounted(img, tmp / "mnt") as m:
        populate(m)
    with mounted(img, tmp / "mnt") as m:  # a fresh mount: links as ntfs-3g reads them
        links = {p: str((m / p).readlink()) for p in ("ilink", "winlink")}
    # Allocated but not initialized: the size grows, the initialized size stays at 10.
    run("ntfsfallocate", "-l", "65536", img, "/init.bin")
    return {"img": img, "links": links, "tmp": tmp}


# -- oracles -------------------------------------------------------------------------------
def fls_entries(image: Path, offset_sectors: int = 0) -> dict[str, tuple[str, str]]:
    """path -> (type letters, inode-type-id) from ``fls -r -p``, user files only."""
    out: dict[str, tuple[str, str]] = {}
    res = run("fls", "-r", "-p", "-o", str(offset_sectors), image)
    for line in res.stdout.splitlines():
        m = re.fullmatch(r"(\S/\S) (\* )?(\d+)(-\d+-\d+)?(?:\(realloc\))?:\t(.*)", line)
        if not m or m.group(2) or m.group(1).startswith("V"):
            continue
        kind, _deleted, ino, tid, name = m.groups()
        if int(ino) < FIRST_USER or name.startswith("$") or "/.:" in name:
            continue  # metadata files; TSK also lists a folder's streams inside it as ".:s"
        out["/" + name] = (kind, ino + (tid or ""))
    return out


def ntfsls_tree(image: Path) -> set[str]:
    """Every path ``ntfsls -R`` prints (no streams: ntfsls does not show them)."""
    out: set[str] = set()
    current = "/"
    for line in run("ntfsls", "-a", "-R", "-F", image).stdout.splitlines():
        if line.endswith(":") and line.startswith("/"):
            current = line[:-1]
            continue
        name = line.rstrip("/")
        if name in ("", ".", ".."):
            continue
        out.add(current.rstrip("/") + "/" + name)
    return out


def ntfscat(image: Path, path: str, stream: str | None = None) -> bytes:
    extra = ["-a", "0x80", "-n", stream] if stream else []
    return bytes(run("ntfscat", *extra, image, path, text=False).stdout)


def icat(image: Path, address: str, offset_sectors: int = 0) -> bytes:
    return bytes(run("icat", "-o", str(offset_sectors), image, address, text=False).stdout)


def istat_clusters(image: Path, inode: int, stream: str = "N/A") -> list[int]:
    """The cluster list ``istat`` prints under a $DATA attribute (0 for holes)."""
    lines = run("istat", image, str(inode)).stdout.splitlines()
    out: list[int] = []
    inside = False
    for line in lines:
        if line.startswith("Type:"):
            inside = line.startswith("Type: $DATA") and f"Name: {stream} " in line
            continue
        if inside:
            out += [int(x) for x in line.split()]
    return out


def my_clusters(extents: list[FileExtent], size: int) -> list[int]:
    """The same list from vdigui's extents (holes and never-written stretches as 0)."""
    out: list[int] = []
    for i in range(-(-size // CLUSTER)):
        pos = i * CLUSTER
        ext = next(x for x in extents if x.file_offset <= pos < x.file_offset + x.length)
        if ext.kind is ExtentKind.DATA:
            assert ext.volume_offset is not None
            out.append((ext.volume_offset + pos - ext.file_offset) // CLUSTER)
        else:
            out.append(0)
    return out


# -- the main comparison -------------------------------------------------------------------
def test_listing_matches_ntfsls_and_fls(volume: dict[str, object]) -> None:
    img = volume["img"]
    assert isinstance(img, Path)
    ns = open_namespace(RawReader(img))
    assert ns.kind == "ntfs" and ns.label == "Guest NTFS"
    mine = {e.path: e for _d, es in ns.walk("/") for e in es}
    fls = fls_entries(img)
    assert set(mine) == set(fls)
    assert {p for p in mine if ":" not in p} == ntfsls_tree(img)
    for path, (kind, address) in fls.items():
        entry = mine[path]
        assert entry.id & ((1 << 48) - 1) == int(address.split("-")[0]), path
        if kind == "d/d":
            assert entry.kind in (EntryKind.DIRECTORY, EntryKind.SYMLINK), path
        else:
            assert entry.kind in (EntryKind.FILE, EntryKind.SYMLINK), path
    assert len(ns.listdir("/many")) == 300
    # Hard links share their MFT record and count both names.
    assert mine["/hard1"].id == mine["/a/hard2"].id and mine["/hard1"].nlink == 2


def test_every_file_matches_ntfscat_and_icat(volume: dict[str, object]) -> None:
    img = volume["img"]
    assert isinstance(img, Path)
    ns = open_namespace(RawReader(img))
    fls = fls_entries(img)
    checked = 0
    for _d, entries in ns.walk("/"):
        for entry in entries:
            if entry.kind is not EntryKind.FILE:
                continue
            data = ns.read(entry)
            assert len(data) == entry.size, entry.path
            assert data == icat(img, fls[entry.path][1]), entry.path
            base, _, stream = entry.path.partition(":")
            assert data == ntfscat(img, base, stream or None), entry.path
            assert b"".join(ns.iter_read(entry, 65536)) == data
            checked += 1
    assert checked > 310
    # Byte ranges across run and hole boundaries.
    sparse = ntfscat(img, "/sparse.img")
    for off, length in ((5 * MiB - 10, 40), (0, 100), (9 * MiB - 1, 100)):
        assert ns.read("/sparse.img", off, length) == sparse[off : off + length]


def test_extents_match_istat(volume: dict[str, object]) -> None:
    img = volume["img"]
    assert isinstance(img, Path)
    ns = open_namespace(RawReader(img))
    biggest = max(ns.listdir("/many"), key=lambda e: e.size).path
    for path in ("/big.bin", "/sparse.img", "/fragA", "/fragB", "/init.bin", biggest):
        entry = ns.stat(path)
        exts = ns.extents(entry)
        assert sum(x.length for x in exts) == entry.size
        assert [x.file_offset for x in exts] == sorted(x.file_offset for x in exts)
        assert my_clusters(exts, entry.size) == istat_clusters(img, entry.id), path
    kinds = [x.kind for x in ns.extents("/sparse.img")]
    assert ExtentKind.SPARSE in kinds and ExtentKind.DATA in kinds
    assert len(ns.extents("/fragA")) > 100
    # istat shows the attribute list that the interleaved writes forced.
    assert "$ATTRIBUTE_LIST" in run("istat", img, str(ns.stat("/fragA").id)).stdout
    init = ns.extents("/init.bin")
    assert [x.kind for x in init] == [ExtentKind.DATA, ExtentKind.UNWRITTEN]
    assert init[0].length == 10 and ns.stat("/init.bin").size == 65536
    assert ns.extents("/x.txt") == [ns.extents("/x.txt")[0]]
    assert ns.extents("/x.txt")[0].kind is ExtentKind.INLINE
    # LZNT1 units have no plain copy on the volume; they are reported as inline stretches.
    assert ExtentKind.INLINE in {x.kind for x in ns.extents("/comp/text.txt")}
    assert "Compressed" in run("istat", img, str(ns.stat("/comp/text.txt").id)).stdout


def test_links_streams_names_and_attributes(volume: dict[str, object]) -> None:
    img, links = volume["img"], volume["links"]
    assert isinstance(img, Path) and isinstance(links, dict)
    ns = open_namespace(RawReader(img))
    for path, target in links.items():  # as ntfs-3g's readlink shows them
        entry = ns.stat("/" + path)
        assert entry.kind is EntryKind.SYMLINK and entry.target == target
    assert ns.read(ns.stat("/ilink")) == b"a/b/c/d/e/bottom.txt"
    assert ns.read("/ilink") == b"deep down\n"  # a path's final link is followed
    assert ns.listdir("/winlink") == ns.listdir("/a/b/c")  # followed inside the volume
    junction = ns.stat("/junction")
    assert junction.kind is EntryKind.SYMLINK and junction.target == "C:/many"
    assert [e.name for e in ns.find("*:ads")] == ["x.txt:ads"]
    assert ns.read("/x.txt:ads") == ntfscat(img, "/x.txt", "ads")
    assert ns.read("/a/b:folder stream") == b"a stream on a folder\n"
    assert ns.stat("/x.txt:ads").id != ns.stat("/x.txt").id
    long_name = "long" * 63 + "end"
    assert ns.stat("/" + long_name).size == 10
    assert ns.read("/日本語のファイル名.txt") == "こんにちは\n".encode()
    hidden = ns.stat("/hidden.txt").attributes
    assert hidden is not None and hidden & 0x02
    assert ns.stat("/x.txt").mtime == 1600000000
    assert ns.stat("/comp").is_dir and (ns.stat("/comp").attributes or 0) & 0x10
    # No 8.3 duplicates (ntfsls -x shows they are there), no metadata files.
    short = run("ntfsls", "-x", img).stdout.split()
    assert "LONGFI~1.TXT" in short and "SOMEFO~1" in short
    root = [e.name for e in ns.listdir("/")]
    assert "Long File Name.txt" in root and "Some Folder" in root
    assert ns.stat("/Long File Name.txt").nlink == 1
    assert not any("~" in n for n in root) and not any(n.startswith("$") for n in root)
    assert nt_time(116444736000000000) == 0 and nt_time(0) is None


# -- hostile metadata ----------------------------------------------------------------------
def _boot(img: Path) -> tuple[int, int]:
    boot = img.read_bytes()[:512]
    bps, spc = struct.unpack_from("<HB", boot, 0x0B)
    mft_lcn = struct.unpack_from("<Q", boot, 0x30)[0]
    return bps * spc, mft_lcn


def _unfix(buf: bytearray) -> None:
    usa_ofs, count = struct.unpack_from("<HH", buf, 4)
    for i in range(1, count):
        buf[i * 512 - 2 : i * 512] = buf[usa_ofs + 2 * i : usa_ofs + 2 * i + 2]


def _refix(buf: bytearray) -> None:
    usa_ofs, count = struct.unpack_from("<HH", buf, 4)
    usn = buf[usa_ofs : usa_ofs + 2]
    for i in range(1, count):
        buf[usa_ofs + 2 * i : usa_ofs + 2 * i + 2] = buf[i * 512 - 2 : i * 512]
        buf[i * 512 - 2 : i * 512] = usn


def edit_record(img: Path, number: int, change: Callable[[bytearray], None]) -> None:
    """Change MFT record ``number`` (fixups undone first, redone after)."""
    cs, mft_lcn = _boot(img)
    off = mft_lcn * cs + number * 1024
    with open(img, "r+b") as f:
        f.seek(off)
        buf = bytearray(f.read(1024))
        assert buf[:4] == b"FILE" and struct.unpack_from("<I", buf, 0x2C)[0] == number
        _unfix(buf)
        change(buf)
        _refix(buf)
        f.seek(off)
        f.write(buf)


def attr_offset(rec: bytearray, atype: int) -> int:
    off = struct.unpack_from("<H", rec, 0x14)[0]
    while struct.unpack_from("<I", rec, off)[0] != atype:
        off += struct.unpack_from("<I", rec, off + 4)[0]
    return off


def root_entries(rec: bytearray) -> list[int]:
    """Offsets of the entries of a record's $INDEX_ROOT."""
    a = attr_offset(rec, 0x90)
    value = a + struct.unpack_from("<H", rec, a + 20)[0]
    pos = value + 16 + struct.unpack_from("<I", rec, value + 16)[0]
    out = []
    while not struct.unpack_from("<H", rec, pos + 12)[0] & 2:
        out.append(pos)
        pos += struct.unpack_from("<H", rec, pos + 8)[0]
    return out


@pytest.fixture
def small(tmp_path: Path) -> dict[str, object]:
    """A small volume: /d/f.txt, /d/sub/g.txt, /data.bin (non-resident) and /many."""
    need_fuse()
    img = mkntfs(tmp_path / "small.img", 16 * MiB)
    with mounted(img, tmp_path / "mnt") as m:
        (m / "d" / "sub").mkdir(parents=True)
        (m / "d" / "f.txt").write_bytes(b"f\n")
        (m / "d" / "sub" / "g.txt").write_bytes(b"g\n")
        (m / "data.bin").write_bytes(bytes(range(256)) * 64)
        (m / "many").mkdir()
        for i in range(100):
            (m / "many" / f"n{i:03d}").write_bytes(b"")
    ids = {}
    for path in ("/d", "/d/f.txt", "/d/sub", "/d/sub/g.txt", "/data.bin", "/many"):
        folder, name = os.path.split(path)
        for line in run("ntfsls", "-i", "-p", folder, img).stdout.splitlines():
            number, _, shown = line.strip().partition(" ")
            if shown == name:
                ids[path] = int(number)
    assert len(ids) == 6
    return {"img": img, "ids": ids}


def test_bad_fixup_is_a_clear_error(small: dict[str, object]) -> None:
    img, ids = small["img"], small["ids"]
    assert isinstance(img, Path) and isinstance(ids, dict)
    cs, mft_lcn = _boot(img)
    with open(img, "r+b") as f:  # a torn write: the first sector's check word differs
        f.seek(mft_lcn * cs + ids["/d/f.txt"] * 1024 + 510)
        f.write(b"\xde\xad")
    with deadline():
        ns = open_namespace(RawReader(img))
        entry = ns.stat("/d/f.txt")  # still listed, from the directory index
        with pytest.raises(GuestFsError, match="fixup"):
            ns.read(entry)
    assert any("fixup" in n for n in ns.notes)


def test_bad_index_fixup(small: dict[str, object]) -> None:
    img, ids = small["img"], small["ids"]
    assert isinstance(img, Path) and isinstance(ids, dict)
    clusters = [int(x) for x in istat_index_clusters(img, ids["/many"])]
    cs, _ = _boot(img)
    with open(img, "r+b") as f:
        f.seek(clusters[0] * cs + 510)
        f.write(b"\xbe\xef")
    ns = open_namespace(RawReader(img))
    with pytest.raises(GuestFsError, match="fixup"):
        ns.listdir("/many")
    problems: list[str] = []
    with deadline():
        walked = [d for d, _e in ns.walk("/", onerror=lambda p, e: problems.append(p))]
    assert "/many" in problems and "/d/sub" in walked


def istat_index_clusters(img: Path, inode: int) -> list[str]:
    lines = run("istat", img, str(inode)).stdout.splitlines()
    out: list[str] = []
    inside = False
    for line in lines:
        if line.startswith("Type:"):
            inside = line.startswith("Type: $INDEX_ALLOCATION")
            continue
        if inside:
            out += line.split()
    assert out
    return out


def test_run_past_the_end_and_absurd_size(small: dict[str, object]) -> None:
    img, ids = small["img"], small["ids"]
    assert isinstance(img, Path) and isinstance(ids, dict)
    data_id = ids["/data.bin"]

    def far_run(rec: bytearray) -> None:
        a = attr_offset(rec, 0x80)
        runs = a + struct.unpack_from("<H", rec, a + 32)[0]
        hdr = rec[runs]
        lo = runs + 1 + (hdr & 0x0F)
        rec[lo : lo + (hdr >> 4)] = b"\x7f" * (hdr >> 4)  # a huge positive cluster number

    absurd_img = img.with_name("absurd.img")
    shutil.copy(img, absurd_img)
    edit_record(img, data_id, far_run)
    ns = open_namespace(RawReader(img))
    names = [e.name for e in ns.listdir("/")]
    assert "data.bin" in names
    with deadline(), pytest.raises(GuestFsError, match="outside the volume"):
        ns.read("/data.bin")

    def absurd(rec: bytearray) -> None:
        a = attr_offset(rec, 0x80)
        struct.pack_into("<QQQ", rec, a + 0x28, 1 << 60, 1 << 60, 1 << 60)

    edit_record(absurd_img, data_id, absurd)
    ns = open_namespace(RawReader(absurd_img))
    with deadline():
        with pytest.raises(GuestFsError, match="absurd size"):
            ns.read("/data.bin")
        assert ns.read("/d/sub/g.txt") == b"g\n"


def test_index_pointing_at_itself_and_at_its_parent(small: dict[str, object]) -> None:
    img, ids = small["img"], small["ids"]
    assert isinstance(img, Path) and isinstance(ids, dict)
    d, sub = ids["/d"], ids["/d/sub"]

    def point_at(number: int, name: str) -> Callable[[bytearray], None]:
        def change(rec: bytearray) -> None:
            for pos in root_entries(rec):
                key = pos + 16
                nlen = rec[key + 0x40]
                if rec[key + 0x42 : key + 0x42 + 2 * nlen].decode("utf-16-le") == name:
                    old = struct.unpack_from("<Q", rec, pos)[0]
                    assert old & 0xFFFFFFFFFFFF != number
                    struct.pack_into("<Q", rec, pos, number)  # sequence number 0: unchecked
                    return
            raise AssertionError(name)

        return change

    edit_record(img, d, point_at(d, "f.txt"))  # /d lists itself
    # /d/sub/g.txt now names /d: the tree loops.
    edit_record(img, sub, point_at(d, "g.txt"))
    ns = open_namespace(RawReader(img))
    assert [e.name for e in ns.listdir("/d")] == ["sub"]
    assert any("itself" in n for n in ns.notes)
    problems: list[str] = []
    with deadline():
        paths = [p for p, _e in ns.walk("/", onerror=lambda p, e: problems.append(str(e)))]
        assert len(list(ns.find("*"))) < 200
    assert "/d/sub" in paths and any("loop" in p for p in problems)


def test_hostile_names_are_escaped(small: dict[str, object]) -> None:
    img, ids = small["img"], small["ids"]
    assert isinstance(img, Path) and isinstance(ids, dict)

    def rename(rec: bytearray) -> None:
        pos = root_entries(rec)[0]  # the first entry of /d: "f.txt" (index order)
        key = pos + 16
        assert rec[key + 0x40] == 5
        rec[key + 0x42 : key + 0x42 + 10] = "a/\x00.b".encode("utf-16-le")

    def dotdot(rec: bytearray) -> None:
        pos = root_entries(rec)[0]
        key = pos + 16
        rec[key + 0x40] = 2
        rec[key + 0x42 : key + 0x46] = "..".encode("utf-16-le")

    edit_record(img, ids["/d"], rename)
    edit_record(img, ids["/d/sub"], dotdot)
    ns = open_namespace(RawReader(img))
    names = {e.name: e for e in ns.listdir("/d")}
    assert "a\\x2f\\x00.b" in names and names["a\\x2f\\x00.b"].name_note
    assert ns.read("/d/a\\x2f\\x00.b") == b"f\n"
    sub = ns.listdir("/d/sub")
    assert [e.name for e in sub] == ["\\x2e."] and ns.read(sub[0]) == b"g\n"
    with pytest.raises(GuestPathError):
        ns.stat("/d/a")


# -- inside a VDI, and vdictl --------------------------------------------------------------
def test_vdi_partition_and_vdictl(
    volume: dict[str, object], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    need("sfdisk")
    from vdigui.cli import main

    img = volume["img"]
    assert isinstance(img, Path)
    disk = tmp_path / "disk.raw"
    starts = partitioned(disk, 40 * MiB, [(img, "7")])
    vdi = to_vdi(disk, tmp_path / "disk.vdi")
    fls = fls_entries(disk, starts[0])
    with open_paths([vdi]) as chain:
        ns = open_namespace(GuestReader(chain))
        assert ns.volume == "p1"
        assert {e.path for _d, es in ns.walk("/") for e in es} == set(fls)
        assert ns.read("/fragB") == icat(disk, fls["/fragB"][1], starts[0])
        extent = ns.extents("/big.bin")[0]
        assert extent.volume_offset is not None
        assert extent.disk_offset == extent.volume_offset + starts[0] * 512

    def vdictl(*args: str | Path) -> tuple[int, bytes, str]:
        code = main([str(a) for a in args])
        out, err = capsysbinary.readouterr()
        return code, out, err.decode()

    code, out, err = vdictl("ls", vdi, "/a")
    assert code == 0, err
    assert out.decode().split() == ["b/", "b:folder", "stream", "hard2"]
    code, out, err = vdictl("ls", vdi, "p1:/comp", "-l")
    assert code == 0 and "text.txt" in out.decode() and "115000" in out.decode()
    code, out, err = vdictl("cat", vdi, "/x.txt:ads")
    assert code == 0 and out == b"alternate stream data\n"
    code, out, err = vdictl("cat", vdi, "p1:/comp/mixed.bin")
    assert code == 0 and out == ntfscat(img, "/comp/mixed.bin")
    dest = tmp_path / "out"
    code, out, err = vdictl("get", vdi, "/a", "/sparse.img", "/x.txt", dest)
    assert code == 0, err
    assert (dest / "a" / "b" / "c" / "d" / "e" / "bottom.txt").read_bytes() == b"deep down\n"
    assert (dest / "sparse.img").read_bytes() == ntfscat(img, "/sparse.img")
    assert (dest / "x.txt").stat().st_mtime == 1600000000
    assert (dest / "a" / "hard2").read_bytes() == b"linked twice\n"


def test_lznt1_by_hand_and_damaged() -> None:
    """A chunk assembled by hand from the format's rules, then broken ones."""
    from vdigui.engine.guestfs.files.ntfs import lznt1_decompress

    # "abc" as literals, then a reference 3 back, 9 long (4 offset bits, 12 length bits).
    body = bytes([0x08]) + b"abc" + struct.pack("<H", (3 - 1) << 12 | (9 - 3))
    chunk = struct.pack("<H", 0xB000 | (len(body) - 1)) + body
    plain = b"stored as is" + bytes(4096 - 12)
    stored = struct.pack("<H", 0x3000 | (len(plain) - 1)) + plain
    assert lznt1_decompress(chunk + stored + b"\0\0", 1 << 16) == b"abcabcabcabc" + plain
    assert lznt1_decompress(chunk, 5) == b"abcab"
    with deadline():
        for bad in (
            struct.pack("<H", 0xB002) + bytes([0x01]) + struct.pack("<H", 0),  # ref 1st
            struct.pack("<H", 0xB00F) + b"abc",  # chunk longer than the data
            struct.pack("<H", 0xB003) + bytes([0x02]) + b"a" + b"\xff\xff",
        ):  # too far
            with pytest.raises(GuestFsError):
                lznt1_decompress(bad, 1 << 16)
