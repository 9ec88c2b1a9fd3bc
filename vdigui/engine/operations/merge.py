"""Snapshot deletion and bare-chain merges: plan, then run under a crash journal.

What VirtualBox does when it deletes a snapshot (reference 4.1-4.3), and what vdigui does:

- Refusals, each explained: more than one child snapshot; the current snapshot when it has a
  child; a disk that is a branch point (more than one child disk); Immutable and MultiAttach
  media; a VM that looks running; a disk the deleted snapshot shares with another snapshot
  or the current state. Writethrough, Shareable and Readonly media are skipped, as VirtualBox
  skips them. Fixed-size targets are refused too (see "copy-on-write" below).
- Direction: a base is always merged *backward* (the child's data into the base). Between
  two differencing images the smaller file goes into the larger one unless the user chooses.
- Forward (parent P into child C): fill C's FREE blocks with P's data wherever it differs
  from what P's parent shows; all-zero blocks become persisted ZERO entries (gh-850). C is
  then linked to P's parent (or becomes a dynamic base when P was the base).
- Backward (child C into parent P): every block C holds (ZERO entries included, as zeros)
  goes into P. The uuidLinkage of *every* child of C is rewritten to P.
- The ``.vbox`` is updated like Main does (snapshot node removed, child re-parented and
  appended, registry nesting moved, ``<Image uuid>`` repointed, ``currentSnapshot`` moved to
  the parent when the current snapshot is deleted) and saved the VirtualBox way. Only then are
  the merged-away image and the snapshot's saved state and NVRAM files moved out of the way
  (into the undo backup), each after checking it is still the file the plan names.

Copy-on-write, and why: a backward merge must be undoable and crash-safe. Overwriting a
block the target already holds would destroy the only copy of the deleted snapshot's data
for that block before the commit point. So such a block is written to a *new* slot appended
to the target and the map entry is repointed; the old slot stays untouched. Rolling back (or
undoing) is then "restore the saved header and map, truncate to the saved size". The cost:
the target grows by the blocks it already held; those old slots are unreferenced afterwards
and ``vdictl compact`` reclaims them once undo is no longer wanted. VirtualBox insists on
cBlocksAllocated <= cBlocks, so when a nearly full target needs more slots than it has
blocks, its cBlocks is raised (the new map entries are FREE): that is legal VirtualBox
(cBlocks may exceed ceil(cbDisk / cbBlock)) and fits in the 1 MiB map area VirtualBox
reserves, so no data moves. A fixed-size target has no room to append, so it is refused
(clone it to a dynamic image first).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vdigui.engine import fileio
from vdigui.engine import format as fmt
from vdigui.engine.chain import DiskChain, ImageIndex, open_paths, resolve_chain
from vdigui.engine.errors import (
    OperationCancelled,
    OperationRefused,
    VdiError,
    VerificationError,
)
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO, ImageType
from vdigui.engine.image import VdiImage, open_image, zeros
from vdigui.engine.operations._common import (
    check_not_in_use,
    free_space,
    guest_hash,
    space_refusal,
)
from vdigui.engine.operations.journal import Journal
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress
from vdigui.engine.vbox_edit import VboxDocument, is_inside, parse_uuid

#: Rough sustained copy rate used for time estimates (bytes per second).
ESTIMATED_RATE = 200 * fmt.MIB
#: Data moved per batch (one read run, one write run, then the map update).
BATCH_BYTES = 16 * fmt.MIB

_SKIPPED_TYPES = {"writethrough", "shareable", "readonly"}
_REFUSED_TYPES = {"immutable": "Immutable", "multiattach": "MultiAttach"}


# -- plan values ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ImageRef:
    """One VDI the plan names: where it is, what its header UUID must be, where it lies."""

    path: Path
    uuid: uuidlib.UUID
    outside: bool = False


@dataclass(frozen=True, slots=True)
class DirectionCost:
    """What one merge direction would cost.

    Attributes:
        direction: "forward" (parent into child) or "backward" (child into parent).
        allowed: False when this direction may not be used (a base is merged backward only).
        blocks: guest blocks written into the target (allocations and ZERO entries; an upper
            bound for forward, where blocks equal to the grand-parent's are skipped).
        bytes: data bytes copied.
        temp_space: extra bytes the target's file system needs while the merge runs.
        free_space: free bytes on that file system now.
        seconds: rough time estimate.
    """

    direction: str
    allowed: bool
    blocks: int
    bytes: int
    temp_space: int
    free_space: int
    seconds: float


@dataclass(frozen=True, slots=True)
class DiskStep:
    """What happens to one disk of the snapshot (or to the one bare chain).

    Attributes:
        medium: the snapshot's medium H (or the image named on the command line).
        action: "merge", "remove" (a diff nothing builds on), "keep" (a childless base) or
            "skip" (writethrough/shareable/readonly).
        reason: why, in words.
        direction: "forward" or "backward" for merges.
        source: the image merged away (removed at the end).
        target: the image that receives the data.
        relink: images whose uuidLinkage is rewritten (to ``new_parent``).
        new_parent: the linkage they get; None makes the target a base (forward from a base).
        ancestors: the chain below the lower of source/target, base first (read-only).
        costs: both directions, the chosen one first.
    """

    medium: ImageRef
    action: str
    reason: str
    direction: str | None = None
    source: ImageRef | None = None
    target: ImageRef | None = None
    relink: tuple[ImageRef, ...] = ()
    new_parent: uuidlib.UUID | None = None
    ancestors: tuple[ImageRef, ...] = ()
    costs: tuple[DirectionCost, ...] = ()


@dataclass(frozen=True, slots=True)
class MergePlan:
    """A snapshot deletion or bare merge, ready to run (values only, no open files).

    Attributes:
        kind: "snapshot-delete" or "merge".
        folder: where the journal and undo backups go (the VM folder or the image's folder).
        vbox: the settings file (snapshot deletion only) and its sha256 at planning time.
        snapshot_uuid, snapshot_name: the snapshot being deleted.
        steps: one per disk.
        extra_removed: saved-state and NVRAM files of the snapshot.
        files_written: every file that will be written, with an "outside the folder" flag.
        files_removed: every file that will be moved away, with the same flag.
        was_current: the snapshot was the current one.
        allow_outside: the user accepted writing/removing files outside the folder.
    """

    kind: str
    folder: Path
    vbox: Path | None
    vbox_sha256: str | None
    snapshot_uuid: uuidlib.UUID | None
    snapshot_name: str | None
    steps: tuple[DiskStep, ...]
    extra_removed: tuple[Path, ...] = ()
    files_written: tuple[tuple[Path, bool], ...] = ()
    files_removed: tuple[tuple[Path, bool], ...] = ()
    was_current: bool = False
    allow_outside: bool = False
    notes: tuple[str, ...] = ()

    @property
    def outside_files(self) -> tuple[Path, ...]:
        """Files written or removed that lie outside the folder."""
        return tuple(p for p, out in (*self.files_written, *self.files_removed) if out)

    @property
    def summary(self) -> str:
        """One line naming the operation."""
        if self.kind == "snapshot-delete":
            return f"deletion of snapshot '{self.snapshot_name}' {{{self.snapshot_uuid}}}"
        step = self.steps[0]
        assert step.source is not None and step.target is not None
        return f"merge of '{step.source.path.name}' into '{step.target.path.name}'"

    def describe(self) -> list[str]:
        """The plan in sentences, for ``--dry-run`` and the wizard's summary page."""
        lines = [f"Plan: {self.summary}."]
        for step in self.steps:
            name = step.medium.path.name
            if step.action == "merge":
                assert step.source is not None and step.target is not None
                lines.append(f"- Disk {name}: merge {step.direction} — the data of "
                             f"'{step.source.path.name}' goes into '{step.target.path.name}' "
                             f"({step.reason}).")
                for cost in step.costs:
                    tag = "chosen" if cost.direction == step.direction else (
                        "other" if cost.allowed else "not allowed")
                    lines.append(
                        f"    {cost.direction:8} ({tag}): {cost.blocks} blocks, "
                        f"{_size(cost.bytes)} to copy, {_size(cost.temp_space)} extra space "
                        f"needed, {_size(cost.free_space)} free, about {cost.seconds:.0f} s.")
                for child in step.relink:
                    parent = "none (it becomes a base)" if step.new_parent is None else (
                        f"{{{step.new_parent}}}")
                    lines.append(f"    relink '{child.path.name}' to parent {parent}.")
            else:
                lines.append(f"- Disk {name}: {step.action} ({step.reason}).")
        lines.append("Files written:")
        lines += [f"    {p}{'  [OUTSIDE THE FOLDER]' if out else ''}"
                  for p, out in self.files_written]
        lines.append("Files removed (moved into the undo backup in "
                     f"{self.folder / '.vdigui' / 'backups'}):")
        lines += [f"    {p}{'  [OUTSIDE THE FOLDER]' if out else ''}"
                  for p, out in self.files_removed] or ["    none"]
        lines += [f"Note: {n}" for n in self.notes]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the journal, printed by ``--json``)."""
        def ref(r: ImageRef | None) -> dict[str, Any] | None:
            return None if r is None else {"path": str(r.path), "uuid": str(r.uuid),
                                           "outside": r.outside}
        return {
            "kind": self.kind, "folder": str(self.folder),
            "vbox": str(self.vbox) if self.vbox else None,
            "snapshot": {"uuid": str(self.snapshot_uuid), "name": self.snapshot_name}
            if self.snapshot_uuid else None,
            "was_current": self.was_current,
            "steps": [{
                "medium": ref(s.medium), "action": s.action, "reason": s.reason,
                "direction": s.direction, "source": ref(s.source), "target": ref(s.target),
                "relink": [ref(r) for r in s.relink],
                "new_parent": str(s.new_parent) if s.new_parent else None,
                "costs": [{"direction": c.direction, "allowed": c.allowed, "blocks": c.blocks,
                           "bytes": c.bytes, "temp_space": c.temp_space,
                           "free_space": c.free_space, "seconds": round(c.seconds, 1)}
                          for c in s.costs],
            } for s in self.steps],
            "files_written": [{"path": str(p), "outside": o} for p, o in self.files_written],
            "files_removed": [{"path": str(p), "outside": o} for p, o in self.files_removed],
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a finished merge did.

    Attributes:
        plan: the plan that ran.
        blocks_written: allocations and ZERO entries written into targets.
        bytes_written: data bytes written into targets (headers and maps not counted).
        seconds: wall time.
        removed: files moved into the undo backup.
        backup_dir: where the backups (and removed files) are.
        recovered: what recovery did first, if an earlier run had been interrupted.
    """

    plan: MergePlan
    blocks_written: int
    bytes_written: int
    seconds: float
    removed: tuple[str, ...]
    backup_dir: Path
    notes: tuple[str, ...] = field(default=())


def _size(value: int) -> str:
    size = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} bytes"


