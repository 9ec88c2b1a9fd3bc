"""The unit-to-block arithmetic against a byte-by-byte reference, for awkward alignments."""

from __future__ import annotations

import numpy as np
import pytest

from vdigui.engine.guestfs.blockmap import BlockCounter, Extents, Marker


def reference(disk_size: int, block: int, pieces, base: int, unit: int, used: np.ndarray):
    """Mark every used byte in a flat byte array, then sum per block."""
    flat = np.zeros(disk_size, dtype=bool)
    local_to_disk = np.full(sum(p[2] for p in pieces), -1, dtype=np.int64)
    for local, disk, length in pieces:
        local_to_disk[local : local + length] = np.arange(disk, disk + length)
    for i in np.nonzero(used)[0]:
        lo, hi = base + i * unit, base + (i + 1) * unit
        idx = local_to_disk[lo : min(hi, len(local_to_disk))]
        flat[idx[idx >= 0]] = True
    pad = -len(flat) % block
    return np.concatenate([flat, np.zeros(pad, bool)]).reshape(-1, block).sum(axis=1)


CASES = [
    # (disk size, block, pieces, base, unit, units)
    (1 << 16, 4096, [(0, 0, 1 << 16)], 0, 512, 128),  # aligned fast path
    (1 << 17, 4096, [(0, 63 * 512, 40000)], 0, 1024, 39),  # sector-63 partition
    (1 << 16, 1024, [(0, 512, 60000)], 1024, 4096, 14),  # unit larger than block
    (1 << 16, 4096, [(0, 8192, 10000), (10000, 30000, 20000)], 0, 1000, 30),  # split LV
    (1 << 16, 4096, [(0, 1000, 64000)], 24, 8, 7000),  # tiny units, odd base
    (1 << 16, 65536, [(0, 0, 1 << 16)], 0, 4096, 16),  # one block
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_units_match_byte_reference(case: int) -> None:
    disk_size, block, pieces, base, unit, n = CASES[case]
    rng = np.random.default_rng(case)
    used = rng.random(n) < 0.5
    counter = BlockCounter(block, disk_size)
    marker = Marker(Extents(tuple(pieces)))
    marker.used_units(base, unit, np.packbits(used, bitorder="little"), n)
    marker.commit(counter)
    expect = reference(disk_size, block, pieces, base, unit, used)
    assert (counter.counts == expect).all()


def test_ranges_and_clipping() -> None:
    counter = BlockCounter(4096, 10000)
    counter.add_range(4000, 5000)
    counter.add_range(9990, 100)  # past the end of the disk: clipped
    assert counter.counts.tolist() == [96, 4096, 818]
    assert counter.used_bytes().tolist() == [96, 4096, 818]
    counter.add_range(0, 10000)
    assert counter.used_bytes().tolist() == [4096, 4096, 10000 - 8192]
    assert counter.used_bytes().dtype == np.uint32


def test_padding_bits_are_ignored() -> None:
    counter = BlockCounter(4096, 1 << 20)
    marker = Marker(Extents.single(0, 1 << 20))
    assert marker.used_units(0, 4096, np.array([0xFF, 0xFF], dtype=np.uint8), 10) == 10
    marker.commit(counter)
    assert int(counter.counts.sum()) == 10 * 4096
