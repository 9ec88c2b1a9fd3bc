"""``vdictl space``: per-file categories that add up, totals, actions, JSON, one-line errors.

The folder is built by the VM builder (tests/engine/merge/vmbuild.py); expected figures come
from the builder's record of what it wrote and from os.stat, never from the engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "engine" / "merge"))

from vmbuild import MIB, VmBuilder, read_header_fields  # noqa: E402

from vdigui.cli import main  # noqa: E402

NAMES = [
    "header_and_map",
    "guest_data",
    "guest_unused",
    "zero_blocks",
    "hidden",
    "slack",
    "undo_data",
    "virtualbox_other",
    "unknown",
]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def vm(tmp_path: Path) -> VmBuilder:
    """Base blocks 0-3, snapshot S1 (saved state), then blocks 1-2 overwritten; undo data."""
    vm = VmBuilder(tmp_path / "vm", disk_size=8 * MIB)
    vm.scribble([0, 1, 2, 3])
    vm.take_snapshot("S1", saved_state=True)
    vm.scribble([1, 2])
    undo = vm.folder / ".vdigui" / "backups" / "1-merge"
    undo.mkdir(parents=True)
    (undo / "map.bin").write_bytes(b"\x01" * 5000)
    return vm


def test_space_json_adds_up(capsys: pytest.CaptureFixture[str], vm: VmBuilder) -> None:
    code, out, err = run(capsys, "space", str(vm.folder), "--json")
    assert code == 0, err
    doc = json.loads(out)
    on_disk = {p.resolve() for p in vm.folder.rglob("*") if p.is_file()}
    assert {Path(f["path"]) for f in doc["files"]} == on_disk
    for f in doc["files"]:
        path = Path(f["path"])
        assert list(f["categories"]) == NAMES
        assert sum(f["categories"].values()) == f["size"] == path.stat().st_size
        assert f["allocated"] == path.stat().st_blocks * 512
    assert doc["total"] == {n: sum(f["categories"][n] for f in doc["files"]) for n in NAMES}
    base = vm.disks[vm.snaps[0].disks[0]].path
    head = sum(int(read_header_fields(d.path)["off_data"]) for d in vm.disks.values())
    # Only S1 sees the base's blocks 1 and 2: hidden. Random bytes, no filesystem: unknown.
    assert doc["total"]["hidden"] == 2 * MIB
    assert doc["total"]["unknown"] == (2 + 2) * MIB
    assert doc["total"]["header_and_map"] == head
    assert doc["total"]["undo_data"] == 5000
    sav = vm.folder / str(vm.snaps[0].state_file)
    assert doc["total"]["virtualbox_other"] == (sav.stat().st_size + vm.vbox_path().stat().st_size)
    assert base.exists()


def test_space_text_names_the_actions(capsys: pytest.CaptureFixture[str], vm: VmBuilder) -> None:
    code, out, err = run(capsys, "space", str(vm.vbox_path()))
    assert code == 0, err
    assert "vm.vdi: 6.0 MiB (6,291,456 bytes)" in out
    total = out[out.index("Total:") :]
    for name, action in (
        ("hidden", "vdictl snapshot delete"),
        ("undo_data", "vdictl undo --discard"),
        ("virtualbox_other", "VirtualBox"),
        ("header_and_map", "nothing"),
    ):
        line = next(ln for ln in total.splitlines() if ln.strip().startswith(name))
        assert action in line, line
    # One image alone.
    code, out, err = run(capsys, "space", str(vm.folder / "vm.vdi"), "--json")
    assert code == 0, err
    (f,) = json.loads(out)["files"]
    assert f["categories"]["hidden"] == 0  # alone, the image is its own (only) state


def test_space_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "space", str(tmp_path / "nowhere"))
    assert code == 1 and out == ""
    assert err.startswith("vdictl: error: ") and err.count("\n") == 1
    (tmp_path / "junk.vdi").write_bytes(b"not an image" * 100)
    code, out, err = run(capsys, "space", str(tmp_path / "junk.vdi"))
    assert code == 1 and "junk.vdi" in err and err.count("\n") == 1, err
