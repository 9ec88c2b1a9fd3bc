"""The report's content: honest block-map pictures, fragmentation grids, redaction, history
and escaping of names taken from files.

Images come from the independent builders (tests/builders.py) and VM folders from the VM
builder (tests/engine/merge/vmbuild.py); the expected cells, slots and names come from what
the builders wrote, never from the engine under test.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from builders import build_chain, pattern

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "engine" / "merge"))

from vmbuild import MIB, VmBuilder  # noqa: E402

from vdigui.engine.palette import FREE_LIGHT, LAYER_HUES  # noqa: E402
from vdigui.engine.report import (  # noqa: E402
    MAP_CELLS,
    build_report,
    disk_pictures,
    operation_history,
    redact,
    redaction_rules,
    write_report,
)
from vdigui.engine.report_html import render_html  # noqa: E402
from vdigui.engine.report_svg import block_map_svg  # noqa: E402

KIB = 1024


@dataclass
class Rect:
    x: float
    y: float
    width: float
    fill: str
    title: str = ""


class Rects(HTMLParser):
    """The filled rectangles of an SVG, with their hover titles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rects: list[Rect] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "rect":
            self.rects.append(Rect(float(a["x"]), float(a["y"]), float(a["width"]), a["fill"]))
        self._in_title = tag == "title"

    def handle_data(self, data: str) -> None:
        if self._in_title and self.rects:
            self.rects[-1].title += data

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False


def distance(a: str, b: str) -> float:
    """Euclidean distance of two #rrggbb colours."""
    ca = [int(a[i : i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i : i + 2], 16) for i in (1, 3, 5)]
    return sum((x - y) ** 2 for x, y in zip(ca, cb, strict=True)) ** 0.5


def cells_drawn(
    svg: str, row_y: float, cells: int, left: float = 190.0, width: float = 768.0
) -> dict[int, list[str]]:
    """Cell index -> fills of the non-background rectangles drawn over it in one row."""
    parser = Rects()
    parser.feed(svg)
    out: dict[int, list[str]] = {}
    cell_w = width / cells
    for r in parser.rects:
        if not (row_y <= r.y < row_y + 20) or r.fill == FREE_LIGHT or r.width >= width:
            continue
        first = round((r.x - left) / cell_w)
        for c in range(first, first + round(r.width / cell_w)):
            out.setdefault(c, []).append(r.fill)
    return out


