"""The Files tab's "Show Blocks" in the Fragmentation view, and dragging files out.

The VM (tests/engine/guestfs/files/diffvm.py) holds an ext4 and a FAT16 volume in three states.
Expected blocks come from ``debugfs blocks``; the layer and slot serving each VDI block come
from the VDI files read here with tests/engine/merge/vmbuild.py's header reader; expected bytes
and times from ``debugfs dump -p`` and ``mcopy -m``. Never from the engine under test.
"""

from __future__ import annotations

import sys
import uuid as uuidlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "engine" / "guestfs" / "files"))
sys.path.insert(0, str(REPO / "tests" / "engine" / "merge"))

from diffvm import DiffVm, build  # noqa: E402
from fsbuild import MiB, debugfs, debugfs_blocks, run  # noqa: E402
from vmbuild import index_folder, read_header_fields  # noqa: E402

from tests.gui.gui_vmkit import open_files_tab  # noqa: E402
from vdigui.engine import fileio  # noqa: E402
from vdigui.gui.main_window import MainWindow  # noqa: E402
from vdigui.gui.views import fragmentation as frag  # noqa: E402
from vdigui.gui.views.files import FilesView  # noqa: E402

FREE, ZERO = 0xFFFFFFFF, 0xFFFFFFFE


@pytest.fixture(scope="module")
def dvm(tmp_path_factory: pytest.TempPathFactory) -> DiffVm:
    return build(tmp_path_factory.mktemp("filesdrag"))


def settle(qtbot: Any, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: not window.busy, timeout=20000)


def show_files(qtbot: Any, window: MainWindow, dvm: DiffVm) -> FilesView:
    view: FilesView = open_files_tab(qtbot, window, dvm.folder)
    return view


def current_chain(folder: Path) -> list[tuple[Path, np.ndarray, int]]:
    """(path, block map, block size) of each image, base first, read without the engine.

    The current state's image is the one no other image names as its parent.
    """
    index = index_folder(folder)
    fields = {u: read_header_fields(p) for u, p in index.items()}
    parents = {f["parent"] for f in fields.values()}
    (leaf,) = [u for u in index if u not in parents]
    chain = []
    node = leaf
    while node != uuidlib.UUID(int=0):
        f = fields[node]
        data = index[node].read_bytes()
        entries = np.frombuffer(data, dtype="<u4", count=f["blocks"], offset=f["off_blocks"])  # type: ignore[call-overload]
        chain.append((index[node], entries.astype(np.int64), int(f["bs"])))  # type: ignore[call-overload]
        node = f["parent"]  # type: ignore[assignment]
    return chain[::-1]


