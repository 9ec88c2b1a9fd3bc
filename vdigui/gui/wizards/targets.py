"""What an operation acts on, and whether it can run: a Qt-free layer under the wizards.

Why separate: the main window hands over whatever is selected (a snapshot row, a media-tree
node, a name typed on the command line), and every wizard, menu action and the screenshot mode
need the same answer to "which file, which snapshot, which VM folder?" and "can this run, and
if not, why?". Computing it from the engine's fast plans (headers and maps only) keeps the
reasons identical to what the wizard and ``vdictl`` would refuse with.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from vdigui.engine import VdiError, VmFolder, load_vm_folder, parse_uuid, resolve_chain
from vdigui.gui.wizards import _engine as eng


class TargetKind(StrEnum):
    """What an operation is about."""

    #: A snapshot (its image: the disk it froze).
    SNAPSHOT = "snapshot"
    #: The VM's current state (its image: the leaf the VM writes to).
    CURRENT = "current"
    #: One image file, with or without a VM folder around it.
    IMAGE = "image"
    #: Nothing is selected.
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Target:
    """The thing an operation is about.

    Attributes:
        kind: a snapshot, the current state, an image, or nothing.
        label: how the wizard names it ("snapshot 'Updates'", "'disk.vdi'").
        image: the image file (a snapshot's: the disk it froze; the current state's: the leaf).
        snapshot_uuid: the snapshot, for kind "snapshot".
        snapshot_name: its name.
        folder: the VM folder (None for a bare image).
        medium_uuid: the image's registry/header UUID when known.
        error: why the selected image cannot be read (a missing or foreign file).
    """

    kind: TargetKind
    label: str
    image: Path | None = None
    snapshot_uuid: uuidlib.UUID | None = None
    snapshot_name: str | None = None
    folder: Path | None = None
    medium_uuid: uuidlib.UUID | None = None
    error: str = ""

    @property
    def lock_keys(self) -> frozenset[Path]:
        """Paths whose overlap means two operations would touch the same chain."""
        keys: set[Path] = set()
        if self.folder is not None:
            keys.add(self.folder.resolve())
        if self.image is not None:
            keys.add(self.image.resolve())
            keys.add(self.image.resolve().parent)
        return frozenset(keys)


NONE = Target(TargetKind.NONE, "nothing")


def _first_disk_path(
    vm: VmFolder, uuids: Iterable[uuidlib.UUID]
) -> tuple[Path | None, uuidlib.UUID | None]:
    """The first listed disk that has a readable file, preferring ones snapshots change."""
    found: list[tuple[Path, uuidlib.UUID, bool]] = []
    for uuid in uuids:
        paths = vm.image_paths.get(uuid)
        if not paths:
            continue
        medium = vm.media.get(uuid)
        excluded = medium is not None and medium.type.lower() in (
            "writethrough",
            "shareable",
            "readonly",
        )
        found.append((paths[0], uuid, excluded))
    found.sort(key=lambda item: item[2])
    return (found[0][0], found[0][1]) if found else (None, None)


def _snapshot_target(vm: VmFolder, uuid: uuidlib.UUID, name: str) -> Target:
    media = vm.disk_for_snapshot(vm.snapshot_by_name_or_uuid(str(uuid)))
    path, medium = _first_disk_path(vm, [m.uuid for m in media])
    return Target(TargetKind.SNAPSHOT, f"snapshot '{name}'", path, uuid, name, vm.folder, medium)


def _current_target(vm: VmFolder) -> Target:
    path, medium = _first_disk_path(vm, [m.uuid for m in vm.current_disks()])
    return Target(TargetKind.CURRENT, "the current state", path, None, None, vm.folder, medium)


def _image_target(vm: VmFolder | None, path: Path, uuid: uuidlib.UUID | None = None) -> Target:
    return Target(
        TargetKind.IMAGE,
        f"'{path.name}'",
        path,
        None,
        None,
        vm.folder if vm is not None else None,
        uuid,
    )


def resolve_target(vm: VmFolder | None, selection: object) -> Target:
    """Turn whatever is selected into a :class:`Target`.

    Understands the GUI's tree nodes (snapshot rows with ``is_current_state``, media nodes with
    ``path``), the engine's ``SnapshotNode`` and ``Medium``, a :class:`Target`, a path, and a
    text that names a snapshot (name or UUID) or an image (file name or UUID).
    """
    if isinstance(selection, Target):
        return selection
    if selection is None:
        return _current_target(vm) if vm is not None else NONE
    if getattr(selection, "is_current_state", False):
        return _current_target(vm) if vm is not None else NONE
    # Snapshot rows (GUI SnapNode, engine SnapshotNode): a uuid, a name and no file.
    if (
        hasattr(selection, "name")
        and hasattr(selection, "uuid")
        and not hasattr(selection, "path")
        and vm is not None
        and getattr(selection, "uuid", None) is not None
        and any(n.uuid == selection.uuid for n in vm.iter_snapshots())
    ):
        return _snapshot_target(vm, selection.uuid, str(selection.name))  # type: ignore[attr-defined]
    path = getattr(selection, "path", None)
    if isinstance(path, Path) and not getattr(selection, "error", ""):
        return _image_target(vm, path, getattr(selection, "uuid", None))
    if hasattr(selection, "path") and hasattr(selection, "title"):
        title = str(getattr(selection, "title", "the image"))
        error = str(getattr(selection, "error", "") or "the file is missing")
        return Target(
            TargetKind.IMAGE,
            f"'{title}'",
            None,
            folder=vm.folder if vm else None,
            medium_uuid=getattr(selection, "uuid", None),
            error=error,
        )
    if isinstance(selection, Path):
        return _image_target(vm, selection)
    if isinstance(selection, str):
        return target_by_name(vm, selection)
    return NONE


def target_by_name(vm: VmFolder | None, text: str) -> Target:
    """A snapshot (name/UUID), "Current State", or an image (file name, path or UUID)."""
    if vm is not None:
        if text.casefold() in ("current state", "current"):
            return _current_target(vm)
        try:
            node = vm.snapshot_by_name_or_uuid(text)
        except VdiError:
            node = None
        if node is not None:
            return _snapshot_target(vm, node.uuid, node.name)
        wanted = parse_uuid(text)
        for uuid, paths in vm.image_paths.items():
            for p in paths:
                if uuid == wanted or p.name.lower() == text.lower() or str(p) == text:
                    return _image_target(vm, p, uuid)
    candidate = Path(text)
    if candidate.is_file():
        return _image_target(vm, candidate)
    raise VdiError(
        f"Nothing named '{text}' was found" + (f" in VM '{vm.name}'." if vm is not None else ".")
    )


def load_vm_or_image(path: Path | str) -> tuple[VmFolder | None, Path]:
    """A VM folder (or .vbox) loads as a VmFolder; a .vdi gives (None, the image)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".vdi":
        return None, path
    return load_vm_folder(path), path


