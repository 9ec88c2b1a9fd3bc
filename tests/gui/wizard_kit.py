"""Helpers for the wizard tests: state hashes, zero blocks, driving a wizard to its end."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from vdigui.engine import load_vm_folder, open_image, open_paths
from vdigui.gui.wizards.base import PREVIEW, RESULT, RUN, OperationWizard


def state_hashes(folder: Path) -> dict[str, str]:
    """sha256 of the guest disk of every snapshot and of the current state, by name."""
    vm = load_vm_folder(folder)
    out: dict[str, str] = {}
    states = [(node.name, vm.disk_for_snapshot(node)) for node in vm.iter_snapshots()]
    states.append(("Current State", vm.current_disks()))
    for name, media in states:
        for i, medium in enumerate(m for m in media if m.uuid in vm.image_paths):
            with open_paths(vm.chain_for(medium.uuid)) as chain:
                digest = hashlib.sha256(chain.read(0, chain.disk_size)).hexdigest()
            out[f"{name}#{i}"] = digest
    return out


def image_hash(paths: list[Path]) -> str:
    """sha256 of the guest disk a chain shows."""
    with open_paths(paths) as chain:
        return hashlib.sha256(chain.read(0, chain.disk_size)).hexdigest()


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
            out[str(path.relative_to(folder))] = (path.stat().st_size,
                                                 hashlib.sha256(path.read_bytes()).hexdigest())
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
