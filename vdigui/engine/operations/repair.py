"""Chain repair: turn each problem into a proposed fix with its evidence, then apply it.

Planning is read-only. Every fix says what is wrong, what it will do, the evidence for it and
how strong that evidence is; fixes that rest on weak or no evidence need ``force``. Where
two fixes answer the same problem (change the registry or change the header), both are
offered in one *group* and exactly one is chosen (a default, or the user's ``choose``).

Running goes through the same crash journal and backups as snapshot deletion, so every
repair can be rolled back after a crash and undone afterwards with ``vdictl undo``.

Verification (on by default, :func:`_verify_states`): repairs move no data, so "every state
still reads the same" is proved from block maps and links alone. Before the first write,
each state (every snapshot's and the current state's disks, or the bare image's chain) is
resolved by its header links into a *signature*: the layer files, in order, with a digest of
each layer's block map. Afterwards every state that resolved before must resolve to the same
signature, except the states a fix means to change (a relink, a relocated or dropped layer),
which must now resolve; a ``slots`` fix must leave exactly its cleared entries FREE and every
other entry as it was. Reading maps and headers only, this costs milliseconds.

Image-level rules (docs/vdi-format.md §7 and §8.10): entries whose slot lies past EOF and entries
that point at an already-referenced slot become FREE, as VirtualBox's ``vdiRepair`` does (lowest
guest block wins); vdigui then recounts cBlocksAllocated as the highest slot + 1 and cuts a crash
tail past the last counted slot (the cut bytes are kept in the backup for undo).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from vdigui.engine import format as fmt
from vdigui.engine.chain import ImageIndex, resolve_chain
from vdigui.engine.errors import ChainLoopError, OperationRefused, VdiError, VerificationError
from vdigui.engine.format import BLOCK_FREE, ImageType, parse_uuid
from vdigui.engine.image import open_image
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations.journal import Journal, new_uuid, state_dir
from vdigui.engine.operations.space import FileOutcome, SpacePlan
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress
from vdigui.engine.vbox_edit import VboxDocument, format_uuid, is_inside

QUARANTINE = "vdigui-quarantine"


class Strength(StrEnum):
    """How sure the evidence for a fix is; the wizard ticks only certain and strong fixes.

    A ``StrEnum``: ``vdictl repair --json`` keeps the plain words.
    """

    #: The files themselves show it (a map read against the file size), or it was asked for.
    CERTAIN = "certain"
    #: Independent fields agree (a uuidModify link, the registry and a header).
    STRONG = "strong"
    #: Only circumstantial (the sizes match); needs ``--force``.
    WEAK = "weak"
    #: Nothing supports it; never proposed.
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Fix:
    """One proposed fix.

    Attributes:
        id: short handle ("F3") for ``--choose``.
        kind: "slots", "base-type", "relink", "header-uuid", "registry-uuid", "new-uuid",
            "relocate", "drop-entry", "register-orphan", "quarantine-orphan".
        problem: what is wrong, one sentence.
        action: what the fix does, one sentence.
        evidence: why vdigui believes the fix is right.
        strength: how sure the evidence makes the fix (:class:`Strength`).
        group: fixes with the same group answer the same problem; one of them is applied.
        default: chosen when the user chooses nothing in its group.
        needs_force: refused unless ``force`` (weak or no evidence).
        files: files this fix writes or moves.
        params: what the runner needs (paths and UUIDs as text).
    """

    id: str
    kind: str
    problem: str
    action: str
    evidence: str
    strength: Strength
    group: str
    default: bool
    needs_force: bool
    files: tuple[Path, ...]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RepairPlan:
    """Proposed fixes for one image or VM folder.

    ``space`` states the default selection's effect on disk space: a cut crash tail is freed
    (and kept for undo), every other fix changes headers, maps or the ``.vbox`` only; the undo
    data is the saved header+map prefixes, tails and the old ``.vbox``.
    """

    target: Path
    folder: Path
    vbox: Path | None
    vbox_sha256: str | None
    fixes: tuple[Fix, ...]
    notes: tuple[str, ...] = ()
    space: SpacePlan = field(default_factory=lambda: SpacePlan((), 0, None, 0, True))

    def selected(self, choose: set[str] | None = None, force: bool = False) -> list[Fix]:
        """The fixes that would run: per group the chosen (or default) one."""
        choose = {c.upper() for c in choose or set()}
        out: list[Fix] = []
        groups: dict[str, list[Fix]] = {}
        for fix in self.fixes:
            groups.setdefault(fix.group, []).append(fix)
        for members in groups.values():
            picked = [f for f in members if f.id in choose] or [f for f in members if f.default]
            for fix in picked[:1]:
                if fix.needs_force and not force and fix.id not in choose:
                    continue
                out.append(fix)
        return out

    def describe(self, choose: set[str] | None = None, force: bool = False) -> list[str]:
        """The plan in sentences."""
        if not self.fixes:
            return [f"Nothing to repair in '{self.target}'."]
        chosen = {f.id for f in self.selected(choose, force)}
        lines = [f"Repair plan for '{self.target}':"]
        for fix in self.fixes:
            mark = (
                "will apply"
                if fix.id in chosen
                else ("needs --force" if fix.needs_force and not force else "alternative")
            )
            lines.append(f"[{fix.id}] ({mark}) {fix.problem}")
            lines.append(f"      fix: {fix.action}")
            lines.append(f"      evidence ({fix.strength}): {fix.evidence}")
        lines += [f"Note: {n}" for n in self.notes]
        lines.append("Space:")
        lines += [f"    {line}" for line in self.space.lines()]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "target": str(self.target),
            "vbox": str(self.vbox) if self.vbox else None,
            "fixes": [
                {
                    "id": f.id,
                    "kind": f.kind,
                    "problem": f.problem,
                    "action": f.action,
                    "evidence": f.evidence,
                    "strength": f.strength,
                    "group": f.group,
                    "default": f.default,
                    "needs_force": f.needs_force,
                    "files": [str(p) for p in f.files],
                    "params": f.params,
                }
                for f in self.fixes
            ],
            "notes": list(self.notes),
            "space": self.space.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What a repair did (``verified``: the states were checked before the commit)."""

    applied: tuple[str, ...]
    notes: tuple[str, ...]
    backup_dir: Path
    verified: bool = False


