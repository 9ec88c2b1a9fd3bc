"""The guest-filesystem level in the app: partition bar, "Guest uses" row, volume placement.

Runs on the demo VM, whose base disk holds real ext4 and FAT32 filesystems (built with
Debian's tools) and a swap partition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gui_vmkit import make_vm, open_and_wait
from support import require_tool

from vdigui.engine.guestfs import UsageMap, Volume
from vdigui.gui import theme
from vdigui.gui.main_window import MainWindow
from vdigui.gui.views.blockmap import USE_COLOUR, use_colours
from vdigui.gui.views.fragmentation import volume_index, volume_placements
from vdigui.gui.views.partitionbar import bar_volumes, volume_text

MiB = 1 << 20


def _vol(
    kind: str,
    start: int,
    size: int,
    used: int | None,
    partition: str,
    kept: bool = False,
    notes: tuple[str, ...] = (),
) -> Volume:
    return Volume(
        kind,
        "",
        start * MiB,
        size * MiB,
        None if used is None else used * MiB,
        None if used is None else (size - used) * MiB,
        kept,
        notes,
        partition,
    )


USAGE = UsageMap(
    MiB,
    np.array([MiB, MiB // 2, 0, 0, MiB, MiB, MiB, 0], dtype=np.uint32),
    (
        _vol("partition-table", 0, 1, 1, "MBR"),
        _vol("ext4", 1, 4, 2, "MBR #1"),
        _vol("swap", 5, 2, None, "MBR #2", kept=True, notes=("Swap is kept whole.",)),
        _vol("free", 7, 1, 0, "unpartitioned"),
    ),
    (),
)


def test_use_colours_blend_by_share() -> None:
    share = np.array([0, 1, 0.5, 0.5], dtype=np.float32)
    cells = use_colours(share, 1)
    assert list(cells[0]) == list(theme.rgba(theme.free_colour()))
    assert list(cells[1]) == list(theme.rgba(USE_COLOUR))
    assert cells[2, 3] > 0 and tuple(cells[2]) not in (tuple(cells[0]), tuple(cells[1]))
    binned = use_colours(share, 2)  # bins: mean 0.5 and 0.5
    assert binned.shape == (2, 4) and (binned[0] == binned[1]).all()
    assert use_colours(np.zeros(0, dtype=np.float32), 4).shape == (0, 4)


def test_volume_helpers() -> None:
    assert [v.kind for v in bar_volumes(USAGE)] == ["partition-table", "ext4", "swap", "free"]
    assert "Kept whole: Swap is kept whole." in volume_text(USAGE.volumes[2])
    assert list(volume_index(USAGE, 8)) == [0, 1, 1, 1, 1, 2, 2, -1]
    # Layer storing blocks 1, 4, 2 in slots 0, 1, 5 and the swap's block 5 in slot 2.
    places = {
        p.volume.kind: p
        for p in volume_placements(USAGE, np.array([1, 2, 4, 5]), np.array([0, 5, 1, 2]))
    }
    assert (places["ext4"].blocks, places["ext4"].runs) == (3, 2)
    assert (places["ext4"].first_slot, places["ext4"].last_slot) == (0, 5)
    assert places["partition-table"].blocks == 0 and "free" not in places


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vdigui.engine.demo import FS_TOOLS, build_demo_vm

    for tool in FS_TOOLS:
        require_tool(tool)
    return build_demo_vm(tmp_path_factory.mktemp("demo-usage"))


def test_demo_shows_the_guest_level(qtbot: Any, window: MainWindow, demo: Path) -> None:
    open_and_wait(qtbot, window, demo, timeout=30000)
    data = window.chain_data
    assert data is not None and data.usage is not None, data.usage_error if data else None
    kinds = [v.kind for v in data.usage.volumes]
    assert {"ext4", "fat32", "swap", "partition-table"} <= set(kinds)
    window.tabs.setCurrentWidget(window.blockmap)
    view = window.blockmap
    assert view.has_use_row and view.rows == len(data.paths) + 2
    assert view.partition_bar.isVisible()
    boxes = view.partition_bar.boxes()
    ext4 = next(rect for v, rect in boxes if v.kind == "ext4")
    swap = next(rect for v, rect in boxes if v.kind == "swap")
    assert 0 <= ext4.left() < ext4.right() <= swap.left() + 1
    # The bar is aligned with the map: the swap box ends where the last block ends.
    assert abs(swap.right() - view._block_to_bar_x(view.blocks)) < 1.5
    swap_block = next(v for v in data.usage.volumes if v.kind == "swap").start // MiB + 1
    text = view.describe(swap_block, view.rows - 1)
    assert "uses all of it" in text and "swap" in text
    free_block = int(np.flatnonzero(data.usage.used_bytes == 0)[0])
    assert "drops it" in view.describe(free_block, view.rows - 1)
    # Fragmentation: colour by volume and the per-volume placement table.
    window.tabs.setCurrentWidget(window.fragmentation)
    frag = window.fragmentation
    frag.layer_box.setCurrentIndex(0)
    frag.colour_box.setCurrentIndex(1)
    assert frag.by_volume
    assert "ext4 'demo-root'" in frag.volumes_label.text()
    ext4_place = next(p for p in frag.placements if p.volume.kind == "ext4")
    assert ext4_place.blocks > 100
    assert "guest volume" in frag.legend.text()


def test_no_usage_for_a_disk_without_filesystems(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    window.tabs.setCurrentWidget(window.blockmap)
    data = window.chain_data
    assert data is not None and data.usage is not None  # read, but nothing understood
    assert all(v.kept_whole or v.kind in ("free", "partition-table") for v in data.usage.volumes)
    view = window.blockmap
    assert not view.has_use_row and view.rows == len(data.paths) + 1  # nothing to shade
    assert view.partition_bar.isVisible()  # but the bar says the disk is kept whole
    assert any(v.kept_whole for v, _rect in view.partition_bar.boxes())
