"""Small VM folders for GUI tests, made with the engine (create_image + chain writes + .vbox).

Layout of :func:`make_vm` (4 MiB virtual disk, 1 MiB blocks; block -> content):

- base ``disk.vdi``: blocks 0, 1, 3 hold data, written in the order 3, 0, 1 (so slots are
  3->0, 0->1, 1->2); block 2 is FREE.
- diff 1 (snapshot "First" froze the base; this diff is the current state's disk): block 1
  rewritten (slot 0), block 3 written as zeros over data (a ZERO entry), block 2 FREE.

So the chain's serving layers are [0, 1, -1, 1] and the map entries are known exactly.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdigui.engine import create_image, open_image, open_paths

MIB = 1 << 20
DISK = 4 * MIB
FREE = 0xFFFFFFFF
ZERO = 0xFFFFFFFE


def block(tag: int) -> bytes:
    """One recognisable non-zero block."""
    return bytes([tag % 251 + 1]) * MIB


@dataclass
class Vm:
    """The files of a test VM."""

    folder: Path
    vbox: Path
    base: Path
    diff: Path
    base_uuid: uuidlib.UUID
    diff_uuid: uuidlib.UUID
    snapshot_uuid: uuidlib.UUID


def write_blocks(paths: list[Path], writes: list[tuple[int, bytes]]) -> None:
    """Write whole blocks into the top of the chain ``paths`` in the given order."""
    chain = open_paths(paths, writable_top=True)
    try:
        for index, data in writes:
            chain.write(index * MIB, data, durable=False)
    finally:
        chain.close()


def vbox_text(
    name: str,
    base: tuple[uuidlib.UUID, str],
    diff: tuple[uuidlib.UUID, str] | None,
    snapshot: uuidlib.UUID | None,
    *,
    extra_attach: uuidlib.UUID | None = None,
) -> str:
    """A .vbox with one snapshot ("First") that froze the base, and the diff as current."""

    def hardware(disk: uuidlib.UUID) -> str:
        extra = (
            f'<AttachedDevice type="HardDisk" port="1" device="0">'
            f'<Image uuid="{{{extra_attach}}}"/></AttachedDevice>'
            if extra_attach
            else ""
        )
        return (
            f'<Hardware><Memory RAMSize="512"/><StorageControllers>'
            f'<StorageController name="SATA" type="AHCI" PortCount="2">'
            f'<AttachedDevice type="HardDisk" port="0" device="0">'
            f'<Image uuid="{{{disk}}}"/></AttachedDevice>{extra}'
            f"</StorageController></StorageControllers></Hardware>"
        )

    inner = f'<HardDisk uuid="{{{diff[0]}}}" location="{diff[1]}" format="VDI"/>' if diff else ""
    registry = (
        f'<MediaRegistry><HardDisks><HardDisk uuid="{{{base[0]}}}" location="{base[1]}" '
        f'format="VDI" type="Normal">{inner}</HardDisk></HardDisks></MediaRegistry>'
    )
    snap = ""
    current_attr = ""
    if snapshot is not None:
        current_attr = f' currentSnapshot="{{{snapshot}}}"'
        snap = (
            f'<Snapshot uuid="{{{snapshot}}}" name="First" timeStamp="2026-01-02T03:04:05Z">'
            f"<Description>The first one</Description>{hardware(base[0])}</Snapshot>"
        )
    current = diff[0] if diff else base[0]
    return (
        f'<?xml version="1.0"?>\n<VirtualBox xmlns="http://www.virtualbox.org/" '
        f'version="1.19-linux"><Machine uuid="{{{uuidlib.uuid4()}}}" name="{name}" '
        f'OSType="Linux_64" snapshotFolder="Snapshots"{current_attr}>{registry}{snap}'
        f"{hardware(current)}</Machine></VirtualBox>\n"
    )


def make_vm(folder: Path, name: str = "Test VM", *, extra_attach: uuidlib.UUID | None = None) -> Vm:
    """The VM described in the module docstring."""
    folder.mkdir(parents=True, exist_ok=True)
    snaps = folder / "Snapshots"
    snaps.mkdir(exist_ok=True)
    base = folder / "disk.vdi"
    header = create_image(base, DISK)
    write_blocks([base], [(3, block(3)), (0, block(0)), (1, block(1))])
    diff_uuid = uuidlib.uuid4()
    diff = snaps / f"{{{diff_uuid}}}.vdi"
    create_image(diff, parent=base, uuid=diff_uuid)
    write_blocks([base, diff], [(1, block(11)), (3, bytes(MIB))])
    snapshot = uuidlib.uuid4()
    vbox = folder / f"{name}.vbox"
    vbox.write_text(
        vbox_text(
            name,
            (header.uuid, "disk.vdi"),
            (diff_uuid, f"Snapshots/{diff.name}"),
            snapshot,
            extra_attach=extra_attach,
        ),
        encoding="utf-8",
    )
    return Vm(folder, vbox, base, diff, header.uuid, diff_uuid, snapshot)


def break_vm(vm: Vm, kind: str) -> None:
    """Break the VM the way ``kind`` names (the engine's problem kind it should cause)."""
    if kind == "missing-file":
        vm.diff.unlink()
    elif kind == "orphan-image":
        orphan = vm.folder / "Snapshots" / f"{{{uuidlib.uuid4()}}}.vdi"
        create_image(orphan, parent=vm.base, uuid=uuidlib.UUID(orphan.stem.strip("{}")))
    elif kind == "missing-parent":
        with open_image(vm.diff, writable=True) as image:
            image.write_header(image.header.replace(parent_uuid=uuidlib.uuid4()))
    elif kind == "uuid-mismatch":
        with open_image(vm.diff, writable=True) as image:
            image.write_header(image.header.replace(uuid=uuidlib.uuid4()))
    elif kind == "unreadable-image":
        vm.diff.write_bytes(b"this is not a VDI image" * 100)
    elif kind == "parent-modify-mismatch":
        with open_image(vm.diff, writable=True) as image:
            image.write_header(image.header.replace(parent_modify_uuid=uuidlib.uuid4()))
    else:
        raise ValueError(kind)


def open_and_wait(qtbot: Any, win: Any, path: Path | str, timeout: int = 15000) -> None:
    """Open ``path`` and wait until every job (open, then chain analysis) has finished."""
    with qtbot.waitSignal(win.idle, timeout=timeout):
        win.open_path(path)
    qtbot.waitUntil(lambda: not win.workers.running, timeout=timeout)


def open_files_tab(qtbot: Any, win: Any, folder: Path) -> Any:
    """Open ``folder``, show the Files tab, and wait until it and the window are idle."""
    open_and_wait(qtbot, win, folder)
    view = win.files
    with qtbot.waitSignal(view.loaded, timeout=20000):
        win.tabs.setCurrentWidget(view)
    qtbot.waitUntil(lambda: not win.busy, timeout=20000)
    return view