class _Builder:
    def __init__(self) -> None:
        self.fixes: list[Fix] = []
        self.notes: list[str] = []

    def add(
        self,
        kind: str,
        problem: str,
        action: str,
        evidence: str,
        strength: Strength,
        files: list[Path],
        *,
        group: str | None = None,
        default: bool = True,
        needs_force: bool = False,
        **params: Any,
    ) -> None:
        fid = f"F{len(self.fixes) + 1}"
        self.fixes.append(
            Fix(
                fid,
                kind,
                problem,
                action,
                evidence,
                strength,
                group or fid,
                default,
                needs_force,
                tuple(files),
                {
                    k: str(v) if isinstance(v, (Path, uuidlib.UUID)) else v
                    for k, v in params.items()
                },
            )
        )


# -- image-level analysis -------------------------------------------------------------------


def _image_fixes(path: Path, b: _Builder, registered_base: bool | None) -> None:
    try:
        with open(path, "rb") as f:
            raw = f.read(fmt.HEADER_READ_SIZE)
            size = f.seek(0, 2)
        header = fmt.parse_header(raw, path, size)
    except VdiError as exc:
        b.notes.append(
            f"'{path.name}' has a header vdigui cannot read ({exc}); VirtualBox's "
            "repair cannot fix headers either, so it is left alone"
        )
        return
    if header.image_type == ImageType.FIXED:
        return
    with open_image(path) as image:
        entries = image.block_map.astype(np.int64)
        h = image.header
        live_idx = np.flatnonzero(fmt.is_allocated(entries))
        slots = entries[live_idx]
        past = slots * h.slot_size + h.offset_data + h.slot_size > size
        _, first = np.unique(slots, return_index=True)
        dup = np.ones(slots.size, dtype=bool)
        dup[first] = False
        dup &= ~past
        clear = np.sort(np.concatenate([live_idx[past], live_idx[dup]]))
        keep = np.setdiff1d(live_idx, clear)
        new_count = int(entries[keep].max()) + 1 if keep.size else 0
        expected_end = h.offset_data + new_count * h.slot_size
    problems = []
    if past.any():
        problems.append(f"{int(past.sum())} map entries point past the end of the file")
    if dup.any():
        problems.append(
            f"{int(dup.sum())} map entries point at a slot another block already "
            "uses (cross-linked)"
        )
    if new_count != h.blocks_allocated:
        problems.append(
            f"cBlocksAllocated is {h.blocks_allocated} but the highest used slot needs {new_count}"
        )
    if size > expected_end:
        problems.append(f"{size - expected_end} bytes past the last slot (a crash tail)")
    if problems:
        loss = (
            " Cleared blocks become FREE: "
            + (
                "in this differencing image the parent's older data shows there"
                if h.is_differencing
                else "they read as zeros"
            )
            + f" (guest blocks {', '.join(map(str, clear[:8].tolist()))}"
            + ("…" if clear.size > 8 else "")
            + ")."
            if clear.size
            else ""
        )
        b.add(
            "slots",
            f"'{path.name}': " + "; ".join(problems) + ".",
            "Clear the bad entries as VirtualBox's repairhd does (lowest guest block keeps "
            f"a shared slot), set cBlocksAllocated to {new_count} and cut the file to "
            f"{expected_end} bytes." + loss,
            "read from the block map and the file size",
            Strength.CERTAIN,
            [path],
            path=path,
            uuid=h.uuid,
            clear=clear.tolist(),
            count=new_count,
            end=expected_end,
        )
    if (
        registered_base is not False
        and h.parent_uuid == fmt.NULL_UUID
        and h.image_type == ImageType.DIFFERENCING
    ):
        b.add(
            "base-type",
            f"'{path.name}' links to no parent but its header says "
            "differencing, so VirtualBox refuses to open it as a base.",
            "Set the image type to dynamic (normal).",
            "the link to a parent is null"
            + (" and the registry lists it as a base" if registered_base else ""),
            Strength.STRONG,
            [path],
            path=path,
            uuid=h.uuid,
        )
    if registered_base and h.parent_uuid != fmt.NULL_UUID:
        b.add(
            "base-type",
            f"'{path.name}' is a base in the registry but its header links to "
            f"parent {{{h.parent_uuid}}}.",
            "Zero the parent link, as VirtualBox itself does for this old VDCopy bug.",
            "the registry nests it as a base (VirtualBox Main applies the same repair)",
            Strength.STRONG,
            [path],
            path=path,
            uuid=h.uuid,
            clear_link=True,
        )


