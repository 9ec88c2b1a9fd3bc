"""A sparse 2 TiB VM folder: a base with 200,000 allocated blocks in shuffled order under 3
snapshots (used by tests/gui/test_big_chain.py and bench/bench_gui.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from builders import FREE, RawHeader, RawImage, place, write_raw

BLOCKS = 2 * 1024 * 1024  # 2 TiB of 1 MiB blocks


def image(
    path: Path, allocated: int, rng: np.random.Generator, parent: RawHeader | None = None
) -> RawHeader:
    h = RawHeader(
        disk_size=BLOCKS << 20,
        block_size=1 << 20,
        blocks=BLOCKS,
        uuid_linkage=parent.uuid_create if parent else uuid.UUID(int=0),
        uuid_parent_modify=parent.uuid_modify if parent else uuid.UUID(int=0),
        image_type=4 if parent else 1,
    )
    h = place(h, "vbox")
    entries = np.full(BLOCKS, FREE, dtype="<u4")
    entries[rng.choice(BLOCKS, allocated, replace=False)] = rng.permutation(allocated)
    h.blocks_allocated = allocated
    write_raw(path, RawImage(h, [], [None] * allocated, map_bytes=entries.tobytes()))
    return h


def big_vm(folder: Path) -> Path:
    (folder / "Snapshots").mkdir(parents=True)
    rng = np.random.default_rng(0)
    headers = [image(folder / "disk.vdi", 200_000, rng)]
    names = []
    for _ in range(3):
        u = uuid.uuid4()
        name = f"{{{u}}}.vdi"
        headers.append(image(folder / "Snapshots" / name, 2000, rng, headers[-1]))
        names.append(name)
    snaps = [uuid.uuid4() for _ in range(3)]

    def hardware(u: uuid.UUID) -> str:
        return (
            '<Hardware><Memory RAMSize="512"/><StorageControllers><StorageController '
            'name="SATA" type="AHCI"><AttachedDevice type="HardDisk" port="0" device="0">'
            f'<Image uuid="{{{u}}}"/></AttachedDevice></StorageController>'
            "</StorageControllers></Hardware>"
        )

    inner = ""
    for h, name in reversed(list(zip(headers[1:], names, strict=True))):
        inner = (
            f'<HardDisk uuid="{{{h.uuid_create}}}" location="Snapshots/{name}" '
            f'format="VDI">{inner}</HardDisk>'
        )
    registry = (
        f'<MediaRegistry><HardDisks><HardDisk uuid="{{{headers[0].uuid_create}}}" '
        f'location="disk.vdi" format="VDI" type="Normal">{inner}</HardDisk>'
        "</HardDisks></MediaRegistry>"
    )
    tree = ""
    for i in reversed(range(3)):
        children = f"<Snapshots>{tree}</Snapshots>" if tree else ""
        tree = (
            f'<Snapshot uuid="{{{snaps[i]}}}" name="S{i + 1}" '
            f'timeStamp="2026-01-0{i + 1}T00:00:00Z">'
            f"{hardware(headers[i].uuid_create)}{children}</Snapshot>"
        )
    (folder / "big.vbox").write_text(
        '<?xml version="1.0"?><VirtualBox xmlns="http://www.virtualbox.org/" '
        f'version="1.19-linux"><Machine uuid="{{{uuid.uuid4()}}}" name="big" OSType="Linux_64" '
        f'currentSnapshot="{{{snaps[2]}}}">{registry}{tree}'
        f"{hardware(headers[3].uuid_create)}</Machine></VirtualBox>",
        encoding="utf-8",
    )
    return folder