def _refuse(message: str) -> OperationRefused:
    return OperationRefused(message)


# -- planning helpers -------------------------------------------------------------------------

def _header_of(path: Path, expected: uuidlib.UUID, role: str) -> fmt.VdiHeader:
    """Read a header and insist it is the medium the registry says (hostile/stale registries)."""
    try:
        header = fmt.read_header(path)
    except VdiError as exc:
        raise _refuse(f"The {role} '{path}' cannot be read ({exc}); run 'vdictl check' and "
                      "'vdictl repair' on the VM folder first.") from exc
    if header.uuid != expected:
        raise _refuse(f"The registry says the {role} {{{expected}}} is '{path}', but that "
                      f"file's header UUID is {{{header.uuid}}}; vdigui will not write to or "
                      "delete a file that is not the one named, so run 'vdictl repair' first.")
    return header


def _costs(source: VdiImage, target: VdiImage, direction: str, allowed: bool,
           free: int) -> DirectionCost:
    """Cost of merging, computed from the two maps (no data is read)."""
    bs = source.header.block_size
    n = min(source.guest_blocks, target.guest_blocks)
    s_map = source.block_map[:n]
    t_map = target.block_map[:n]
    if direction == "backward":  # source = child, into target = parent
        moved = s_map != BLOCK_FREE
        data = s_map < fmt.FIRST_SPECIAL
    else:  # source = parent, into target = child's FREE blocks
        moved = (s_map != BLOCK_FREE) & (t_map == BLOCK_FREE)
        data = (s_map < fmt.FIRST_SPECIAL) & (t_map == BLOCK_FREE)
    nbytes = int(data.sum()) * bs
    return DirectionCost(direction, allowed, int(moved.sum()), nbytes, nbytes, free,
                         nbytes / ESTIMATED_RATE)