# -- planning -------------------------------------------------------------------------------


def plan_repair(
    path: Path | str, *, search_dirs: list[Path] | None = None, force: bool = False
) -> RepairPlan:
    """Propose fixes for a VDI or a VM folder (read-only).

    Args:
        path: a ``.vdi``, a ``.vbox`` or a VM folder.
        search_dirs: folders to look in for missing registered files (by UUID).
        force: also propose relinks that rest on weak or no evidence (they still print it).
    """
    path = Path(path).resolve()
    b = _Builder()
    if path.is_file() and path.suffix.lower() == ".vdi":
        _image_fixes(path, b, None)
        _relink_fixes_bare(path, b, force)
        return _with_space(
            RepairPlan(path, path.parent, None, None, tuple(b.fixes), tuple(b.notes))
        )
    from vdigui.engine.operations.merge import find_vbox

    vbox = find_vbox(path)
    doc = VboxDocument.load(vbox)
    folder = vbox.parent.resolve()
    registry = doc.hard_disks()
    index = ImageIndex.scan([folder, doc.snapshot_folder])
    files_by_uuid = index.by_uuid
    seen_paths: set[Path] = set()
    for uid, el in registry.items():
        if (el.get("format") or "VDI").upper() != "VDI":
            continue
        p = doc.disk_path(el)
        if p is None:
            continue
        parent_el = doc.disk_parent(el)
        if not p.exists():
            _missing_fixes(doc, el, uid, p, search_dirs or [], b)
            continue
        seen_paths.add(p.resolve())
        try:
            header = fmt.read_header(p)
        except VdiError:
            _image_fixes(p, b, parent_el is None)
            continue
        if header.uuid != uid:
            _uuid_mismatch_fixes(doc, el, uid, p, header, index, b)
            continue
        _image_fixes(p, b, parent_el is None)
        if parent_el is not None:
            parent_uuid = parse_uuid(parent_el.get("uuid"))
            if parent_uuid is not None and header.parent_uuid != parent_uuid:
                _parent_mismatch_fix(doc, p, header, parent_el, parent_uuid, b, force)
    for uid, paths in files_by_uuid.items():
        copies = [q for q in paths if q.resolve() not in seen_paths]
        if uid in registry and copies:
            for copy in copies:
                b.add(
                    "new-uuid",
                    f"'{copy.name}' has the same UUID {{{uid}}} as the registered "
                    f"'{doc.disk_path(registry[uid])}' (a copied file: VirtualBox reports "
                    '"UUID already exists").',
                    "Give the copy a new UUID; the registered original keeps its identity "
                    "(differencing images made on the copy, if any, need 'vdictl set-uuid' "
                    "care: they cannot be told apart by UUID).",
                    "the registered location holds the original",
                    Strength.STRONG,
                    [copy],
                    path=copy,
                    old=uid,
                )
        elif uid not in registry:
            for orphan in paths:
                in_snapshots = is_inside(orphan, doc.snapshot_folder)
                if orphan.resolve() in seen_paths or not (
                    in_snapshots or index.headers[orphan].is_differencing
                ):
                    continue  # a stray base beside the .vbox is the user's business
                _orphan_fixes(doc, orphan, index.headers[orphan], registry, b)
    return _with_space(
        RepairPlan(
            folder,
            folder,
            vbox,
            hashlib.sha256(doc.original_bytes).hexdigest(),
            tuple(b.fixes),
            tuple(b.notes),
        )
    )


def _missing_fixes(
    doc: VboxDocument, el: Any, uid: uuidlib.UUID, p: Path, search_dirs: list[Path], b: _Builder
) -> None:
    group = f"missing-{uid}"
    found = None
    if search_dirs:
        index = ImageIndex.scan(search_dirs)
        found = index.find(uid)
    if found is not None:
        b.add(
            "relocate",
            f"Registered disk {{{uid}}} is missing at '{p}'.",
            f"Point the registry at '{found}', which has that UUID.",
            f"the header UUID of '{found.name}' is {{{uid}}}",
            Strength.STRONG,
            [doc.path],
            group=group,
            uuid=uid,
            new_path=found,
        )
    children = doc.disk_children(el)
    parent_el = doc.disk_parent(el)
    refs = [doc.owner_of(r) for r in doc.image_refs(uid)]
    who = (
        ", ".join(
            "the current state" if o is doc.machine else f"snapshot '{o.get('name')}'" for o in refs
        )
        or "nothing"
    )
    if children:
        b.notes.append(
            f"registered disk '{p}' is missing and other disks build on it; find "
            "the file (pass a folder to search) — dropping it would lose them all"
        )
        return
    if parent_el is None:
        b.notes.append(
            f"registered base disk '{p}' is missing; find the file (pass a folder "
            "to search) or detach it in VirtualBox"
        )
        return
    parent_uuid = parse_uuid(parent_el.get("uuid"))
    b.add(
        "drop-entry",
        f"Registered differencing disk {{{uid}}} is missing at '{p}'.",
        f"Drop its registry entry and attach its parent {{{parent_uuid}}} instead where it "
        f"was attached ({who}); the changes stored in that layer are lost.",
        "the file is not in the VM folder"
        + (
            " nor in the searched folders"
            if search_dirs
            else "; pass --search DIR to look for it elsewhere first"
        ),
        Strength.CERTAIN,
        [doc.path],
        group=group,
        default=found is None,
        needs_force=True,
        uuid=uid,
        parent=parent_uuid,
    )


