"""Which filesystems a guest disk holds, their short names, and opening one as a namespace.

Volume names are what users type in front of a path (``p2:/etc/hostname``): ``pN`` for
partition N as the partition table numbers it (MBR 1-4, logical partitions from 5, GPT entry
numbers), ``VG/LV`` for an LVM logical volume, and ``disk`` for a filesystem written on the
whole disk without a partition table. The filesystem is chosen by its signature, never by the
partition type. See docs/guest-files.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vdigui.engine.errors import GuestFsError, GuestPathError

from .. import lvm
from ..blockmap import Extents, Unsupported, View
from ..model import DiskReader, Volume
from ..partitions import SECTOR, Partition, read_layout
from ..probe import identify
from .api import BaseNamespace, VolumeView
from .ext import open_ext
from .fat import open_fat
from .ntfs import open_ntfs


@dataclass(frozen=True, slots=True)
class GuestVolume:
    """One place on the guest disk that may hold a filesystem.

    Attributes:
        name: the short name used in paths ("p1", "p5", "vg0/root", "disk").
        partition: where it comes from, as the usage report names it ("MBR #1", "LV vg0/root").
        kind: "ext", "fat", "ntfs", "lvm-pv", "swap", another kind the usage analysis
            names ("md", "bios-boot", "luks"...) or "unknown" (guestfs.probe.identify).
        extents: where its bytes are on the disk (a logical volume may be split).
    """

    name: str
    partition: str
    kind: str
    extents: Extents

    @property
    def start(self) -> int:
        """Disk offset of the volume's first byte."""
        return self.extents.disk_start

    @property
    def size(self) -> int:
        """Bytes the volume spans."""
        return self.extents.size

    @property
    def readable(self) -> bool:
        """Whether its files can be read (ext, FAT and NTFS)."""
        return self.kind in ("ext", "fat", "ntfs")


def _identify(reader: DiskReader, extents: Extents, part: Partition | None = None) -> str:
    """The volume's kind as the usage analysis names it ("ext", "lvm-pv", "md", ...)."""
    try:
        return identify(View(reader, extents), part).split(":", 1)[0]
    except Unsupported:
        return "unknown"


def list_volumes(reader: DiskReader) -> list[GuestVolume]:
    """Every partition (and linear LVM logical volume) of the disk, in disk order."""
    if reader.size < SECTOR:
        return []
    layout = read_layout(reader, reader.read(0, SECTOR))
    if layout is None:
        whole = Extents.single(0, reader.size)
        return [GuestVolume("disk", "whole disk", _identify(reader, whole), whole)]
    out: list[GuestVolume] = []
    for part in sorted(layout.partitions, key=lambda p: p.start):
        if part.size <= 0:
            continue
        match = re.search(r"#(\d+)", part.name)
        name = f"p{match.group(1)}" if match else part.name
        extents = Extents.single(part.start, part.size)
        kind = _identify(reader, extents, part)
        out.append(GuestVolume(name, part.name, kind, extents))
        if kind == "lvm-pv":
            out.extend(_logical_volumes(reader, extents))
    return out


def _logical_volumes(reader: DiskReader, pv_extents: Extents) -> list[GuestVolume]:
    try:
        pv = lvm.read_pv(View(reader, pv_extents))
        out = []
        for lv in pv.lvs:
            if lv.linear:
                extents = pv_extents.compose(lv.pieces)
                out.append(
                    GuestVolume(lv.name, f"LV {lv.name}", _identify(reader, extents), extents)
                )
        return out
    except (Unsupported, ValueError, KeyError, IndexError, TypeError):
        return []


def split_volume_path(text: str) -> tuple[str | None, str]:
    """``"p2:/etc"`` -> ``("p2", "/etc")``; a path starting with "/" names no volume.

    Neither does a prefix holding a wildcard: ``"*:x"`` is a name pattern (ext names may
    hold ":"), not a volume called "*".
    """
    name, colon, rest = text.partition(":")
    if text.startswith("/") or not colon or any(c in name for c in "*?["):
        return None, text or "/"
    return name, rest or "/"


def choose_volume(volumes: list[GuestVolume], name: str | None) -> GuestVolume:
    """The volume ``name`` names, or the only readable one when ``name`` is None."""
    if name is not None:
        for vol in volumes:
            if vol.name == name or vol.partition == name:
                return vol
        known = ", ".join(v.name for v in volumes) or "none"
        raise GuestPathError(f"The disk has no volume called '{name}' (it has: {known}).")
    readable = [v for v in volumes if v.readable]
    if len(readable) == 1:
        return readable[0]
    if not readable:
        what = ", ".join(f"{v.name} {v.kind}" for v in volumes) or "no partitions"
        raise GuestPathError(
            f"The disk holds no ext, FAT or NTFS filesystem whose files can be read ({what})."
        )
    what = ", ".join(f"{v.name} {v.kind}" for v in readable)
    raise GuestPathError(
        f"The disk holds {len(readable)} filesystems ({what}); put the volume "
        f"in front of the path, e.g. {readable[0].name}:/path."
    )


def open_namespace(
    reader: DiskReader, volume: GuestVolume | Volume | str | None = None
) -> BaseNamespace:
    """The files of one filesystem of a guest disk (read-only).

    Args:
        reader: the merged guest view of any state (e.g. ``usage_report.GuestReader``).
        volume: a :class:`GuestVolume`, a usage-report :class:`~vdigui.engine.guestfs.Volume`,
            a volume name ("p2", "vg0/root", "disk"), or None for the only readable one.

    Raises:
        GuestFsError: the filesystem is not one whose files can be read, or is damaged.
        GuestPathError: no such volume, or several and none named.
    """
    if isinstance(volume, Volume):
        extents = Extents.single(volume.start, volume.size)
        chosen = GuestVolume(
            volume.partition, volume.partition, _identify(reader, extents), extents
        )
    elif isinstance(volume, GuestVolume):
        chosen = volume
    else:
        chosen = choose_volume(list_volumes(reader), volume)
    view = VolumeView(reader, chosen.extents)
    if chosen.kind == "ext":
        return open_ext(view, chosen.name)
    if chosen.kind == "fat":
        return open_fat(view, chosen.name)
    if chosen.kind == "ntfs":
        return open_ntfs(view, chosen.name)
    raise GuestFsError(
        f"{chosen.name} holds {chosen.kind} content, not a filesystem whose files can be read."
    )


__all__ = ["GuestVolume", "choose_volume", "list_volumes", "open_namespace", "split_volume_path"]
