"""$Bitmap whose $DATA lives in an extension record, reached through $ATTRIBUTE_LIST.

Real volumes get there when $Bitmap is very fragmented; no tool makes that on a small image, so
the test moves the attribute of a mkntfs volume by hand and lets ntfs-3g confirm the result.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from guestfs_images import MiB, make_fs, make_tree, need, ntfs_free_bytes, run

REC = 1024
SPARE = 15  # an MFT record mkntfs reserves but leaves unused


def _unfix(rec: bytearray) -> None:
    usa_ofs, usa_count = struct.unpack_from("<HH", rec, 4)
    for i in range(1, usa_count):
        rec[i * 512 - 2 : i * 512] = rec[usa_ofs + 2 * i : usa_ofs + 2 * i + 2]


def _fix(rec: bytearray) -> None:
    usa_ofs, usa_count = struct.unpack_from("<HH", rec, 4)
    usn = rec[usa_ofs : usa_ofs + 2]
    for i in range(1, usa_count):
        rec[usa_ofs + 2 * i : usa_ofs + 2 * i + 2] = rec[i * 512 - 2 : i * 512]
        rec[i * 512 - 2 : i * 512] = usn


def _attrs(rec: bytearray) -> list[bytes]:
    off = struct.unpack_from("<H", rec, 0x14)[0]
    out = []
    while struct.unpack_from("<I", rec, off)[0] != 0xFFFFFFFF:
        alen = struct.unpack_from("<I", rec, off + 4)[0]
        out.append(bytes(rec[off : off + alen]))
        off += alen
    return out


def _write_attrs(rec: bytearray, attrs: list[bytes]) -> None:
    off = struct.unpack_from("<H", rec, 0x14)[0]
    body = b"".join(attrs) + b"\xff\xff\xff\xff" + bytes(4)
    assert off + len(body) <= REC - 8
    rec[off : off + len(body)] = body
    struct.pack_into("<I", rec, 0x18, off + len(body))


def move_bitmap_data(img: Path) -> None:
    data = bytearray(img.read_bytes())
    spc = data[0x0D]
    mft = struct.unpack_from("<Q", data, 0x30)[0] * 512 * spc
    base = bytearray(data[mft + 6 * REC : mft + 7 * REC])
    ext = bytearray(data[mft + SPARE * REC : mft + (SPARE + 1) * REC])
    _unfix(base)
    attrs = _attrs(base)
    (dattr,) = [a for a in attrs if struct.unpack_from("<I", a)[0] == 0x80]
    # Extension record: a copy of the base header, holding only $DATA, pointing at its base.
    ext[:] = base
    struct.pack_into("<H", ext, 0x16, 1)  # in use
    seq6 = struct.unpack_from("<H", base, 0x10)[0]
    struct.pack_into("<Q", ext, 0x20, 6 | seq6 << 48)  # base file record
    struct.pack_into("<I", ext, 0x2C, SPARE)  # record number (NTFS 3.1 header)
    _write_attrs(ext, [dattr])
    # $ATTRIBUTE_LIST in the base: one entry per attribute, $DATA now in the spare record.
    seq_ext = struct.unpack_from("<H", ext, 0x10)[0]
    entries = b""
    for a in attrs:
        atype, _len, _nr, nlen, noff = struct.unpack_from("<IIBBH", a)
        instance = struct.unpack_from("<H", a, 14)[0]
        where = SPARE | seq_ext << 48 if atype == 0x80 else 6 | seq6 << 48
        name = a[noff : noff + 2 * nlen]
        ent = struct.pack("<IHBBQQH", atype, 0, nlen, 0x1A, 0, where, instance) + name
        ent += bytes(-len(ent) % 8)
        entries += ent[:4] + struct.pack("<H", len(ent)) + ent[6:]
    hdr = struct.pack("<IIBBHHHIHBB", 0x20, 0, 0, 0, 0x18, 0, 7, len(entries), 0x18, 0, 0)
    alist = hdr + entries
    alist += bytes(-len(alist) % 8)
    alist = alist[:4] + struct.pack("<I", len(alist)) + alist[8:]
    kept = [a for a in attrs if struct.unpack_from("<I", a)[0] != 0x80]
    _write_attrs(base, [kept[0], alist, *kept[1:]])
    _fix(base)
    _fix(ext)
    data[mft + 6 * REC : mft + 7 * REC] = base
    data[mft + SPARE * REC : mft + (SPARE + 1) * REC] = ext
    img.write_bytes(bytes(data))


def test_bitmap_through_attribute_list(analyze, tmp_path: Path) -> None:
    need("ntfscluster", "ntfsinfo")
    img = tmp_path / "fs.img"
    make_fs("ntfs", img, 32 * MiB, make_tree(tmp_path / "t", big=MiB))
    (before,) = analyze(img).volumes
    free = ntfs_free_bytes(img)
    move_bitmap_data(img)
    # ntfs-3g follows the list too and still counts the same free space.
    info = run("ntfsinfo", "-i", "6", img).stdout
    assert "$ATTRIBUTE_LIST" in info or "ATTRIBUTE_LIST" in info.upper(), info
    assert ntfs_free_bytes(img) == free
    (after,) = analyze(img).volumes
    assert not after.kept_whole, after.notes
    assert after.used == before.used


def _logfile_offset(img: Path) -> int:
    """Disk offset of $LogFile's first cluster, from record 2's runlist."""
    data = img.read_bytes()
    spc = data[0x0D]
    cluster = 512 * spc
    mft = struct.unpack_from("<Q", data, 0x30)[0] * cluster
    rec = bytearray(data[mft + 2 * REC : mft + 3 * REC])
    _unfix(rec)
    (dattr,) = [a for a in _attrs(rec) if struct.unpack_from("<I", a)[0] == 0x80]
    roff = struct.unpack_from("<H", dattr, 32)[0]
    hdr = dattr[roff]
    ln, lo = hdr & 0xF, hdr >> 4
    lcn = int.from_bytes(dattr[roff + 1 + ln : roff + 1 + ln + lo], "little", signed=True)
    return lcn * cluster


def _restart_page(in_use: int, flags: int) -> bytes:
    page = bytearray(4096)
    page[0:4] = b"RSTR"
    struct.pack_into("<HHQIIHhh", page, 4, 0x1E, 9, 0, 4096, 4096, 0x30, 1, 1)
    struct.pack_into("<H", page, 0x1E, 0x0001)  # update sequence number
    struct.pack_into("<QHHHH", page, 0x30, 0x1234, 1, 0xFFFF, in_use, flags)
    _fix(page)
    return bytes(page)


@pytest.mark.parametrize(
    ("page", "kept"),
    [
        (_restart_page(0xFFFF, 0), False),  # no client: clean
        (_restart_page(0, 0x0002), False),  # client, volume-is-clean flag set
        (_restart_page(0, 0), True),  # client and not clean: journal must be replayed
        (b"junk" * 1024, True),  # not recognised
    ],
)
def test_logfile_restart_area(analyze, page: bytes, kept: bool, tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    make_fs("ntfs", img, 16 * MiB, None)
    off = _logfile_offset(img)
    data = bytearray(img.read_bytes())
    data[off : off + 4096] = page
    img.write_bytes(bytes(data))
    (vol,) = analyze(img).volumes
    assert vol.kept_whole == kept, vol.notes
