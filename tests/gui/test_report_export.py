"""File > Export Report...: the report is written on a worker and the window says where.

The VM folder is the GUI kit's (tests/gui/gui_vmkit.py); the page is checked for what the
user asked for (the VM's name, the redaction) by reading the file written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QMessageBox

from tests.gui.gui_vmkit import make_vm, open_and_wait
from vdigui.gui.main_window import MainWindow


def test_export_report_writes_the_page(
    qtbot: Any, window: MainWindow, tmp_path: Path, reports: list[tuple[str, str]]
) -> None:
    assert not window.report_action.isEnabled()  # nothing opened yet
    vm = make_vm(tmp_path / "vm", name="Report VM")
    open_and_wait(qtbot, window, vm.folder)
    assert window.report_action.isEnabled()
    out = tmp_path / "out.html"
    with qtbot.waitSignal(window.idle, timeout=60000):
        window.export_report(out, window.REPORT_FILTERS[0])
    box = window.report_box
    assert isinstance(box, QMessageBox) and box.isVisible()
    assert str(out) in box.text()
    box.close()
    assert reports == []
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "Report VM" in page
    assert str(vm.folder) in page


def test_export_report_failure_is_reported(
    qtbot: Any, window: MainWindow, tmp_path: Path, reports: list[tuple[str, str]]
) -> None:
    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    out = tmp_path / "no such folder" / "r.html"
    with qtbot.waitSignal(window.idle, timeout=60000):
        window.export_report(out)
    assert reports and reports[0][0] == "Cannot write the report"
    assert "does not exist" in reports[0][1]
    assert not out.parent.exists()
