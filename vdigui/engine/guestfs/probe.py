"""Deciding what a volume holds, by signature, and running the matching reader.

Every reader works on a :class:`View` in volume-local coordinates and reports through a
:class:`Marker`. Any trouble (an :class:`Unsupported` reason or plainly malformed bytes) discards
the reader's partial marks and keeps the volume whole, with the reason in the volume's notes.
Only errors from the disk reader itself propagate.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import ext, fat, lvm, ntfs, swap
from .blockmap import BlockCounter, Extents, FsResult, Marker, Unsupported, View
from .model import DiskReader, Volume
from .partitions import BIOS_BOOT_GUID, LDM_GUIDS, LINUX_RAID_GUID, MS_RESERVED_GUID, Partition

#: Malformed bytes surface as these from struct, numpy and friends; they mean "keep whole".
_PARSE_ERRORS = (
    Unsupported,
    struct.error,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    ZeroDivisionError,
    UnicodeDecodeError,
    AttributeError,
)

_OTHER_SIGNATURES: tuple[tuple[int, bytes, str, str], ...] = (
    (0, b"LUKS\xba\xbe", "luks", "LUKS-encrypted content cannot be analysed."),
    (3, b"-FVE-FS-", "bitlocker", "BitLocker-encrypted content cannot be analysed."),
    (3, b"EXFAT   ", "exfat", "exFAT is not analysed yet."),
    (0, b"XFSB", "xfs", "XFS is not analysed yet."),
    (0x10040, b"_BHRfS_M", "btrfs", "btrfs is not analysed yet."),
    (3, b"ReFS", "refs", "ReFS is not analysed."),
)

_MAX_DEPTH = 1


@dataclass(slots=True)
class Context:
    """Everything a volume analysis needs besides the volume itself."""

    reader: DiskReader
    counter: BlockCounter
    discard_swap: bool


def analyze_volume(
    ctx: Context, extents: Extents, name: str, part: Partition | None = None, depth: int = 0
) -> list[Volume]:
    """Analyse one volume (partition, LV or the whole disk); returns it and any nested volumes."""
    view = View(ctx.reader, extents)
    marker = Marker(extents)
    res = FsResult()
    nested: list[Volume] = []
    try:
        kind = identify(view, part)
        if kind == "lvm-pv":
            res.kind = "lvm-pv"
            if depth >= _MAX_DEPTH:
                raise Unsupported("LVM nested inside LVM is not supported.")
            nested = _analyze_pv(ctx, view, marker, extents, depth)
        elif kind == "ext":
            res.kind = "ext"
            ext.analyze(view, marker, res)
        elif kind == "ntfs":
            ntfs.analyze(view, marker, res)
        elif kind == "fat":
            res.kind = "fat"
            fat.analyze(view, marker, res)
        elif kind == "swap":
            swap.analyze(view, marker, res, discard=ctx.discard_swap)
        else:
            res.kind = kind.split(":", 1)[0]
            raise Unsupported(kind.split(":", 1)[1])
    except _PARSE_ERRORS as exc:
        reason = (
            str(exc)
            if isinstance(exc, Unsupported)
            else (
                f"The {res.kind} metadata could not be read ({type(exc).__name__}); "
                "nothing is dropped."
            )
        )
        whole = Marker(extents)
        whole.used_range(0, extents.size)
        whole.commit(ctx.counter)
        notes = (*(res.notes or ()), reason, "Kept whole.")
        return [
            Volume(
                res.kind, res.label, extents.disk_start, extents.size, None, None, True, notes, name
            ),
            *nested,
        ]
    marker.commit(ctx.counter)
    used = marker.used
    if res.kind == "lvm-pv":
        # The PV's own figure includes what its logical volumes use.
        used += sum(v.size if v.used is None else v.used for v in nested)
    used = min(used, extents.size)
    vol = Volume(
        res.kind,
        res.label,
        extents.disk_start,
        extents.size,
        used,
        extents.size - used,
        False,
        tuple(res.notes or ()),
        name,
    )
    return [vol, *nested]


def identify(view: View, part: Partition | None = None) -> str:
    """Return "ext", "ntfs", "fat", "swap", "lvm-pv" or "kind:reason" for content kept whole.

    The one place a volume's content is recognised: the usage analysis and the guest-file
    layer (:mod:`vdigui.engine.guestfs.files.volumes`) both ask here.
    """
    if part is not None:
        if part.gpt_type == BIOS_BOOT_GUID:
            return "bios-boot:A BIOS boot partition holds boot-loader code."
        if part.gpt_type == MS_RESERVED_GUID:
            return "msr:The Microsoft reserved partition is kept as it is."
        if part.gpt_type in LDM_GUIDS or part.mbr_type == 0x42:
            return "ldm:Windows dynamic disks (LDM) are not supported."
        if part.gpt_type == LINUX_RAID_GUID or part.mbr_type == 0xFD:
            return "md:Linux software RAID members are kept whole."
    if view.size < 4096:
        return "unknown:The volume is too small to hold a filesystem we understand."
    if _md_superblock(view):
        # A RAID1 member with metadata at the end also shows a filesystem at offset 0; its
        # "tail" holds the RAID superblock, so never treat it as a plain filesystem.
        return "md:This is a Linux software RAID member; it is kept whole."
    head = view.read(0, min(view.size, 0x10048))
    if ntfs.probe(head):
        return "ntfs"
    if ext.probe(head):
        return "ext"
    if fat.probe(head):
        return "fat"
    if swap.detect(view) is not None:
        return "swap"
    if lvm.probe(view):
        return "lvm-pv"
    for off, sig, kind, why in _OTHER_SIGNATURES:
        if head[off : off + len(sig)] == sig:
            return f"{kind}:{why}"
    return "unknown:No filesystem we understand was found (unknown or encrypted content)."


_MD_MAGIC = b"\xfc\x4e\x2b\xa9"


def _md_superblock(view: View) -> bool:
    """True when an md RAID superblock (0.90 or 1.x) sits at one of its fixed places."""
    size = view.size
    spots = {0, 4096, (size & ~0xFFFF) - 0x10000, ((size - 8192) & ~0xFFF)}
    return any(off >= 0 and off + 4 <= size and view.read(off, 4) == _MD_MAGIC for off in spots)


def _analyze_pv(
    ctx: Context, view: View, marker: Marker, extents: Extents, depth: int
) -> list[Volume]:
    pv = lvm.read_pv(view)
    for off, length in pv.kept:
        marker.used_range(off, length)
    for off, length in pv.opaque:
        marker.used_range(off, length)
    nested: list[Volume] = []
    for lv in pv.lvs:
        if not lv.linear:
            if lv.pieces or lv.reason:
                nested.append(
                    Volume(
                        "unknown",
                        "",
                        extents.compose(lv.pieces).disk_start if lv.pieces else extents.disk_start,
                        sum(p[2] for p in lv.pieces),
                        None,
                        None,
                        True,
                        (lv.reason or "Not a linear volume.", "Kept whole."),
                        f"LV {lv.name}",
                    )
                )
            continue
        inner = extents.compose(lv.pieces)
        if len(lv.pieces) > 1:
            nested_note = f"LV {lv.name} is split into {len(lv.pieces)} segments."
        else:
            nested_note = ""
        vols = analyze_volume(ctx, inner, f"LV {lv.name}", None, depth + 1)
        if nested_note:
            v = vols[0]
            vols[0] = Volume(
                v.kind,
                v.label,
                v.start,
                v.size,
                v.used,
                v.free,
                v.kept_whole,
                (*v.notes, nested_note),
                v.partition,
            )
        nested.extend(vols)
    return nested