def chain_of(vm: VmFolder | None, target: Target) -> tuple[Path, ...]:
    """The files of the target's chain, base first (the state a clone copies).

    Raises:
        VdiError: the chain cannot be assembled (missing parent, unreadable file).
    """
    if target.image is None:
        raise VdiError(f"{target.label.capitalize()} has no disk image vdigui can read.")
    if vm is not None and target.medium_uuid is not None:
        try:
            return tuple(vm.chain_for(target.medium_uuid))
        except VdiError:
            pass
    resolution = resolve_chain(target.image)
    if resolution.error is not None:
        raise resolution.error
    return tuple(resolution.paths)


# -- availability (the registry's ``availability`` functions) ---------------------------------


def first_sentence(text: str, limit: int = 220) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _no_image(target: Target, verb: str) -> str:
    """Why there is nothing to ``verb``: an unreadable image, a disk-less snapshot, nothing."""
    if target.error:
        return f"{target.label} cannot be read: {target.error}."
    if target.kind in (TargetKind.SNAPSHOT, TargetKind.CURRENT):
        return f"{target.label.capitalize()} has no disk image vdigui can read."
    return f"Select a disk image or a snapshot to {verb}."


def compact_availability(vm: VmFolder | None, target: Target) -> tuple[bool, str]:
    """Whether ``target``'s image can be compacted (its plan has no refusal)."""
    del vm
    if target.image is None:
        return False, _no_image(target, "compact")
    try:
        plan = eng.plan_compact(target.image)
    except VdiError as exc:
        return False, first_sentence(str(exc))
    if plan.refusals:
        return False, first_sentence(plan.refusals[0])
    return True, f"Compact {target.image.name}: drop all-zero blocks and give the space back"


def clone_availability(vm: VmFolder | None, target: Target) -> tuple[bool, str]:
    """Whether ``target``'s chain can be read whole (what a clone copies)."""
    if target.image is None:
        return False, _no_image(target, "clone")
    try:
        chain_of(vm, target)
    except VdiError as exc:
        return False, first_sentence(str(exc))
    return True, f"Copy {target.label} into a standalone disk image (or convert it)"


def delete_snapshot_availability(vm: VmFolder | None, target: Target) -> tuple[bool, str]:
    """Whether ``target`` is a snapshot whose deletion the engine can plan."""
    if vm is None:
        return False, "Snapshots belong to a VM: open the VM folder to delete one."
    if target.kind is TargetKind.CURRENT:
        return False, "The current state is not a snapshot; select a snapshot to delete."
    if target.kind is not TargetKind.SNAPSHOT or target.snapshot_uuid is None:
        return False, "Select a snapshot in the snapshot tree to delete it."
    try:
        eng.plan_snapshot_delete(vm.folder, str(target.snapshot_uuid))
    except VdiError as exc:
        return False, first_sentence(str(exc))
    return True, f"Delete {target.label}, merging its disk changes so every other state stays"


#: The last repair answer: (VmFolder or None, where, answer). A repair plan checks every image
#: of the folder (whole block maps), which is too slow to repeat on every selection change;
#: a VmFolder is immutable and replaced on reload, so its identity is a safe cache key.
_last_repair: list[tuple[object, Path, tuple[bool, str]]] = []