def _uuid_mismatch_fixes(
    doc: VboxDocument,
    el: Any,
    uid: uuidlib.UUID,
    p: Path,
    header: fmt.VdiHeader,
    index: ImageIndex,
    b: _Builder,
) -> None:
    group = f"uuid-{uid}"
    file_uuid = header.uuid
    kids_to_file = [q for q, h in index.headers.items() if h.parent_uuid == file_uuid]
    kids_to_reg = [q for q, h in index.headers.items() if h.parent_uuid == uid]
    registry_default = bool(kids_to_file) and not kids_to_reg
    clash = file_uuid in doc.hard_disks()
    b.add(
        "header-uuid",
        f"The registry says '{p.name}' is {{{uid}}} but its header says "
        f'{{{file_uuid}}} (VirtualBox: "UUID does not match the value stored in the media '
        'registry").',
        f"Set the header UUID back to {{{uid}}}"
        + (f" and relink {len(kids_to_file)} child image(s)" if kids_to_file else "")
        + ".",
        f"{len(kids_to_reg)} image(s) link to the registry UUID, {len(kids_to_file)} to the "
        "header UUID",
        Strength.WEAK if registry_default else Strength.STRONG,
        [p, *kids_to_file],
        group=group,
        default=not registry_default,
        path=p,
        old=file_uuid,
        new=uid,
        children=[str(q) for q in kids_to_file],
    )
    if not clash:
        b.add(
            "registry-uuid",
            f"(same problem as the previous fix: '{p.name}').",
            f"Change the registry entry and every <Image> reference from {{{uid}}} to "
            f"{{{file_uuid}}}"
            + (f" and relink {len(kids_to_reg)} child image(s)" if kids_to_reg else "")
            + ".",
            f"{len(kids_to_file)} image(s) link to the header UUID",
            Strength.STRONG if registry_default else Strength.WEAK,
            [doc.path, *kids_to_reg],
            group=group,
            default=registry_default,
            old=uid,
            new=file_uuid,
            children=[str(q) for q in kids_to_reg],
        )


def _evidence(child: fmt.VdiHeader, candidate: fmt.VdiHeader) -> tuple[Strength, str]:
    size = child.disk_size == candidate.disk_size and child.block_size == candidate.block_size
    modify = child.parent_modify_uuid == candidate.modify_uuid
    if size and modify:
        return Strength.STRONG, (
            "the child's uuidParentModify equals the candidate's "
            "uuidModify (it was not written since the child was made) "
            "and the sizes match"
        )
    if size:
        return Strength.WEAK, (
            "only the disk size matches; uuidParentModify differs, so the "
            "candidate may have been written after the child was made, "
            "which would silently corrupt the child's view"
        )
    return Strength.NONE, "the sizes differ"


def _parent_mismatch_fix(
    doc: VboxDocument,
    p: Path,
    header: fmt.VdiHeader,
    parent_el: Any,
    parent_uuid: uuidlib.UUID,
    b: _Builder,
    force: bool,
) -> None:
    parent_path = doc.disk_path(parent_el)
    try:
        parent_h = fmt.read_header(parent_path) if parent_path else None
    except VdiError:
        parent_h = None
    if parent_h is None:
        return
    strength, why = _evidence(header, parent_h)
    if strength == Strength.NONE:
        b.notes.append(
            f"'{p.name}' links to {{{header.parent_uuid}}} but is nested under "
            f"{{{parent_uuid}}}, whose size differs; no fix is safe"
        )
        return
    b.add(
        "relink",
        f"'{p.name}' links to parent {{{header.parent_uuid}}} but the registry "
        f'nests it under {{{parent_uuid}}} (VirtualBox: "Parent UUID does not match").',
        f"Set its parent link to {{{parent_uuid}}} ('{parent_path.name if parent_path else ''}').",
        why,
        strength,
        [p],
        needs_force=strength != Strength.STRONG,
        path=p,
        uuid=header.uuid,
        parent=parent_uuid,
    )


def _relink_fixes_bare(path: Path, b: _Builder, force: bool) -> None:
    header = fmt.read_header(path)
    if header.parent_uuid == fmt.NULL_UUID:
        return
    index = ImageIndex.scan(
        [path.parent, *([path.parent.parent] if path.parent.name.lower() == "snapshots" else [])]
    )
    if index.find(header.parent_uuid) is not None:
        return
    candidates = [
        (q, h) for q, h in index.headers.items() if q != path and h.disk_size == header.disk_size
    ]
    strong = [(q, h) for q, h in candidates if h.modify_uuid == header.parent_modify_uuid]
    pick = strong if len(strong) == 1 else candidates if len(candidates) == 1 else []
    if not pick:
        b.notes.append(
            f"'{path.name}' links to parent {{{header.parent_uuid}}}, which no image "
            f"in '{path.parent}' has, and no single candidate matches; nothing "
            "can be relinked safely"
        )
        return
    q, h = pick[0]
    strength, why = _evidence(header, h)
    b.add(
        "relink",
        f"'{path.name}' links to parent {{{header.parent_uuid}}}, which no image "
        "in the folder has.",
        f"Relink it to '{q.name}' {{{h.uuid}}}.",
        why,
        strength,
        [path],
        needs_force=strength != Strength.STRONG,
        path=path,
        uuid=header.uuid,
        parent=h.uuid,
    )


