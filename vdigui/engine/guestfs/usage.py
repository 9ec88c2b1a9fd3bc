"""The entry point: from a guest disk to a per-block usage map and a list of volumes."""

from __future__ import annotations

from .blockmap import BlockCounter, Extents
from .model import DiskReader, UsageMap, Volume
from .partitions import SECTOR, read_layout
from .probe import Context, analyze_volume

#: Bytes after LBA 0 kept as the boot-loader gap on MBR disks (GRUB's core.img lives there).
_BOOT_GAP = 1 << 20


def analyze_usage(
    reader: DiskReader, block_size: int = 1 << 20, *, discard_swap: bool = False
) -> UsageMap:
    """Work out how many bytes of every guest block the guest's filesystems use.

    Args:
        reader: the guest-visible disk (the merged view of the layer being compacted).
        block_size: the VDI block size the map is for.
        discard_swap: drop swap contents except the header page (never for hibernation images).

    Returns:
        The usage map. Anything not understood is counted as fully used, with a note; partition
        tables and the MBR boot-loader gap are used; space outside every partition is unused.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, not {block_size}")
    size = reader.size
    counter = BlockCounter(block_size, size)
    ctx = Context(reader, counter, discard_swap)
    volumes: list[Volume] = []
    notes: list[str] = []
    if size < SECTOR:
        return UsageMap(block_size, counter.used_bytes(), (), ("The disk is empty.",))
    sector0 = reader.read(0, SECTOR)
    layout = read_layout(reader, sector0)
    if layout is None:
        notes.append("No partition table was found; the whole disk was analysed as one volume.")
        volumes.extend(analyze_volume(ctx, Extents.single(0, size), "whole disk"))
        return UsageMap(block_size, counter.used_bytes(), tuple(volumes), tuple(notes))

    notes.extend(layout.notes)
    covered: list[tuple[int, int]] = []
    tables = list(layout.tables)
    if layout.scheme == "mbr":
        first = min((p.start for p in layout.partitions if p.size), default=size)
        gap = min(first, _BOOT_GAP, size)
        if gap > SECTOR:
            tables[0] = (0, gap, "MBR and boot-loader gap")
    for start, length, what in tables:
        length = max(0, min(length, size - start))
        if length == 0:
            continue
        counter.add_range(start, length)
        covered.append((start, length))
        volumes.append(
            Volume(
                "partition-table", what, start, length, length, 0, False, (), layout.scheme.upper()
            )
        )
    for part in sorted(layout.partitions, key=lambda p: p.start):
        if part.size <= 0:
            continue
        covered.append((part.start, part.size))
        volumes.extend(analyze_volume(ctx, Extents.single(part.start, part.size), part.name, part))
    volumes.extend(_free_gaps(covered, size))
    volumes.sort(key=lambda v: (v.start, v.partition.startswith("LV")))
    return UsageMap(block_size, counter.used_bytes(), tuple(volumes), tuple(notes))


def _free_gaps(covered: list[tuple[int, int]], size: int) -> list[Volume]:
    """Unpartitioned space: listed for the partition bar, counted unused."""
    out = []
    pos = 0
    for start, length in sorted(covered):
        if start > pos:
            out.append(
                Volume("free", "", pos, start - pos, 0, start - pos, False, (), "unpartitioned")
            )
        pos = max(pos, start + length)
    if pos < size:
        out.append(Volume("free", "", pos, size - pos, 0, size - pos, False, (), "unpartitioned"))
    return out
