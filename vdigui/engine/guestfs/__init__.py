"""The guest-filesystem level of the engine: which bytes of a guest disk its filesystems use.

It reads partition tables (MBR/EBR, GPT), LVM2 linear volumes and the allocation maps of
ext2/3/4, NTFS and FAT12/16/32 with its own code, so filesystem-aware compaction can drop blocks
the guest does not use even when they hold stale data. Anything not understood is kept whole.
Pure stdlib + numpy: no Qt, no filesystem libraries.
"""

from __future__ import annotations

from .forecast import ReclaimForecast, forecast
from .model import DiskReader, UsageMap, Volume
from .usage import analyze_usage

__all__ = ["DiskReader", "ReclaimForecast", "UsageMap", "Volume", "analyze_usage", "forecast"]
