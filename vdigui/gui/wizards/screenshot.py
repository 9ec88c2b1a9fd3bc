"""``vdigui PATH --screenshot OUT.png --wizard KIND --page PAGE``: one wizard page as a PNG.

Why a mode of its own: the README's pictures and the review of every page come from real plans
on real folders, rendered offscreen. The run and result pages show a state derived from the
plan (a progress event part-way, the plan's figures as the result) because nothing is run:
this mode never writes to a disk image or a settings file.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QEventLoop, Qt
from PySide6.QtWidgets import QApplication

from vdigui.engine import VmFolder
from vdigui.gui.wizards.base import PAGE_NAMES, PREVIEW, RUN, OperationWizard
from vdigui.gui.wizards.targets import first_suitable, load_vm_or_image, target_by_name


def wizard_class(kind: str) -> type[OperationWizard]:
    """The wizard for ``kind`` ("compact", "clone", "delete-snapshot", "repair")."""
    from vdigui.gui.wizards.clone import CloneWizard
    from vdigui.gui.wizards.compact import CompactWizard
    from vdigui.gui.wizards.delete_snapshot import DeleteSnapshotWizard
    from vdigui.gui.wizards.repair import RepairWizard

    classes: dict[str, type[OperationWizard]] = {
        "compact": CompactWizard, "clone": CloneWizard,
        "delete-snapshot": DeleteSnapshotWizard, "repair": RepairWizard}
    try:
        return classes[kind]
    except KeyError:
        raise ValueError(f"unknown wizard '{kind}' (choose {', '.join(classes)})") from None


def _settle(rounds: int = 4) -> None:
    for _ in range(rounds):
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 30)
        time.sleep(0.01)


def render_wizard_screenshot(kind: str, vm_or_path: VmFolder | Path | str,
                             target_name: str | None, page: str, out: Path,
                             size: tuple[int, int]) -> None:
    """Render one page of one wizard to ``out`` (a PNG of exactly ``size`` pixels).

    Args:
        kind: "compact", "clone", "delete-snapshot" or "repair".
        vm_or_path: a loaded VmFolder, or a VM folder / .vbox / .vdi path.
        target_name: a snapshot (name or UUID), "Current State", or an image (file name or
            UUID); None picks the first target the operation can run on.
        page: "intro", "options", "preview", "run" or "result".
        out: the PNG to write (its folder is created).
        size: (width, height) in pixels.

    Raises:
        ValueError: unknown kind or page.
        VdiError: the folder or the target cannot be read.
        OSError: the PNG cannot be written.
    """
    if page not in PAGE_NAMES:
        raise ValueError(f"unknown page '{page}' (choose {', '.join(PAGE_NAMES)})")
    cls = wizard_class(kind)
    app = QApplication.instance()
    if app is None:  # pragma: no cover - app.py creates it; kept for direct calls
        app = QApplication([])
    vm: VmFolder | None
    image: Path | None
    if isinstance(vm_or_path, VmFolder):
        vm, image = vm_or_path, None
    else:
        vm, source = load_vm_or_image(vm_or_path)
        image = source if vm is None else None
    target = (target_by_name(vm, target_name) if target_name
              else first_suitable(vm, image, kind))
    wizard = cls(vm, target, simulate=True)
    try:
        wizard.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
        # The asked size wins over the dialog's minimum, so the PNG is not a scaled copy.
        wizard.setMinimumSize(min(size[0], wizard.minimumWidth()),
                              min(size[1], wizard.minimumHeight()))
        wizard.resize(*size)
        wizard.show()
        _settle()
        wanted = PAGE_NAMES[page]
        while wizard.currentId() < wanted:
            before = wizard.currentId()
            if before == PREVIEW and not wizard.can_run():
                break  # a refused plan: show the preview that says why
            wizard.next()
            _settle(2)
            if wizard.currentId() == before:
                break
        if wizard.currentId() == RUN:
            wizard.button(wizard.WizardButton.CancelButton).setEnabled(True)
        wizard.resize(*size)
        _settle()
        picture = wizard.grab().toImage()
        if picture.width() != size[0] or picture.height() != size[1]:
            picture = picture.scaled(size[0], size[1], Qt.AspectRatioMode.IgnoreAspectRatio,
                                     Qt.TransformationMode.SmoothTransformation)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not picture.save(str(out), "PNG"):  # type: ignore[call-overload]
            raise OSError(f"Cannot write the screenshot '{out}'.")
    finally:
        wizard.simulate = True
        wizard.stop_and_wait()
        wizard.hide()
        wizard.deleteLater()
        _settle(1)
