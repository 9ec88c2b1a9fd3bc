"""Partition tables: MBR with its EBR chain, GPT with its backup, protective and hybrid MBRs.

Only the layout is read here; what lives inside each partition is decided later by signature,
never by the type code alone. The sectors of the tables themselves are reported so they are
always kept.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from .model import DiskReader

SECTOR = 512
_EXTENDED = {0x05, 0x0F, 0x85}
_PROTECTIVE = 0xEE
_MAX_LOGICAL = 256

#: GPT type GUIDs (as on disk, mixed-endian bytes) we can name for the user.
_GPT_NAMES = {
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI system",
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
    "A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
    "21686148-6449-6E6F-744E-656564454649": "BIOS boot",
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
    "933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
    "CA7D7CCB-63ED-4C53-861C-1742536059CC": "LUKS",
    "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3": "Windows LDM metadata",
    "AF9B60A0-1431-4F62-BC68-3311714A69AD": "Windows LDM data",
}
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"
MS_RESERVED_GUID = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
LINUX_RAID_GUID = "A19D880F-05FC-4D3B-A006-743F0F84911E"
LDM_GUIDS = {"5808C8AA-7E8F-42E0-85D2-E1E90434CFB3", "AF9B60A0-1431-4F62-BC68-3311714A69AD"}


@dataclass(frozen=True, slots=True)
class Partition:
    """One data partition (never an extended container)."""

    name: str  # "MBR #1", "GPT #2 'Linux filesystem'", "EBR logical #5"
    start: int  # bytes
    size: int  # bytes
    mbr_type: int | None = None
    gpt_type: str | None = None


@dataclass(slots=True)
class Layout:
    """The partition table found on a disk."""

    scheme: str  # "mbr" or "gpt"
    partitions: list[Partition] = field(default_factory=list)
    #: (start, length, description) byte ranges holding tables; always kept.
    tables: list[tuple[int, int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _guid(raw: bytes) -> str:
    a, b, c = struct.unpack_from("<IHH", raw)
    return f"{a:08X}-{b:04X}-{c:04X}-{raw[8:10].hex().upper()}-{raw[10:16].hex().upper()}"


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]] | None:
    """The four (status, type, lba, count) entries, or None if this is no MBR/EBR."""
    if sector[510:512] != b"\x55\xaa":
        return None
    out = []
    for i in range(4):
        status, ptype, lba, count = struct.unpack_from("<B3xB3xII", sector, 446 + 16 * i)
        if status not in (0, 0x80):
            return None
        out.append((status, ptype, lba, count))
    return out


def looks_like_mbr(sector0: bytes, disk_size: int) -> bool:
    """True when sector 0 holds a plausible MBR with at least one partition."""
    entries = _mbr_entries(sector0)
    if entries is None:
        return False
    total = disk_size // SECTOR
    any_used = False
    for _status, ptype, lba, count in entries:
        if ptype == 0:
            continue
        if count == 0 or (lba == 0 and ptype != _PROTECTIVE) or lba >= max(total, 1):
            return False
        any_used = True
    return any_used


def read_layout(reader: DiskReader, sector0: bytes) -> Layout | None:
    """Read the partition table, or return None when the disk has none we recognise."""
    if not looks_like_mbr(sector0, reader.size):
        gpt = _read_gpt(reader, sector0)
        return gpt
    entries = _mbr_entries(sector0) or []
    if any(e[1] == _PROTECTIVE for e in entries):
        gpt = _read_gpt(reader, sector0)
        if gpt is not None:
            if any(e[1] not in (0, _PROTECTIVE) for e in entries):
                gpt.notes.append(
                    "The disk has a hybrid MBR; the GPT was trusted and the MBR entries ignored."
                )
            return gpt
        layout = _read_mbr(reader, entries)
        layout.notes.append(
            "The MBR says the disk uses GPT, but no valid GPT header was found; the MBR entries "
            "were used instead."
        )
        return layout
    return _read_mbr(reader, entries)


def _read_mbr(reader: DiskReader, entries: list[tuple[int, int, int, int]]) -> Layout:
    layout = Layout("mbr")
    layout.tables.append((0, SECTOR, "MBR"))
    size = reader.size
    for i, (_status, ptype, lba, count) in enumerate(entries, start=1):
        if ptype == 0 or ptype == _PROTECTIVE:
            continue
        if ptype in _EXTENDED:
            _read_ebr_chain(reader, lba, count, layout)
            continue
        layout.partitions.append(
            _clip(
                Partition(f"MBR #{i}", lba * SECTOR, count * SECTOR, mbr_type=ptype), size, layout
            )
        )
    return layout


def _read_ebr_chain(reader: DiskReader, ext_lba: int, ext_count: int, layout: Layout) -> None:
    """Walk the EBR chain: logical starts are relative to their EBR, links to the extended start.

    A damaged chain (a loop, an invalid EBR, a link off the disk) may hide logical partitions we
    cannot find, so the whole extended partition is then kept as well.
    """
    seen: set[int] = set()
    ebr = ext_lba
    number = 5
    problem = ""
    while True:
        if ebr in seen:
            problem = "The chain of extended boot records loops."
            break
        if len(seen) >= _MAX_LOGICAL or (ebr + 1) * SECTOR > reader.size:
            problem = "The chain of extended boot records is too long or leaves the disk."
            break
        seen.add(ebr)
        sector = reader.read(ebr * SECTOR, SECTOR)
        entries = _mbr_entries(sector)
        if entries is None:
            problem = f"The extended boot record at sector {ebr} is invalid."
            break
        layout.tables.append((ebr * SECTOR, SECTOR, "EBR"))
        _s, ptype, lba, count = entries[0]
        if ptype != 0 and count:
            part = Partition(
                f"EBR logical #{number}", (ebr + lba) * SECTOR, count * SECTOR, mbr_type=ptype
            )
            layout.partitions.append(_clip(part, reader.size, layout))
            number += 1
        _s, ntype, nlba, _count = entries[1]
        if ntype not in _EXTENDED or nlba == 0:
            return
        ebr = ext_lba + nlba
    layout.notes.append(
        f"{problem} The whole extended partition is kept so no hidden partition is lost."
    )
    layout.tables.append((ext_lba * SECTOR, ext_count * SECTOR, "extended partition (damaged)"))


def _clip(part: Partition, disk_size: int, layout: Layout) -> Partition:
    if part.start + part.size <= disk_size:
        return part
    layout.notes.append(
        f"{part.name} extends past the end of the disk; only the part on the disk counts."
    )
    return Partition(
        part.name, part.start, max(0, disk_size - part.start), part.mbr_type, part.gpt_type
    )


def _parse_gpt_header(raw: bytes, lba: int) -> dict[str, int] | None:
    if raw[:8] != b"EFI PART":
        return None
    hsize = struct.unpack_from("<I", raw, 12)[0]
    if not 92 <= hsize <= len(raw):
        return None
    crc = struct.unpack_from("<I", raw, 16)[0]
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != crc:
        return None
    my_lba, alt_lba, first, last = struct.unpack_from("<QQQQ", raw, 24)
    entries_lba, count, esize, ecrc = struct.unpack_from("<QIII", raw, 72)
    if my_lba != lba or esize < 128 or esize % 8 or count > 65536:
        return None
    return {
        "my": my_lba,
        "alt": alt_lba,
        "first": first,
        "last": last,
        "entries_lba": entries_lba,
        "count": count,
        "esize": esize,
        "ecrc": ecrc,
    }


def _read_gpt(reader: DiskReader, sector0: bytes) -> Layout | None:
    for ss in (512, 4096):
        total = reader.size // ss
        if total < 3:
            continue
        notes: list[str] = []
        primary = _parse_gpt_header(reader.read(ss, ss), 1)
        entries = _gpt_entries(reader, primary, ss) if primary else None
        backup = None
        backup_entries = None
        alt = primary["alt"] if primary else total - 1
        for lba in dict.fromkeys((alt, total - 1)):
            if 0 < lba < total:
                backup = _parse_gpt_header(reader.read(lba * ss, ss), lba)
                if backup:
                    backup_entries = _gpt_entries(reader, backup, ss)
                    break
        if primary is not None and entries is not None:
            head, ents = primary, entries
            if backup is None or backup_entries is None:
                notes.append("The backup GPT at the end of the disk is missing or damaged.")
        elif backup is not None and backup_entries is not None:
            notes.append(
                "The primary GPT is damaged; the backup GPT at the end of the disk was used."
            )
            head, ents = backup, backup_entries
        else:
            continue
        layout = Layout("gpt", notes=notes)
        elen = -(-head["count"] * head["esize"] // ss)
        # LBA 0 plus where the primary header and entries belong, even if they are damaged,
        # so a repair tool can still rewrite them.
        layout.tables.append((0, (2 + elen) * ss, "protective MBR and primary GPT"))
        if primary is not None and primary["entries_lba"] != 2:
            layout.tables.append((primary["entries_lba"] * ss, elen * ss, "GPT entries"))
        if backup is not None:
            bl = backup["entries_lba"]
            if bl + elen == backup["my"]:
                layout.tables.append((bl * ss, (elen + 1) * ss, "backup GPT"))
            else:
                layout.tables.append((backup["my"] * ss, ss, "backup GPT header"))
                layout.tables.append((bl * ss, elen * ss, "backup GPT entries"))
        elif primary is not None:
            # Keep where the backup ought to be so a repair tool can still write it.
            alt = min(primary["alt"], total - 1)
            layout.tables.append(((alt - elen) * ss, (elen + 1) * ss, "backup GPT (damaged)"))
        assert head is not None and ents is not None
        for i, tguid, first, last, name in ents:
            if first > last or first >= total:
                layout.notes.append(f"GPT entry {i} has an impossible range and was ignored.")
                continue
            if last >= total:
                layout.notes.append(
                    f"GPT entry {i} extends past the end of the disk; only the part on the disk "
                    "counts."
                )
                last = total - 1
            label = name or _GPT_NAMES.get(tguid, "")
            pname = f"GPT #{i} '{label}'" if label else f"GPT #{i}"
            layout.partitions.append(
                Partition(pname, first * ss, (last - first + 1) * ss, gpt_type=tguid)
            )
        if ss != 512:
            layout.notes.append(f"The disk uses {ss}-byte logical sectors.")
        return layout
    return None


def _gpt_entries(
    reader: DiskReader, head: dict[str, int], ss: int
) -> list[tuple[int, str, int, int, str]] | None:
    length = head["count"] * head["esize"]
    off = head["entries_lba"] * ss
    if off + length > reader.size or off < ss:
        return None
    raw = reader.read(off, length)
    if zlib.crc32(raw) != head["ecrc"]:
        return None
    out = []
    for i in range(head["count"]):
        e = raw[i * head["esize"] : (i + 1) * head["esize"]]
        if e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        name = e[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        out.append((i + 1, _guid(e[:16]), first, last, name))
    return out