def cached_repair_availability(vm: VmFolder | None, target: Target) -> tuple[bool, str] | None:
    """The repair answer when it is known without planning (else None: plan it off-thread)."""
    where: Path | None = vm.folder if vm is not None else target.image
    if where is None:
        return False, "Open a VM folder or a disk image to check it for repairs."
    last = _last_repair[0] if _last_repair else None
    if last is not None and last[0] is vm and last[1] == where:
        return last[2]
    return None


def repair_availability(vm: VmFolder | None, target: Target) -> tuple[bool, str]:
    """Whether a repair plan has fixes (plans it: reads every image's block map; slow)."""
    known = cached_repair_availability(vm, target)
    if known is not None:
        return known
    where = vm.folder if vm is not None else target.image
    assert where is not None
    answer = _plan_repair_reason(vm, where)
    _last_repair[:] = [(vm, where, answer)]
    return answer


def _plan_repair_reason(vm: VmFolder | None, where: Path) -> tuple[bool, str]:
    try:
        plan = eng.plan_repair(where)
    except VdiError as exc:
        return False, first_sentence(str(exc))
    if not plan.fixes:
        return False, "Nothing to repair: vdigui found no problem it knows how to fix."
    count = len({f.group for f in plan.fixes})
    return True, f"Review {count} proposed fix{'es' if count != 1 else ''} for this " + (
        "VM" if vm is not None else "image"
    )


def resize_source(vm: VmFolder | None, target: Target) -> tuple[Path, str | None]:
    """What ``plan_resize`` is given for ``target``: (source, disk).

    A disk of a VM (its current state's image, or any image of that disk's chain) resizes
    through the VM folder, so every snapshot layer grows with it; ``disk`` is its position
    among the current state's disks ("1", "2"...). A bare image resizes alone.

    Raises:
        VdiError: nothing resizable is selected (no image, or a snapshot).
    """
    if target.image is None:
        raise VdiError(_no_image(target, "resize"))
    if target.kind is TargetKind.SNAPSHOT:
        raise VdiError(
            "A snapshot's disk cannot be resized on its own: select the current "
            "state (resizing it grows every snapshot's image with it, each keeping "
            "its content)."
        )
    if vm is None:
        return target.image, None
    wanted = target.image.resolve()
    disks = list(vm.current_disks())  # numbered as plan_resize numbers them
    for i, medium in enumerate(disks, start=1):
        if medium.path is not None and medium.path.resolve() == wanted:
            return vm.folder, str(i)
    for i, medium in enumerate(disks, start=1):
        if medium.path is None:
            continue
        try:
            chain = [Path(p).resolve() for p in vm.chain_for(medium)]
        except VdiError:
            continue
        if wanted in chain:
            return vm.folder, str(i)
    return target.image, None


def resize_availability(vm: VmFolder | None, target: Target) -> tuple[bool, str]:
    """Whether ``target``'s disk can be resized (the engine's limits read without refusal)."""
    try:
        source, disk = resize_source(vm, target)
        limits = eng.resize_limits(source, disk=disk)
    except VdiError as exc:
        return False, first_sentence(str(exc))
    what = target.image.name if target.image is not None else target.label
    return True, (
        f"Grow or shrink the disk {what} ({eng.human_size(limits.current_size)})"
        + (" with its snapshots" if limits.images > 1 else "")
    )


def candidates(vm: VmFolder | None, image: Path | None) -> list[Target]:
    """Every target an operation could open on, in the order ``--wizard`` tries them.

    The current state first, then every snapshot (newest first), then every image; a bare
    image alone; nothing when nothing is open.
    """
    if vm is None:
        return [] if image is None else [_image_target(None, image)]
    found = [_current_target(vm)]
    found += [_snapshot_target(vm, n.uuid, n.name) for n in reversed(list(vm.iter_snapshots()))]
    for uuid, paths in vm.image_paths.items():
        found += [_image_target(vm, p, uuid) for p in paths[:1]]
    return found


def short_name(name: str, limit: int = 24) -> str:
    """A file name short enough for a label: "{9bb9d102…}.vdi" for UUID-named snapshots."""
    if name.startswith("{") and "}" in name and len(name) > limit:
        return name[:9] + "…}" + name[name.index("}") + 1 :]
    return name if len(name) <= limit else name[: limit - 1] + "…"


def layer_names(vm: VmFolder | None, paths: Iterable[Path]) -> list[str]:
    """A name per chain layer as the main window labels them: the snapshot that froze the
    image, "current state" for the current disk, else the shortened file name."""
    names: dict[uuidlib.UUID, str] = {}
    if vm is not None:
        for node in vm.iter_snapshots():
            for medium in vm.disk_for_snapshot(node)[:1]:
                names.setdefault(medium.uuid, node.name)
        for medium in vm.current_disks()[:1]:
            names.setdefault(medium.uuid, "current state")
    out = []
    for path in paths:
        header = vm.images.get(Path(path)) if vm is not None else None
        if header is None and vm is not None:
            header = vm.images.get(Path(path).resolve())
        label = names.get(header.uuid) if header is not None else None
        out.append(label or short_name(Path(path).name))
    return out
