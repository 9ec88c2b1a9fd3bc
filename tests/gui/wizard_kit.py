"""Helpers for the wizard tests: state hashes, zero blocks, driving a wizard to its end.

The guest content is read with the independent readers of the engine tests
(``tests/engine/merge/vmbuild.py`` ``read_state`` and ``tests/engine/operations/opshelpers.py``
``ref_read``: struct-level parsers that share no code with the engine), and the snapshot tree
is read from the .vbox with ElementTree, so a bug in the engine cannot confirm itself.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QThreadPool

from tests.engine.merge.vmbuild import read_state
from tests.engine.operations.opshelpers import ref_read
from tests.gui.gui_vmkit import make_vm
from vdigui.engine import load_vm_folder, open_image
from vdigui.gui.wizards.base import PREVIEW, RESULT, RUN, OperationWizard
from vdigui.gui.workers import WorkerPool

Factory = Callable[..., Any]

NS = "{http://www.virtualbox.org/}"


def _hard_disks(owner: ET.Element) -> list[uuidlib.UUID]:
    """The hard-disk images attached in ``owner``'s own Hardware element, in order."""
    hardware = owner.find(NS + "Hardware")
    if hardware is None:
        return []
    out = []
    for device in hardware.iter(NS + "AttachedDevice"):
        image = device.find(NS + "Image")
        if device.get("type", "").lower() == "harddisk" and image is not None:
            out.append(uuidlib.UUID(image.get("uuid", "").strip("{}")))
    return out


def vbox_states(folder: Path) -> dict[str, list[uuidlib.UUID]]:
    """Snapshot name (and "Current State") -> the hard disks it attaches, from the .vbox."""
    vbox = next(folder.glob("*.vbox"))
    machine = ET.parse(vbox).getroot().find(NS + "Machine")
    assert machine is not None
    states = {snap.get("name", ""): _hard_disks(snap) for snap in machine.iter(NS + "Snapshot")}
    states["Current State"] = _hard_disks(machine)
    return states


def state_hashes(folder: Path) -> dict[str, str]:
    """sha256 of the guest disk of every snapshot and of the current state, by name.

    Read without the engine: the .vbox with ElementTree, each chain by header links.
    """
    out: dict[str, str] = {}
    for name, disks in vbox_states(folder).items():
        for i, leaf in enumerate(disks):
            out[f"{name}#{i}"] = hashlib.sha256(read_state(folder, leaf).tobytes()).hexdigest()
    return out


def image_hash(paths: list[Path]) -> str:
    """sha256 of the guest disk a chain (base first) shows, read without the engine."""
    return hashlib.sha256(ref_read(paths)).hexdigest()


def zero_out_block(path: Path, block: int) -> None:
    """Overwrite the stored data of ``block`` with zeros (an allocated, all-zero block)."""
    with open_image(path) as image:
        entry = int(image.block_map[block])
        offset = image.header.slot_offset(entry)
        size = image.header.block_size
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(size), offset)
    finally:
        os.close(fd)


def files_state(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder`` (except vdigui's own state) -> (size, sha256)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and ".vdigui" not in path.parts:
            out[str(path.relative_to(folder))] = (
                path.stat().st_size,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return out


def go_to(qtbot: Any, wizard: OperationWizard, page_id: int) -> None:
    """Press Next until ``page_id`` (the preview's background scan may be running)."""
    while wizard.currentId() < page_id:
        before = wizard.currentId()
        if before == PREVIEW:
            qtbot.waitUntil(lambda: wizard.preview_runner is None, timeout=10000)
        wizard.next()
        assert wizard.currentId() != before, f"stuck on page {before}"


def run_to_end(qtbot: Any, wizard: OperationWizard, timeout: int = 20000) -> None:
    """Go through the preview, start the operation and wait for the result page."""
    go_to(qtbot, wizard, RUN)
    qtbot.waitUntil(lambda: wizard.outcome is not None, timeout=timeout)
    qtbot.waitUntil(lambda: wizard.currentId() == RESULT, timeout=timeout)


# -- fixtures (test modules import make_wizard_fixture and vm_fixture to use them) ---------------


@pytest.fixture(name="make_wizard")
def make_wizard_fixture(qtbot: Any, reports: list[tuple[str, str]]) -> Iterator[Factory]:
    """Build wizards on a private pool; at teardown nothing runs and no thread is left."""
    made: list[Any] = []
    pools: list[WorkerPool] = []
    before = {t.ident for t in threading.enumerate()}

    def make(cls: type, folder: Path | None, target: object, **kwargs: Any) -> Any:
        vm = load_vm_folder(folder) if folder is not None else None
        pool = WorkerPool()
        pools.append(pool)
        wizard = cls(vm, target, pool=pool, **kwargs)
        wizard.show()  # closed by this fixture: qtbot would close it before we cancel
        made.append(wizard)
        return wizard

    yield make
    for wizard in made:
        assert wizard.stop_and_wait(10000)
        wizard.close()
        wizard.deleteLater()
    for pool in pools:
        assert pool.shutdown(10000), "a worker did not stop"
        assert not pool.running, "a job never delivered its terminal signal"
    assert QThreadPool.globalInstance().waitForDone(5000)
    leaked = [
        t
        for t in threading.enumerate()
        if t.ident not in before and not isinstance(t, threading._DummyThread)
    ]  # type: ignore[attr-defined]
    assert not leaked, f"leaked threads: {leaked}"


@pytest.fixture(name="vm")
def vm_fixture(tmp_path: Path) -> Any:
    """The gui_vmkit VM (base disk.vdi frozen by snapshot "First", a diff as current state),
    with block 0 of the base allocated but all zero, so there is something to compact."""
    made = make_vm(tmp_path / "VM")
    zero_out_block(made.base, 0)
    return made
