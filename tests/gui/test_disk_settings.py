"""The Overview's disk-attachment box: what it says and the "Turn on discard…" action.

The VM is written by the test (tests/builders.py: controllers and images it knows), the saved
.vbox is read back with ElementTree, and Edit > Undo must restore its bytes exactly.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from builders import build_trim_vm

from tests.gui.gui_vmkit import open_and_wait
from vdigui.gui.main_window import MainWindow
from vdigui.gui.views import disk_settings

NS = "{http://www.virtualbox.org/}"


def settle(qtbot: Any, window: MainWindow) -> None:
    ops = window.operations
    qtbot.waitUntil(
        lambda: (
            not window.busy
            and not ops.checking
            and not ops.undo.checking
            and ops.disk_settings.settings is not None
            and not ops.pool.running
        ),
        timeout=20000,
    )


def discard_flags(vbox: Path) -> dict[str, tuple[str | None, str | None]]:
    root = ET.parse(vbox).getroot()
    hardware = root.find(f"{NS}Machine/{NS}Hardware")
    assert hardware is not None
    return {
        f"{c.get('name')}:{d.get('port')}": (d.get("discard"), d.get("nonrotational"))
        for c in hardware.iter(f"{NS}StorageController")
        for d in c.findall(f"{NS}AttachedDevice")
    }


def test_box_shows_each_attachment_and_turns_discard_on(
    qtbot: Any, window: MainWindow, tmp_path: Path, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = build_trim_vm(tmp_path / "Trim", qemu_img)
    vbox = folder / "Trim.vbox"
    original = vbox.read_bytes()
    open_and_wait(qtbot, window, folder)
    settle(qtbot, window)
    controller = window.operations.disk_settings
    box = controller.box
    assert box.isVisible()
    text = html.unescape(re.sub(r"<[^>]+>", " ", box.label.text()))
    for where in ("SATA port 0, device 0", "IDE port 0, device 0", "NVMe port 0, device 0"):
        assert where in text
    assert "IDE controller has no TRIM" in text and "fixed-size" in text
    assert box.turn_on.isEnabled(), box.turn_on.toolTip()

    asked: list[str] = []
    monkeypatch.setattr(
        disk_settings, "confirm_turn_on", lambda _parent, _title, body: asked.append(body) or True
    )
    with qtbot.waitSignal(window.session_loaded, timeout=20000):
        assert controller.turn_on()
    settle(qtbot, window)
    assert "fstrim" in asked[0] and "sata.vdi" in asked[0]
    flags = discard_flags(vbox)
    assert flags["SATA:0"] == ("true", "true") and flags["SCSI:0"] == ("true", "true")
    assert flags["IDE:0"] == (None, None) and flags["SATA:1"] == (None, None)
    # Read again after the reload: nothing left to turn on, and the button says so.
    assert not box.turn_on.isEnabled()
    assert "already on" in box.turn_on.toolTip()
    undo = window.operations.undo
    qtbot.waitUntil(lambda: undo.undo_action.isEnabled(), timeout=20000)
    dialog = undo.open_undo()
    assert dialog is not None
    with qtbot.waitSignal(window.session_loaded, timeout=20000):
        dialog.undo_button.click()
    settle(qtbot, window)
    assert dialog.outcome is not None and dialog.outcome[0] == "ok", dialog.outcome
    dialog.close()
    assert vbox.read_bytes() == original


def test_saved_state_disables_the_action(
    qtbot: Any, window: MainWindow, tmp_path: Path, qemu_img: str
) -> None:
    folder = build_trim_vm(tmp_path / "Trim", qemu_img)
    vbox = folder / "Trim.vbox"
    vbox.write_text(
        vbox.read_text(encoding="utf-8").replace(
            'snapshotFolder="Snapshots"', 'snapshotFolder="Snapshots" stateFile="now.sav"'
        ),
        encoding="utf-8",
    )
    (folder / "now.sav").write_bytes(b"saved")
    before = vbox.read_bytes()
    open_and_wait(qtbot, window, folder)
    settle(qtbot, window)
    box = window.operations.disk_settings.box
    assert not box.turn_on.isEnabled()
    assert "saved state" in box.turn_on.toolTip()
    assert not window.operations.disk_settings.turn_on()
    assert vbox.read_bytes() == before