def _orphan_fixes(
    doc: VboxDocument,
    orphan: Path,
    header: fmt.VdiHeader,
    registry: dict[uuidlib.UUID, Any],
    b: _Builder,
) -> None:
    group = f"orphan-{header.uuid}"
    parent_registered = header.parent_uuid in registry
    quarantine = doc.folder / QUARANTINE / orphan.name
    if header.is_differencing and parent_registered:
        b.add(
            "register-orphan",
            f"'{orphan.name}' is a differencing image no registry lists "
            "(an orphan, e.g. from a crash during a snapshot).",
            f"Register it under its parent {{{header.parent_uuid}}} so its data can be "
            "attached or cloned.",
            "its parent link names a registered disk",
            Strength.STRONG,
            [doc.path],
            group=group,
            path=orphan,
            uuid=header.uuid,
            parent=header.parent_uuid,
        )
    b.add(
        "quarantine-orphan",
        f"'{orphan.name}' is an image no registry lists.",
        f"Move it to '{quarantine.parent}' (never deleted).",
        "no registered medium uses it",
        Strength.CERTAIN,
        [orphan],
        group=group,
        default=not (header.is_differencing and parent_registered),
        path=orphan,
        uuid=header.uuid,
        dest=quarantine,
    )


def plan_set_uuid(image: Path | str, new: uuidlib.UUID | None = None) -> RepairPlan:
    """Give an image a new uuidCreate, relinking its children and the registry in one step."""
    image = Path(image).resolve()
    header = fmt.read_header(image)
    new = new or new_uuid()
    folder = image.parent.parent if image.parent.name.lower() == "snapshots" else image.parent
    vbox: Path | None = None
    doc: VboxDocument | None = None
    candidates = sorted(folder.glob("*.vbox"))
    if len(candidates) == 1:
        vbox = candidates[0]
        doc = VboxDocument.load(vbox)
    dirs = [folder, *([doc.snapshot_folder] if doc else [folder / "Snapshots"])]
    index = ImageIndex.scan([d for d in dirs if d.is_dir()])
    loop = resolve_chain(image, dirs, index).error
    if isinstance(loop, ChainLoopError):
        raise OperationRefused(
            f"{loop} A new UUID would not untangle it; 'vdictl repair' "
            "shows the evidence for each link. Nothing was changed."
        )
    children = [q for q, h in index.headers.items() if h.parent_uuid == header.uuid]
    registered = (
        doc is not None
        and header.uuid in doc.hard_disks()
        and (
            (rp := doc.disk_path(doc.hard_disks()[header.uuid])) is not None
            and rp.resolve() == image
        )
    )
    b = _Builder()
    files = [image, *children, *([vbox] if registered and vbox else [])]
    b.add(
        "new-uuid",
        f"Set the UUID of '{image.name}' (now {{{header.uuid}}}).",
        f"Write {{{new}}} as its uuidCreate, relink {len(children)} child image(s)"
        + (" and update the registry and <Image> references in the .vbox" if registered else "")
        + ".",
        "requested",
        Strength.CERTAIN,
        files,
        path=image,
        old=header.uuid,
        new=new,
        children=[str(c) for c in children],
        registry=registered,
    )
    return _with_space(
        RepairPlan(
            image,
            folder,
            vbox if registered else None,
            hashlib.sha256(doc.original_bytes).hexdigest() if registered and doc else None,
            tuple(b.fixes),
        )
    )


# -- running --------------------------------------------------------------------------------


