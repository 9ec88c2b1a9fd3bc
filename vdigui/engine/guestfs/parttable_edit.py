"""Partition-table edits for a disk resize: grow the last partition, move the backup GPT.

Why this lives apart from :mod:`.partitions`: that module reads a layout for analysis (and
forgives damage); this one computes exact sector rewrites, so it insists on tables it fully
understands and refuses anything else with one sentence. Nothing here writes: the caller gets
the list of whole 512-byte sectors to write (through the chain's top image) and sentences
that describe them.

What a resize changes in the guest's tables (docs/vdi-format.md §3.2):

- MBR: nothing, unless the last partition is grown. A primary partition gets a new sector
  count (and end CHS); a logical partition is grown in its EBR and its extended container is
  grown to the new disk end too. MBR counts are 32-bit: nothing grows past 2 TiB.
- GPT: the backup header and partition array must sit at the very end of the disk (UEFI
  spec, 5.3), so they move to the new end whenever the size changes; the primary header
  gets the new alternate LBA and last usable LBA; both headers get fresh CRC-32s of
  themselves and of the array. The protective MBR's size is updated; the old backup header
  sector is zeroed so no tool mistakes it for a live one.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from vdigui.engine.errors import OperationRefused

SECTOR = 512
_EXTENDED = {0x05, 0x0F, 0x85}
_PROTECTIVE = 0xEE
_MAX_MBR_SECTORS = 0xFFFFFFFF

#: MBR types a user would not want grown, with what they are.
_MBR_NOT_GROWN = {
    0x82: "Linux swap",
    0x27: "a hidden recovery partition (Windows RE)",
    0x12: "a vendor recovery or diagnostics partition",
    0xEF: "an EFI system partition",
    0x84: "a hibernation partition",
    0xDE: "a Dell utility partition",
}
#: GPT type GUIDs a user would not want grown.
_GPT_NOT_GROWN = {
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "a Windows recovery partition",
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "an EFI system partition",
    "21686148-6449-6E6F-744E-656564454649": "a BIOS boot partition",
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "the Microsoft reserved partition",
    "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3": "Windows dynamic-disk (LDM) metadata",
    "AF9B60A0-1431-4F62-BC68-3311714A69AD": "a Windows dynamic-disk (LDM) volume",
    "A19D880F-05FC-4D3B-A006-743F0F84911E": "a Linux RAID member",
}

Reader = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class LastPartition:
    """The partition that ends last on the disk.

    Attributes:
        number: its Linux partition number (sda<number>).
        name: "MBR #1", "EBR logical #5", "GPT #2".
        start, end: byte range on the guest disk.
        type_text: its type as a hex code or GUID.
        not_grown_why: what it is when a user would not want it grown, else None.
    """

    number: int
    name: str
    start: int
    end: int
    type_text: str
    not_grown_why: str | None


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A partition table vdigui can edit.

    Attributes:
        scheme: "mbr" or "gpt".
        last: the partition that ends last (None for an empty table).
        min_size: the smallest disk size (bytes) that keeps every partition, and for GPT the
            backup array and header after them.
    """

    scheme: str
    last: LastPartition | None
    min_size: int


@dataclass(frozen=True, slots=True)
class TableEdit:
    """The sector writes of one resize, and what they do in words."""

    scheme: str
    writes: tuple[tuple[int, bytes], ...]
    summary: tuple[str, ...]
    grown: LastPartition | None = None
    grown_end: int = 0


# -- MBR ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _MbrEntry:
    sector: int  # LBA of the MBR/EBR holding the entry
    index: int  # 0..3
    status: int
    ptype: int
    rel: int  # start, relative to ``base``
    count: int
    base: int  # LBA the start is relative to
    number: int  # Linux partition number (0 for containers / links)

    @property
    def start(self) -> int:
        return self.base + self.rel

    @property
    def end(self) -> int:
        return self.start + self.count


def _mbr_sector_entries(raw: bytes) -> list[tuple[int, int, int, int]] | None:
    if len(raw) < SECTOR or raw[510:512] != b"\x55\xaa":
        return None
    out = []
    for i in range(4):
        status, ptype, lba, count = struct.unpack_from("<B3xB3xII", raw, 446 + 16 * i)
        out.append((status, ptype, lba, count))
    return out