def _both_costs(parent: ImageRef, child: ImageRef, forward_allowed: bool,
                chosen: str) -> tuple[DirectionCost, ...]:
    with open_image(parent.path) as p, open_image(child.path) as c:
        backward = _costs(c, p, "backward", True, free_space(parent.path.parent))
        forward = _costs(p, c, "forward", forward_allowed, free_space(child.path.parent))
        if chosen == "backward":
            _check_appendable(p, "target (parent)")
            _check_room(p, backward.bytes // p.header.block_size)
        else:
            _check_appendable(c, "target (child)")
            _check_room(c, forward.bytes // c.header.block_size)
    return (backward, forward) if chosen == "backward" else (forward, backward)


def _check_room(image: VdiImage, new_slots: int) -> None:
    if image.header.blocks_allocated + new_slots > map_room(image):
        raise _refuse(f"'{image.path.name}' has no room in its block map for the {new_slots} "
                      "copy-on-write slots this merge needs (an old 512-byte-aligned layout); "
                      "compact or clone it first, or merge the other direction.")


def _check_appendable(image: VdiImage, role: str) -> None:
    if image.header.image_type == ImageType.FIXED:
        raise _refuse(f"The {role} '{image.path.name}' is a fixed-size image, which cannot "
                      "take the copy-on-write blocks vdigui uses to keep a merge undoable; "
                      "clone it to a dynamic image first ('vdictl clone').")
    slot_count = image.header.blocks_allocated
    live = image.block_map[image.block_map < fmt.FIRST_SPECIAL]
    if live.size and (int(live.max()) >= slot_count or np.unique(live).size != live.size):
        raise _refuse(f"The block map of '{image.path.name}' has cross-linked slots or "
                      "slots past cBlocksAllocated (a crash leftover); run 'vdictl repair' "
                      "on it first.")
    if image.file_size < image.header.expected_file_size(slot_count):
        raise _refuse(f"'{image.path.name}' is shorter than its header says (truncated?); run "
                      "'vdictl check' and 'vdictl repair' on it first.")


def _choose(direction: str, parent_is_base: bool, parent: Path, child: Path) -> tuple[str, str]:
    if parent_is_base:
        if direction == "forward":
            raise _refuse("A base image is always merged backward (the child's data into the "
                          "base); a forward merge would turn a differencing image into the "
                          "base, which VirtualBox never does; use --direction auto.")
        return "backward", "a base is always merged backward"
    if direction in ("forward", "backward"):
        return direction, "the direction you chose"
    p_size, c_size = parent.stat().st_size, child.stat().st_size
    if p_size < c_size:
        return "forward", (f"the parent ({_size(p_size)}) is smaller than the child "
                           f"({_size(c_size)}), so it goes into the child")
    return "backward", (f"the child ({_size(c_size)}) is not larger than the parent "
                        f"({_size(p_size)}), so it goes into the parent")


def find_vbox(path: Path | str) -> Path:
    """The machine settings file of a VM folder (or the file itself)."""
    try:
        from vdigui.engine.vmfolder import find_settings_file
    except ImportError:  # pragma: no cover - vmfolder is part of the engine
        path = Path(path)
        return path if path.is_file() else next(path.glob("*.vbox"))
    return find_settings_file(path)


def running_hint(folder: Path) -> str | None:
    """Why the VM in ``folder`` looks running, or None (vmfolder's best-effort probe)."""
    try:
        from vdigui.engine.vmfolder import find_running_vm_hint
    except ImportError:  # pragma: no cover
        return None
    return find_running_vm_hint(folder)


def _scan_children(doc_folders: list[Path], parent: uuidlib.UUID) -> dict[Path, fmt.VdiHeader]:
    index = ImageIndex.scan([f for f in doc_folders if f.is_dir()])
    return {p: h for p, h in index.headers.items() if h.parent_uuid == parent}


# -- planning: snapshot deletion -----------------------------------------------------------

def plan_snapshot_delete(vm: Path | str, key: str, *, direction: str = "auto",
                         allow_outside: bool = False) -> MergePlan:
    """Plan the deletion of snapshot ``key`` (name or UUID) of the VM in ``vm``.

    Read-only and fast (headers and block maps only).

    Raises:
        OperationRefused: one of VirtualBox's refusals (or vdigui's), with what to do instead.
        SettingsError: the .vbox cannot be read or the snapshot does not exist.
    """
    if direction not in ("auto", "forward", "backward"):
        raise ValueError(f"direction must be auto, forward or backward, not {direction!r}")
    vbox = find_vbox(vm)
    doc = VboxDocument.load(vbox)
    folder = vbox.parent.resolve()
    hint = running_hint(folder)
    if hint:
        raise _refuse(f"{hint} Deleting a snapshot while the VM runs would corrupt it; power "
                      "the VM off (or save its state) and try again.")
    snap = doc.find_snapshot(key)
    if snap is None:
        names = ", ".join(f"'{s.get('name')}'" for s in doc.snapshots()) or "none"
        raise _refuse(f"The VM has no snapshot named or numbered '{key}' (snapshots: {names}).")
    snap_uuid = doc.snapshot_uuid(snap)
    assert snap_uuid is not None
    name = snap.get("name") or str(snap_uuid)
    children = doc.snapshot_children(snap)
    was_current = doc.current_snapshot_uuid == snap_uuid
    if len(children) > 1:
        raise _refuse(f"Snapshot '{name}' has {len(children)} child snapshots and VirtualBox "
                      "deletes only snapshots with at most one, because its disks are branch "
                      "points; delete the snapshots of all but one branch first.")
    if was_current and children:
        raise _refuse(f"Snapshot '{name}' is the current snapshot and has a child snapshot, "
                      "which VirtualBox does not allow; restore another snapshot first, or "
                      "delete the child.")
    registry = doc.hard_disks()
    scan_dirs = [folder, doc.snapshot_folder]
    steps: list[DiskStep] = []
    notes: list[str] = []
    for image_el in doc.hard_disk_images(snap):
        medium_uuid = parse_uuid(image_el.get("uuid"))
        if medium_uuid is None:
            continue
        steps.append(_plan_disk(doc, snap, medium_uuid, registry, scan_dirs, folder, direction))
    written: list[Path] = []
    removed: list[Path] = []
    for step in steps:
        if step.action == "merge":
            assert step.target is not None and step.source is not None
            written.append(step.target.path)
            written += [r.path for r in step.relink]
            removed.append(step.source.path)
        elif step.action == "remove":
            removed.append(step.medium.path)
    extra: list[Path] = []
    state_file = snap.get("stateFile")
    if state_file:
        extra.append(doc.resolve_location(state_file))
    for el in doc.own_elements(snap):
        if VboxDocument._local(el.tag) == "NVRAM" and el.get("path"):
            extra.append(doc.resolve_location(el.get("path") or ""))
    kept_extra: list[Path] = []
    for path in extra:
        if not path.exists():
            notes.append(f"'{path.name}' named by the snapshot does not exist; nothing to "
                         "remove there")
        elif not is_inside(path, folder) or path.suffix.lower() not in (".sav", ".nvram"):
            notes.append(f"'{path}' is named as the snapshot's saved state or NVRAM but is "
                         "not a .sav/.nvram file inside the VM folder, so it is left alone")
        else:
            removed.append(path)
            kept_extra.append(path)
    written.append(vbox)
    if not steps:
        notes.append("the snapshot has no hard disks; only the settings change")
    plan = MergePlan(
        kind="snapshot-delete", folder=folder, vbox=vbox,
        vbox_sha256=hashlib.sha256(doc.original_bytes).hexdigest(),
        snapshot_uuid=snap_uuid, snapshot_name=name, steps=tuple(steps),
        extra_removed=tuple(kept_extra),
        files_written=tuple((p, not is_inside(p, folder)) for p in dict.fromkeys(written)),
        files_removed=tuple((p, not is_inside(p, folder)) for p in dict.fromkeys(removed)),
        was_current=was_current, allow_outside=allow_outside, notes=tuple(notes),
    )
    return plan


def _plan_disk(doc: VboxDocument, snap: Any, medium_uuid: uuidlib.UUID,
               registry: dict[uuidlib.UUID, Any], scan_dirs: list[Path], folder: Path,
               direction: str) -> DiskStep:
    name = doc.snapshot_uuid(snap)
    element = registry.get(medium_uuid)
    if element is None:
        raise _refuse(f"The snapshot's disk {{{medium_uuid}}} is not in the VM's media "
                      "registry (it may live in the global VirtualBox.xml); vdigui edits only "
                      "per-VM registries, so delete this snapshot in VirtualBox.")
    base_el = doc.disk_base(element)
    medium_type = (base_el.get("type") or "Normal").lower()
    path = doc.disk_path(element)
    assert path is not None
    medium = ImageRef(path, medium_uuid, not is_inside(path, folder))
    if medium_type in _SKIPPED_TYPES:
        return DiskStep(medium, "skip", f"{base_el.get('type')} media are not part of "
                        "snapshots, so VirtualBox skips them too")
    if medium_type in _REFUSED_TYPES:
        raise _refuse(f"Disk '{path.name}' is {_REFUSED_TYPES[medium_type]}; VirtualBox "
                      "cannot merge such media, so detach it or change its type in "
                      "VirtualBox before deleting the snapshot.")
    if (element.get("format") or "VDI").upper() != "VDI":
        raise _refuse(f"Disk '{path.name}' is a {element.get('format')} image; vdigui merges "
                      "only VDI images, so delete this snapshot in VirtualBox.")
    others = [r for r in doc.image_refs(medium_uuid) if doc.owner_of(r) is not snap]
    if others:
        owner = doc.owner_of(others[0])
        where = ("the current state" if owner is doc.machine
                 else f"snapshot '{owner.get('name')}'")
        raise _refuse(f"Disk '{path.name}' is also attached to {where}, so merging it would "
                      "change that state too; vdigui (like VirtualBox) needs each snapshot to "
                      "own the disk it froze — detach it there first.")
    header = _header_of(path, medium_uuid, "disk")
    reg_children = {parse_uuid(c.get("uuid")): c for c in doc.disk_children(element)}
    scanned = _scan_children(scan_dirs, medium_uuid)
    child_uuids = {u for u in reg_children if u is not None} | {h.uuid for h in scanned.values()}
    if len(child_uuids) > 1:
        raise _refuse(f"Disk '{path.name}' has {len(child_uuids)} child disks (a branch point "
                      f"below snapshot {{{name}}}); VirtualBox cannot merge a branch point, so "
                      "delete the snapshots of the other branches first.")
    parent_el = doc.disk_parent(element)
    if not child_uuids:
        if parent_el is None:
            return DiskStep(medium, "keep", "a base with no child disk is left as it is")
        return DiskStep(medium, "remove", "no disk builds on this differencing image, so it "
                        "is simply removed")
    child_uuid = next(iter(child_uuids))
    child_el = reg_children.get(child_uuid)
    if child_el is None:
        raise _refuse(f"Disk '{path.name}' has a child image on disk ({next(iter(scanned))}) "
                      "that the VM's registry does not list; register or quarantine it with "
                      "'vdictl repair' first.")
    child_path = doc.disk_path(child_el)
    assert child_path is not None
    child_header = _header_of(child_path, child_uuid, "child disk")
    if child_header.parent_uuid != medium_uuid:
        raise _refuse(f"'{child_path.name}' is nested under {{{medium_uuid}}} in the registry "
                      f"but its header links to {{{child_header.parent_uuid}}}; run "
                      "'vdictl repair' first.")
    child = ImageRef(child_path, child_uuid, not is_inside(child_path, folder))
    parent_is_base = parent_el is None
    if parent_is_base and header.is_differencing:
        raise _refuse(f"'{path.name}' is a base in the registry but its header says it is "
                      "differencing; run 'vdictl repair' first.")
    chosen, reason = _choose(direction, parent_is_base, path, child_path)
    costs = _both_costs(medium, child, not parent_is_base, chosen)
    ancestors = _registry_ancestors(doc, parent_el, folder)
    if chosen == "backward":
        grand = _scan_children(scan_dirs, child_uuid)
        relink_refs: dict[uuidlib.UUID, ImageRef] = {}
        for c in doc.disk_children(child_el):
            cu = parse_uuid(c.get("uuid"))
            cp = doc.disk_path(c)
            if cu is not None and cp is not None:
                _header_of(cp, cu, "grand-child disk")
                relink_refs[cu] = ImageRef(cp, cu, not is_inside(cp, folder))
        for gp, gh in grand.items():
            relink_refs.setdefault(gh.uuid, ImageRef(gp, gh.uuid, not is_inside(gp, folder)))
        return DiskStep(medium, "merge", reason, "backward", source=child, target=medium,
                        relink=tuple(relink_refs.values()), new_parent=medium_uuid,
                        ancestors=ancestors, costs=costs)
    new_parent = parse_uuid(parent_el.get("uuid")) if parent_el is not None else None
    return DiskStep(medium, "merge", reason, "forward", source=medium, target=child,
                    relink=(child,), new_parent=new_parent, ancestors=ancestors, costs=costs)


def _registry_ancestors(doc: VboxDocument, element: Any, folder: Path) -> tuple[ImageRef, ...]:
    out: list[ImageRef] = []
    node = element
    while node is not None:
        u = parse_uuid(node.get("uuid"))
        p = doc.disk_path(node)
        if u is None or p is None:
            raise _refuse("The media registry has an entry without a UUID or location; run "
                          "'vdictl repair' first.")
        _header_of(p, u, "ancestor disk")
        out.append(ImageRef(p, u, not is_inside(p, folder)))
        node = doc.disk_parent(node)
    return tuple(reversed(out))


# -- planning: bare chains ----------------------------------------------------------------

def plan_merge(image: Path | str, *, mode: str = "auto",
               search_dirs: list[Path] | None = None) -> MergePlan:
    """Plan merging a differencing ``image`` with its parent, outside any VM folder.

    Args:
        image: a differencing VDI.
        mode: "into-parent" (backward: IMAGE's data into its parent, IMAGE removed),
            "parent-into-this" (forward: the parent's data into IMAGE, the parent removed) or
            "auto" (a base parent: backward; else the smaller file into the larger).
        search_dirs: where parents and children are looked for (default: the image's folder
            and its VM/snapshot folders).
    """
    image = Path(image).resolve()
    folder = image.parent
    resolution = resolve_chain(image, search_dirs)
    if resolution.error is not None:
        raise _refuse(f"The chain of '{image.name}' cannot be opened ({resolution.error}); "
                      "fix it with 'vdictl repair' first.")
    if len(resolution.paths) < 2:
        raise _refuse(f"'{image.name}' is a base image with no parent; merge a differencing "
                      "image with its parent instead.")
    dirs = list(search_dirs) if search_dirs is not None else list(
        {p.parent for p in resolution.paths} | {folder})
    child_path, parent_path = resolution.paths[-1], resolution.paths[-2]
    child_h, parent_h = resolution.headers[-1], resolution.headers[-2]
    _refuse_registered(dirs, [child_h.uuid, parent_h.uuid])
    parent_is_base = len(resolution.paths) == 2
    direction = {"into-parent": "backward", "parent-into-this": "forward"}.get(mode, "auto")
    if direction == "forward" and parent_is_base:
        reason = "you chose to merge the base into this image, which then becomes the base"
        chosen = "forward"
    else:
        chosen, reason = _choose(direction, parent_is_base, parent_path, child_path)
    parent = ImageRef(parent_path, parent_h.uuid)
    child = ImageRef(child_path, child_h.uuid)
    siblings = {p for p, h in _scan_children(dirs, parent_h.uuid).items()} - {child_path}
    if siblings and chosen == "forward":
        others = ", ".join(p.name for p in siblings)
        raise _refuse(f"'{parent_path.name}' has other children ({others}) "
                      "besides this image, so it cannot be merged away; merge the other "
                      "direction (--into-parent) or remove the other children first.")
    if siblings and chosen == "backward":
        others = ", ".join(p.name for p in siblings)
        raise _refuse(f"'{parent_path.name}' has other children ({others}); "
                      "merging into it would change what they show, so it is refused.")
    costs = _both_costs(parent, child, True, chosen)
    ancestors = tuple(ImageRef(p, h.uuid) for p, h in zip(resolution.paths[:-2],
                                                          resolution.headers[:-2], strict=True))
    if chosen == "backward":
        relink = tuple(ImageRef(p, h.uuid) for p, h in _scan_children(dirs, child_h.uuid).items())
        step = DiskStep(child, "merge", reason, "backward", source=child, target=parent,
                        relink=relink, new_parent=parent_h.uuid, ancestors=ancestors,
                        costs=costs)
    else:
        new_parent = ancestors[-1].uuid if ancestors else None
        step = DiskStep(child, "merge", reason, "forward", source=parent, target=child,
                        relink=(child,), new_parent=new_parent, ancestors=ancestors,
                        costs=costs)
    assert step.target is not None and step.source is not None
    written = [step.target.path, *(r.path for r in step.relink)]
    return MergePlan(
        kind="merge", folder=folder, vbox=None, vbox_sha256=None, snapshot_uuid=None,
        snapshot_name=None, steps=(step,),
        files_written=tuple((p, False) for p in dict.fromkeys(written)),
        files_removed=((step.source.path, False),), allow_outside=True,
        notes=("this command updates no .vbox; for a VM's disks use 'vdictl snapshot delete'",),
    )


def _refuse_registered(dirs: list[Path], uuids: list[uuidlib.UUID]) -> None:
    """Refuse a bare merge of images a .vbox nearby registers (that would break the VM)."""
    candidates = set()
    for d in dirs:
        candidates |= set(d.glob("*.vbox"))
        if d.name.lower() == "snapshots":
            candidates |= set(d.parent.glob("*.vbox"))
    for vbox in sorted(candidates):
        try:
            registered = VboxDocument.load(vbox).hard_disks()
        except VdiError:
            continue
        for u in uuids:
            if u in registered:
                raise _refuse(f"Image {{{u}}} is registered in '{vbox}'; merging it outside "
                                  "VirtualBox's bookkeeping would break that VM, so use "
                                  f"'vdictl snapshot delete {vbox.parent}' instead.")


# -- running ------------------------------------------------------------------------------

def run_merge(plan: MergePlan, *, progress: ProgressFn = no_progress,
              cancel: CancelToken | None = None, verify: bool = False) -> MergeResult:
    """Run a planned snapshot deletion or bare merge.

    With ``verify`` the guest content of the state that survives each merge (what the next
    snapshot or the current state shows) is hashed before the first write and again after
    the relink, from the files themselves; a difference rolls everything back and raises
    VerificationError. It reads the whole disk twice, so it is off by default.

    Before the commit point (the .vbox save, or the journal's commit mark) a cancel or an
    error rolls everything back; after it the operation is completed. A crash at any moment
    is rolled back or completed by :func:`vdigui.engine.operations.journal.recover_pending`,
    which every writing vdictl command runs first.

    Raises:
        OperationRefused: the files changed since planning, or files outside the folder would
            be touched without ``allow_outside``.
        OperationCancelled: cancelled before the commit point (everything rolled back).
    """
    cancel = cancel or CancelToken()
    started = time.monotonic()
    notes: list[str] = []
    if plan.outside_files and not plan.allow_outside:
        listed = ", ".join(str(p) for p in plan.outside_files)
        raise _refuse(f"The plan writes or removes files outside '{plan.folder}' ({listed}); "
                      "check them and pass --allow-outside if that is intended.")
    doc: VboxDocument | None = None
    if plan.vbox is not None:
        doc = VboxDocument.load(plan.vbox)
        if hashlib.sha256(doc.original_bytes).hexdigest() != plan.vbox_sha256:
            raise _refuse(f"'{plan.vbox.name}' changed since the plan was made; plan again.")
        hint = running_hint(plan.folder)
        if hint:
            raise _refuse(f"{hint} Power the VM off and try again.")
    _verify_identities(plan)
    check_not_in_use([p for p, _ in (*plan.files_written, *plan.files_removed)
                      if p.suffix.lower() == ".vdi"])
    for step in plan.steps:
        if step.action == "merge" and step.costs and step.target is not None:
            chosen = step.costs[0]
            refusal = space_refusal(step.target.path.parent, chosen.temp_space,
                                    free_space(step.target.path.parent),
                                    f"merging into '{step.target.path.name}'")
            if refusal:
                raise _refuse(refusal + " Free some space, or choose the other direction.")
    journal = Journal.begin(plan.folder, plan.kind, plan.to_dict(), plan.summary, plan.vbox)
    written = blocks = 0
    try:
        for step in plan.steps:
            if step.action != "merge":
                continue
            assert step.target is not None
            journal.backup_image(step.target.path, [str(step.target.uuid)])
            for ref in step.relink:
                journal.backup_image(ref.path, [str(ref.uuid)])
        if plan.vbox is not None:
            journal.backup_file(plan.vbox)
        journal.set_phase("backed-up")
        merges = [s for s in plan.steps if s.action == "merge"]
        before = [_kept_view_hash(s, after=False, progress=progress, cancel=cancel)
                  for s in merges] if verify else []
        for number, step in enumerate(merges, start=1):
            journal.set_phase("copying", step=number)
            b, w = _merge_data(step, progress, cancel, number, len(merges))
            blocks += b
            written += w
        cancel.raise_if_cancelled()
        journal.set_phase("relinking")
        for step in merges:
            _relink(step)
        cancel.raise_if_cancelled()
        for step, digest in zip(merges, before, strict=False):
            if _kept_view_hash(step, after=True, progress=progress, cancel=cancel) != digest:
                raise VerificationError(
                    f"After merging '{step.medium.path.name}' the disk no longer reads as "
                    "before; everything was rolled back (please report this).")
        for step in plan.steps:
            if step.action == "merge":
                assert step.source is not None
                journal.plan_removal(step.source.path, str(step.source.uuid))
            elif step.action == "remove":
                journal.plan_removal(step.medium.path, str(step.medium.uuid))
        for extra in plan.extra_removed:
            journal.plan_removal(extra, None)
        if doc is not None:
            _edit_vbox(doc, plan)
            journal.save_vbox(doc.to_bytes())
        else:
            journal.commit()
    except Exception as exc:
        if journal.is_committed():
            raise
        journal.rollback()
        journal.abandon()
        if isinstance(exc, OperationCancelled):
            raise OperationCancelled("Cancelled: everything was rolled back; nothing was "
                                     "changed.") from None
        raise
    progress(Progress("removing merged-away files", 0, 1))
    removed = journal.perform_removals()
    progress(Progress("removing merged-away files", 1, 1))
    backup_dir = journal.backup_dir
    journal.finish({"bytes_written": written})
    return MergeResult(plan, blocks, written, time.monotonic() - started, tuple(removed),
                       backup_dir, tuple(notes))


def _kept_view_hash(step: DiskStep, *, after: bool, progress: ProgressFn,
                    cancel: CancelToken) -> str:
    """sha256 of the guest view the merge must preserve (read through the chain files)."""
    assert step.source is not None and step.target is not None
    lower, upper = ((step.target, step.source) if step.direction == "backward"
                    else (step.source, step.target))
    paths = [r.path for r in step.ancestors]
    if not after:
        paths += [lower.path, upper.path]
    else:
        paths.append(step.target.path)
    with open_paths(paths) as chain:
        return guest_hash(chain, progress=progress, cancel=cancel,
                          phase="verifying" if after else "hashing before the merge",
                          cancel_message="Cancelled: rolling back.")


def _verify_identities(plan: MergePlan) -> None:
    """Read every named header right before the first write: it must be the planned file."""
    for step in plan.steps:
        refs = [step.medium, *step.relink, *step.ancestors]
        if step.source is not None:
            refs.append(step.source)
        if step.target is not None:
            refs.append(step.target)
        for ref in refs:
            if step.action in ("skip", "keep") and ref is step.medium:
                continue
            _header_of(ref.path, ref.uuid, "image")


def _merge_data(step: DiskStep, progress: ProgressFn, cancel: CancelToken, number: int,
                count: int) -> tuple[int, int]:
    assert step.source is not None and step.target is not None
    phase = f"merging disk {number} of {count} ({step.direction})"
    ancestors: DiskChain | None = None
    paths = [r.path for r in step.ancestors]  # below the lower image of the pair
    try:
        if paths:
            ancestors = open_paths(paths)
        with open_image(step.source.path) as source, \
                open_image(step.target.path, writable=True) as target:
            if source.uuid != step.source.uuid or target.uuid != step.target.uuid:
                raise _refuse("A file changed identity while the merge started; nothing was "
                              "written.")
            _check_appendable(target, "target")
            if step.direction == "backward":
                return _copy_backward(source, target, ancestors, progress, cancel, phase)
            return _copy_forward(source, target, ancestors, progress, cancel, phase)
    finally:
        if ancestors is not None:
            ancestors.close()


class _Appender:
    """Appends whole blocks to a target's data area in batched writes; maps repointed later."""

    def __init__(self, target: VdiImage) -> None:
        self.target = target
        self.h = target.header
        self.next_slot = self.h.blocks_allocated
        self.pending_blocks: list[int] = []
        self.pending_values: list[int] = []
        self.run_start = self.next_slot
        self.run: list[bytes | memoryview] = []
        self.run_bytes = 0
        self.bytes_written = 0
        self.entries = 0

    def reserve(self, slots: int) -> None:
        """Make room in the map for ``slots`` more allocations (see :func:`map_room`)."""
        need = self.next_slot + slots
        if need > self.target.header.blocks:
            grow_map(self.target, need)
            self.h = self.target.header

    def add_data(self, block: int, data: bytes | memoryview) -> None:
        slot = self.next_slot
        self.next_slot += 1
        if not self.run:
            self.run_start = slot
        self.run.append(data)
        self.run_bytes += len(data)
        self.pending_blocks.append(block)
        self.pending_values.append(slot)
        if self.run_bytes >= BATCH_BYTES:
            self.flush_data()

    def add_entry(self, block: int, value: int) -> None:
        self.pending_blocks.append(block)
        self.pending_values.append(value)

    def copy_run(self, blocks: list[int], source: VdiImage, first_slot: int) -> None:
        """Append source slots ``first_slot..`` (one per block) with an in-kernel copy.

        ``copy_file_range`` moves the bytes page cache to page cache, as ``cp`` does; a
        user-space read/write of the same data measured about three times slower here.
        """
        self.flush_data()
        count = len(blocks)
        bs = self.h.block_size
        last = first_slot + count - 1
        if not source.slot_in_file(last):
            source.read_slot(last)  # raises the corrupt-image error with the details
        start = self.next_slot
        self.next_slot += count
        if self.h.block_extra or source.header.block_extra:
            for i in range(count):
                fileio.pwrite(self.target.fd, source.read_slot(first_slot + i),
                          self.h.slot_offset(start + i))
        else:
            fileio.copy_range(source.fd, source.header.slot_offset(first_slot), self.target.fd,
                        self.h.slot_offset(start), count * bs)
        self.target.file_size = max(self.target.file_size, self.h.slot_offset(start + count))
        self.bytes_written += count * bs
        self.pending_blocks.extend(blocks)
        self.pending_values.extend(range(start, start + count))

    def flush_data(self) -> None:
        if not self.run:
            return
        h = self.h
        offset = h.slot_offset(self.run_start)
        if h.block_extra == 0:
            fileio.pwritev(self.target.fd, self.run, offset)
        else:
            for i, chunk in enumerate(self.run):
                fileio.pwrite(self.target.fd, chunk, h.slot_offset(self.run_start + i))
        self.target.file_size = max(self.target.file_size,
                                    h.slot_offset(self.run_start + len(self.run)) - h.block_extra)
        self.bytes_written += self.run_bytes
        self.run = []
        self.run_bytes = 0

    def commit_map(self, durable: bool = False) -> None:
        """Data first (flushed when ``durable``), then map entries, then the header."""
        self.flush_data()
        if not self.pending_blocks:
            return
        if durable:
            self.target.sync()
        self.target.write_entries(self.pending_blocks, self.pending_values)
        if self.next_slot != self.target.header.blocks_allocated:
            self.target.write_header(self.target.header.replace(blocks_allocated=self.next_slot))
            self.h = self.target.header
        self.entries += len(self.pending_blocks)
        self.pending_blocks, self.pending_values = [], []


def map_room(image: VdiImage) -> int:
    """How many map entries (and so slots) the image's map area can hold.

    VirtualBox requires cBlocksAllocated <= cBlocks, and copy-on-write can need more slots
    than the disk has blocks. cBlocks may legally exceed ceil(cbDisk / cbBlock) (reference
    1.11: the extra entries are unused), and the area between the map and offData (1 MiB for
    VirtualBox's layout, room for 262144 entries) can hold the longer map without moving
    any data.
    """
    h = image.header
    if h.is_legacy:
        return h.blocks
    return (h.offset_data - h.offset_blocks) // 4


def grow_map(image: VdiImage, blocks: int) -> None:
    """Lengthen the block map to ``blocks`` FREE-padded entries (FREE first, then cBlocks)."""
    h = image.header
    if blocks > map_room(image):
        raise _refuse(f"'{image.path.name}' has no room in its block map for the "
                      f"{blocks - h.blocks_allocated} new slots a copy-on-write merge needs; "
                      "compact it first ('vdictl compact') or merge the other direction.")
    extra = np.full(blocks - h.blocks, BLOCK_FREE, dtype=np.uint32)
    fileio.pwrite(image.fd, extra.astype("<u4").tobytes(), h.offset_blocks + 4 * h.blocks)
    image.sync()
    image.block_map = np.concatenate([image.block_map, extra])
    image.write_header(h.replace(blocks=blocks))


def _runs(entries: np.ndarray, blocks: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Split ``blocks`` (indices) into [start, end) index ranges of consecutive slots."""
    if blocks.size == 0:
        return []
    slots = entries[blocks].astype(np.int64)
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    out: list[tuple[int, int]] = []
    for seg_start, seg_end in zip(np.r_[0, breaks], np.r_[breaks, blocks.size], strict=True):
        s = int(seg_start)
        while s < seg_end:
            e = min(int(seg_end), s + limit)
            out.append((s, e))
            s = e
    return out


def _read_run(image: VdiImage, first_slot: int, count: int, buf: bytearray) -> memoryview:
    h = image.header
    size = count * h.block_size
    view = memoryview(buf)[:size]
    if h.block_extra:
        for i in range(count):
            view[i * h.block_size:(i + 1) * h.block_size] = image.read_slot(first_slot + i)
        return view
    if h.slot_offset(first_slot + count - 1) + h.block_size > image.file_size:
        image.read_slot(first_slot + count - 1)  # raises the corrupt-image error
    got = os.preadv(image.fd, [view], h.slot_offset(first_slot))
    if got != size:
        raise VdiError(f"short read from {image.path.name}")
    return view


def _nonzero(view: memoryview) -> bool:
    return bool(np.frombuffer(view, dtype=np.uint8).any())


def _same(view: memoryview, other: bytes) -> bool:
    """Fast equality of a block view and bytes (memoryview == compares element-wise)."""
    return np.array_equal(np.frombuffer(view, dtype=np.uint8),
                          np.frombuffer(other, dtype=np.uint8))


def _copy_backward(source: VdiImage, target: VdiImage, ancestors: DiskChain | None,
                   progress: ProgressFn, cancel: CancelToken, phase: str) -> tuple[int, int]:
    """Child (source) into parent (target): every non-FREE block of the child."""
    bs = source.header.block_size
    n = min(source.guest_blocks, target.guest_blocks)
    s_map = source.block_map[:n]
    t_map = target.block_map[:n].copy()
    target_is_diff = target.is_differencing
    moved = np.flatnonzero(s_map != BLOCK_FREE)
    total = int(moved.size)
    appender = _Appender(target)
    zero_blocks = moved[s_map[moved] == BLOCK_ZERO]
    data_blocks = moved[s_map[moved] < fmt.FIRST_SPECIAL]
    appender.reserve(int(data_blocks.size))
    done = 0
    progress(Progress(phase, 0, total))

    def parent_view(block: int) -> bytes | None:
        """What the target shows for ``block`` if it keeps its current FREE entry."""
        if ancestors is None:
            return None
        return ancestors.read_block(block)

    for block in zero_blocks.tolist():
        cancel.raise_if_cancelled("Cancelled: rolling back.")
        entry = int(t_map[block])
        if entry < fmt.FIRST_SPECIAL:
            appender.add_entry(block, BLOCK_ZERO)  # copy-on-write: old slot left untouched
        elif entry == BLOCK_FREE and target_is_diff:
            view = parent_view(block)
            if view is not None and view != zeros(bs):
                appender.add_entry(block, BLOCK_ZERO)
        done += 1
    buf = bytearray(max(BATCH_BYTES, bs))
    per_run = max(1, len(buf) // bs)
    for start, end in _runs(s_map, data_blocks, per_run):
        cancel.raise_if_cancelled("Cancelled: rolling back.")
        run_blocks = data_blocks[start:end]
        if not target_is_diff or not (t_map[run_blocks] == BLOCK_FREE).any():
            # Nothing to compare against: copy the slots as they are (an all-zero data block
            # stays a zero-filled slot, which reads the same).
            appender.copy_run(run_blocks.tolist(), source, int(s_map[run_blocks[0]]))
            appender.commit_map()
            done += len(run_blocks)
            progress(Progress(phase, min(done, total), total, appender.bytes_written))
            continue
        view = _read_run(source, int(s_map[run_blocks[0]]), len(run_blocks), buf)
        for i, block in enumerate(run_blocks.tolist()):
            data = view[i * bs:(i + 1) * bs]
            entry = int(t_map[block])
            if not _nonzero(data):
                if entry < fmt.FIRST_SPECIAL:
                    appender.add_entry(block, BLOCK_ZERO)
                elif entry == BLOCK_FREE and target_is_diff:
                    pv = parent_view(block)
                    if pv is not None and pv != zeros(bs):
                        appender.add_entry(block, BLOCK_ZERO)
                continue
            if entry == BLOCK_FREE and target_is_diff:
                pv = parent_view(block)
                if pv is not None and _same(data, pv):
                    continue
            appender.add_data(block, data)  # flushed before the buffer is reused
        appender.commit_map()
        done += len(run_blocks)
        progress(Progress(phase, min(done, total), total, appender.bytes_written))
    appender.commit_map(durable=True)
    target.sync()
    progress(Progress(phase, total, total, appender.bytes_written))
    return appender.entries, appender.bytes_written


def _copy_forward(source: VdiImage, target: VdiImage, ancestors: DiskChain | None,
                  progress: ProgressFn, cancel: CancelToken, phase: str) -> tuple[int, int]:
    """Parent (source) into child (target): fill the child's FREE blocks."""
    bs = source.header.block_size
    n = min(source.guest_blocks, target.guest_blocks)
    s_map = source.block_map[:n]
    t_map = target.block_map[:n]
    moved = np.flatnonzero((s_map != BLOCK_FREE) & (t_map == BLOCK_FREE))
    total = int(moved.size)
    appender = _Appender(target)
    progress(Progress(phase, 0, total))
    serving = ancestors.serving_layers() if ancestors is not None else None

    def below(block: int) -> bytes:
        """What the grand-parent chain shows (the target's view once relinked)."""
        if ancestors is None or serving is None or serving[block] < 0:
            return zeros(bs)
        return ancestors.read_block(block)

    done = 0
    zero_blocks = moved[s_map[moved] == BLOCK_ZERO]
    data_blocks = moved[s_map[moved] < fmt.FIRST_SPECIAL]
    appender.reserve(int(data_blocks.size))
    for block in zero_blocks.tolist():
        cancel.raise_if_cancelled("Cancelled: rolling back.")
        if below(block) != zeros(bs):
            appender.add_entry(block, BLOCK_ZERO)
        done += 1
    buf = bytearray(max(BATCH_BYTES, bs))
    per_run = max(1, len(buf) // bs)
    for start, end in _runs(s_map, data_blocks, per_run):
        cancel.raise_if_cancelled("Cancelled: rolling back.")
        run_blocks = data_blocks[start:end]
        if serving is None or (serving[run_blocks] < 0).all():
            # nothing below: the blocks only need copying
            appender.copy_run(run_blocks.tolist(), source, int(s_map[run_blocks[0]]))
            appender.commit_map()
            done += len(run_blocks)
            progress(Progress(phase, min(done, total), total, appender.bytes_written))
            continue
        view = _read_run(source, int(s_map[run_blocks[0]]), len(run_blocks), buf)
        for i, block in enumerate(run_blocks.tolist()):
            data = view[i * bs:(i + 1) * bs]
            if _same(data, below(block)):
                continue
            if not _nonzero(data):
                appender.add_entry(block, BLOCK_ZERO)
                continue
            appender.add_data(block, data)
        appender.commit_map()
        done += len(run_blocks)
        progress(Progress(phase, min(done, total), total, appender.bytes_written))
    appender.commit_map(durable=True)
    target.sync()
    progress(Progress(phase, total, total, appender.bytes_written))
    return appender.entries, appender.bytes_written


def _relink(step: DiskStep) -> None:
    """Rewrite uuidLinkage (and the type of a new base) of every image built on the source.

    uuidParentModify is refreshed to the new parent's uuidModify: VirtualBox never reads it,
    but vdigui's checks and repair evidence do, and the new parent does hold exactly the
    state the child builds on.
    """
    parent_modify = fmt.NULL_UUID
    if step.new_parent is not None:
        parent_path = (step.target.path if step.direction == "backward" and step.target
                       else step.ancestors[-1].path)
        parent_header = _header_of(parent_path, step.new_parent, "new parent")
        parent_modify = parent_header.modify_uuid
    for ref in step.relink:
        with open_image(ref.path, writable=True) as image:
            if image.uuid != ref.uuid:
                raise _refuse(f"'{ref.path.name}' is no longer image {{{ref.uuid}}}; stopped "
                              "before changing it.")
            h = image.header
            if step.new_parent is None:
                new = h.replace(parent_uuid=fmt.NULL_UUID, parent_modify_uuid=fmt.NULL_UUID,
                                image_type=ImageType.DYNAMIC)
            else:
                new = h.replace(parent_uuid=step.new_parent, parent_modify_uuid=parent_modify)
            if new != h:
                image.write_header(new)
                image.sync()


def _edit_vbox(doc: VboxDocument, plan: MergePlan) -> None:
    """Apply Main's bookkeeping (reference 4.3) to the settings tree."""
    registry = doc.hard_disks()
    for step in plan.steps:
        if step.action == "remove":
            el = registry.get(step.medium.uuid)
            if el is not None:
                doc.remove_disk(el)
            continue
        if step.action != "merge":
            continue
        assert step.source is not None and step.target is not None
        source_el = registry[step.source.uuid]
        target_el = registry[step.target.uuid]
        if step.direction == "backward":
            for child in doc.disk_children(source_el):
                doc.move_disk(child, target_el)
            doc.remove_disk(source_el)
            doc.repoint_images(step.source.uuid, step.target.uuid)
        else:
            new_parent = doc.disk_parent(source_el)
            base_type = source_el.get("type") if new_parent is None else None
            doc.move_disk(target_el, new_parent, base_type=base_type)
            doc.remove_disk(source_el)
    snap = doc.find_snapshot(str(plan.snapshot_uuid))
    if snap is None:
        raise VdiError("the snapshot vanished from the settings while planning (bug)")
    parent = doc.snapshot_parent(snap)
    doc.remove_snapshot(snap)
    if plan.was_current:
        doc.set_current_snapshot(doc.snapshot_uuid(parent) if parent is not None else None)
    elif not doc.snapshots():
        doc.set_current_snapshot(None)


def kept_for_undo(plan: MergePlan) -> list[tuple[Path, int]]:
    """Per merge target: bytes of replaced blocks it still holds (unreferenced slots).

    They are what makes ``vdictl undo`` possible after a backward merge; compacting the
    target reclaims them (and ends the possibility of undo for it).
    """
    out = []
    for step in plan.steps:
        if step.action != "merge" or step.target is None or not step.target.path.exists():
            continue
        with open_image(step.target.path) as image:
            used = int((image.block_map < fmt.FIRST_SPECIAL).sum())
            holes = image.header.blocks_allocated - used
            if holes > 0:
                out.append((step.target.path, holes * image.header.slot_size))
    return out


# -- listing ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """One line of ``vdictl snapshot list``."""

    depth: int
    uuid: str
    name: str
    current: bool
    saved_state: bool
    disks: tuple[str, ...]
    children: int


def list_snapshots(vm: Path | str) -> tuple[Path, list[SnapshotRow]]:
    """The snapshot tree of a VM as rows (depth-first), with each snapshot's disks."""
    vbox = find_vbox(vm)
    doc = VboxDocument.load(vbox)
    registry = doc.hard_disks()
    current = doc.current_snapshot_uuid
    rows: list[SnapshotRow] = []

    def walk(node: Any, depth: int) -> None:
        uid = doc.snapshot_uuid(node)
        disks = []
        for image in doc.hard_disk_images(node):
            u = parse_uuid(image.get("uuid"))
            el = registry.get(u) if u else None
            disks.append(el.get("location", str(u)) if el is not None else f"{{{u}}}")
        kids = doc.snapshot_children(node)
        rows.append(SnapshotRow(depth, str(uid), node.get("name") or "", uid == current,
                                bool(node.get("stateFile")), tuple(disks), len(kids)))
        for kid in kids:
            walk(kid, depth + 1)

    first = doc.machine.find(doc.q("Snapshot"))
    if first is not None:
        walk(first, 0)
    return vbox, rows