def run_repair(
    plan: RepairPlan,
    *,
    choose: set[str] | None = None,
    force: bool = False,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    verify: bool = True,
) -> RepairResult:
    """Apply the selected fixes under a journal (rolled back on error before the commit).

    With ``verify`` (the default) every state is checked to read as before (see the module
    docstring) before the commit point; a difference rolls everything back and raises
    VerificationError.
    """
    from vdigui.engine.operations.preflight import check_writable_inputs, sweep_around

    cancel = cancel or CancelToken()
    fixes = plan.selected(choose, force)
    if not fixes:
        raise OperationRefused(
            "No fix is selected (those with weak or no evidence need --force); nothing was changed."
        )
    touched = list(dict.fromkeys(f for fix in fixes for f in fix.files if f.exists()))
    # A damaged block map may be changed only by the fix that repairs it: every other file
    # must check clean first, as for any other writing command.
    map_fixed = {Path(f.params["path"]) for f in fixes if f.kind == "slots"}
    check_writable_inputs(
        [p for p in touched if p not in map_fixed], folder=plan.folder, needed=plan.space.peak_extra
    )
    check_writable_inputs(
        [p for p in touched if p in map_fixed], folder=plan.folder, check_maps=False
    )
    sweep_around(touched, plan.folder)  # temp files interrupted runs left (preflight)
    doc: VboxDocument | None = None
    if plan.vbox is not None:
        doc = VboxDocument.load(plan.vbox)
        if hashlib.sha256(doc.original_bytes).hexdigest() != plan.vbox_sha256:
            raise OperationRefused(
                f"'{plan.vbox.name}' changed since the plan was made; run the repair again."
            )
        from vdigui.engine.operations.merge import running_hint

        hint = running_hint(plan.folder)
        if hint:
            raise OperationRefused(f"{hint} Power the VM off before repairing it.")
    before = _state_signatures(plan) if verify else None
    slot_maps = _slot_maps(fixes) if verify else {}
    journal = Journal.begin(
        plan.folder,
        "repair",
        plan.to_dict(),
        f"repair of '{plan.target.name}' ({len(fixes)} fixes)",
        plan.vbox,
    )
    notes: list[str] = []
    vbox_changed = False
    try:
        for fix in fixes:
            for f in fix.files:
                if (
                    f.suffix.lower() == ".vdi"
                    and f.exists()
                    and fix.kind not in ("quarantine-orphan",)
                ):
                    allowed = [fix.params.get("uuid"), fix.params.get("old"), fix.params.get("new")]
                    journal.backup_image(f, [a for a in allowed if a], save=False)
            if plan.vbox is not None:
                journal.backup_file(plan.vbox, save=False)
        journal.set_phase("backed-up")  # names every backup before the first write
        for n, fix in enumerate(fixes, start=1):
            cancel.raise_if_cancelled("Cancelled: rolling back.")
            progress(Progress("repairing", n - 1, len(fixes)))
            vbox_changed |= _apply(fix, doc, journal)
            notes.append(f"{fix.id}: {fix.action}")
        if before is not None:
            progress(Progress("verifying", 0, 1))
            after_doc = doc if (doc is not None and vbox_changed) else None
            _verify_states(fixes, before, _state_signatures(plan, after_doc), slot_maps)
            progress(Progress("verifying", 1, 1))
        if doc is not None and vbox_changed:
            journal.save_vbox(doc.to_bytes())
        else:
            journal.commit()
    except Exception:
        if not journal.is_committed():
            journal.rollback()
            journal.abandon()
        raise
    notes += journal.complete()
    backup = journal.backup_dir
    journal.finish()
    progress(Progress("repairing", len(fixes), len(fixes)))
    return RepairResult(tuple(f.id for f in fixes), tuple(notes), backup, verified=verify)


def _check_uuid(path: Path, expected: str) -> fmt.VdiHeader:
    header = fmt.read_header(path)
    if str(header.uuid) != expected:
        raise OperationRefused(
            f"'{path.name}' has UUID {{{header.uuid}}}, not the {{{expected}}} "
            "the plan names; nothing was changed."
        )
    return header


def _set_header(path: Path, expected: str, **changes: Any) -> None:
    with open_image(path, writable=True) as image:
        if str(image.uuid) != expected:
            raise OperationRefused(f"'{path.name}' is no longer {{{expected}}}; stopped.")
        image.write_header(image.header.replace(**changes))
        image.sync()


def _apply(fix: Fix, doc: VboxDocument | None, journal: Journal) -> bool:
    """Apply one fix; returns whether the .vbox tree changed."""
    p = fix.params
    if fix.kind == "slots":
        path = Path(p["path"])
        with open_image(path, writable=True) as image:
            if str(image.uuid) != p["uuid"]:
                raise OperationRefused(f"'{path.name}' changed identity; stopped.")
            clear = p["clear"]
            if clear:
                image.write_entries(clear, [BLOCK_FREE] * len(clear))
            if image.file_size > p["end"]:
                journal.backup_tail(path, p["end"])
                image.truncate(p["end"])
            image.write_header(image.header.replace(blocks_allocated=p["count"]))
            image.sync()
        return False
    if fix.kind == "base-type":
        if p.get("clear_link"):
            _set_header(
                Path(p["path"]),
                p["uuid"],
                parent_uuid=fmt.NULL_UUID,
                parent_modify_uuid=fmt.NULL_UUID,
            )
        else:
            _set_header(Path(p["path"]), p["uuid"], image_type=ImageType.DYNAMIC)
        return False
    if fix.kind == "relink":
        _set_header(Path(p["path"]), p["uuid"], parent_uuid=uuidlib.UUID(p["parent"]))
        return False
    if fix.kind == "header-uuid":
        _set_header(Path(p["path"]), p["old"], uuid=uuidlib.UUID(p["new"]))
        for child in p["children"]:
            with open_image(child, writable=True) as image:
                image.write_header(image.header.replace(parent_uuid=uuidlib.UUID(p["new"])))
                image.sync()
        return False
    if fix.kind == "registry-uuid":
        assert doc is not None
        el = doc.hard_disks()[uuidlib.UUID(p["old"])]
        el.set("uuid", format_uuid(uuidlib.UUID(p["new"])))
        doc.repoint_images(uuidlib.UUID(p["old"]), uuidlib.UUID(p["new"]))
        for child in p["children"]:
            with open_image(child, writable=True) as image:
                image.write_header(image.header.replace(parent_uuid=uuidlib.UUID(p["new"])))
                image.sync()
        return True
    if fix.kind == "new-uuid":
        new = uuidlib.UUID(p.get("new") or str(new_uuid()))
        _set_header(Path(p["path"]), p["old"], uuid=new)
        for child in p.get("children", []):
            with open_image(child, writable=True) as image:
                if str(image.parent_uuid) == p["old"]:
                    image.write_header(image.header.replace(parent_uuid=new))
                    image.sync()
        if p.get("registry") and doc is not None:
            el = doc.hard_disks()[uuidlib.UUID(p["old"])]
            el.set("uuid", format_uuid(new))
            doc.repoint_images(uuidlib.UUID(p["old"]), new)
            return True
        return False
    if fix.kind == "relocate":
        assert doc is not None
        el = doc.hard_disks()[uuidlib.UUID(p["uuid"])]
        _check_uuid(Path(p["new_path"]), p["uuid"])
        el.set("location", doc.relative_location(Path(p["new_path"])))
        return True
    if fix.kind == "drop-entry":
        assert doc is not None
        el = doc.hard_disks()[uuidlib.UUID(p["uuid"])]
        doc.repoint_images(uuidlib.UUID(p["uuid"]), uuidlib.UUID(p["parent"]))
        doc.remove_disk(el)
        return True
    if fix.kind == "register-orphan":
        assert doc is not None
        parent = doc.hard_disks()[uuidlib.UUID(p["parent"])]
        _check_uuid(Path(p["path"]), p["uuid"])
        doc.add_disk(uuidlib.UUID(p["uuid"]), doc.relative_location(Path(p["path"])), parent)
        return True
    if fix.kind == "quarantine-orphan":
        path = Path(p["path"])
        _check_uuid(path, p["uuid"])
        if not is_inside(path, journal.folder):
            raise OperationRefused(f"'{path}' is outside the VM folder; it is left alone.")
        dest = Path(p["dest"])
        if dest.exists():
            dest = dest.with_name(f"{dest.stem}-{os.getpid()}{dest.suffix}")
        journal.plan_removal(path, p["uuid"], stash=dest)
        journal.save()
        return False
    raise VdiError(f"unknown fix kind {fix.kind} (bug)")


