"""The data types the guest-filesystem analysis hands to the rest of the engine.

They are plain frozen dataclasses so the CLI can print them, the GUI can draw them, and a result
can be cached or compared after compaction without worrying about aliasing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DiskReader(Protocol):
    """Random access to the guest-visible bytes of a disk (the merged view of one image layer).

    The analysis only ever asks for ranges inside ``[0, size)``, so implementations need not
    handle reads past the end.
    """

    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes starting at ``offset``."""
        ...


@dataclass(frozen=True, slots=True)
class Volume:
    """One region of the guest disk as the user would see it in a partition bar.

    Attributes:
        kind: what lives there: "ext4", "ext3", "ext2", "ntfs", "fat32", "fat16", "fat12",
            "swap", "lvm-pv", "partition-table", "free", "unknown", ...
        label: the filesystem or swap label ("" when there is none).
        start: byte offset on the guest disk where the volume begins.
        size: bytes the volume spans (the partition, not the filesystem inside it).
        used: bytes of the volume the analysis keeps (None when the content was not understood).
        free: bytes of the volume that compaction may drop (None when not understood).
        kept_whole: True when the volume is counted fully used because we do not understand it
            or refuse to trust its maps (fail closed).
        notes: plain-English sentences for the user, e.g. why the volume is kept whole.
        partition: where the volume comes from, e.g. "MBR #1", "GPT #2 'Linux filesystem'",
            "EBR logical #5", "LV vg0/root", "whole disk".
    """

    kind: str
    label: str
    start: int
    size: int
    used: int | None
    free: int | None
    kept_whole: bool
    notes: tuple[str, ...]
    partition: str


@dataclass(frozen=True, slots=True)
class UsageMap:
    """How much of every guest block the guest itself uses.

    Attributes:
        block_size: the block size the map was computed for (the VDI block size, usually 1 MiB).
        used_bytes: uint32 per guest block: bytes of that block the guest uses. Metadata,
            partition tables, allocated data and kept-whole volumes all count; a block with 0
            may be dropped by filesystem-aware compaction.
        volumes: the volumes found, in disk order of discovery.
        notes: disk-level remarks (e.g. which partition table copy was trusted).
    """

    block_size: int
    used_bytes: np.ndarray
    volumes: tuple[Volume, ...]
    notes: tuple[str, ...]
