"""The reclaim forecast over a real analysed disk and hand-made allocation/zero maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from guestfs_images import MiB, make_fs, make_tree

from vdigui.engine.guestfs import forecast
from vdigui.engine.guestfs.forecast import ReclaimForecast


def test_forecast_counts(analyze, tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    make_fs("ext4", img, 32 * MiB, make_tree(tmp_path / "t", big=2 * MiB))
    usage = analyze(img)
    used = usage.used_bytes
    n = len(used)
    allocated = np.ones(n, dtype=bool)
    allocated[-4:] = False
    all_zero = np.zeros(n, dtype=bool)
    all_zero[-6:] = True  # two allocated zero blocks (both FS-unused in a fresh tail)
    fc = forecast(usage, allocated, all_zero)
    assert isinstance(fc, ReclaimForecast)
    assert fc.allocated_blocks == n - 4
    assert fc.zero_blocks == 2
    nonzero = allocated & ~all_zero
    assert fc.fs_unused_blocks == int((nonzero & (used == 0)).sum()) > 0
    partly = nonzero & (used > 0) & (used < MiB)
    assert fc.partly_used_blocks == int(partly.sum()) > 0
    assert fc.partly_used_free_bytes == int((MiB - used[partly].astype(np.int64)).sum())
    assert fc.bytes_plain() == 2 * MiB
    assert fc.bytes_fs_aware() == (2 + fc.fs_unused_blocks) * MiB
