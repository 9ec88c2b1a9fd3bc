"""Read-only consistency checks of block maps, chains and VM folders.

Like qemu's ``vdi_check`` and VirtualBox's ``vdiRepair`` in dry-run mode, but covering every
crash leftover the reference lists (2.5): entries past the slot range, slots past the end of
the file, slots shared by two blocks, a wrong cBlocksAllocated, holes in the slot range and a
crash tail after the last slot. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdigui.engine.chain import resolve_chain
from vdigui.engine.errors import ImageCorruptError, VdiError
from vdigui.engine.format import is_allocated
from vdigui.engine.image import VdiImage, open_image
from vdigui.engine.sniff import require_regular_file
from vdigui.engine.units import human_size
from vdigui.engine.vbox_xml import Severity


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found by a check.

    Attributes:
        severity: error (data may read wrong or a write could corrupt) or warning.
        kind: a stable slug ("slot-past-eof", "duplicate-slot", ...) for scripts and repair.
        path: the file concerned.
        message: one sentence naming the file and the problem.
        blocks: guest blocks concerned, when the problem is per block.
    """

    severity: Severity
    kind: str
    path: Path
    message: str
    blocks: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckReport:
    """All findings for one check run; ``clean`` when there are none."""

    findings: tuple[Finding, ...]

    @property
    def clean(self) -> bool:
        """Whether nothing was found."""
        return not self.findings

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The findings of severity "error"."""
        return tuple(f for f in self.findings if f.severity == Severity.ERROR)


def _listed(blocks: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(b)) for b in blocks[:limit])
    return shown + (f" and {blocks.size - limit} more" if blocks.size > limit else "")


def check_image(image: VdiImage) -> tuple[Finding, ...]:
    """Block-map consistency findings of one open image."""
    h = image.header
    name = image.path.name
    findings: list[Finding] = []

    def add(severity: Severity, kind: str, message: str, blocks: np.ndarray | None = None) -> None:
        listed = tuple(int(b) for b in blocks) if blocks is not None else ()
        findings.append(Finding(severity, kind, image.path, f"{name}: {message}", listed))

    entries = image.block_map
    live = np.flatnonzero(is_allocated(entries))
    slots = entries[live].astype(np.int64)
    beyond_map = live[slots >= h.blocks]
    if beyond_map.size:
        add(
            Severity.ERROR,
            "slot-out-of-range",
            f"{beyond_map.size} block(s) point at slots beyond the {h.blocks} the image can "
            f"hold (guest blocks {_listed(beyond_map)}).",
            beyond_map,
        )
    slot_end = h.offset_data + (slots + 1) * h.slot_size
    past_eof = live[slot_end > image.file_size]
    if past_eof.size:
        add(
            Severity.ERROR,
            "slot-past-eof",
            f"{past_eof.size} block(s) point at slots past the end of the "
            f"{image.file_size}-byte file (guest blocks {_listed(past_eof)}); they cannot be "
            "read.",
            past_eof,
        )
    order = np.argsort(slots, kind="stable")
    sorted_slots = slots[order]
    dup_mask = np.zeros(sorted_slots.size, dtype=bool)
    if sorted_slots.size > 1:
        same = sorted_slots[1:] == sorted_slots[:-1]
        dup_mask[1:] = same
    duplicated = np.sort(live[order][dup_mask])
    if duplicated.size:
        add(
            Severity.ERROR,
            "duplicate-slot",
            f"{duplicated.size} block(s) share a slot with a lower block (guest blocks "
            f"{_listed(duplicated)}); writing one would change the other.",
            duplicated,
        )
    count = int(live.size)
    highest = int(slots.max()) if count else -1
    if highest >= h.blocks_allocated:
        add(
            Severity.ERROR,
            "allocated-count-low",
            f"cBlocksAllocated is {h.blocks_allocated} but a block points at slot {highest}; "
            "the next new block would be cross-linked.",
        )
    elif count != h.blocks_allocated:
        add(
            Severity.WARNING,
            "allocated-count-mismatch",
            f"cBlocksAllocated is {h.blocks_allocated} but {count} block(s) are allocated.",
        )
    # The slots less their duplicates (already sorted above): np.unique's answer without a
    # second sort and its import of numpy.ma (about 10 ms of every vdictl run).
    distinct = count - int(np.count_nonzero(dup_mask)) if count else 0
    if count and highest + 1 != distinct:
        add(
            Severity.WARNING,
            "slots-not-dense",
            f"the {distinct} slot(s) in use are not the dense range 0..{distinct - 1} (highest "
            f"is {highest}); compaction would close the holes.",
        )
    used_end = h.offset_data + max(h.blocks_allocated, highest + 1) * h.slot_size
    if h.image_type.label != "fixed" and image.file_size > used_end:
        add(
            Severity.WARNING,
            "crash-tail",
            f"{image.file_size - used_end} byte(s) after the last slot belong to no block "
            "(left by an interrupted write).",
        )
    return tuple(findings)


def check_path(path: Path | str) -> CheckReport:
    """Check an image, the chain ending at it, or a VM folder; never raises for findings.

    Besides the block maps, it reports temporary files an interrupted operation left in the
    folders it looks at (:mod:`vdigui.engine.operations.preflight` removes them).

    Raises:
        VdiError: nothing could be checked: the path does not exist, is not a regular file, or
            the image named is not a readable VDI (one sentence, said once).
    """
    path = Path(path)
    if path.is_dir() or path.suffix.lower() in (".vbox", ".xml"):
        return _check_vm_folder(path)
    require_regular_file(path)
    return _check_chain(path)


def _check_chain(leaf: Path) -> CheckReport:
    # The leaf itself must open: if it cannot, nothing was checked (exit status 1), and the
    # error is said once rather than once by the chain walk and once by the file check.
    with open_image(leaf) as image:
        leaf_findings = check_image(image)
    findings: list[Finding] = []
    resolution = resolve_chain(leaf)
    if resolution.error is not None:
        findings.append(Finding(Severity.ERROR, "chain", leaf, str(resolution.error)))
    findings.extend(leaf_findings)
    leaf_real = leaf.resolve()
    for p in resolution.paths:
        if p.resolve() != leaf_real:
            findings.extend(_check_file(p))
    folders = [p.resolve().parent for p in (*resolution.paths, leaf)]
    findings.extend(leftover_findings(folders))
    return CheckReport(tuple(findings))


def _check_file(path: Path) -> tuple[Finding, ...]:
    try:
        with open_image(path) as image:
            return check_image(image)
    except VdiError as exc:
        return (Finding(Severity.ERROR, "unreadable-image", path, str(exc)),)


def leftover_findings(folders: Iterable[Path]) -> list[Finding]:
    """A finding for each temporary file an interrupted operation left in ``folders``."""
    # Imported here: the operations package is not needed to check a clean image.
    from vdigui.engine.operations.preflight import find_leftovers, list_leftovers

    findings: list[Finding] = []
    for folder in dict.fromkeys(folders):
        removable = {p for p, _ in find_leftovers(folder, removable_only=True)}
        for item in list_leftovers(folder):
            size = human_size(item.size)
            if item.path in removable:
                message = (
                    f"{item.path} is a temporary file ({size}, {item.size} bytes) left "
                    f"by an interrupted operation on {item.target}; 'vdictl clean "
                    f"{folder}' removes it (so does the next writing vdictl command "
                    "in that folder)."
                )
                findings.append(Finding(Severity.WARNING, "leftover-temp", item.path, message))
            else:
                message = (
                    f"{item.path} ({size}) is the temporary file of an operation "
                    f"running now on {item.target}; leave it alone."
                )
                findings.append(Finding(Severity.WARNING, "temp-in-use", item.path, message))
    return findings


def _check_vm_folder(path: Path) -> CheckReport:
    # Imported here: checking a single image (the common scripted case) needs no XML parser.
    from vdigui.engine.vmfolder import load_vm_folder

    vm = load_vm_folder(path)
    findings = [
        Finding(p.severity, p.kind, Path(p.path) if p.path else vm.folder, p.message)
        for p in vm.problems
    ]
    for image_path in sorted(vm.images):
        findings.extend(_check_file(image_path))
    folders = [vm.folder, *(p.resolve().parent for p in vm.images)]
    findings.extend(leftover_findings(folders))
    return CheckReport(tuple(findings))


def damage_sentence(image: VdiImage) -> str | None:
    """One sentence when the block map of ``image`` is damaged (an error finding), else None.

    Read-only commands print what they can and then end with this and a non-zero status, so a
    script never takes a truncated or damaged file for a healthy one.
    """
    errors = [f for f in check_image(image) if f.severity == Severity.ERROR]
    if not errors:
        return None
    detail = errors[0].message
    prefix = f"{image.path.name}: "
    detail = detail[len(prefix) :] if detail.startswith(prefix) else detail
    more = f" ({len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return (
        f"{image.path} is damaged: {detail.rstrip('.')}{more}; 'vdictl check' lists every "
        "problem and 'vdictl repair' fixes the map."
    )


def require_sound(paths: Iterable[Path]) -> None:
    """Raise ImageCorruptError (one sentence) when any image's block map is damaged."""
    for path in paths:
        with open_image(path) as image:
            problem = damage_sentence(image)
        if problem is not None:
            raise ImageCorruptError(problem)