# -- space and verification ---------------------------------------------------------------


def _with_space(plan: RepairPlan) -> RepairPlan:
    """The plan with the SpacePlan of its default selection."""
    outcomes: dict[Path, FileOutcome] = {}
    undo = 0
    for fix in plan.selected():
        for f in fix.files:
            if not f.exists():
                continue
            size = f.stat().st_size
            after = size
            if fix.kind == "slots" and Path(fix.params["path"]) == f:
                after = min(size, int(fix.params["end"]))
            if f.suffix.lower() == ".vdi" and f not in outcomes:
                undo += jr.prefix_backup_size(f) + (size - after)
            outcomes[f] = FileOutcome(f, size, after)
    if plan.vbox is not None and plan.vbox.exists():
        size = plan.vbox.stat().st_size
        outcomes.setdefault(plan.vbox, FileOutcome(plan.vbox, size, size))
        undo += size
    space = SpacePlan(tuple(outcomes.values()), undo, jr.backups_dir(plan.folder), undo, True)
    return dataclasses.replace(plan, space=space)


#: One layer of a resolved state: the file and a digest of its block map (and layout).
_Layer = tuple[str, str]
#: A state: its layers (base first) and whether every header link agrees with them.
_State = tuple[tuple[_Layer, ...], bool] | None


def _layer_signature(path: Path) -> tuple[_Layer, fmt.VdiHeader]:
    with open_image(path) as image:
        h = image.header
        digest = hashlib.sha256(image.block_map.tobytes())
        digest.update(f"{h.offset_data}:{h.block_size}:{h.block_extra}".encode())
        return (str(path.resolve()), digest.hexdigest()), h


def _state_signatures(plan: RepairPlan, doc: VboxDocument | None = None) -> dict[str, _State]:
    """Per state: its layers with map digests and whether its links agree; None if unreadable.

    A VM folder's states are the disks attached to each snapshot and to the current state,
    as VirtualBox opens them: through the registry's nesting (``doc``: the edited settings,
    if the repair changed them), and "agree" means every header has the registry's UUID and
    links to the layer below. A bare image's state is its chain by header links.
    """
    out: dict[str, _State] = {}
    is_image = plan.target.is_file() and plan.target.suffix.lower() == ".vdi"
    if doc is None and (plan.vbox is not None or not is_image):
        from vdigui.engine.operations.merge import find_vbox

        doc = VboxDocument.load(plan.vbox or find_vbox(plan.folder))
    if doc is None:
        try:
            resolution = resolve_chain(plan.target, [plan.folder])
            layers = tuple(_layer_signature(q)[0] for q in resolution.paths)
            out["image"] = (layers, resolution.error is None) if layers else None
        except (VdiError, OSError):
            out["image"] = None
        return out
    registry = doc.hard_disks()
    for owner in [doc.machine, *doc.snapshots()]:
        label = "current" if owner is doc.machine else str(doc.snapshot_uuid(owner))
        for i, image_el in enumerate(doc.hard_disk_images(owner)):
            uid = parse_uuid(image_el.get("uuid"))
            el = registry.get(uid) if uid is not None else None
            out[f"{label}/{i}"] = _registry_state(doc, el)
    return out


