"""Resize a disk: grow (dynamic, fixed, with snapshots) or shrink, optionally the last partition.

What VirtualBox does (docs/vdi-format.md §3.2): ``vdiResize`` grows dynamic images only; when the
longer block map would run into the data area it copies the first data slots to the end of the
file, moves ``offData`` forward by those slots, extends the map with FREE entries and writes
cbDisk and cBlocks. Main resizes only the medium it is called on, and its read path hands a
differencing image's FREE blocks to the parent at the same offsets: a parent refuses offsets
past its own cbDisk, so a grown leaf over a smaller parent fails reads in its new space.

What vdigui does, and why:

- **Grow, one image** (dynamic or fixed): the same slot move as VirtualBox when the map area is
  too small, but crash-safe: the moved slots are copied past the old end of the file and
  flushed before the map and header that point at them are written; a fixed image also gets
  its new blocks as zero-filled, allocated slots, so it stays fully allocated.
- **Grow, a VM with snapshots**: every image of the disk's tree (base, every snapshot layer,
  the current state) grows by the same map extension, so sizes stay equal as VirtualBox
  creates them, every block a state stored is read exactly as before, and the new space reads
  as zeros in every state. The ``.vbox`` stores no disk size, so it does not change.
- **Shrink**: one image without snapshots, down to the end of the last partition (and the
  backup GPT), and only when the guest's filesystems use no block past the new end. Slots of
  the dropped blocks are freed by moving the highest slots into the holes (as compaction
  does), so the file stays dense and ``qemu-img check`` clean; the file is then truncated.
- **Partition table**: a GPT's backup header and array move to the new end on any size
  change; ``grow_partition`` grows the last partition (see
  :mod:`vdigui.engine.guestfs.parttable_edit`). Filesystems are grown by the guest: the plan
  and the result give the exact steps for the filesystem found.

Every run is journalled (docs/crash-safety.md): the header+map prefix, every byte range of the
old file that will be overwritten (before-images), and for a shrink the cut tail are saved and
flushed first; the commit point is the journal's commit mark; an interruption before it rolls
back to the exact old bytes, and ``vdictl undo`` restores them afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vdigui.engine import fileio
from vdigui.engine import format as fmt
from vdigui.engine.chain import ImageIndex, open_paths
from vdigui.engine.errors import OperationRefused, VdiError, VerificationError
from vdigui.engine.format import BLOCK_FREE, ImageType
from vdigui.engine.guestfs import parttable_edit as pte
from vdigui.engine.image import open_image
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations.journal import Journal
from vdigui.engine.operations.space import FileOutcome, SpacePlan
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress
from vdigui.engine.units import human_size

#: VirtualBox's limits for a disk size (VDI.cpp ``vdiCreate``/``vdiResize``).
MIN_SIZE = fmt.MIB
MAX_SIZE = 4 * (1 << 50) - 3 * fmt.MIB
KIND = "resize"


@dataclass(frozen=True, slots=True)
class ImageChange:
    """What a resize does to one image file.

    Attributes:
        path: the image.
        uuid: its uuidCreate (checked again before the first write).
        role: "image", "base", "snapshot layer" or "current state".
        fixed: a fixed-size image (it stays fully allocated).
        old_disk_size, new_disk_size: cbDisk before and after.
        old_blocks, new_blocks: cBlocks before and after.
        old_offset_data, new_offset_data: offData before and after.
        allocated_before, allocated_after: cBlocksAllocated before and after.
        moved_slots: data slots copied (grow: to the end of the file; shrink: into holes).
        dropped_slots: slots freed because their blocks lie past the new end (shrink).
        new_slots: zero-filled slots added to a fixed image.
        size_before, size_after: the file's size before and after.
        overwritten: bytes of the old file overwritten in place (saved as before-images).
        why: one sentence: why this image changes.
    """

    path: Path
    uuid: str
    role: str
    fixed: bool
    old_disk_size: int
    new_disk_size: int
    old_blocks: int
    new_blocks: int
    old_offset_data: int
    new_offset_data: int
    allocated_before: int
    allocated_after: int
    moved_slots: int
    dropped_slots: int
    new_slots: int
    size_before: int
    size_after: int
    overwritten: int
    why: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["path"] = str(self.path)
        return out


@dataclass(frozen=True, slots=True)
class ResizePlan:
    """A planned resize (read-only to make; :func:`run_resize` carries it out).

    Attributes:
        source: what the user named (an image, a VM folder or a .vbox).
        folder: where the journal and the undo data live (the VM folder, else the image's).
        old_size, new_size: the guest disk size before and after.
        images: every image that changes, base first.
        leaf: the image the current state reads first (partition edits go there).
        chain: the current state's files, base first.
        table: the partition-table sector writes (None: the table is left as it is).
        min_size: the smallest size a shrink may go to (None when not computed).
        filesystem: what the last partition (or the whole disk) holds, e.g. "ext4".
        guest_steps: what to do inside the guest afterwards.
        notes: other sentences for the user.
        stamps: fingerprints of the images when planned (the run refuses if they changed).
        space: the space figures.
    """

    source: Path
    folder: Path
    old_size: int
    new_size: int
    images: tuple[ImageChange, ...]
    leaf: Path
    chain: tuple[Path, ...]
    table: pte.TableEdit | None
    min_size: int | None
    filesystem: str | None
    guest_steps: tuple[str, ...]
    notes: tuple[str, ...]
    stamps: dict[str, Any] = field(default_factory=dict)
    space: SpacePlan = field(default_factory=lambda: SpacePlan((), 0, None, 0, True))

    @property
    def growing(self) -> bool:
        """Whether the disk gets larger."""
        return self.new_size > self.old_size

    @property
    def nothing_to_do(self) -> bool:
        """Same size and no table change."""
        return self.new_size == self.old_size and self.table is None

    def summary(self) -> str:
        """One line for the journal and the undo record."""
        return (
            f"resize of '{self.source.name}' from {human_size(self.old_size)} to "
            f"{human_size(self.new_size)}"
        )

    def lines(self) -> list[str]:
        """The plan in sentences (the CLI's dry run and the app's plan page)."""
        verb = "Grow" if self.growing else "Shrink" if self.new_size < self.old_size else "Keep"
        out = [
            f"{verb} the disk of '{self.source}' from {human_size(self.old_size)} "
            f"({self.old_size:,} bytes) to {human_size(self.new_size)} "
            f"({self.new_size:,} bytes)."
        ]
        if self.min_size is not None:
            out.append(
                f"The smallest size it can shrink to is {self.min_size:,} bytes "
                f"({human_size(self.min_size)})."
            )
        out.append(f"Images that change ({len(self.images)}):")
        for c in self.images:
            out.append(
                f"  {c.path.name} ({c.role}{', fixed' if c.fixed else ''}): "
                f"{human_size(c.size_before)} -> {human_size(c.size_after)} on disk"
            )
            details = [f"cBlocks {c.old_blocks} -> {c.new_blocks}"]
            if c.new_offset_data != c.old_offset_data:
                details.append(
                    f"data area moves from byte {c.old_offset_data} to {c.new_offset_data}"
                )
            if c.moved_slots:
                details.append(f"{c.moved_slots} block(s) of data copied")
            if c.dropped_slots:
                details.append(f"{c.dropped_slots} unused block(s) past the new end dropped")
            if c.new_slots:
                details.append(f"{c.new_slots} zero-filled block(s) allocated")
            out.append("    " + "; ".join(details) + ".")
            if len({x.why for x in self.images}) > 1:
                out.append(f"    Why: {c.why}")
        if len({x.why for x in self.images}) == 1 and len(self.images) > 1:
            out.append(f"  Why all of them: {self.images[0].why}")
        if self.table is not None:
            out.append("Partition table:")
            out += [f"  {s}" for s in self.table.summary]
        out += [f"Note: {n}" for n in self.notes]
        if self.guest_steps:
            out.append("Then, inside the guest:")
            out += [f"  {i}. {s}" for i, s in enumerate(self.guest_steps, start=1)]
        out.append("Space:")
        out += [f"    {line}" for line in self.space.lines()]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``--dry-run --json``, and the journal's copy of the plan)."""
        table = None
        if self.table is not None:
            table = {
                "scheme": self.table.scheme,
                "summary": list(self.table.summary),
                "sectors_written": [off for off, _ in self.table.writes],
                "grown_partition": self.table.grown.name if self.table.grown else None,
                "grown_end": self.table.grown_end or None,
            }
        return {
            "source": str(self.source),
            "folder": str(self.folder),
            "old_size": self.old_size,
            "new_size": self.new_size,
            "images": [c.to_dict() for c in self.images],
            "leaf": str(self.leaf),
            "partition_table": table,
            "min_size": self.min_size,
            "filesystem": self.filesystem,
            "guest_steps": list(self.guest_steps),
            "notes": list(self.notes),
            "space": self.space.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class ResizeResult:
    """What a resize did."""

    plan: ResizePlan
    backup_dir: Path
    verified: bool
    undoable: bool
    notes: tuple[str, ...]

    @property
    def guest_steps(self) -> tuple[str, ...]:
        """What to do inside the guest now."""
        return self.plan.guest_steps


# -- planning -------------------------------------------------------------------------------


def _refuse(message: str) -> OperationRefused:
    return OperationRefused(message)


def _blocks_for(size: int, block_size: int) -> int:
    return -(-size // block_size)


def _check_size(new_size: int) -> None:
    if new_size % 512:
        raise _refuse(
            f"The new size {new_size:,} bytes is not a multiple of 512; VirtualBox "
            "disks are whole 512-byte sectors."
        )
    if not MIN_SIZE <= new_size < MAX_SIZE:
        raise _refuse(
            f"The new size {new_size:,} bytes is outside what VirtualBox supports "
            "(1 MiB up to 4 PiB - 3 MiB)."
        )


def _vm_tree(
    source: Path, disk: str | None
) -> tuple[Path, list[tuple[Path, str]], list[Path], list[str]]:
    """(folder, [(image, role)] base first, current chain, notes) of a VM source."""
    from vdigui.engine.operations.merge import running_hint
    from vdigui.engine.vmfolder import load_vm_folder

    vm = load_vm_folder(source)
    hint = running_hint(vm.folder)
    if hint:
        raise _refuse(f"{hint} Power the VM off before resizing its disk.")
    if vm.state_file is not None:
        raise _refuse(
            f"The VM in '{vm.folder}' holds a saved state, which remembers the old "
            "disk size; shut it down (or discard the saved state) before resizing."
        )
    leaves = list(vm.current_disks())
    if not leaves:
        raise _refuse(f"The current state of '{vm.folder}' has no hard disk attached.")
    if disk is not None:
        leaves = [
            m
            for i, m in enumerate(leaves, start=1)
            if disk == str(i) or (m.path is not None and m.path.name == disk)
        ]
        if not leaves:
            raise _refuse(f"--disk {disk} matches none of the disks of '{vm.folder}'.")
    if len(leaves) > 1:
        raise _refuse(
            f"The VM in '{vm.folder}' has {len(leaves)} disks; choose one with --disk "
            f"1..{len(leaves)} (their order in 'vdictl tree')."
        )
    chain = [Path(p) for p in vm.chain_for(leaves[0])]
    base_header = fmt.read_header(chain[0])
    tree: list[tuple[Path, str]] = []
    leaf = chain[-1].resolve()
    todo = [base_header.uuid]
    seen: set[uuidlib.UUID] = set()
    while todo:
        uid = todo.pop(0)
        if uid in seen:
            continue
        seen.add(uid)
        paths = vm.image_paths.get(uid) or ()
        if not paths:
            raise _refuse(
                f"The image {{{uid}}} of this disk was not found in '{vm.folder}'; "
                "run 'vdictl check' on the VM folder."
            )
        path = Path(paths[0])
        role = (
            "base"
            if uid == base_header.uuid
            else "current state"
            if path.resolve() == leaf
            else "snapshot layer"
        )
        tree.append((path, role))
        todo.extend(vm.header_tree.get(uid, ()))
    notes = []
    saved = [s.name for s in vm.iter_snapshots() if s.state_file is not None]
    if saved and len(tree) > 1:
        notes.append(
            "Snapshot(s) " + ", ".join(f"'{n}'" for n in saved) + " hold a saved "
            "(running) state that remembers the old disk size; restoring one of them "
            "may need its saved state discarded in VirtualBox."
        )
    return vm.folder, tree, chain, notes


def _source(
    source: Path, disk: str | None
) -> tuple[Path, list[tuple[Path, str]], list[Path], list[str]]:
    """(folder, [(image, role)] base first, current chain, notes) of a VM or an image source,
    refused while any of those images is in use (planning and the limits ask the same)."""
    from vdigui.engine.operations.inuse import busy_reasons

    notes: list[str] = []
    if source.is_dir() or source.suffix.lower() in (".vbox", ".xml"):
        folder, tree, chain, notes = _vm_tree(source, disk)
    else:
        if disk is not None:
            raise _refuse("--disk chooses a disk of a VM; give the VM folder, not an image.")
        folder, tree, chain = _image_source(source)
    for path, _role in tree:
        reasons = busy_reasons(path)
        if reasons:
            raise _refuse(" ".join(reasons))
    return folder, tree, chain, notes


def _image_source(path: Path) -> tuple[Path, list[tuple[Path, str]], list[Path]]:
    from vdigui.engine.usage_report import vm_folder_of

    header = fmt.read_header(path)
    if header.is_differencing:
        raise _refuse(
            f"'{path.name}' is a differencing image (a snapshot layer); resizing it "
            "alone would leave its chain with two sizes. Give the VM folder instead, "
            "so vdigui resizes every image of that disk."
        )
    dirs = [path.parent, path.parent / "Snapshots"]
    if path.parent.name.lower() == "snapshots":
        dirs.append(path.parent.parent)
    index = ImageIndex.scan([d for d in dirs if d.is_dir()])
    children = [q for q, h in index.headers.items() if h.parent_uuid == header.uuid]
    if children:
        raise _refuse(
            f"'{path.name}' has snapshots ({len(children)} differencing image(s) build "
            "on it); give the VM folder instead, so vdigui resizes every image of "
            "that disk together."
        )
    vm_folder = vm_folder_of(path)
    if vm_folder is not None:
        from vdigui.engine.operations.merge import running_hint
        from vdigui.engine.vmfolder import load_vm_folder

        hint = running_hint(vm_folder)
        if hint:
            raise _refuse(f"{hint} Power the VM off before resizing its disk.")
        vm = load_vm_folder(vm_folder)
        if vm.state_file is not None and any(
            m.path is not None and m.path.resolve() == path.resolve() for m in vm.current_disks()
        ):
            raise _refuse(
                f"The VM in '{vm_folder}' holds a saved state, which remembers the "
                "old disk size; shut it down (or discard the saved state) before "
                "resizing."
            )
    return vm_folder or path.parent, [(path, "image")], [path]


def _guest_usage(chain_paths: list[Path]) -> Any:
    from vdigui.engine.usage_report import chain_usage

    with open_paths(chain_paths) as chain:
        return chain_usage(chain)


def _shrink_minimum(
    chain_paths: list[Path], size: int, block_size: int, info: pte.TableInfo, usage: Any = None
) -> int:
    """The exact minimum size: the table's, raised past any block the guest still uses."""
    minimum = info.min_size
    try:
        usage = usage if usage is not None else _guest_usage(chain_paths)
    except (VdiError, OSError, ValueError) as exc:
        raise _refuse(
            f"The guest's filesystems could not be read ({exc}); vdigui shrinks only "
            "when it can prove no block past the new end is in use."
        ) from exc
    used = np.asarray(usage.used_bytes)
    ignore = np.zeros(used.size, dtype=np.int64)
    if info.scheme == "gpt":  # the old backup GPT at the old end moves; it is not guest data
        with open_paths(chain_paths) as chain:
            gpt_tail = _old_backup_gpt_range(chain.read, size)
        if gpt_tail is not None:
            start, end = gpt_tail
            for b in range(start // block_size, _blocks_for(end, block_size)):
                lo, hi = max(start, b * block_size), min(end, (b + 1) * block_size)
                ignore[b] += max(0, hi - lo)
    first_past = _blocks_for(minimum, block_size)
    busy = np.flatnonzero(used[first_past:] > ignore[first_past:])
    if busy.size:
        minimum = max(minimum, min(size, (first_past + int(busy[-1]) + 1) * block_size))
    return minimum


def _old_backup_gpt_range(read: Any, size: int) -> tuple[int, int] | None:
    raw = read(512, 512)
    if raw[:8] != b"EFI PART":
        return None
    import struct

    alt = struct.unpack_from("<Q", raw, 32)[0]
    count, esize = struct.unpack_from("<II", raw, 80)
    n = -(-count * esize // 512)
    start = (alt - n) * 512
    if not 0 < start < size:
        return None
    return start, min(size, (alt + 1) * 512)


_FS_STEPS = {
    "ext": ("resize2fs {dev}  (ext3/ext4 grow while mounted; unmount an ext2 first)",),
    "xfs": ("xfs_growfs /  (the mount point of that filesystem; XFS grows only while mounted)",),
    "ntfs": (
        "In Windows: Disk Management (diskmgmt.msc), right-click the volume, 'Extend "
        "Volume', accept the offered space (or diskpart: 'select volume N', 'extend').",
    ),
    "lvm-pv": (
        "pvresize {dev}",
        "lvextend -r -l +100%FREE /dev/VG/LV  (the logical volume "
        "to grow; -r grows its filesystem too)",
    ),
    "fat": (
        "FAT volumes cannot be extended by Windows' Disk Management; use 'fatresize' on "
        "Linux or a partition tool such as GParted.",
    ),
    "btrfs": ("btrfs filesystem resize max /  (the mount point)",),
}


def _guest_steps(
    growing: bool, info: pte.TableInfo | None, table: pte.TableEdit | None, fs: str | None
) -> tuple[str, ...]:
    if not growing:
        return ()
    family = None
    if fs:
        family = "ext" if fs.startswith("ext") else "fat" if fs.startswith("fat") else fs
    if info is None or info.last is None:
        dev = "/dev/sda"
        steps = ["Check the disk's name with 'lsblk' (sda on most VMs; below it is /dev/sda)."]
        if family in _FS_STEPS:
            steps += [s.format(dev=dev) for s in _FS_STEPS[family]]
        else:
            steps.append("Grow the filesystem on the disk with the tool for its type.")
        return tuple(steps)
    last = info.last
    dev = pte.partition_device(last.number)
    steps = [
        f"Check the disk's name with 'lsblk' (sda on most VMs; below it is /dev/sda and "
        f"the partition {dev})."
    ]
    grown = table is not None and table.grown is not None
    if family == "ntfs":  # Extend Volume grows the partition into the free space too
        return (_FS_STEPS["ntfs"][0],)
    if last.not_grown_why and not grown:
        # Growing swap or a recovery partition gives the system nothing: say what does.
        return (
            steps[0],
            f"The new space lies after {last.name}, which is "
            f"{last.not_grown_why}: to give it to the system, move or delete that "
            "partition in the guest (for swap: swapoff, delete it, grow the partition "
            "before it, recreate swap or use a swap file), or use GParted from a live CD.",
        )
    if not grown:
        steps.append(
            f"growpart /dev/sda {last.number}  (grows {last.name} into the new space; "
            "from cloud-guest-utils) — or rerun vdictl resize with --grow-partition"
        )
    if family in _FS_STEPS:
        steps += [s.format(dev=dev) for s in _FS_STEPS[family]]
    else:
        steps.append(
            f"Grow the filesystem in {dev} with the tool for its type"
            + (f" ({fs})" if fs else "")
            + "."
        )
    return tuple(steps)


def _filesystem_of(chain_paths: list[Path], info: pte.TableInfo | None) -> str | None:
    try:
        usage = _guest_usage(chain_paths)
    except (VdiError, OSError, ValueError):
        return None
    for v in usage.volumes:
        if info is None or info.last is None:
            if v.partition == "whole disk":
                return str(v.kind)
            continue
        if v.partition == info.last.name or v.partition.startswith(info.last.name + " "):
            return str(v.kind)
    return None


def _grow_change(
    path: Path, h: fmt.VdiHeader, file_size: int, role: str, new_size: int, why: str
) -> ImageChange:
    """What growing one image to ``new_size`` does (pure: the limits search calls it often)."""
    fixed = h.image_type == ImageType.FIXED
    bs, slot = h.block_size, h.slot_size
    a = h.blocks_allocated
    new_blocks = max(h.blocks, _blocks_for(new_size, bs))
    needed = h.offset_blocks + 4 * new_blocks
    k = 0 if needed <= h.offset_data else -(-(needed - h.offset_data) // slot)
    new_off = h.offset_data + k * slot
    added = new_blocks - h.blocks if fixed else 0
    after = a + added
    old_map_end = h.offset_blocks + 4 * h.blocks
    meta_end = new_off if k else needed
    overwritten = max(0, min(meta_end, file_size) - old_map_end) if new_blocks > h.blocks else 0
    return ImageChange(
        path,
        str(h.uuid),
        role,
        fixed,
        h.disk_size,
        new_size,
        h.blocks,
        new_blocks,
        h.offset_data,
        new_off,
        a,
        after,
        min(k, a),
        0,
        added,
        file_size,
        new_off + after * slot,
        overwritten,
        why,
    )


def _image_change(path: Path, role: str, new_size: int, why: str) -> ImageChange:
    with open_image(path) as image:
        h = image.header
        size = image.file_size
    if h.is_legacy:
        raise _refuse(
            f"'{path.name}' has a version 0 header (VirtualBox 1.x), which has no "
            "data offset to move; convert it first ('vdictl convert')."
        )
    if new_size >= h.disk_size:
        return _grow_change(path, h, size, role, new_size, why)
    fixed = h.image_type == ImageType.FIXED
    bs, slot = h.block_size, h.slot_size
    a = h.blocks_allocated
    new_blocks = _blocks_for(new_size, bs)
    entries = image_map(path)
    keep = entries[:new_blocks]
    live = int(fmt.is_allocated(keep).sum())
    dropped = int(fmt.is_allocated(entries[new_blocks:]).sum())
    movers = int((keep[fmt.is_allocated(keep)] >= live).sum())
    return ImageChange(
        path,
        str(h.uuid),
        role,
        fixed,
        h.disk_size,
        new_size,
        h.blocks,
        new_blocks,
        h.offset_data,
        h.offset_data,
        a,
        live,
        movers,
        dropped,
        0,
        size,
        h.offset_data + live * slot,
        movers * slot,
        why,
    )


def image_map(path: Path) -> np.ndarray:
    """The block map of an image (a copy)."""
    with open_image(path) as image:
        return image.block_map.copy()


def plan_resize(
    source: Path | str, new_size: int, *, grow_partition: bool = False, disk: str | None = None
) -> ResizePlan:
    """Plan a resize of an image, or of a VM's disk with all its snapshots (read-only).

    Args:
        source: a ``.vdi`` (a base image without snapshots), a VM folder or its ``.vbox``.
        new_size: the new guest disk size in bytes (a multiple of 512).
        grow_partition: also grow the last partition to the new end of the disk.
        disk: which disk of a VM with several (1-based position or file name).

    Raises:
        OperationRefused: one sentence saying why, and what to do instead.
    """
    source = Path(source)
    _check_size(new_size)
    folder, tree, chain, notes = _source(source, disk)
    headers = [fmt.read_header(p) for p, _ in tree]
    old_size = headers[0].disk_size
    if any(h.disk_size != old_size for h in headers):
        raise _refuse(
            "The images of this disk do not all have the same size; run 'vdictl "
            "check' on the VM folder."
        )
    block_size = headers[0].block_size
    shrinking = new_size < old_size
    if shrinking and len(tree) > 1:
        raise _refuse(
            "The disk has snapshots, which may still hold data past the new end; "
            "delete the snapshots first ('vdictl snapshot delete') or clone the "
            "current state ('vdictl clone'), then shrink that."
        )
    with open_paths(chain) as ch:
        info = pte.inspect_table(ch.read, old_size)
        min_size = None
        if shrinking:
            if info is None:
                raise _refuse(
                    "The disk has no partition table vdigui recognises, so it cannot "
                    "tell where the guest's data ends; vdigui shrinks only down to "
                    "the end of the last partition."
                )
            min_size = _shrink_minimum(chain, old_size, block_size, info)
            if new_size < min_size:
                raise _refuse(
                    f"Cannot shrink to {new_size:,} bytes: the guest uses the disk up "
                    f"to byte {min_size:,}; the smallest size is {min_size:,} bytes "
                    f"({human_size(min_size)}). Shrink the last partition inside the "
                    "guest first to go lower."
                )
        table = (
            pte.plan_table_edit(ch.read, old_size, new_size, grow_last=grow_partition)
            if new_size != old_size or grow_partition
            else None
        )
    fs = _filesystem_of(chain, info) if not shrinking else None
    if len(tree) > 1:
        why_tree = (
            "every image of a disk keeps the size of its parent: VirtualBox reads a "
            "snapshot layer's unstored blocks from its parent at the same offsets and "
            "refuses offsets past the parent's end; the blocks each state stored stay as "
            "they are, and the new space reads as zeros in every state"
        )
    else:
        why_tree = "this image is the whole disk (no snapshot builds on it)"
    changes = [
        _image_change(p, role, new_size, why_tree[:1].upper() + why_tree[1:] + ".")
        for p, role in tree
    ]
    if new_size == old_size and table is None:
        notes.append("The disk already has this size; nothing changes.")
    if changes[0].fixed and new_size > old_size:
        notes.append(
            "VirtualBox cannot resize fixed images; vdigui grows it in place and keeps "
            "it fully allocated."
        )
    if new_size > old_size and len(tree) > 1:
        notes.append(
            "Every snapshot keeps its content; restoring one gives it the larger disk "
            "with the new space empty."
        )
    stamps = {str(p): jr.fingerprint(p) for p, _ in tree}
    plan = ResizePlan(
        source,
        folder,
        old_size,
        new_size,
        tuple(changes),
        chain[-1],
        tuple(chain),
        table,
        min_size,
        fs,
        _guest_steps(new_size > old_size, info, table, fs),
        tuple(notes),
        stamps,
    )
    return _with_space(plan)


def _space_figures(
    changes: Sequence[ImageChange], backups: Sequence[int], table_writes: int
) -> tuple[int, int]:
    """(undo bytes, peak new host bytes) of a resize; ``backups``: each image's prefix backup.

    One formula for the plan and for the limits' search of the largest size that fits.
    """
    undo = peak = 0
    for c, backup in zip(changes, backups, strict=True):
        undo += backup + c.overwritten + max(0, c.size_before - c.size_after)
        peak += max(0, c.size_after - c.size_before)
    # At most one block per written partition-table sector is saved.
    undo += table_writes * fmt.MIB
    peak += table_writes * fmt.MIB
    return undo, peak + undo


def _with_space(plan: ResizePlan) -> ResizePlan:
    """The plan with its space figures; refused when the host cannot hold them."""
    from vdigui.engine.operations.space import free_space, space_refusal

    backups = [jr.prefix_backup_size(c.path) for c in plan.images]
    writes = len(plan.table.writes) if plan.table is not None else 0
    undo, peak = _space_figures(plan.images, backups, writes)
    files = tuple(FileOutcome(c.path, c.size_before, c.size_after) for c in plan.images)
    refusal = space_refusal(plan.folder, peak, free_space(plan.folder), "the resize")
    if refusal is not None:
        raise _refuse(refusal + " Free some space, or choose a smaller size.")
    space = SpacePlan(files, undo, jr.backups_dir(plan.folder), peak, True)
    return dataclasses.replace(plan, space=space)


# -- running --------------------------------------------------------------------------------


def _ranges_backup(
    journal: Journal,
    fd: int,
    path: Path,
    header: fmt.VdiHeader,
    ranges: list[tuple[int, int]],
    file_size: int,
    *,
    progress: ProgressFn,
    cancel: CancelToken,
) -> None:
    """Save the old bytes of ``ranges`` (inside the old file) as before-image records.

    One before-images file per image (the journal's format): the ranges are expressed as runs
    of equal units from byte 0, so they can be byte ranges of the map area and data slots
    alike. Ranges are widened to 512-byte boundaries where the file allows (restoring a few
    unchanged bytes is harmless), which keeps the unit list short.
    """
    clipped = []
    for start, end in ranges:
        start, end = max(0, start), min(end, file_size)
        if end > start:
            lo = start // 512 * 512
            hi = min(file_size, -(-end // 512) * 512)
            clipped.append((lo, hi))
    if not clipped:
        return
    clipped.sort()
    merged = [clipped[0]]
    for s, e in clipped[1:]:
        if s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    unit = 512
    for s, e in merged:
        unit = math.gcd(unit, s, e)
    units = np.concatenate([np.arange(s // unit, e // unit, dtype=np.int64) for s, e in merged])
    grid = header.replace(offset_data=0, block_size=unit, block_extra=0)
    journal.backup_before_images(fd, path, grid, units, progress=progress, cancel=cancel)


@dataclass
class _Work:
    """The run-time layout of one image's change (derived again from the file itself)."""

    change: ImageChange
    header: fmt.VdiHeader
    old_map: np.ndarray
    new_map: np.ndarray
    new_header: fmt.VdiHeader
    copies: list[tuple[int, int]]  # (source offset, destination offset), whole slots
    zero_ranges: list[tuple[int, int]]  # byte ranges to zero after the copies
    pad_ranges: list[tuple[int, int]]  # old slot bytes that become padding (with the map)
    backup_ranges: list[tuple[int, int]]
    extend_to: int  # the file's new size (a grow; 0 = unchanged)
    truncate_to: int  # the file's new size (a shrink; 0 = unchanged)
    map_clear: tuple[int, int] | None  # old map bytes past the new map end (a shrink)


def _new_lchs(
    lchs: tuple[int, int, int, int] | None, size: int
) -> tuple[int, int, int, int] | None:
    """The LCHS geometry after a resize, as VD.cpp ``VDResize`` computes it for Main.

    Main passes the "auto" marker: a set geometry keeps its heads and sectors and gets
    ``size / 512 / heads / sectors`` cylinders; an unset one (zeros) stays unset.
    """
    if lchs is None:
        return None
    cylinders, heads, sectors, sector_size = lchs
    if cylinders and heads and sectors:
        return (size // 512 // heads // sectors, heads, sectors, sector_size)
    return lchs


def _nonzero(fd: int, start: int, end: int) -> bool:
    if end <= start:
        return False
    data = os.pread(fd, end - start, start)
    return data.count(0) != len(data)


def _work_for(
    change: ImageChange, fd: int, header: fmt.VdiHeader, old_map: np.ndarray, file_size: int
) -> _Work:
    h = header
    bs, slot, extra = h.block_size, h.slot_size, h.block_extra
    a = h.blocks_allocated
    lchs = _new_lchs(h.lchs, change.new_disk_size)
    copies: list[tuple[int, int]] = []
    zero: list[tuple[int, int]] = []
    backup: list[tuple[int, int]] = []
    if change.new_disk_size >= h.disk_size:
        new_blocks = change.new_blocks
        k = (change.new_offset_data - h.offset_data) // slot
        m = min(k, a)
        base = max(a, k) - k  # new index of old slot 0
        remap = np.arange(a, dtype=np.int64)
        remap[m:] -= k
        remap[:m] = base + np.arange(m)
        new_map = np.full(new_blocks, BLOCK_FREE, dtype=np.uint32)
        new_map[: old_map.size] = old_map
        live = fmt.is_allocated(new_map)
        new_map[live] = remap[new_map[live].astype(np.int64)].astype(np.uint32)
        new_off = change.new_offset_data
        for s in range(m):
            copies.append((h.offset_data + s * slot, new_off + int(remap[s]) * slot))
        after = a
        if change.fixed:
            added = np.arange(h.blocks, new_blocks)
            new_map[added] = (a + np.arange(added.size)).astype(np.uint32)
            after = a + int(added.size)
        old_map_end = h.offset_blocks + 4 * h.blocks
        meta_end = new_off if k else h.offset_blocks + 4 * new_blocks
        if new_blocks > h.blocks or k:
            backup.append((old_map_end, meta_end))
        pad = []
        if k:  # old slot bytes now padding: zero them (with the map), as VirtualBox does
            pad.append((h.offset_blocks + 4 * new_blocks, new_off))
        tail = h.disk_size % bs
        last = h.disk_size // bs
        if tail and last < old_map.size and fmt.is_allocated(int(old_map[last])):
            old_slot = int(old_map[last])
            src = h.offset_data + old_slot * slot + extra
            if _nonzero(fd, src + tail, src + bs):
                dest = new_off + int(remap[old_slot]) * slot + extra
                zero.append((dest + tail, dest + bs))
                if old_slot >= m:
                    backup.append((src + tail, src + bs))
        new_header = h.replace(
            disk_size=change.new_disk_size,
            blocks=new_blocks,
            offset_data=new_off,
            blocks_allocated=after,
            lchs=lchs,
        )
        extend = new_off + after * slot
        return _Work(
            change,
            h,
            old_map,
            new_map,
            new_header,
            copies,
            zero,
            pad,
            backup,
            extend if extend > file_size else 0,
            0,
            None,
        )
    # shrink
    new_blocks = change.new_blocks
    keep = old_map[:new_blocks].copy()
    alloc = fmt.is_allocated(keep)
    live_slots = np.sort(keep[alloc].astype(np.int64))
    count = int(live_slots.size)
    movers = live_slots[live_slots >= count][::-1]
    holes = np.setdiff1d(np.arange(count, dtype=np.int64), live_slots)
    moves: dict[int, int] = {int(mv): int(ho) for mv, ho in zip(movers, holes, strict=True)}
    for mv, ho in moves.items():
        copies.append((h.offset_data + mv * slot, h.offset_data + ho * slot))
        backup.append((h.offset_data + ho * slot, h.offset_data + (ho + 1) * slot))
    for i in np.flatnonzero(alloc):
        s = int(keep[i])
        if s in moves:
            keep[i] = moves[s]
    tail = change.new_disk_size % bs
    last = new_blocks - 1
    if tail and fmt.is_allocated(int(keep[last])):
        dest = h.offset_data + int(keep[last]) * slot + extra
        src_slot = int(old_map[last])
        src = h.offset_data + src_slot * slot + extra
        if _nonzero(fd, src + tail, src + bs):
            zero.append((dest + tail, dest + bs))
            backup.append((dest + tail, dest + bs))
    new_header = h.replace(
        disk_size=change.new_disk_size, blocks=new_blocks, blocks_allocated=count, lchs=lchs
    )
    clear = (h.offset_blocks + 4 * new_blocks, h.offset_blocks + 4 * h.blocks)
    return _Work(
        change,
        h,
        old_map,
        keep,
        new_header,
        copies,
        zero,
        [],
        backup,
        0,
        h.offset_data + count * slot,
        clear,
    )


def _copy_slots(
    fd: int, work: _Work, *, progress: ProgressFn, cancel: CancelToken, done: list[int], total: int
) -> list[tuple[int, str]]:
    """Copy whole slots; returns (destination, sha256) of each copy for verification."""
    slot = work.header.slot_size
    digests = []
    for src, dst in work.copies:
        cancel.raise_if_cancelled("Cancelled: rolling back.")
        data = os.pread(fd, slot, src)
        if len(data) != slot:
            raise VdiError(f"Short read while moving a block of '{work.change.path.name}'.")
        fileio.pwrite(fd, data, dst)
        digests.append((dst, hashlib.sha256(data).hexdigest()))
        done[0] += 1
        progress(Progress("moving data", done[0], total, done[0] * slot))
    return digests


def run_resize(
    plan: ResizePlan,
    *,
    verify: bool = True,
    keep_undo: bool = True,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> ResizeResult:
    """Carry out a plan under a journal; interrupted or failed runs roll back to the old bytes.

    Raises:
        OperationRefused: the images changed since the plan, are in use, or cannot be written.
        OperationCancelled: cancelled before the commit (everything was rolled back).
        VerificationError: the result is not as planned (everything was rolled back).
    """
    from vdigui.engine.operations.inuse import busy_reasons
    from vdigui.engine.operations.preflight import check_writable_inputs, sweep_around

    cancel = cancel or CancelToken()
    if plan.nothing_to_do:
        raise _refuse("The disk already has this size; nothing was changed.")
    paths = [c.path for c in plan.images]
    for path in paths:
        if jr.fingerprint(path) != plan.stamps.get(str(path)):
            raise _refuse(f"'{path.name}' changed since the plan was made; plan the resize again.")
        reasons = busy_reasons(path)
        if reasons:
            raise _refuse(" ".join(reasons))
    check_writable_inputs(paths, folder=plan.folder, needed=plan.space.peak_extra)
    sweep_around(paths, plan.folder)
    journal = Journal.begin(plan.folder, KIND, plan.to_dict(), plan.summary(), keep_undo=keep_undo)
    fds: dict[Path, int] = {}
    notes: list[str] = []
    try:
        works: list[_Work] = []
        for change in plan.images:
            fd = fileio.open_fd(change.path, os.O_RDWR)
            fds[change.path] = fd
            size = os.fstat(fd).st_size
            raw = os.pread(fd, fmt.HEADER_READ_SIZE, 0)
            header = fmt.parse_header(raw, change.path, size)
            if str(header.uuid) != change.uuid:
                raise _refuse(f"'{change.path.name}' is no longer the image planned; stopped.")
            old_map = np.frombuffer(
                os.pread(fd, header.map_size, header.offset_blocks), dtype="<u4"
            ).astype(np.uint32)
            works.append(_work_for(change, fd, header, old_map, size))
        table_ranges = _table_backup_ranges(plan, works)
        # 1. undo information, durable before the first write
        for work in works:
            path, fd = work.change.path, fds[work.change.path]
            journal.backup_image(path, save=False)
            if work.truncate_to:
                journal.backup_tail(path, work.truncate_to)
            ranges = work.backup_ranges + table_ranges.get(path, [])
            _ranges_backup(
                journal,
                fd,
                path,
                work.header,
                ranges,
                os.fstat(fd).st_size,
                progress=progress,
                cancel=cancel,
            )
        journal.set_phase("backed-up")
        # 2. data: copies to new places (and new zero slots), flushed
        total = sum(len(w.copies) for w in works)
        done = [0]
        digests: dict[Path, list[tuple[int, str]]] = {}
        for work in works:
            fd = fds[work.change.path]
            if work.extend_to:
                fileio.ftruncate(fd, work.extend_to)
                if work.change.fixed and work.change.new_slots:
                    start = (
                        work.new_header.offset_data
                        + (work.header.blocks_allocated) * work.header.slot_size
                    )
                    fileio.fallocate(fd, start, work.extend_to - start)
            digests[work.change.path] = _copy_slots(
                fd, work, progress=progress, cancel=cancel, done=done, total=total
            )
            wrote = bool(work.extend_to or work.copies)
            for start, end in work.zero_ranges:
                if end > start:
                    fileio.pwrite(fd, bytes(end - start), start)
                    wrote = True
            if wrote:  # nothing written (no data moves): nothing to flush
                fileio.fsync(fd)
        cancel.raise_if_cancelled("Cancelled: rolling back.")
        # The phases after "backed-up" are progress notes for a reader of the journal, not
        # recovery states (before the commit mark recovery always rolls back), so they are
        # kept in memory and written with the commit: two durable saves fewer per resize.
        journal.data["phase"] = "data-moved"
        # 3. metadata: map, header; for a shrink the cut; flushed
        for work in works:
            fd = fds[work.change.path]
            h = work.new_header
            # Written from the array itself (no byte copies of a map of up to 16 GiB).
            fileio.pwrite(
                fd, np.ascontiguousarray(work.new_map, dtype="<u4").data.cast("B"), h.offset_blocks
            )
            clears = list(work.pad_ranges)
            if work.map_clear is not None:
                clears.append(work.map_clear)
            for start, end in clears:
                if end > start:
                    fileio.pwrite(fd, bytes(end - start), start)
            fmt.validate_header(h, work.change.path)
            fileio.pwrite(fd, fmt.pack_header(h), fmt.PREHEADER_SIZE)
            if work.truncate_to:
                fileio.ftruncate(fd, work.truncate_to)
            fileio.fsync(fd)
        journal.data["phase"] = "resized"
        # 4. the partition table, written through the current state's top image
        if plan.table is not None:
            for fd in fds.values():
                fileio.close(fd)
            fds.clear()
            progress(Progress("partition table", 0, 1))
            with open_paths(list(plan.chain), writable_top=True) as chain:
                for offset, data in plan.table.writes:
                    chain.write(offset, data, durable=False)
                chain.top.sync()
            notes += list(plan.table.summary)
        if verify:
            progress(Progress("verifying", 0, 1))
            _verify(plan, works, digests)
            progress(Progress("verifying", 1, 1))
        journal.commit()
    except BaseException:
        for fd in fds.values():
            fileio.close(fd)
        fds.clear()
        if not journal.is_committed():
            journal.rollback()
            journal.abandon()
        raise
    for fd in fds.values():
        fileio.close(fd)
    backup = journal.backup_dir
    notes += journal.complete()
    journal.finish()
    progress(Progress("resizing", 1, 1))
    return ResizeResult(plan, backup, verify, keep_undo, tuple(notes))


def _table_backup_ranges(plan: ResizePlan, works: list[_Work]) -> dict[Path, list[tuple[int, int]]]:
    """Old-file byte ranges the partition-table writes will overwrite in place (top image)."""
    if plan.table is None:
        return {}
    top = next(w for w in works if w.change.path.resolve() == plan.leaf.resolve())
    h = top.header
    bs = h.block_size
    blocks = sorted(
        {off // bs for off, data in plan.table.writes}
        | {(off + len(data) - 1) // bs for off, data in plan.table.writes}
    )
    out = []
    moved_below = (top.new_header.offset_data - h.offset_data) // h.slot_size
    for b in blocks:
        if b >= top.old_map.size:
            continue
        entry = int(top.old_map[b])
        if not fmt.is_allocated(entry) or entry < moved_below:
            continue  # written into a new slot, or into a moved copy past the old end
        start = h.offset_data + entry * h.slot_size
        out.append((start, start + h.slot_size))
    return {top.change.path: out}


def _verify(
    plan: ResizePlan, works: list[_Work], digests: dict[Path, list[tuple[int, str]]]
) -> None:
    """Headers, maps and file sizes as planned, moved data equal, the table as planned."""
    from vdigui.engine.check import require_sound

    for work in works:
        path = work.change.path
        with open_image(path) as image:
            h = image.header
            want = work.new_header
            table_here = plan.table is not None and path.resolve() == plan.leaf.resolve()
            if (h.disk_size, h.blocks, h.offset_data) != (
                want.disk_size,
                want.blocks,
                want.offset_data,
            ) or not (
                h.blocks_allocated == want.blocks_allocated
                or (table_here and h.blocks_allocated > want.blocks_allocated)
            ):
                raise VerificationError(
                    f"After the resize the header of '{path.name}' is not as "
                    "planned; everything was rolled back."
                )
            expected = work.new_map
            got = image.block_map
            touched: set[int] = set()
            if table_here and plan.table is not None:
                touched = {
                    b
                    for off, data in plan.table.writes
                    for b in range(off // h.block_size, (off + len(data) - 1) // h.block_size + 1)
                }
                mask = np.ones(expected.size, dtype=bool)
                mask[[b for b in touched if b < mask.size]] = False
                same = np.array_equal(got[mask], expected[mask])
            else:
                same = np.array_equal(got, expected)
            if not same:
                raise VerificationError(
                    f"After the resize '{path.name}' maps blocks differently "
                    "than planned; everything was rolled back."
                )
            rewritten = set()  # slots the partition-table writes changed after the move
            if table_here:
                rewritten = {
                    h.offset_data + int(got[b]) * h.slot_size
                    for b in touched
                    if b < got.size and fmt.is_allocated(int(got[b]))
                }
            for dst, digest in digests.get(path, []):
                if dst in rewritten:
                    continue
                if hashlib.sha256(os.pread(image.fd, h.slot_size, dst)).hexdigest() != digest:
                    raise VerificationError(
                        f"A block moved inside '{path.name}' does not read "
                        "back as it was; everything was rolled back."
                    )
        del got, image  # the map read back: released before require_sound reads it again
        require_sound([path])
    if plan.table is not None:
        with open_paths(list(plan.chain)) as chain:
            info = pte.inspect_table(chain.read, chain.disk_size)
        if info is None or info.scheme != plan.table.scheme:
            raise VerificationError(
                "After the resize the partition table does not read back; "
                "everything was rolled back."
            )
        grown = plan.table.grown
        if grown is not None and (info.last is None or info.last.end != plan.table.grown_end):
            raise VerificationError(
                "After the resize the last partition does not end where "
                "planned; everything was rolled back."
            )


# -- limits (what the app's size slider offers) --------------------------------------------


@dataclass(frozen=True, slots=True)
class ResizeLimits:
    """The sizes a resize of one disk may choose, and why, read without writing anything.

    Why a function of its own: the app shows the minimum and maximum before a size is chosen;
    :func:`plan_resize` computes the exact shrink minimum only when asked to shrink and refuses
    with it in a sentence. This reads the same facts the same way (the same private helpers),
    so the slider's ends are the figures a plan would accept.

    Attributes:
        source: the image or VM folder.
        disk: the disk of a VM (as ``plan_resize`` takes it), or None.
        current_size: the guest disk size now.
        block_size: the VDI block size.
        fixed: the base image is a fixed-size image (growing it takes host space at once).
        images: how many image files change (the base and every snapshot layer).
        min_size: the smallest size a plan accepts (the current size when shrinking is refused).
        min_why: why it is that size, in one sentence.
        can_shrink: whether any size below the current one is possible.
        max_size: the largest size offered.
        max_why: why it is that size, in one sentence.
        host_free: free bytes in the folder where the images live.
        grow_partition_refusal: why ``grow_partition`` would be refused (None: it would not).
        last_partition: the partition that ends last ("GPT #2"), or None.
        usage: the guest's volumes (for the partition bar), or None when unreadable.
    """

    source: Path
    disk: str | None
    current_size: int
    block_size: int
    fixed: bool
    images: int
    min_size: int
    min_why: str
    can_shrink: bool
    max_size: int
    max_why: str
    host_free: int
    grow_partition_refusal: str | None
    last_partition: str | None
    usage: Any


def _largest_fitting(
    tree: list[tuple[Path, str]], headers: list[fmt.VdiHeader], chain: list[Path], free: int
) -> int:
    """The largest size (the current one plus whole MiB) whose plan fits in ``free`` bytes.

    It searches with the plan's own figures (:func:`_grow_change`, :func:`_space_figures`),
    so the plan accepts this size and refuses one MiB more, for the same free space.
    """
    size = headers[0].disk_size
    sizes = [p.stat().st_size for p, _ in tree]
    backups = [jr.prefix_backup_size(p) for p, _ in tree]

    with open_paths(chain) as ch:

        def fits(new_size: int) -> bool:
            try:
                table = pte.plan_table_edit(ch.read, size, new_size, grow_last=False)
            except OperationRefused:
                return False
            changes = [
                _grow_change(p, h, n, role, new_size, "")
                for (p, role), h, n in zip(tree, headers, sizes, strict=True)
            ]
            writes = len(table.writes) if table is not None else 0
            return _space_figures(changes, backups, writes)[1] <= free

        low, high = 0, (MAX_SIZE - fmt.MIB - size) // fmt.MIB  # in MiB past the current size
        if high < 0 or not fits(size):
            return size
        while low < high:  # the largest step that fits; the figures grow with the size
            mid = (low + high + 1) // 2
            if fits(size + mid * fmt.MIB):
                low = mid
            else:
                high = mid - 1
        return size + low * fmt.MIB


def resize_limits(source: Path | str, *, disk: str | None = None) -> ResizeLimits:
    """The smallest and largest size :func:`plan_resize` would accept for ``source`` (read-only).

    Raises:
        OperationRefused: the disk cannot be resized at all (the VM runs or holds a saved
            state, a differencing image, several disks without ``disk``...): the same
            sentence ``plan_resize`` refuses with.
    """
    from vdigui.engine.operations.space import free_space

    source = Path(source)
    folder, tree, chain, _notes = _source(source, disk)
    headers = [fmt.read_header(p) for p, _ in tree]
    size, bs = headers[0].disk_size, headers[0].block_size
    fixed = headers[0].image_type == ImageType.FIXED
    try:
        usage = _guest_usage(chain)
    except (VdiError, OSError, ValueError):
        usage = None
    info: pte.TableInfo | None = None
    table_why: str | None = None
    grow_why: str | None = None
    with open_paths(chain) as ch:
        try:
            info = pte.inspect_table(ch.read, size)
        except OperationRefused as exc:
            table_why = str(exc)
        try:
            pte.plan_table_edit(ch.read, size, size + bs, grow_last=True)
        except OperationRefused as exc:
            grow_why = str(exc)
    minimum, shrink_why = size, None
    if len(tree) > 1:
        shrink_why = (
            "The disk has snapshots, which may still hold data past the new end; "
            "delete the snapshots first or clone the current state, then shrink that."
        )
    elif table_why is not None:
        shrink_why = table_why
    elif info is None:
        shrink_why = (
            "The disk has no partition table vdigui recognises, so it cannot tell "
            "where the guest's data ends; vdigui shrinks only down to the end of the "
            "last partition."
        )
    else:
        try:
            minimum = max(MIN_SIZE, _shrink_minimum(chain, size, bs, info, usage))
        except OperationRefused as exc:
            shrink_why = str(exc)
    if shrink_why is not None:
        min_why = "This is the current size: shrinking is not possible. " + shrink_why
    elif minimum >= size:
        minimum = size
        min_why = (
            "This is the current size: the last partition"
            + (f" ({info.last.name})" if info is not None and info.last else "")
            + " or the guest's data reaches the end of the disk."
        )
    elif info is not None and minimum == info.min_size:
        min_why = (
            "The end of the last partition"
            + (f" ({info.last.name})" if info.last else "")
            + (" and the backup GPT after it" if info.scheme == "gpt" else "")
            + ": nothing past it is in use."
        )
    else:
        min_why = (
            "The end of the last block the guest's filesystems still use (past the end "
            "of the last partition's table entry)."
        )
    free = free_space(folder)
    maximum = _largest_fitting(tree, headers, chain, free)
    if maximum < MAX_SIZE - fmt.MIB:
        max_why = f"What the free host space allows ({human_size(free)} free in '{folder}'): " + (
            "a fixed image takes the whole new space at once."
            if fixed
            else "the block map grows with the disk."
        )
    else:
        max_why = (
            "The largest disk VirtualBox supports (4 PiB less 3 MiB); a dynamic image "
            "takes host space only as the guest writes."
        )
    return ResizeLimits(
        source,
        disk,
        size,
        bs,
        fixed,
        len(tree),
        minimum,
        min_why,
        shrink_why is None and minimum < size,
        maximum,
        max_why,
        free,
        grow_why,
        info.last.name if info is not None and info.last else None,
        usage,
    )


__all__ = [
    "ImageChange",
    "ResizeLimits",
    "ResizePlan",
    "ResizeResult",
    "plan_resize",
    "resize_limits",
    "run_resize",
]
