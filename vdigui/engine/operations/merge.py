"""Snapshot deletion and bare-chain merges: plan, then run under a crash journal.

What VirtualBox does when it deletes a snapshot (docs/vdi-format.md §4.1-4.3), and what vdigui does:

- Refusals, each explained: more than one child snapshot; the current snapshot when it has a
  child; a disk that is a branch point (more than one child disk); Immutable and MultiAttach
  media; a VM that looks running; a disk the deleted snapshot shares with another snapshot
  or the current state. Writethrough, Shareable and Readonly media are skipped, as VirtualBox
  skips them. A fixed-size base takes a merge like any other: every block already has its
  slot, so everything is written in place.
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

In place, and why it stays undoable: a backward merge writes the child's blocks over the
slots the target already holds for them, and appends the rest at ``cBlocksAllocated``; a ZERO
(or all-zero block) from the child over a target slot is written as zeros into that slot. The
target therefore ends dense with an exact ``cBlocksAllocated`` (``vdictl check`` and
``qemu-img check`` are clean) and no larger than it must be. Before the first in-place
write, the before-images of exactly the slots that will be overwritten are saved into the
operation's backup folder (self-validating records, fsynced, the folder fsynced) and named in
the journal; rollback (before the commit point) and undo (after it) write them back, then the
saved header+map prefix, then truncate to the saved size (:mod:`.journal`). A forward merge
only fills the child's FREE blocks, so it appends and never overwrites.

Without undo data (``keep_undo`` False: ``--no-undo``, or the wizard's "Keep undo data"
unchecked) no before-image is written, which halves the writes of a backward merge: an
interrupted merge is then *rolled forward* (finished), not rolled back (docs/crash-safety.md,
"Roll-forward"). Why that is safe, per layer, at every moment of the run:

- the *source* (the child C of a backward merge, the parent P of a forward one) is only read,
  and is removed only after the commit point: every write the merge makes can be redone from
  it. The journal names the operation, source, target, ancestors and the saved header+map of
  the target; the copy is a function of those alone (:mod:`.merge_copy`), so recovery puts
  the target's saved header and map back and runs the same copy again (:func:`roll_forward`).
- the states that survive read the source's view: backward, everything built on C reads
  C's blocks from C, and the merge writes only blocks C defines, so they read the same
  whatever part of P's slots and map is written; forward, C's new map entries point only at
  slots whose data (P's own bytes) is durable first. They are relinked only once the target
  is complete and flushed.
- the deleted snapshot reads the target P of a backward merge as it was: its data is lost
  with the first in-place write, which comes after the journal record is durable; from then
  on recovery only ever finishes the deletion.

A cancel is honoured until the first in-place write of a backward merge (a forward merge
never writes in place, so it can be rolled back up to the commit point); from there on the
deletion runs to its end, and an error leaves the journal for the next vdictl command to
finish the merge.

Space: the plan carries a :class:`~vdigui.engine.operations.space.SpacePlan`. With
``keep_undo`` (the default) the merged-away image and the snapshot's saved state move into
``.vdigui/backups`` with the before-images, and ``vdictl undo`` can bring the snapshot back;
without it they are deleted once the new state is committed, and undo is impossible.

Verification is on by default and cheap (:mod:`.merge_copy`): only what the merge writes is
read back, and compared with the bytes the copy read; every other block is proved unchanged
from the old and new block maps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from vdigui.engine import format as fmt
from vdigui.engine.chain import DiskChain, ImageIndex, open_paths, resolve_chain
from vdigui.engine.errors import (
    OperationCancelled,
    OperationRefused,
    VdiError,
    VerificationError,
)
from vdigui.engine.format import BLOCK_FREE, ImageType, parse_uuid
from vdigui.engine.image import VdiImage, open_image
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations.inuse import check_not_in_use
from vdigui.engine.operations.journal import Journal
from vdigui.engine.operations.merge_copy import (
    CopyOutcome,
    copy_blocks,
    is_dense,
    new_slot_bound,
    overwritten_slots,
    verify_merge,
)
from vdigui.engine.operations.space import FileOutcome, SpacePlan, free_space
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress
from vdigui.engine.vbox_edit import VboxDocument, is_inside, sha256_file

#: Rough sustained copy rate used for time estimates (bytes per second).
ESTIMATED_RATE = 200 * fmt.MIB

_SKIPPED_TYPES = {"writethrough", "shareable", "readonly"}
_REFUSED_TYPES = {"immutable": "Immutable", "multiattach": "MultiAttach"}


# -- plan values ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One VDI the plan names: where it is, what its header UUID must be, where it lies."""

    path: Path
    uuid: uuidlib.UUID
    outside: bool = False


class MergeDirection(StrEnum):
    """Which way a merge copies (the values are the CLI's and the journal's words)."""

    AUTO = "auto"  # asked for: let the plan choose
    FORWARD = "forward"  # the parent's data goes into the child
    BACKWARD = "backward"  # the child's data goes into the parent


class StepAction(StrEnum):
    """What a snapshot deletion does to one disk."""

    MERGE = "merge"
    REMOVE = "remove"  # a differencing image nothing builds on
    KEEP = "keep"  # a base no disk builds on
    SKIP = "skip"  # writethrough, shareable or readonly media: not part of snapshots