def _read_mbr(read: Reader) -> tuple[list[_MbrEntry], _MbrEntry | None] | None:
    """Data partitions (primaries and logicals) and the extended container, or None."""
    entries = _mbr_sector_entries(read(0, SECTOR))
    if entries is None:
        return None
    data: list[_MbrEntry] = []
    container: _MbrEntry | None = None
    for i, (status, ptype, lba, count) in enumerate(entries):
        if ptype == 0:
            continue
        if status not in (0, 0x80) or count == 0:
            raise OperationRefused(
                "The MBR partition table has an entry vdigui does not "
                f"understand (entry {i + 1}); fix it in the guest first."
            )
        entry = _MbrEntry(0, i, status, ptype, lba, count, 0, i + 1)
        if ptype in _EXTENDED:
            if container is not None:
                raise OperationRefused(
                    "The MBR has two extended partitions; vdigui edits only standard tables."
                )
            container = entry
            entry.number = 0
            continue
        data.append(entry)
    if container is not None:
        ebr = container.start
        number = 5
        seen: set[int] = set()
        while ebr and number < 5 + 256:
            if ebr in seen or not container.start <= ebr < container.end:
                raise OperationRefused(
                    "The chain of logical partitions (EBRs) loops or leaves "
                    "its extended partition; fix it in the guest first."
                )
            seen.add(ebr)
            links = _mbr_sector_entries(read(ebr * SECTOR, SECTOR))
            if links is None:
                raise OperationRefused(
                    f"The logical-partition record (EBR) at sector {ebr} is "
                    "damaged; fix it in the guest first."
                )
            status, ptype, rel, count = links[0]
            if ptype and count:
                data.append(_MbrEntry(ebr, 0, status, ptype, rel, count, ebr, number))
                number += 1
            _s, ntype, nrel, _ncount = links[1]
            ebr = container.start + nrel if ntype in _EXTENDED and nrel else 0
    return data, container


def _chs(lba: int) -> bytes:
    """CHS bytes for ``lba`` with 255 heads and 63 sectors, capped at 1023/254/63."""
    cyl, rest = divmod(lba, 255 * 63)
    head, sec = divmod(rest, 63)
    if cyl > 1023:
        cyl, head, sec = 1023, 254, 62
    return bytes([head, ((cyl >> 2) & 0xC0) | (sec + 1), cyl & 0xFF])


def _set_mbr_count(sector: bytearray, index: int, count: int, end_lba: int) -> None:
    pos = 446 + 16 * index
    struct.pack_into("<I", sector, pos + 12, count)
    sector[pos + 5 : pos + 8] = _chs(end_lba)


# -- GPT ------------------------------------------------------------------------------------


def _guid(raw: bytes) -> str:
    a, b, c = struct.unpack_from("<IHH", raw)
    return f"{a:08X}-{b:04X}-{c:04X}-{raw[8:10].hex().upper()}-{raw[10:16].hex().upper()}"