def _registry_state(doc: VboxDocument, el: Any) -> _State:
    chain: list[tuple[uuidlib.UUID | None, Path | None]] = []
    while el is not None:
        chain.append((parse_uuid(el.get("uuid")), doc.disk_path(el)))
        el = doc.disk_parent(el)
    chain.reverse()
    layers: list[_Layer] = []
    agree = True
    below = fmt.NULL_UUID
    for uid, path in chain:
        if path is None or not path.exists():
            return None
        try:
            layer, header = _layer_signature(path)
        except (VdiError, OSError):
            return None
        layers.append(layer)
        agree &= header.uuid == uid and header.parent_uuid == below
        below = header.uuid
    return (tuple(layers), agree) if layers else None


def _verify_states(
    fixes: list[Fix],
    before: dict[str, _State],
    after: dict[str, _State],
    slot_maps: dict[str, np.ndarray],
) -> None:
    """Every state reads as before (same layers, same maps) unless a fix means to change it.

    Raises:
        VerificationError: a state changed that no fix explains; everything is rolled back.
    """
    targeted: set[str] = set()
    slot_fixes: dict[str, Fix] = {}
    for fix in fixes:
        for key in ("path", "new_path"):
            if key in fix.params:
                targeted.add(str(Path(fix.params[key]).resolve()))
        targeted |= {str(Path(c).resolve()) for c in fix.params.get("children", [])}
        if fix.kind == "slots":
            slot_fixes[str(Path(fix.params["path"]).resolve())] = fix
    drops = any(f.kind == "drop-entry" for f in fixes)
    for key, old in before.items():
        new = after.get(key)
        if old is None:
            if new is not None and not new[1] and {lay[0] for lay in new[0]} & targeted:
                raise VerificationError(
                    f"After the repair a disk state ({key}) still has links that disagree; "
                    "everything was rolled back (please report this)."
                )
            continue  # it could not be read before; a fix may have made it readable
        if new is None:
            if drops:
                continue  # a layer was dropped on purpose; the state reads its parent
            raise VerificationError(
                f"After the repair a disk state ({key}) can no longer be read through its "
                "chain of images; everything was rolled back (please report this)."
            )
        (old_layers, old_agree), (new_layers, new_agree) = old, new
        if old_agree and not new_agree:
            raise VerificationError(
                f"After the repair the header links of a disk state ({key}) disagree with "
                "its images; everything was rolled back (please report this)."
            )
        if not new_agree and {lay[0] for lay in new_layers} & targeted:
            raise VerificationError(
                f"After the repair a disk state ({key}) still has links that disagree; "
                "everything was rolled back (please report this)."
            )
        if old_layers == new_layers:
            continue
        same_files = [lay[0] for lay in old_layers] == [lay[0] for lay in new_layers]
        changed = {o[0] for o, n in zip(old_layers, new_layers, strict=False) if o != n}
        if same_files and changed <= set(slot_fixes):
            continue  # checked entry by entry below
        if drops and {lay[0] for lay in new_layers} <= {lay[0] for lay in old_layers}:
            continue
        if not old_agree and new_agree and {lay[0] for lay in old_layers} & targeted:
            continue  # a broken link was mended: the state now reads through its parent
        raise VerificationError(
            f"After the repair a disk state ({key}) reads through other images or other "
            "block maps than before; everything was rolled back (please report this)."
        )
    for path_text, fix in slot_fixes.items():
        _verify_slots_fix(Path(path_text), fix, slot_maps.get(path_text))


def _slot_maps(fixes: list[Fix]) -> dict[str, np.ndarray]:
    """The block maps a ``slots`` fix will change, as they are now (for the verification)."""
    out = {}
    for fix in fixes:
        if fix.kind == "slots":
            with open_image(Path(fix.params["path"])) as image:
                out[str(Path(fix.params["path"]).resolve())] = image.block_map.copy()
    return out


def _verify_slots_fix(path: Path, fix: Fix, backup: np.ndarray | None) -> None:
    """Exactly the cleared entries became FREE; the count and the file end are as planned."""
    with open_image(path) as image:
        entries = image.block_map
        cleared = np.asarray(fix.params["clear"], dtype=np.int64)
        if cleared.size and (entries[cleared] != BLOCK_FREE).any():
            raise VerificationError(
                f"After the repair '{path.name}' still maps a block that "
                "was to be cleared; everything was rolled back."
            )
        if image.header.blocks_allocated != fix.params["count"] or image.file_size > int(
            fix.params["end"]
        ):
            raise VerificationError(
                f"After the repair the slot count or size of "
                f"'{path.name}' is not as planned; everything was rolled "
                "back."
            )
        if backup is not None:
            old = np.asarray(backup, dtype=np.uint32)
            keep = np.ones(old.size, dtype=bool)
            keep[cleared] = False
            if not np.array_equal(old[keep], entries[: old.size][keep]):
                raise VerificationError(
                    f"After the repair '{path.name}' maps blocks it was not "
                    "to touch differently; everything was rolled back."
                )


def quarantine_dir(folder: Path) -> Path:
    """Where orphans are moved (inside the VM folder, visible to the user)."""
    return Path(folder) / QUARANTINE


__all__ = [
    "Fix",
    "RepairPlan",
    "RepairResult",
    "plan_repair",
    "plan_set_uuid",
    "quarantine_dir",
    "run_repair",
    "state_dir",
]