@dataclass(frozen=True, slots=True)
class DirectionCost:
    """What one merge direction would cost.

    Attributes:
        direction: forward (parent into child) or backward (child into parent).
        allowed: False when this direction may not be used (a base is merged backward only).
        blocks: guest blocks written into the target (allocations and ZERO entries; an upper
            bound for forward, where blocks equal to the grand-parent's are skipped).
        bytes: data bytes copied.
        temp_space: extra bytes the target's file system needs while the merge runs.
        free_space: free bytes on that file system now.
        seconds: rough time estimate.
    """

    direction: MergeDirection
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
        action: what happens to the disk (:class:`StepAction`).
        reason: why, in words.
        direction: forward or backward, for merges.
        source: the image merged away (removed at the end).
        target: the image that receives the data.
        relink: images whose uuidLinkage is rewritten (to ``new_parent``).
        new_parent: the linkage they get; None makes the target a base (forward from a base).
        ancestors: the chain below the lower of source/target, base first (read-only).
        costs: both directions, the chosen one first.
    """

    medium: ImageRef
    action: StepAction
    reason: str
    direction: MergeDirection | None = None
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
        keep_undo: keep undo data (removed files and before-images) after the commit point.
        space: what the operation does to disk space (frees, undo bytes, peak, end sizes).
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
    keep_undo: bool = True
    space: SpacePlan = field(default_factory=lambda: SpacePlan((), 0, None, 0, True))

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
            if step.action is StepAction.MERGE:
                assert step.source is not None and step.target is not None
                lines.append(
                    f"- Disk {name}: merge {step.direction} — the data of "
                    f"'{step.source.path.name}' goes into '{step.target.path.name}' "
                    f"({step.reason})."
                )
                for cost in step.costs:
                    tag = (
                        "chosen"
                        if cost.direction == step.direction
                        else ("other" if cost.allowed else "not allowed")
                    )
                    lines.append(
                        f"    {cost.direction:8} ({tag}): {cost.blocks} blocks, "
                        f"{_size(cost.bytes)} to copy, {_size(cost.temp_space)} extra space "
                        f"needed, {_size(cost.free_space)} free, about {cost.seconds:.0f} s."
                    )
                for child in step.relink:
                    parent = (
                        "none (it becomes a base)"
                        if step.new_parent is None
                        else (f"{{{step.new_parent}}}")
                    )
                    lines.append(f"    relink '{child.path.name}' to parent {parent}.")
            else:
                lines.append(f"- Disk {name}: {step.action} ({step.reason}).")
        lines.append("Files written:")
        lines += [
            f"    {p}{'  [OUTSIDE THE FOLDER]' if out else ''}" for p, out in self.files_written
        ]
        where = (
            f"moved into the undo backup in {jr.backups_dir(self.folder)}"
            if self.keep_undo
            else "deleted; no undo"
        )
        lines.append(f"Files removed ({where}):")
        lines += [
            f"    {p}{'  [OUTSIDE THE FOLDER]' if out else ''}" for p, out in self.files_removed
        ] or ["    none"]
        lines.append("Space:")
        lines += [f"    {line}" for line in self.space.lines()]
        lines += [f"Note: {n}" for n in self.notes]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the journal, printed by ``--json``)."""

        def ref(r: ImageRef | None) -> dict[str, Any] | None:
            return (
                None
                if r is None
                else {"path": str(r.path), "uuid": str(r.uuid), "outside": r.outside}
            )

        return {
            "kind": self.kind,
            "folder": str(self.folder),
            "vbox": str(self.vbox) if self.vbox else None,
            "snapshot": {"uuid": str(self.snapshot_uuid), "name": self.snapshot_name}
            if self.snapshot_uuid
            else None,
            "was_current": self.was_current,
            "steps": [
                {
                    "medium": ref(s.medium),
                    "action": s.action,
                    "reason": s.reason,
                    "direction": s.direction,
                    "source": ref(s.source),
                    "target": ref(s.target),
                    "relink": [ref(r) for r in s.relink],
                    "new_parent": str(s.new_parent) if s.new_parent else None,
                    "ancestors": [ref(r) for r in s.ancestors],
                    "costs": [
                        {
                            "direction": c.direction,
                            "allowed": c.allowed,
                            "blocks": c.blocks,
                            "bytes": c.bytes,
                            "temp_space": c.temp_space,
                            "free_space": c.free_space,
                            "seconds": round(c.seconds, 1),
                        }
                        for c in s.costs
                    ],
                }
                for s in self.steps
            ],
            "files_written": [{"path": str(p), "outside": o} for p, o in self.files_written],
            "files_removed": [{"path": str(p), "outside": o} for p, o in self.files_removed],
            "notes": list(self.notes),
            "keep_undo": self.keep_undo,
            "space": self.space.to_dict(),
            "vbox_sha256": self.vbox_sha256,
            "allow_outside": self.allow_outside,
            "extra_removed": [str(p) for p in self.extra_removed],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MergePlan:
        """The plan back from :meth:`to_dict` (what roll-forward recovery runs again).

        The space figures are not restored (recovery does not plan space).
        """

        def ref(r: dict[str, Any] | None) -> ImageRef | None:
            return (
                None
                if r is None
                else ImageRef(Path(r["path"]), uuidlib.UUID(r["uuid"]), bool(r.get("outside")))
            )

        def must(r: dict[str, Any]) -> ImageRef:
            out = ref(r)
            assert out is not None
            return out

        steps = tuple(
            DiskStep(
                must(s["medium"]),
                StepAction(s["action"]),
                s["reason"],
                MergeDirection(s["direction"]) if s.get("direction") else None,
                ref(s.get("source")),
                ref(s.get("target")),
                tuple(must(r) for r in s.get("relink", [])),
                uuidlib.UUID(s["new_parent"]) if s.get("new_parent") else None,
                tuple(must(r) for r in s.get("ancestors", [])),
                tuple(
                    DirectionCost(
                        MergeDirection(c["direction"]),
                        c["allowed"],
                        c["blocks"],
                        c["bytes"],
                        c["temp_space"],
                        c["free_space"],
                        c["seconds"],
                    )
                    for c in s.get("costs", [])
                ),
            )
            for s in data["steps"]
        )
        snap = data.get("snapshot") or {}
        return cls(
            kind=data["kind"],
            folder=Path(data["folder"]),
            vbox=Path(data["vbox"]) if data.get("vbox") else None,
            vbox_sha256=data.get("vbox_sha256"),
            snapshot_uuid=uuidlib.UUID(snap["uuid"]) if snap.get("uuid") else None,
            snapshot_name=snap.get("name"),
            steps=steps,
            extra_removed=tuple(Path(p) for p in data.get("extra_removed", [])),
            files_written=tuple(
                (Path(f["path"]), bool(f["outside"])) for f in data.get("files_written", [])
            ),
            files_removed=tuple(
                (Path(f["path"]), bool(f["outside"])) for f in data.get("files_removed", [])
            ),
            was_current=bool(data.get("was_current")),
            allow_outside=bool(data.get("allow_outside")),
            notes=tuple(data.get("notes", [])),
            keep_undo=bool(data.get("keep_undo", True)),
        )


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a finished merge did.

    Attributes:
        plan: the plan that ran.
        blocks_written: allocations and ZERO entries written into targets.
        bytes_written: data bytes written into targets (headers and maps not counted).
        seconds: wall time.
        removed: what happened to the removed files, in words.
        backup_dir: where the backups (and removed files) are; gone without undo data.
        verified: whether the result was verified.
        undoable: whether ``vdictl undo`` can revert it (undo data kept).
    """

    plan: MergePlan
    blocks_written: int
    bytes_written: int
    seconds: float
    removed: tuple[str, ...]
    backup_dir: Path
    notes: tuple[str, ...] = field(default=())
    verified: bool = False
    undoable: bool = True


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
        raise _refuse(
            f"The {role} '{path}' cannot be read ({exc}); run 'vdictl check' and "
            "'vdictl repair' on the VM folder first."
        ) from exc
    if header.uuid != expected:
        raise _refuse(
            f"The registry says the {role} {{{expected}}} is '{path}', but that "
            f"file's header UUID is {{{header.uuid}}}; vdigui will not write to or "
            "delete a file that is not the one named, so run 'vdictl repair' first."
        )
    return header


def _costs(
    source: VdiImage,
    target: VdiImage,
    direction: MergeDirection,
    allowed: bool,
    free: int,
    keep_undo: bool = True,
) -> DirectionCost:
    """Cost of merging, computed from the two maps (no data is read).

    Extra space: the slots appended to the target plus (backward, when undo data is kept)
    the before-images of the slots it overwrites in place.
    """
    bs = source.header.block_size
    backward = direction is MergeDirection.BACKWARD
    n = min(source.guest_blocks, target.guest_blocks)
    s_map = source.block_map[:n]
    t_map = target.block_map[:n]
    moved = (s_map != BLOCK_FREE) if backward else (s_map != BLOCK_FREE) & (t_map == BLOCK_FREE)
    data = moved & fmt.is_allocated(s_map)
    nbytes = int(data.sum()) * bs
    grow = new_slot_bound(s_map, t_map, backward) * target.header.slot_size
    before = _before_image_size(source, target, backward) if keep_undo else 0
    return DirectionCost(
        direction, allowed, int(moved.sum()), nbytes, grow + before, free, nbytes / ESTIMATED_RATE
    )


def _before_image_size(source: VdiImage, target: VdiImage, backward: bool) -> int:
    slots = overwritten_slots(source, target, backward)
    if slots.size == 0:
        return 0
    per_run = max(1, jr.BEFORE_IMAGE_RUN // target.header.slot_size)
    runs = len(jr._slot_runs(slots, per_run))
    return jr.before_image_bytes(int(slots.size), target.header.slot_size, runs)


def _both_costs(
    parent: ImageRef,
    child: ImageRef,
    forward_allowed: bool,
    chosen: MergeDirection,
    keep_undo: bool = True,
) -> tuple[DirectionCost, ...]:
    with open_image(parent.path) as p, open_image(child.path) as c:
        back, fwd = MergeDirection.BACKWARD, MergeDirection.FORWARD
        backward = _costs(c, p, back, True, free_space(parent.path.parent), keep_undo)
        forward = _costs(p, c, fwd, forward_allowed, free_space(child.path.parent), keep_undo)
        if chosen is MergeDirection.BACKWARD:
            _check_target(p, c, True, "target (parent)")
        else:
            _check_target(c, p, False, "target (child)")
    return (backward, forward) if chosen is MergeDirection.BACKWARD else (forward, backward)


def _check_target(target: VdiImage, source: VdiImage, backward: bool, role: str) -> None:
    """Refuse a target whose map is damaged, that is cut short, or has no room for new slots.

    A dense target always has room: it needs at most one slot per guest block. Only a
    target with holes between its slots (left by older tools) can run out of map entries;
    it is refused rather than given a longer map (compaction closes the holes).
    """
    h = target.header
    slot_count = h.blocks_allocated
    live = target.block_map[fmt.is_allocated(target.block_map)]
    if live.size and (int(live.max()) >= slot_count or np.unique(live).size != live.size):
        raise _refuse(
            f"The block map of '{target.path.name}' has cross-linked slots or "
            "slots past cBlocksAllocated (a crash leftover); run 'vdictl repair' "
            "on it first."
        )
    if target.file_size < h.expected_file_size(slot_count):
        raise _refuse(
            f"'{target.path.name}' is shorter than its header says (truncated?); run "
            "'vdictl check' and 'vdictl repair' on it first."
        )
    n = min(source.guest_blocks, target.guest_blocks)
    new = new_slot_bound(source.block_map[:n], target.block_map[:n], backward)
    if slot_count + new > h.blocks:
        raise _refuse(
            f"The {role} '{target.path.name}' has unused slots between its blocks and "
            f"no room in its block map for the {new} blocks this merge adds; "
            f"compact it first ('vdictl compact {target.path}')."
        )


def _choose(
    direction: MergeDirection, parent_is_base: bool, parent: Path, child: Path
) -> tuple[MergeDirection, str]:
    if parent_is_base:
        if direction is MergeDirection.FORWARD:
            raise _refuse(
                "A base image is always merged backward (the child's data into the "
                "base); a forward merge would turn a differencing image into the "
                "base, which VirtualBox never does; use --direction auto."
            )
        return MergeDirection.BACKWARD, "a base is always merged backward"
    if direction is not MergeDirection.AUTO:
        return direction, "the direction you chose"
    p_size, c_size = parent.stat().st_size, child.stat().st_size
    if p_size < c_size:
        return MergeDirection.FORWARD, (
            f"the parent ({_size(p_size)}) is smaller than the child "
            f"({_size(c_size)}), so it goes into the child"
        )
    return MergeDirection.BACKWARD, (
        f"the child ({_size(c_size)}) is not larger than the parent "
        f"({_size(p_size)}), so it goes into the parent"
    )


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


def plan_snapshot_delete(
    vm: Path | str,
    key: str,
    *,
    direction: MergeDirection | str = MergeDirection.AUTO,
    allow_outside: bool = False,
    keep_undo: bool = True,
) -> MergePlan:
    """Plan the deletion of snapshot ``key`` (name or UUID) of the VM in ``vm``.

    Read-only and fast (headers and block maps only). ``keep_undo`` False plans no
    before-images (an interrupted run is rolled forward) and deletes the merged-away files
    once committed (the plan's ``space`` then says undo is impossible).

    Raises:
        OperationRefused: one of VirtualBox's refusals (or vdigui's), with what to do instead.
        SettingsError: the .vbox cannot be read or the snapshot does not exist.
    """
    try:
        direction = MergeDirection(direction)
    except ValueError:
        raise ValueError(
            f"direction must be auto, forward or backward, not {direction!r}"
        ) from None
    vbox = find_vbox(vm)
    doc = VboxDocument.load(vbox)
    folder = vbox.parent.resolve()
    hint = running_hint(folder)
    if hint:
        raise _refuse(
            f"{hint} Deleting a snapshot while the VM runs would corrupt it; power "
            "the VM off (or save its state) and try again."
        )
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
        raise _refuse(
            f"Snapshot '{name}' has {len(children)} child snapshots and VirtualBox "
            "deletes only snapshots with at most one, because its disks are branch "
            "points; delete the snapshots of all but one branch first."
        )
    if was_current and children:
        raise _refuse(
            f"Snapshot '{name}' is the current snapshot and has a child snapshot, "
            "which VirtualBox does not allow; restore another snapshot first, or "
            "delete the child."
        )
    registry = doc.hard_disks()
    scan_dirs = [folder, doc.snapshot_folder]
    steps: list[DiskStep] = []
    notes: list[str] = []
    for image_el in doc.hard_disk_images(snap):
        medium_uuid = parse_uuid(image_el.get("uuid"))
        if medium_uuid is None:
            continue
        steps.append(
            _plan_disk(doc, snap, medium_uuid, registry, scan_dirs, folder, direction, keep_undo)
        )
    written: list[Path] = []
    removed: list[Path] = []
    for step in steps:
        if step.action is StepAction.MERGE:
            assert step.target is not None and step.source is not None
            written.append(step.target.path)
            written += [r.path for r in step.relink]
            removed.append(step.source.path)
        elif step.action is StepAction.REMOVE:
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
            notes.append(
                f"'{path.name}' named by the snapshot does not exist; nothing to remove there"
            )
        elif not is_inside(path, folder) or path.suffix.lower() not in (".sav", ".nvram"):
            notes.append(
                f"'{path}' is named as the snapshot's saved state or NVRAM but is "
                "not a .sav/.nvram file inside the VM folder, so it is left alone"
            )
        else:
            removed.append(path)
            kept_extra.append(path)
    written.append(vbox)
    if not steps:
        notes.append("the snapshot has no hard disks; only the settings change")
    plan = MergePlan(
        kind="snapshot-delete",
        folder=folder,
        vbox=vbox,
        vbox_sha256=hashlib.sha256(doc.original_bytes).hexdigest(),
        snapshot_uuid=snap_uuid,
        snapshot_name=name,
        steps=tuple(steps),
        extra_removed=tuple(kept_extra),
        files_written=tuple((p, not is_inside(p, folder)) for p in dict.fromkeys(written)),
        files_removed=tuple((p, not is_inside(p, folder)) for p in dict.fromkeys(removed)),
        was_current=was_current,
        allow_outside=allow_outside,
        notes=tuple(notes),
        keep_undo=keep_undo,
    )
    return _with_space(plan)


def _plan_disk(
    doc: VboxDocument,
    snap: Any,
    medium_uuid: uuidlib.UUID,
    registry: dict[uuidlib.UUID, Any],
    scan_dirs: list[Path],
    folder: Path,
    direction: MergeDirection,
    keep_undo: bool = True,
) -> DiskStep:
    name = doc.snapshot_uuid(snap)
    element = registry.get(medium_uuid)
    if element is None:
        raise _refuse(
            f"The snapshot's disk {{{medium_uuid}}} is not in the VM's media "
            "registry (it may live in the global VirtualBox.xml); vdigui edits only "
            "per-VM registries, so delete this snapshot in VirtualBox."
        )
    base_el = doc.disk_base(element)
    medium_type = (base_el.get("type") or "Normal").lower()
    path = doc.disk_path(element)
    assert path is not None
    medium = ImageRef(path, medium_uuid, not is_inside(path, folder))
    if medium_type in _SKIPPED_TYPES:
        return DiskStep(
            medium,
            StepAction.SKIP,
            f"{base_el.get('type')} media are not part of snapshots, so VirtualBox skips them too",
        )
    if medium_type in _REFUSED_TYPES:
        raise _refuse(
            f"Disk '{path.name}' is {_REFUSED_TYPES[medium_type]}; VirtualBox "
            "cannot merge such media, so detach it or change its type in "
            "VirtualBox before deleting the snapshot."
        )
    if (element.get("format") or "VDI").upper() != "VDI":
        raise _refuse(
            f"Disk '{path.name}' is a {element.get('format')} image; vdigui merges "
            "only VDI images, so delete this snapshot in VirtualBox."
        )
    others = [r for r in doc.image_refs(medium_uuid) if doc.owner_of(r) is not snap]
    if others:
        owner = doc.owner_of(others[0])
        where = "the current state" if owner is doc.machine else f"snapshot '{owner.get('name')}'"
        raise _refuse(
            f"Disk '{path.name}' is also attached to {where}, so merging it would "
            "change that state too; vdigui (like VirtualBox) needs each snapshot to "
            "own the disk it froze — detach it there first."
        )
    header = _header_of(path, medium_uuid, "disk")
    reg_children = {parse_uuid(c.get("uuid")): c for c in doc.disk_children(element)}
    scanned = _scan_children(scan_dirs, medium_uuid)
    child_uuids = {u for u in reg_children if u is not None} | {h.uuid for h in scanned.values()}
    if len(child_uuids) > 1:
        raise _refuse(
            f"Disk '{path.name}' has {len(child_uuids)} child disks (a branch point "
            f"below snapshot {{{name}}}); VirtualBox cannot merge a branch point, so "
            "delete the snapshots of the other branches first."
        )
    parent_el = doc.disk_parent(element)
    if not child_uuids:
        if parent_el is None:
            return DiskStep(medium, StepAction.KEEP, "a base with no child disk is left as it is")
        return DiskStep(
            medium,
            StepAction.REMOVE,
            "no disk builds on this differencing image, so it is simply removed",
        )
    child_uuid = next(iter(child_uuids))
    child_el = reg_children.get(child_uuid)
    if child_el is None:
        raise _refuse(
            f"Disk '{path.name}' has a child image on disk ({next(iter(scanned))}) "
            "that the VM's registry does not list; register or quarantine it with "
            "'vdictl repair' first."
        )
    child_path = doc.disk_path(child_el)
    assert child_path is not None
    child_header = _header_of(child_path, child_uuid, "child disk")
    if child_header.parent_uuid != medium_uuid:
        raise _refuse(
            f"'{child_path.name}' is nested under {{{medium_uuid}}} in the registry "
            f"but its header links to {{{child_header.parent_uuid}}}; run "
            "'vdictl repair' first."
        )
    child = ImageRef(child_path, child_uuid, not is_inside(child_path, folder))
    parent_is_base = parent_el is None
    if parent_is_base and header.is_differencing:
        raise _refuse(
            f"'{path.name}' is a base in the registry but its header says it is "
            "differencing; run 'vdictl repair' first."
        )
    chosen, reason = _choose(direction, parent_is_base, path, child_path)
    costs = _both_costs(medium, child, not parent_is_base, chosen, keep_undo)
    ancestors = _registry_ancestors(doc, parent_el, folder)
    if chosen is MergeDirection.BACKWARD:
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
        return DiskStep(
            medium,
            StepAction.MERGE,
            reason,
            MergeDirection.BACKWARD,
            source=child,
            target=medium,
            relink=tuple(relink_refs.values()),
            new_parent=medium_uuid,
            ancestors=ancestors,
            costs=costs,
        )
    new_parent = parse_uuid(parent_el.get("uuid")) if parent_el is not None else None
    return DiskStep(
        medium,
        StepAction.MERGE,
        reason,
        MergeDirection.FORWARD,
        source=medium,
        target=child,
        relink=(child,),
        new_parent=new_parent,
        ancestors=ancestors,
        costs=costs,
    )


def _registry_ancestors(doc: VboxDocument, element: Any, folder: Path) -> tuple[ImageRef, ...]:
    out: list[ImageRef] = []
    node = element
    while node is not None:
        u = parse_uuid(node.get("uuid"))
        p = doc.disk_path(node)
        if u is None or p is None:
            raise _refuse(
                "The media registry has an entry without a UUID or location; run "
                "'vdictl repair' first."
            )
        _header_of(p, u, "ancestor disk")
        out.append(ImageRef(p, u, not is_inside(p, folder)))
        node = doc.disk_parent(node)
    return tuple(reversed(out))


# -- planning: bare chains ----------------------------------------------------------------


def plan_merge(
    image: Path | str,
    *,
    mode: str = "auto",
    search_dirs: list[Path] | None = None,
    keep_undo: bool = True,
) -> MergePlan:
    """Plan merging a differencing ``image`` with its parent, outside any VM folder.

    Args:
        image: a differencing VDI.
        mode: "into-parent" (backward: IMAGE's data into its parent, IMAGE removed),
            "parent-into-this" (forward: the parent's data into IMAGE, the parent removed) or
            "auto" (a base parent: backward; else the smaller file into the larger).
        search_dirs: where parents and children are looked for (default: the image's folder
            and its VM/snapshot folders).
        keep_undo: keep the merged-away image and the before-images for ``vdictl undo``.
    """
    image = Path(image).resolve()
    folder = image.parent
    resolution = resolve_chain(image, search_dirs)
    if resolution.error is not None:
        raise _refuse(
            f"The chain of '{image.name}' cannot be opened ({resolution.error}); "
            "fix it with 'vdictl repair' first."
        )
    if len(resolution.paths) < 2:
        raise _refuse(
            f"'{image.name}' is a base image with no parent; merge a differencing "
            "image with its parent instead."
        )
    dirs = (
        list(search_dirs)
        if search_dirs is not None
        else list({p.parent for p in resolution.paths} | {folder})
    )
    child_path, parent_path = resolution.paths[-1], resolution.paths[-2]
    child_h, parent_h = resolution.headers[-1], resolution.headers[-2]
    _refuse_registered(dirs, [child_h.uuid, parent_h.uuid])
    parent_is_base = len(resolution.paths) == 2
    direction = {
        "into-parent": MergeDirection.BACKWARD,
        "parent-into-this": MergeDirection.FORWARD,
    }.get(mode, MergeDirection.AUTO)
    if direction is MergeDirection.FORWARD and parent_is_base:
        reason = "you chose to merge the base into this image, which then becomes the base"
        chosen = MergeDirection.FORWARD
    else:
        chosen, reason = _choose(direction, parent_is_base, parent_path, child_path)
    parent = ImageRef(parent_path, parent_h.uuid)
    child = ImageRef(child_path, child_h.uuid)
    siblings = {p for p, h in _scan_children(dirs, parent_h.uuid).items()} - {child_path}
    if siblings and chosen is MergeDirection.FORWARD:
        others = ", ".join(p.name for p in siblings)
        raise _refuse(
            f"'{parent_path.name}' has other children ({others}) "
            "besides this image, so it cannot be merged away; merge the other "
            "direction (--into-parent) or remove the other children first."
        )
    if siblings and chosen is MergeDirection.BACKWARD:
        others = ", ".join(p.name for p in siblings)
        raise _refuse(
            f"'{parent_path.name}' has other children ({others}); "
            "merging into it would change what they show, so it is refused."
        )
    costs = _both_costs(parent, child, True, chosen, keep_undo)
    ancestors = tuple(
        ImageRef(p, h.uuid)
        for p, h in zip(resolution.paths[:-2], resolution.headers[:-2], strict=True)
    )
    if chosen is MergeDirection.BACKWARD:
        relink = tuple(ImageRef(p, h.uuid) for p, h in _scan_children(dirs, child_h.uuid).items())
        step = DiskStep(
            child,
            StepAction.MERGE,
            reason,
            MergeDirection.BACKWARD,
            source=child,
            target=parent,
            relink=relink,
            new_parent=parent_h.uuid,
            ancestors=ancestors,
            costs=costs,
        )
    else:
        new_parent = ancestors[-1].uuid if ancestors else None
        step = DiskStep(
            child,
            StepAction.MERGE,
            reason,
            MergeDirection.FORWARD,
            source=parent,
            target=child,
            relink=(child,),
            new_parent=new_parent,
            ancestors=ancestors,
            costs=costs,
        )
    assert step.target is not None and step.source is not None
    written = [step.target.path, *(r.path for r in step.relink)]
    return _with_space(
        MergePlan(
            kind="merge",
            folder=folder,
            vbox=None,
            vbox_sha256=None,
            snapshot_uuid=None,
            snapshot_name=None,
            steps=(step,),
            files_written=tuple((p, False) for p in dict.fromkeys(written)),
            files_removed=((step.source.path, False),),
            allow_outside=True,
            notes=("this command updates no .vbox; for a VM's disks use 'vdictl snapshot delete'",),
            keep_undo=keep_undo,
        )
    )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _with_space(plan: MergePlan) -> MergePlan:
    """The plan with its SpacePlan, from headers, maps and file sizes (nothing is read else).

    End sizes of merge targets are upper bounds (a block that turns out all-zero, or equal
    to what the target shows below it, is not appended). Undo data: the removed files,
    the before-images, the header+map prefix of every image written, the old ``.vbox``.
    """
    files: list[FileOutcome] = []
    growth = before_images = prefixes = 0
    for step in plan.steps:
        if step.action is not StepAction.MERGE:
            continue
        assert step.source is not None and step.target is not None
        backward = step.direction is MergeDirection.BACKWARD
        with open_image(step.source.path) as source, open_image(step.target.path) as target:
            n = min(source.guest_blocks, target.guest_blocks)
            new = new_slot_bound(source.block_map[:n], target.block_map[:n], backward)
            end = target.header.expected_file_size(target.header.blocks_allocated + new)
            size = target.file_size
            files.append(FileOutcome(step.target.path, size, max(size, end)))
            growth += max(size, end) - size
            if plan.keep_undo:  # without undo data, recovery rolls forward instead
                before_images += _before_image_size(source, target, backward)
        for ref in (step.target, *step.relink):
            prefixes += jr.prefix_backup_size(ref.path)
        for ref in step.relink:
            if ref.path != step.target.path:
                size = _file_size(ref.path)
                files.append(FileOutcome(ref.path, size, size))
    removed = [p for p, _ in plan.files_removed]
    removed_bytes = 0
    for path in removed:
        size = _file_size(path)
        removed_bytes += size
        files.append(FileOutcome(path, size, 0))
    vbox_copy = 0
    if plan.vbox is not None:
        size = _file_size(plan.vbox)
        vbox_copy = size
        files.append(FileOutcome(plan.vbox, size, size))
        prev = plan.vbox.with_name(plan.vbox.name + "-prev")
        files.append(FileOutcome(prev, _file_size(prev), size))
    kept = removed_bytes + before_images + prefixes + vbox_copy
    space = SpacePlan(
        files=tuple(files),
        undo_bytes=kept if plan.keep_undo else 0,
        undo_dir=jr.backups_dir(plan.folder) if plan.keep_undo else None,
        peak_extra=growth + before_images + prefixes + vbox_copy,
        keep_undo=plan.keep_undo,
    )
    return dataclasses.replace(plan, space=space)


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
                raise _refuse(
                    f"Image {{{u}}} is registered in '{vbox}'; merging it outside "
                    "VirtualBox's bookkeeping would break that VM, so use "
                    f"'vdictl snapshot delete {vbox.parent}' instead."
                )


# -- running ------------------------------------------------------------------------------


def run_merge(
    plan: MergePlan,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    verify: bool = True,
    keep_undo: bool | None = None,
) -> MergeResult:
    """Run a planned snapshot deletion or bare merge.

    Order, per merge: the preflight (inputs writable, room for the plan's peak, sound maps)
    before anything is written; the journal; header+map prefixes and the ``.vbox`` saved;
    with undo data, the before-images of the slots to be overwritten saved; the copy (data,
    flush, map, flush); its verification (default on: writes are read back as they are
    made, then the map is checked, see :mod:`.merge_copy`); the relink and its check; the
    commit (the ``.vbox`` save, or the journal's commit mark); then the removals.

    With undo data, a cancel, an error or a failed verification before the commit point
    rolls everything back, and so does the recovery of a crash. Without undo data, the same
    holds until the first in-place write of a backward merge; from then on a cancel is no
    longer honoured, an error leaves the journal for the next vdictl command, and a crash is
    rolled forward (module docstring). After the commit point the operation is completed.
    :func:`vdigui.engine.operations.journal.recover_pending`, which every writing vdictl
    command runs first, does the recovery.

    Args:
        plan: from :func:`plan_snapshot_delete` or :func:`plan_merge`.
        verify: check the result before committing (off only when asked).
        keep_undo: override the plan's ``keep_undo`` (None: as planned).

    Raises:
        OperationRefused: the files changed since planning, files outside the folder would
            be touched without ``allow_outside``, or the preflight failed.
        OperationCancelled: cancelled before the commit point (everything rolled back).
        VerificationError: the result did not read as it must (everything rolled back).
        VdiError: an error after the point of no return of a run without undo data (the
            next vdictl command on the folder finishes the deletion).
    """
    from vdigui.engine.operations.preflight import check_writable_inputs, sweep_around

    cancel = cancel or CancelToken()
    if keep_undo is not None and keep_undo != plan.keep_undo:
        plan = _with_space(dataclasses.replace(plan, keep_undo=keep_undo))
    started = time.monotonic()
    notes: list[str] = []
    if plan.outside_files and not plan.allow_outside:
        listed = ", ".join(str(p) for p in plan.outside_files)
        raise _refuse(
            f"The plan writes or removes files outside '{plan.folder}' ({listed}); "
            "check them and pass --allow-outside if that is intended."
        )
    doc: VboxDocument | None = None
    if plan.vbox is not None:
        doc = VboxDocument.load(plan.vbox)
        if hashlib.sha256(doc.original_bytes).hexdigest() != plan.vbox_sha256:
            raise _refuse(f"'{plan.vbox.name}' changed since the plan was made; plan again.")
        hint = running_hint(plan.folder)
        if hint:
            raise _refuse(f"{hint} Power the VM off and try again.")
    _verify_identities(plan)
    check_not_in_use(
        [p for p, _ in (*plan.files_written, *plan.files_removed) if p.suffix.lower() == ".vdi"]
    )
    check_writable_inputs(
        [p for p, _ in plan.files_written if p.exists()],
        folder=plan.folder,
        needed=plan.space.peak_extra,
    )
    sweep_around([p for p, _ in plan.files_written], plan.folder)  # interrupted runs' temps
    journal = Journal.begin(
        plan.folder,
        plan.kind,
        plan.to_dict(),
        plan.summary,
        plan.vbox,
        keep_undo=plan.keep_undo,
        extra={"recovery": jr.ROLL_BACK if plan.keep_undo else jr.ROLL_FORWARD, "verify": verify},
    )
    written = blocks = 0
    state = _RunState()
    try:
        for step in plan.steps:
            if step.action is not StepAction.MERGE:
                continue
            assert step.target is not None
            journal.backup_image(step.target.path, [str(step.target.uuid)], save=False)
            for ref in step.relink:
                journal.backup_image(ref.path, [str(ref.uuid)], save=False)
        if plan.vbox is not None:
            journal.backup_file(plan.vbox, save=False)
        # Names every backup before the first write; without undo data, from here on a
        # crash is rolled forward.
        journal.set_phase("backed-up")
        merges = [s for s in plan.steps if s.action is StepAction.MERGE]
        for number, step in enumerate(merges, start=1):
            outcome, was_dense = _merge_data(
                step,
                journal,
                progress,
                cancel,
                number,
                len(merges),
                verify,
                keep_undo=plan.keep_undo,
                state=state,
            )
            if verify:
                _verify_target(step, outcome, was_dense)
            blocks += outcome.entries
            written += outcome.bytes_written
        state.check_cancel(cancel)
        _relink_all(merges, journal, verify)
        state.check_cancel(cancel)
        _commit(plan, journal, doc)
    except Exception as exc:
        if journal.is_committed():
            raise  # after the commit point: the next command's recovery completes it
        if state.no_return:
            raise VdiError(
                f"The {plan.summary} stopped after it had begun writing over "
                f"'{state.target_name}' ({exc}). Without undo data it cannot be rolled back; "
                f"the next vdictl command on '{plan.folder}' finishes it from the unchanged "
                "source image."
            ) from exc
        journal.rollback()
        journal.abandon()
        if isinstance(exc, OperationCancelled):
            raise OperationCancelled(
                "Cancelled: everything was rolled back; nothing was changed."
            ) from None
        raise
    progress(Progress("removing merged-away files", 0, 1))
    removed = journal.complete()
    progress(Progress("removing merged-away files", 1, 1))
    backup_dir = journal.backup_dir
    journal.finish({"bytes_written": written})
    return MergeResult(
        plan,
        blocks,
        written,
        time.monotonic() - started,
        tuple(removed),
        backup_dir,
        tuple(notes),
        verified=verify,
        undoable=plan.keep_undo,
    )


@dataclass
class _RunState:
    """Whether a run without undo data has passed its point of no return (and where)."""

    no_return: bool = False
    target_name: str = ""

    def check_cancel(self, cancel: CancelToken) -> None:
        """Honour a cancel only while everything can still be rolled back."""
        if not self.no_return:
            cancel.raise_if_cancelled("Cancelled: rolling back.")


def _relink_all(merges: list[DiskStep], journal: Journal, verify: bool) -> None:
    """Relink every image built on a merged-away one (the targets are complete and flushed)."""
    journal.set_phase("relinking")
    for step in merges:
        _relink(step)
    if verify:
        for step in merges:
            _verify_links(step)


def _commit(plan: MergePlan, journal: Journal, doc: VboxDocument | None) -> None:
    """Announce the removals, then the commit point: the new ``.vbox`` (or the commit mark).

    Shared by a run and its roll-forward recovery, so both commit exactly the same bytes.
    """
    journal.data["removals"] = []  # a recovery re-announces them (same names, same order)
    for step in plan.steps:
        if step.action is StepAction.MERGE:
            assert step.source is not None
            journal.plan_removal(step.source.path, str(step.source.uuid))
        elif step.action is StepAction.REMOVE:
            journal.plan_removal(step.medium.path, str(step.medium.uuid))
    for extra in plan.extra_removed:
        journal.plan_removal(extra, None)
    if doc is not None:
        _edit_vbox(doc, plan)
        journal.save_vbox(doc.to_bytes())
    else:
        journal.commit()


def roll_forward(journal: Journal) -> list[str]:
    """Finish an interrupted merge that kept no undo data, exactly as the run would have.

    Called by :func:`vdigui.engine.operations.journal.recover_pending` for a journal whose
    recovery is ``roll-forward`` and whose backups are named (a crash before that changed
    nothing and is rolled back). Steps, each one safe to repeat after another crash:

    1. unless the journal says the copies were finished (phase ``relinking`` or later): for
       every merge, put the target's saved header and map back and cut it to its saved size
       (:func:`vdigui.engine.operations.journal.reset_image`), then run the same copy again
       from the unchanged source: the same bytes land in the same places (:mod:`.merge_copy`);
       verified when the run was;
    2. relink every image built on a merged-away one (idempotent header writes);
    3. the commit: the ``.vbox`` edited from the saved original (the copy in the backup
       folder) and saved, or the commit mark; the caller then removes the merged-away files.

    Raises:
        VdiError: a file the plan names is missing or is no longer the planned image, or the
            ``.vbox`` was changed by something else since; the journal is left in place.
    """
    plan = MergePlan.from_dict(journal.data["plan"])
    verify = bool(journal.data.get("verify", True))
    doc = _original_vbox(journal, plan) if plan.vbox is not None else None
    for step in plan.steps:
        if step.action is StepAction.MERGE:
            assert step.source is not None
            if not step.source.path.exists():
                raise VdiError(
                    f"The interrupted {plan.summary} cannot be finished: its source image "
                    f"'{step.source.path}' is missing; restore it (it must be unchanged) and "
                    "run the command again."
                )
    _verify_identities(plan)
    notes: list[str] = []
    merges = [s for s in plan.steps if s.action is StepAction.MERGE]
    if journal.data.get("phase") not in ("relinking", "saving-vbox", "committed"):
        for number, step in enumerate(merges, start=1):
            assert step.source is not None and step.target is not None
            jr.reset_image(journal.image_entry(step.target.path))
            outcome, was_dense = _merge_data(
                step,
                journal,
                no_progress,
                CancelToken(),
                number,
                len(merges),
                verify,
                keep_undo=False,
                state=None,
            )
            if verify:
                _verify_target(step, outcome, was_dense)
            notes.append(
                f"merged '{step.source.path.name}' into '{step.target.path.name}' "
                "again from the unchanged source"
            )
    _relink_all(merges, journal, verify)
    _commit(plan, journal, doc)
    notes.append("saved the new settings" if doc is not None else "committed the merge")
    return notes


def _original_vbox(journal: Journal, plan: MergePlan) -> VboxDocument:
    """The settings as they were before the run, from the backup folder.

    The live file must still be that original (an uncommitted run never replaces it); if
    something else changed it since, finishing would lose that change, so recovery stops.
    """
    assert plan.vbox is not None
    entry = next((e for e in journal.data["files"] if e["path"] == str(plan.vbox)), None)
    if entry is None:
        raise VdiError(
            f"The journal of the interrupted {plan.summary} names no backup of "
            f"'{plan.vbox.name}' (bug); restore the folder by hand."
        )
    raw = Path(entry["backup"]).read_bytes()
    if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        raise VdiError(
            f"The backup of '{plan.vbox.name}' in '{entry['backup']}' is damaged, so "
            f"the interrupted {plan.summary} cannot be finished safely."
        )
    if plan.vbox.exists() and sha256_file(plan.vbox) != entry["sha256"]:
        raise VdiError(
            f"'{plan.vbox.name}' was changed since the interrupted {plan.summary} "
            "began, so vdigui will not finish it over those changes; compare it "
            f"with '{entry['backup']}' by hand."
        )
    return VboxDocument(plan.vbox, raw)


def _verify_target(step: DiskStep, outcome: CopyOutcome, was_dense: bool) -> None:
    """Verify one merge's target map (merge_copy) right after its copy.

    The data was read back and compared while it was written (``copy_blocks``). Checked
    before anything is relinked: a target that fails is never built upon.
    """
    assert step.target is not None
    verify_merge(step.target.path, outcome, was_dense=was_dense)


def _verify_links(step: DiskStep) -> None:
    """Every image built on the merged-away one now links to the new parent."""
    for ref in step.relink:
        header = fmt.read_header(ref.path)
        want = step.new_parent or fmt.NULL_UUID
        if header.parent_uuid != want or (step.new_parent is None and header.is_differencing):
            raise VerificationError(
                f"After the merge '{ref.path.name}' links to {{{header.parent_uuid}}}, not to "
                f"{{{want}}} (please report this)."
            )


def _verify_identities(plan: MergePlan) -> None:
    """Read every named header right before the first write: it must be the planned file."""
    for step in plan.steps:
        refs = [step.medium, *step.relink, *step.ancestors]
        if step.source is not None:
            refs.append(step.source)
        if step.target is not None:
            refs.append(step.target)
        for ref in refs:
            if step.action in (StepAction.SKIP, StepAction.KEEP) and ref is step.medium:
                continue
            _header_of(ref.path, ref.uuid, "image")


def _merge_data(
    step: DiskStep,
    journal: Journal,
    progress: ProgressFn,
    cancel: CancelToken,
    number: int,
    count: int,
    verify: bool,
    *,
    keep_undo: bool,
    state: _RunState | None,
) -> tuple[CopyOutcome, bool]:
    """Save the before-images (with undo data) of the slots to overwrite, then copy.

    Without undo data, the first in-place write is the run's point of no return
    (``state.no_return``): the copy then ignores ``cancel``. ``state`` None: a recovery.
    """
    assert step.source is not None and step.target is not None
    phase = f"merging disk {number} of {count} ({step.direction})"
    backward = step.direction is MergeDirection.BACKWARD
    ancestors: DiskChain | None = None
    paths = [r.path for r in step.ancestors]  # below the lower image of the pair
    try:
        if paths:
            ancestors = open_paths(paths)
        with (
            open_image(step.source.path) as source,
            open_image(step.target.path, writable=True) as target,
        ):
            if source.uuid != step.source.uuid or target.uuid != step.target.uuid:
                raise _refuse(
                    "A file changed identity while the merge started; nothing was written."
                )
            _check_target(target, source, backward, "target")
            was_dense = is_dense(target)
            slots = overwritten_slots(source, target, backward)
            if slots.size and keep_undo:
                journal.backup_before_images(
                    target.fd,
                    step.target.path,
                    target.header,
                    slots,
                    progress=progress,
                    cancel=cancel,
                )
            journal.set_phase("copying", step=number, overwrites=int(slots.size))
            if state is not None and slots.size and not keep_undo:
                state.no_return = True
                state.target_name = step.target.path.name
            token = cancel if state is not None and not state.no_return else CancelToken()
            outcome = copy_blocks(
                source,
                target,
                ancestors,
                backward=backward,
                overwrite=slots,
                verify=verify,
                progress=progress,
                cancel=token,
                phase=phase,
            )
            return outcome, was_dense
    finally:
        if ancestors is not None:
            ancestors.close()


def _relink(step: DiskStep) -> None:
    """Rewrite uuidLinkage (and the type of a new base) of every image built on the source.

    uuidParentModify is refreshed to the new parent's uuidModify: VirtualBox never reads it,
    but vdigui's checks and repair evidence do, and the new parent does hold exactly the
    state the child builds on.
    """
    parent_modify = fmt.NULL_UUID
    if step.new_parent is not None:
        parent_path = (
            step.target.path
            if step.direction is MergeDirection.BACKWARD and step.target
            else step.ancestors[-1].path
        )
        parent_header = _header_of(parent_path, step.new_parent, "new parent")
        parent_modify = parent_header.modify_uuid
    for ref in step.relink:
        with open_image(ref.path, writable=True) as image:
            if image.uuid != ref.uuid:
                raise _refuse(
                    f"'{ref.path.name}' is no longer image {{{ref.uuid}}}; stopped "
                    "before changing it."
                )
            h = image.header
            if step.new_parent is None:
                new = h.replace(
                    parent_uuid=fmt.NULL_UUID,
                    parent_modify_uuid=fmt.NULL_UUID,
                    image_type=ImageType.DYNAMIC,
                )
            else:
                new = h.replace(parent_uuid=step.new_parent, parent_modify_uuid=parent_modify)
            if new != h:
                image.write_header(new)
                image.sync()


def _edit_vbox(doc: VboxDocument, plan: MergePlan) -> None:
    """Apply Main's bookkeeping (docs/vdi-format.md §4.3) to the settings tree."""
    registry = doc.hard_disks()
    for step in plan.steps:
        if step.action is StepAction.REMOVE:
            el = registry.get(step.medium.uuid)
            if el is not None:
                doc.remove_disk(el)
            continue
        if step.action is not StepAction.MERGE:
            continue
        assert step.source is not None and step.target is not None
        source_el = registry[step.source.uuid]
        target_el = registry[step.target.uuid]
        if step.direction is MergeDirection.BACKWARD:
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
        rows.append(
            SnapshotRow(
                depth,
                str(uid),
                node.get("name") or "",
                uid == current,
                bool(node.get("stateFile")),
                tuple(disks),
                len(kids),
            )
        )
        for kid in kids:
            walk(kid, depth + 1)

    first = doc.machine.find(doc.q("Snapshot"))
    if first is not None:
        walk(first, 0)
    return vbox, rows