@dataclass(slots=True)
class _Gpt:
    header: bytearray  # the primary header sector
    hsize: int
    alt: int
    first: int
    last: int
    entries_lba: int
    count: int
    esize: int
    array: bytearray

    @property
    def array_sectors(self) -> int:
        return -(-self.count * self.esize // SECTOR)


def _read_gpt(read: Reader) -> _Gpt | None:
    raw = bytearray(read(SECTOR, SECTOR))
    if raw[:8] != b"EFI PART":
        return None
    hsize = struct.unpack_from("<I", raw, 12)[0]
    if not 92 <= hsize <= SECTOR:
        raise OperationRefused(
            "The GPT header has a size vdigui does not understand; fix the "
            "table in the guest (gdisk) first."
        )
    check = bytearray(raw[:hsize])
    crc = struct.unpack_from("<I", check, 16)[0]
    check[16:20] = bytes(4)
    if zlib.crc32(check) != crc:
        raise OperationRefused(
            "The primary GPT header is damaged (bad CRC); repair the table "
            "in the guest (gdisk, 'v' then 'w') first."
        )
    my, alt, first, last = struct.unpack_from("<QQQQ", raw, 24)
    entries_lba, count, esize, ecrc = struct.unpack_from("<QIII", raw, 72)
    if my != 1 or esize < 128 or esize % 8 or not 0 < count <= 1024:
        raise OperationRefused(
            "The GPT header has values vdigui does not edit; fix the table in the guest first."
        )
    array = bytearray(read(entries_lba * SECTOR, count * esize))
    if zlib.crc32(array) != ecrc:
        raise OperationRefused(
            "The primary GPT partition array is damaged (bad CRC); repair "
            "the table in the guest (gdisk) first."
        )
    return _Gpt(raw, hsize, alt, first, last, entries_lba, count, esize, array)


def _gpt_partitions(gpt: _Gpt) -> list[tuple[int, str, int, int]]:
    out = []
    for i in range(gpt.count):
        e = gpt.array[i * gpt.esize : (i + 1) * gpt.esize]
        if e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        out.append((i, _guid(bytes(e[:16])), first, last))
    return out


def _gpt_header_bytes(gpt: _Gpt, my: int, alt: int, last_usable: int, entries_lba: int) -> bytes:
    head = bytearray(gpt.header)
    struct.pack_into("<QQ", head, 24, my, alt)
    struct.pack_into("<Q", head, 48, last_usable)
    struct.pack_into("<Q", head, 72, entries_lba)
    struct.pack_into("<I", head, 88, zlib.crc32(gpt.array))
    head[16:20] = bytes(4)
    struct.pack_into("<I", head, 16, zlib.crc32(bytes(head[: gpt.hsize])))
    return bytes(head)


# -- public ---------------------------------------------------------------------------------


def inspect_table(read: Reader, disk_size: int) -> TableInfo | None:
    """The editable partition table of a disk, or None when it has none.

    Raises:
        OperationRefused: a table is there but vdigui cannot edit it exactly.
    """
    mbr = _read_mbr(read)
    if mbr is None:
        return None
    data, container = mbr
    primaries = _mbr_sector_entries(read(0, SECTOR)) or []
    if any(p[1] == _PROTECTIVE for p in primaries):
        gpt = _read_gpt(read)
        if gpt is None:
            raise OperationRefused(
                "The MBR says the disk uses GPT but there is no valid GPT "
                "header; repair the table in the guest first."
            )
        parts = _gpt_partitions(gpt)
        tail = (gpt.array_sectors + 1) * SECTOR
        if not parts:
            return TableInfo("gpt", None, (gpt.first * SECTOR) + tail)
        i, tguid, first, last = max(parts, key=lambda p: p[3])
        why = _GPT_NOT_GROWN.get(tguid)
        lp = LastPartition(i + 1, f"GPT #{i + 1}", first * SECTOR, (last + 1) * SECTOR, tguid, why)
        return TableInfo("gpt", lp, lp.end + tail)
    if not data:
        end = container.end * SECTOR if container else SECTOR
        return TableInfo("mbr", None, end)
    last_entry = max(data, key=lambda e: e.end)
    name = f"EBR logical #{last_entry.number}" if last_entry.sector else f"MBR #{last_entry.number}"
    lp = LastPartition(
        last_entry.number,
        name,
        last_entry.start * SECTOR,
        last_entry.end * SECTOR,
        f"0x{last_entry.ptype:02X}",
        _MBR_NOT_GROWN.get(last_entry.ptype),
    )
    return TableInfo("mbr", lp, lp.end)


def plan_table_edit(
    read: Reader, old_size: int, new_size: int, *, grow_last: bool
) -> TableEdit | None:
    """The sector writes that fit the table to a disk of ``new_size`` bytes (None: none needed).

    ``read`` reads the guest disk as it is now (``old_size`` bytes); the writes are meant for
    the disk after the image was resized.

    Raises:
        OperationRefused: the table cannot be fitted (a partition past the new end, a table
            vdigui does not understand, a last partition a user would not want grown).
    """
    info = inspect_table(read, old_size)
    if info is None:
        if grow_last:
            raise OperationRefused(
                "The disk has no partition table vdigui recognises, so there "
                "is no partition to grow; run without --grow-partition."
            )
        return None
    if new_size < info.min_size:
        raise OperationRefused(f"The partitions end at byte {info.min_size}, past the new end.")
    if grow_last:
        last = info.last
        if last is None:
            raise OperationRefused(
                "The partition table is empty, so there is no partition to "
                "grow; run without --grow-partition."
            )
        if last.not_grown_why:
            raise OperationRefused(
                f"The last partition, {last.name}, is {last.not_grown_why}; growing it would not "
                "give the system more room. Run without --grow-partition, then in the guest move "
                "or delete that partition (for swap: swapoff, delete it, grow the partition "
                "before it, recreate swap or use a swap file), or use GParted from a live CD."
            )
        if new_size < old_size:
            raise OperationRefused(
                "--grow-partition grows the last partition into new space; "
                "it cannot be combined with shrinking."
            )
    if info.scheme == "gpt":
        return _gpt_edit(read, old_size, new_size, grow_last)
    return _mbr_edit(read, info, new_size, grow_last)


def _mbr_edit(read: Reader, info: TableInfo, new_size: int, grow_last: bool) -> TableEdit | None:
    mbr = _read_mbr(read)
    assert mbr is not None
    data, container = mbr
    total = min(new_size // SECTOR, _MAX_MBR_SECTORS)
    sectors: dict[int, bytearray] = {}
    notes: list[str] = []

    def sector(lba: int) -> bytearray:
        if lba not in sectors:
            sectors[lba] = bytearray(read(lba * SECTOR, SECTOR))
        return sectors[lba]

    grown = None
    grown_end = 0
    if grow_last and info.last is not None:
        entry = max(data, key=lambda e: e.end)
        new_count = total - entry.start
        if new_count <= entry.count:
            raise OperationRefused(
                f"{info.last.name} already reaches the end of the disk (MBR "
                "tables address at most 2 TiB); there is nothing to grow."
            )
        _set_mbr_count(sector(entry.sector), entry.index, new_count, total - 1)
        grown, grown_end = info.last, total * SECTOR
        notes.append(
            f"{info.last.name} grows from {entry.count} to {new_count} sectors (to the "
            "end of the disk)."
        )
        if entry.sector and container is not None:
            _set_mbr_count(sector(0), container.index, total - container.start, total - 1)
            notes.append("Its extended container grows to the end of the disk as well.")
        if new_size // SECTOR > _MAX_MBR_SECTORS:
            notes.append("An MBR addresses at most 2 TiB; the space after that stays unused.")
    elif container is not None and container.end > total:
        _set_mbr_count(sector(0), container.index, total - container.start, total - 1)
        notes.append("The extended container is cut to the new end of the disk.")
    if not sectors:
        return None
    writes = tuple((lba * SECTOR, bytes(raw)) for lba, raw in sorted(sectors.items()))
    return TableEdit("mbr", writes, tuple(notes), grown, grown_end)


def _gpt_edit(read: Reader, old_size: int, new_size: int, grow_last: bool) -> TableEdit:
    gpt = _read_gpt(read)
    assert gpt is not None
    total = new_size // SECTOR
    n = gpt.array_sectors
    alt = total - 1
    backup_entries = alt - n
    last_usable = backup_entries - 1
    notes = [
        f"The backup GPT (header and partition array) moves to the last {n + 1} sectors "
        "of the new disk; both headers and the array get new CRC-32 checksums."
    ]
    parts = _gpt_partitions(gpt)
    grown = None
    grown_end = 0
    if grow_last and parts:
        i, tguid, first, last = max(parts, key=lambda p: p[3])
        if last_usable <= last:
            raise OperationRefused(
                f"GPT #{i + 1} already reaches the end of the usable space; "
                "there is nothing to grow."
            )
        struct.pack_into("<Q", gpt.array, i * gpt.esize + 40, last_usable)
        why = _GPT_NOT_GROWN.get(tguid)
        grown = LastPartition(
            i + 1, f"GPT #{i + 1}", first * SECTOR, (last + 1) * SECTOR, tguid, why
        )
        grown_end = (last_usable + 1) * SECTOR
        notes.insert(
            0,
            f"GPT #{i + 1} grows from {last - first + 1} to "
            f"{last_usable - first + 1} sectors (to the last usable sector).",
        )
    for i, _t, _first, last in parts:
        if last > last_usable:
            raise OperationRefused(f"GPT #{i + 1} ends past the new last usable sector.")
    writes: list[tuple[int, bytes]] = []
    mbr = bytearray(read(0, SECTOR))
    for idx in range(4):
        pos = 446 + 16 * idx
        if mbr[pos + 4] == _PROTECTIVE:
            count = min(total - 1, _MAX_MBR_SECTORS)
            _set_mbr_count(mbr, idx, count, min(total - 1, _MAX_MBR_SECTORS))
            writes.append((0, bytes(mbr)))
            break
    primary = _gpt_header_bytes(gpt, 1, alt, last_usable, gpt.entries_lba)
    writes.append((SECTOR, primary))
    array = bytes(gpt.array) + bytes(n * SECTOR - len(gpt.array))
    writes.append((gpt.entries_lba * SECTOR, array))
    old_alt = gpt.alt
    if old_alt != alt and 1 < old_alt < total and old_alt * SECTOR < old_size:
        writes.append((old_alt * SECTOR, bytes(SECTOR)))
    writes.append((backup_entries * SECTOR, array))
    writes.append((alt * SECTOR, _gpt_header_bytes(gpt, alt, 1, last_usable, backup_entries)))
    return TableEdit("gpt", tuple(writes), tuple(notes), grown, grown_end)


def partition_device(number: int) -> str:
    """How Linux names partition ``number`` of the first disk: /dev/sda<number>."""
    return f"/dev/sda{number}"


__all__ = [
    "LastPartition",
    "TableEdit",
    "TableInfo",
    "inspect_table",
    "partition_device",
    "plan_table_edit",
]