def oracle_points(dvm: DiffVm, path: str) -> dict[int, set[tuple[int, int]]]:
    """Per serving layer: the (VDI block, slot) pairs under the current state's file."""
    chain = current_chain(dvm.folder)
    bs = chain[0][2]
    base = dvm.starts[0] * 512
    blocks = {(base + b * 4096) // bs for b in debugfs_blocks(dvm.exts["current"], path)}
    out: dict[int, set[tuple[int, int]]] = {}
    for b in blocks:
        for layer in range(len(chain) - 1, -1, -1):
            entry = int(chain[layer][1][b])
            if entry == FREE:
                continue
            if entry != ZERO:
                out.setdefault(layer, set()).add((b, entry))
            break
    return out


def marks(window: MainWindow) -> set[tuple[int, int]]:
    x, y = window.fragmentation.mark_scatter.getData()
    return {(int(a - 0.5), int(b - 0.5)) for a, b in zip(x, y, strict=True)}


def test_show_blocks_marks_the_file_in_the_fragmentation_view(
    qtbot: Any, window: MainWindow, dvm: DiffVm
) -> None:
    view = show_files(qtbot, window, dvm)
    big = next(e for e in view.model.entries if e.name == "big.bin")
    with qtbot.waitSignal(view.blocks_ready, timeout=20000):
        view.show_blocks(big)
    settle(qtbot, window)
    assert "Fragmentation tab too" in window.blockmap.highlight_label.text()
    window.tabs.setCurrentWidget(window.fragmentation)
    settle(qtbot, window)

    expected = oracle_points(dvm, "/big.bin")
    assert len(expected) >= 2, "big.bin should be served by two layers (changed in place)"
    chain = current_chain(dvm.folder)
    assert [p.name for p in window.chain_data.paths] == [p.name for p, _e, _b in chain]  # type: ignore[union-attr]
    fv = window.fragmentation
    most = max(expected, key=lambda layer: (len(expected[layer]), layer))
    assert fv.layer == most, "the view shows the layer storing most of the file"
    assert marks(window) == expected[most]
    assert fv.mark_label.isVisible()

    labels = window.layer_labels(window.chain_data)  # type: ignore[arg-type]
    text = fv.describe_marks(fv.layer)
    assert "p1:/big.bin" in text and "extent inside the guest" in text
    others = sorted(layer for layer in expected if layer != most)
    n = len(expected[others[0]])
    verb = "is" if n == 1 else "are"
    assert f"{n} of its blocks {verb} served by '{labels[others[0]]}'" in text
    assert "choose that layer to see them" in text or "choose one of those layers" in text
    for layer in expected:
        assert f"{len(expected[layer])} in '{labels[layer]}' (1 run" in text

    # The marks follow the layer the user picks.
    fv.layer_box.setCurrentIndex(others[0])
    assert marks(window) == expected[others[0]]
    text = fv.describe_marks(fv.layer)
    rest = sorted(layer for layer in expected if layer != others[0])
    m = len(expected[rest[0]])
    assert f"{m} of its blocks {'is' if m == 1 else 'are'} served by '{labels[rest[0]]}'" in text
    for layer in rest[1:]:
        assert f", {len(expected[layer])} by '{labels[layer]}'" in text

    # Selecting another state clears the marks, as it clears the block map's highlight.
    assert window.session is not None
    row = window.session.find_snapshot("S1")
    assert row is not None
    with qtbot.waitSignal(window.chain_loaded, timeout=20000):
        window.select_snapshot(row)
    settle(qtbot, window)
    assert fv.marked is None and not marks(window)
    assert not fv.mark_label.isVisible()
    assert not window.blockmap.highlighted.size


def test_mark_layout_stays_small_for_any_file() -> None:
    blocks = np.arange(100_000, dtype=np.int64)
    # Written in guest order: one line from the first to the last block, one marker.
    mx, my, lx, ly = frag.mark_layout(blocks, blocks + 7, 200_000, 200_000)
    assert mx.size == 1 and lx.tolist() == [0.5, 99_999.5] and ly.tolist() == [7.5, 100_006.5]
    # Shuffled: one marker per occupied cell of the grid, never more than the cap.
    slots = np.random.default_rng(1).permutation(100_000)
    mx, my, lx, ly = frag.mark_layout(blocks, slots, 100_000, 99_999)
    assert 0 < mx.size <= frag.MAX_MARKERS and lx.size == 0
    # Few blocks: every one marked where it is.
    mx, my, _lx, _ly = frag.mark_layout(blocks[:5], slots[:5], 100_000, 99_999)
    assert list(zip(mx - 0.5, my - 0.5, strict=True)) == list(
        zip(blocks[:5], slots[:5], strict=True)
    )


def dragged(mime: Any) -> dict[str, Path]:
    paths = [Path(u.toLocalFile()) for u in mime.urls()]
    assert all(u.isLocalFile() for u in mime.urls())
    return {p.name: p for p in paths}


def test_drag_out_extracts_the_selection_with_bytes_and_times(
    qtbot: Any, window: MainWindow, dvm: DiffVm, tmp_path: Path
) -> None:
    view = show_files(qtbot, window, dvm)
    top = {e.name: e for e in view.model.entries}
    assert view.model.supportedDragActions() and view.table.dragEnabled()
    mime = view.prepare_drag([top["big.bin"], top["sparse.img"], top["a"], top["new.txt"]])
    assert mime is not None, view.status.text()
    got = dragged(mime)
    assert set(got) == {"big.bin", "sparse.img", "a", "new.txt"}
    root = view.drag_root
    assert root is not None and all(root in p.parents for p in got.values())
    assert not root.stat().st_mode & 0o077, "the temporary folder is private"
    ext = dvm.exts["current"]
    for name in ("big.bin", "sparse.img", "a/hard2", "new.txt"):
        out = tmp_path / name.replace("/", "_")
        debugfs(ext, f'dump -p "/{name}" "{out}"')
        mine = got[name.split("/")[0]] / "/".join(name.split("/")[1:])
        assert mine.read_bytes() == out.read_bytes(), name
        assert int(mine.stat().st_mtime) == int(out.stat().st_mtime), name
    # Written by debugfs at a fixed time, far from now: the time really was copied.
    assert int(got["new.txt"].stat().st_mtime) == 1700000000
    assert "Dragging 4 item(s)" in view.status.text()

    # The tree drags a folder by its path; the FAT volume drags like the ext one.
    view.volume_box.setCurrentIndex(1)
    settle(qtbot, window)
    mime = view.prepare_drag(["/NEW.TXT"])
    assert mime is not None, view.status.text()
    mine = dragged(mime)["NEW.TXT"]
    out = tmp_path / "mcopy" / "NEW.TXT"
    out.parent.mkdir()
    run("mcopy", "-m", "-i", dvm.fats["current"], "::/NEW.TXT", out)
    assert mine.read_bytes() == out.read_bytes()
    assert int(mine.stat().st_mtime) == int(out.stat().st_mtime)

    # Leaving the window removes the temporary copies.
    window.close()
    assert not root.exists()


class Recorder(fileio.FileOps):
    """Counts the calls that would change a file."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def open(self, path: Path, flags: int, mode: int) -> int:
        self.calls.append(f"open {path}")
        return super().open(path, flags, mode)

    def mkdir(self, path: Path, mode: int) -> None:
        self.calls.append(f"mkdir {path}")
        super().mkdir(path, mode)

    def symlink(self, target: str, path: Path) -> None:
        self.calls.append(f"symlink {path}")
        super().symlink(target, path)


def test_a_drag_over_the_limits_is_refused_and_writes_nothing(
    qtbot: Any, window: MainWindow, dvm: DiffVm
) -> None:
    view = show_files(qtbot, window, dvm)
    top = {e.name: e for e in view.model.entries}
    view.drag_max_bytes = 4 * MiB
    recorder = Recorder()
    with fileio.use(recorder):
        # 3 MiB + 9 MiB (the sparse file counts its full size).
        assert view.prepare_drag([top["big.bin"], top["sparse.img"]]) is None
        text = view.status.text()
        assert "too much to drag out" in text and "Extract…" in text and "4.0 MiB" in text
        view.drag_max_entries = 50
        assert view.prepare_drag([top["many"]]) is None  # 300 small files
        assert "too many to drag out" in view.status.text()
    assert recorder.calls == []
    assert view.drag_root is None
    view.drag_max_entries = 1000
    mime = view.prepare_drag([top["big.bin"]])  # under both limits
    assert mime is not None and view.drag_root is not None
