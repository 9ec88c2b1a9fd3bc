"""The before-images file: self-validating records, a torn record reads as absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from test_merge_snapshots import linear

from vdigui.engine import OperationRefused, VdiError, open_image
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg


def saved(tmp_path: Path) -> tuple[Path, Path, list[tuple[int, bytes]]]:
    vm = linear(tmp_path)
    base = vm.folder / "vm.vdi"
    dest = tmp_path / "before"
    with open_image(base) as image:
        slots = np.array([0, 1, 3, 4, 5], dtype=np.int64)  # runs 0-1 and 3-5
        records, size = jr.write_before_images(image.fd, image.header, slots, dest)
        h = image.header
        expect = [
            (
                h.offset_data + first * h.slot_size,
                os.pread(image.fd, count * h.slot_size, h.offset_data + first * h.slot_size),
            )
            for first, count in ((0, 2), (3, 3))
        ]
    assert records == 2 and size == dest.stat().st_size
    return base, dest, expect


def test_records_read_back_exactly(tmp_path: Path) -> None:
    _, dest, expect = saved(tmp_path)
    assert list(jr.read_before_images(dest)) == expect


@pytest.mark.parametrize("damage", ["truncate", "flip-data", "flip-head"])
def test_a_torn_record_reads_as_absent(tmp_path: Path, damage: str) -> None:
    _, dest, expect = saved(tmp_path)
    raw = bytearray(dest.read_bytes())
    second = 40 + len(expect[0][1])  # where the second record starts
    if damage == "truncate":
        raw = raw[: second + 40 + 4096]  # its head and one page of its data made it to disk
    elif damage == "flip-data":
        raw[second + 40 + 100] ^= 1
    else:
        raw[second + 9] ^= 1  # its offset field
    dest.write_bytes(bytes(raw))
    assert list(jr.read_before_images(dest)) == expect[:1]


def test_undo_refuses_damaged_before_images(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    mg.run_merge(mg.plan_snapshot_delete(vm.folder, "one"))
    record = jr.last_operation(vm.folder)
    assert record is not None
    before = Path(next(e["before_images"] for e in record["images"] if e.get("before_images")))
    raw = bytearray(before.read_bytes())
    raw[-1] ^= 1
    before.write_bytes(bytes(raw))
    base = (vm.folder / "vm.vdi").read_bytes()
    with pytest.raises(OperationRefused, match="damaged"):
        jr.undo_last(vm.folder)
    assert (vm.folder / "vm.vdi").read_bytes() == base  # nothing was touched
    assert not jr.journal_path(vm.folder).exists()
    entry = next(e for e in record["images"] if e.get("before_images"))
    with pytest.raises(VdiError, match="damaged"):  # and the restore itself refuses too
        jr._restore_image(entry)
    assert (vm.folder / "vm.vdi").read_bytes() == base