def test_every_cell_holding_a_block_is_drawn(tmp_path: Path) -> None:
    # 4,096 blocks of 64 KiB: 16 blocks per cell. The base holds one block in every fifth
    # cell (1/16 of it: a share a plain average would shade nearly as free); the diff holds
    # a zero entry and a data block in the same cell, which must show both.
    bs = 64 * KIB
    base = {c * 16 + 3: pattern(c, bs) for c in range(0, MAP_CELLS, 5)}
    diff = {40 * 16: "zero", 40 * 16 + 1: pattern(999, bs), 100 * 16 + 15: pattern(7, bs)}
    ch = build_chain(tmp_path, 4096 * bs, [base, diff], block_size=bs)
    disk = disk_pictures(ch.paths, "disk")
    assert disk["cell_blocks"] == 16 and disk["blocks"] == 4096
    svg = block_map_svg(disk)
    # Rows from the top: guest sees (y 0), the diff (y 24), the base (y 48).
    base_row = cells_drawn(svg, 48, MAP_CELLS)
    assert set(base_row) == {b // 16 for b in base}
    # One block of 16 is plainly visible: at least half-way from the background to the
    # layer's colour (a share-weighted shade would be 1/16 of the way).
    for fills in base_row.values():
        assert all(
            distance(f, FREE_LIGHT) >= 0.45 * distance(LAYER_HUES[0], FREE_LIGHT) for f in fills
        )
    diff_row = cells_drawn(svg, 24, MAP_CELLS)
    assert set(diff_row) == {40, 100}
    assert len(diff_row[40]) == 2 and len(set(diff_row[40])) == 2  # mixed: two bands
    seen = cells_drawn(svg, 0, MAP_CELLS)
    assert set(seen) == {b // 16 for b in base} | {40, 100}
    parser = Rects()
    parser.feed(svg)
    titles = {r.title for r in parser.rects if r.title.startswith("blocks 640–655")}
    # Hover counts per class: the diff's row, the base's row, and who serves each block.
    assert "blocks 640–655: 14 free, 1 zero entries, 1 data" in titles
    assert "blocks 640–655: 15 free, 1 data" in titles
    served = [t for t in titles if "read as zeros" in t]
    assert served and served[0].startswith(
        "blocks 640–655: 13 read as zeros (no layer), 1 zero entries, 1 from base.vdi, 1 from"
    )


@pytest.mark.parametrize(("order", "expected"), [("sequential", {"0"}), ("reverse", {"1"})])
def test_fragmentation_grid_shows_the_seeks(tmp_path: Path, order: str, expected: set[str]) -> None:
    # 300 consecutive guest blocks stored in order, or in reverse order (every step seeks
    # back two slots: the 2-16 class); the grid holds the worst class of each cell.
    bs = 64 * KIB
    layer = {b: pattern(b, bs) for b in range(100, 400)}
    ch = build_chain(tmp_path, 1024 * bs, [layer], block_size=bs, slot_order=order)
    frag = disk_pictures(ch.paths, "disk")["fragmentation"][0]
    classes = set("".join(frag["grid"])) - {"."}
    assert frag["allocated"] == 300 and frag["slots"] == 300
    if order == "reverse":
        assert frag["discontinuities"] == 299
        classes.discard("0")  # the first block (no step before it) may have a cell alone
    assert classes == expected
    columns = {i for row in frag["grid"] for i, ch_ in enumerate(row) if ch_ != "."}
    width = len(frag["grid"][0])
    assert min(columns) == 100 * width // 1024 and max(columns) == 399 * width // 1024


def test_redaction_rules() -> None:
    rules = redaction_rules(home="/home/al", user="al")
    doc = {
        "/home/al/VMs/a.vdi": [
            "/home/al",
            "/home/alice/x",
            "al-box and normal words, halt",
            "'/home/al/x y'",
            "(in /home/al, /home/al2)",
        ],
        "n": 3,
    }
    assert redact(doc, rules) == {
        "~/VMs/a.vdi": [
            "~",
            "/home/alice/x",
            "<user>-box and normal words, halt",
            "'~/x y'",
            "(in ~, /home/al2)",
        ],
        "n": 3,
    }
    assert redact("/", redaction_rules(home="/", user="")) == "/"


def test_history_from_vdigui_records(tmp_path: Path) -> None:
    state = tmp_path / ".vdigui"
    old = state / "backups" / "20260101T101010123456Z-repair"
    last = state / "backups" / "20260202T080000000001Z-snapshot-delete"
    for folder, size in ((old, 100), (last, 50)):
        folder.mkdir(parents=True)
        (folder / "000-a.vdi.head").write_bytes(b"x" * size)
    (state / "last-operation.json").write_text(
        json.dumps(
            {
                "kind": "snapshot-delete",
                "summary": "delete snapshot 'Old'",
                "backup_dir": str(last),
                "started": "2026-02-02T08:00:00+00:00",
                "finished": "2026-02-02T08:00:05+00:00",
                "undoable": True,
            }
        )
    )
    (state / "journal.json").write_text(
        json.dumps(
            {
                "kind": "merge",
                "summary": "merge x",
                "backup_dir": str(state / "backups" / "gone"),
                "started": "2026-03-03T00:00:00+00:00",
            }
        )
    )
    history = operation_history(tmp_path)
    assert [(h["kind"], h["undo_data"]) for h in history] == [
        ("repair", 100),
        ("snapshot-delete", 50),
        ("merge", None),
    ]
    assert history[0]["started"] == "2026-01-01T10:10:10+00:00"
    assert history[1]["summary"] == "delete snapshot 'Old'"
    assert history[1]["status"] == "done, can be undone"
    assert history[2]["status"].startswith("unfinished")
    assert operation_history(tmp_path / "nothing") == []


HOSTILE = "<img src=x onerror=alert(1)>\"'&"


def hostile_vm(folder: Path) -> VmBuilder:
    """A VM whose machine name, file names and snapshot name are markup."""
    vm = VmBuilder(folder, disk_size=4 * MIB, name=HOSTILE)
    vm.scribble([0, 1])
    vm.take_snapshot("S")
    vm.scribble([1])
    vbox = vm.vbox_path()
    escaped = (
        HOSTILE.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
    )
    text = vbox.read_text().replace(HOSTILE, escaped).replace('name="S"', f'name="{escaped}"')
    vbox.write_text(text)
    return vm


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend((k, v or "") for k, v in attrs)

    def handle_data(self, data: str) -> None:
        self.text += data


def test_names_from_files_are_escaped_everywhere(tmp_path: Path) -> None:
    vm = hostile_vm(tmp_path / "vm")
    data = build_report(vm.folder)
    assert data["machine"]["name"] == HOSTILE and data["snapshots"][0]["name"] == HOSTILE
    assert any(HOSTILE in r["name"] for r in data["chain"])
    page = render_html(data)
    parser = Tags()
    parser.feed(page)
    assert "img" not in parser.tags and "script" not in parser.tags
    assert not any(k.startswith("on") for k, _ in parser.attrs)
    assert not any(k == "src" for k, _ in parser.attrs)
    assert parser.text.count(HOSTILE) >= 3  # shown as text: snapshot, machine, file names
    assert any(HOSTILE in v for k, v in parser.attrs if k == "data-path")


def test_write_report_refuses_and_writes_atomically(tmp_path: Path) -> None:
    vm = hostile_vm(tmp_path / "vm")
    out = tmp_path / "out" / "r.html"
    out.parent.mkdir()
    assert write_report(vm.folder, out) == out
    first = out.read_bytes()
    assert first.startswith(b"<!DOCTYPE html>")
    from vdigui.engine.errors import VdiError

    with pytest.raises(VdiError, match="already exists"):
        write_report(vm.folder, out)
    assert out.read_bytes() == first
    write_report(vm.folder, out, overwrite=True, as_json=True)
    assert json.loads(out.read_bytes())["kind"] == "vm"
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.html"]  # no temporary left
