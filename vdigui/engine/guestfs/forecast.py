"""How much compaction can reclaim, and why an image may not shrink as much as hoped."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import UsageMap


@dataclass(frozen=True, slots=True)
class ReclaimForecast:
    """Block counts that answer "why isn't my VDI shrinking?".

    Attributes:
        block_size: the VDI block size.
        allocated_blocks: blocks the image stores.
        zero_blocks: allocated blocks that are all zero (plain compaction drops them).
        fs_unused_blocks: allocated, not all zero, but unused by the guest filesystem (only
            filesystem-aware compaction drops them).
        partly_used_blocks: allocated blocks the guest uses only partly; they stay.
        partly_used_free_bytes: unused bytes inside those blocks (what defragmenting and
            consolidating free space inside the guest could add).
    """

    block_size: int
    allocated_blocks: int
    zero_blocks: int
    fs_unused_blocks: int
    partly_used_blocks: int
    partly_used_free_bytes: int

    def bytes_plain(self) -> int:
        """Bytes plain (zero-block) compaction reclaims."""
        return self.zero_blocks * self.block_size

    def bytes_fs_aware(self) -> int:
        """Bytes filesystem-aware compaction reclaims (zero blocks plus FS-unused blocks)."""
        return (self.zero_blocks + self.fs_unused_blocks) * self.block_size


def forecast(usage: UsageMap, allocated: np.ndarray, all_zero: np.ndarray) -> ReclaimForecast:
    """Combine the usage map with the image's allocation and zero-block maps (bool per block)."""
    n = len(usage.used_bytes)
    alloc = np.zeros(n, dtype=bool)
    zero = np.zeros(n, dtype=bool)
    k = min(n, len(allocated))
    alloc[:k] = np.asarray(allocated, dtype=bool)[:k]
    k = min(n, len(all_zero))
    zero[:k] = np.asarray(all_zero, dtype=bool)[:k]
    used = usage.used_bytes.astype(np.int64)
    bs = usage.block_size
    zero_blocks = alloc & zero
    nonzero = alloc & ~zero
    fs_unused = nonzero & (used == 0)
    partly = nonzero & (used > 0) & (used < bs)
    # A block at the disk's end may be shorter than block_size; count only what exists there.
    return ReclaimForecast(
        block_size=bs,
        allocated_blocks=int(alloc.sum()),
        zero_blocks=int(zero_blocks.sum()),
        fs_unused_blocks=int(fs_unused.sum()),
        partly_used_blocks=int(partly.sum()),
        partly_used_free_bytes=int((bs - used[partly]).sum()),
    )
