"""Clone: flatten a chain into a new standalone base image (``VBoxManage clonemedium``).

Semantics (reference section 5): the clone is a base (no parent) holding what the guest sees
through the whole chain, dynamic unless ``fixed`` is asked, with its blocks in guest order and
all-zero or unallocated blocks not stored. It gets a new uuidCreate (or the source's with
``keep_uuid``, which VirtualBox would reject if both were registered) and a fresh uuidModify.

With ``fs_aware`` the blocks the guest's filesystems do not use are not stored either, even
when they hold stale data (the guest sees zeros there); verification then requires the clone's
filesystems to read back with the same usage map and every used block to read as the source's.

Safety: the source is opened read-only; the clone is written to a hidden temporary file beside
DEST, compared block by block as it is written, flushed, its structure checked, and only then
linked into place, never over an existing file. Cancel or failure removes the temporary file,
so nothing is left behind.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vdigui.engine import format as fmt
from vdigui.engine.chain import open_paths, resolve_chain
from vdigui.engine.check import require_sound
from vdigui.engine.errors import (
    ImageCorruptError,
    OperationRefused,
    VdiError,
)
from vdigui.engine.format import BLOCK_ZERO, ImageType
from vdigui.engine.guestfs import UsageMap
from vdigui.engine.image import new_header
from vdigui.engine.operations._rewrite import rewrite_beside
from vdigui.engine.operations.inuse import in_use_reasons
from vdigui.engine.operations.preflight import check_writable_inputs, sweep_leftovers
from vdigui.engine.operations.safefile import FileStamp, commit_new, require_unchanged
from vdigui.engine.operations.space import SpacePlan, free_space, space_refusal
from vdigui.engine.progress import CancelToken, ProgressFn, no_progress
from vdigui.engine.usage_report import chain_usage, same_usage, unused_mask

CANCELLED = "Cancelled: nothing was changed and no clone was left behind."


@dataclass(frozen=True, slots=True)
class ClonePlan:
    """What a clone will do. A plan with refusals cannot run.

    Attributes:
        source: the image whose guest view is cloned (the chain's leaf).
        chain_paths: the files read, base first.
        dest: the clone's path.
        fixed: preallocate every block (a fixed image) instead of a dynamic one.
        uuid: the clone's uuidCreate (new, or the source's with keep_uuid).
        keep_uuid: whether ``uuid`` is the source's.
        disk_size: the virtual disk size (the source's).
        block_size: the block size (the source's).
        guest_blocks: blocks of the virtual disk.
        data_blocks: blocks some layer stores data for: the most a dynamic clone will hold
            (all-zero ones among them are only found while copying and are not stored).
        output_size: the clone's size: exact for fixed, an upper bound for dynamic.
        space_needed: host bytes the clone may need.
        space_free: host bytes free in DEST's folder.
        refusals: sentences saying why the clone cannot run (empty: it can).
        warnings: sentences the user should read before running.
        stamps: the source files' state, so a run notices if they changed meanwhile.
        fs_aware: leave out blocks the guest filesystems do not use.
        discard_swap: with ``fs_aware``, leave out swap contents too (never hibernation).
        usage: (fs_aware) the guest usage map of the source.
        fs_blocks: (fs_aware) blocks with data the guest does not use (not stored).
    """

    source: Path
    chain_paths: tuple[Path, ...]
    dest: Path
    fixed: bool
    uuid: uuidlib.UUID
    keep_uuid: bool
    disk_size: int
    block_size: int
    guest_blocks: int
    data_blocks: int
    output_size: int
    space_needed: int
    space_free: int
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]
    stamps: tuple[FileStamp, ...]
    fs_aware: bool = False
    discard_swap: bool = False
    usage: UsageMap | None = field(default=None, compare=False, repr=False)
    fs_blocks: int = 0

    @property
    def space(self) -> SpacePlan:
        """The space figures every plan states (a new file: deleting it is the undo)."""
        return SpacePlan.without_undo(self.dest, 0, self.output_size, self.space_needed)

    @property
    def can_run(self) -> bool:
        """Whether nothing refuses the clone."""
        return not self.refusals


@dataclass(frozen=True, slots=True)
class CloneResult:
    """What a clone did.

    Attributes:
        dest: the new image.
        uuid: its uuidCreate.
        modify_uuid: its uuidModify (always fresh).
        stored_blocks: blocks of data it holds.
        zero_blocks: blocks the guest sees as zeros (not stored; written as zeros when fixed).
        file_size: its size in bytes.
        source_size: total size of the source chain's files.
        hash: the guest digest (XXH3-128 per block; the clone's too when verified).
        verified: True when the clone was re-read and matched; None with verify off.
        fs_blocks: blocks with data the guest does not use, left out (fs_aware).
    """

    dest: Path
    uuid: uuidlib.UUID
    modify_uuid: uuidlib.UUID
    stored_blocks: int
    zero_blocks: int
    file_size: int
    source_size: int
    hash: str | None
    verified: bool | None
    fs_blocks: int = 0


def _chain_paths(source: Path | str | Sequence[Path]) -> tuple[Path, tuple[Path, ...]]:
    if isinstance(source, (str, Path)):
        leaf = Path(source)
        if not leaf.exists():
            raise VdiError(f"'{leaf}' does not exist.")
        resolution = resolve_chain(leaf)
        if resolution.error is not None:
            raise resolution.error
        return leaf, resolution.paths
    paths = tuple(Path(p) for p in source)
    if not paths:
        raise VdiError("A clone needs a source image.")
    return paths[-1], paths


def plan_clone(
    source: Path | str | Sequence[Path],
    dest: Path | str,
    *,
    fixed: bool = False,
    keep_uuid: bool = False,
    fs_aware: bool = False,
    discard_swap: bool = False,
) -> ClonePlan:
    """Plan cloning ``source`` (a leaf image, or its chain's paths base first) to ``dest``.

    Fast and read-only: it reads the headers and block maps, not the data (with ``fs_aware``
    also the guest filesystems' metadata).

    Raises:
        VdiError: the source cannot be read at all (missing file, broken chain, bad header).
    """
    leaf, paths = _chain_paths(source)
    dest = Path(dest)
    refusals: list[str] = []
    warnings: list[str] = []
    with open_paths(paths) as chain:
        top = chain.top.header
        layer, entry = chain.serving()
        data = (layer >= 0) & (entry != BLOCK_ZERO)
        data_blocks = int(np.count_nonzero(data))
        usage = chain_usage(chain, discard_swap=discard_swap) if fs_aware else None
        fs_blocks = 0
        if usage is not None:
            fs_blocks = int(np.count_nonzero(data & unused_mask(usage)[: data.size]))
            data_blocks -= fs_blocks
        stamps = tuple(FileStamp.of(p) for p in paths)
        disk_size, block_size, guest_blocks = chain.disk_size, chain.block_size, chain.guest_blocks
        header = _clone_header(
            top,
            fixed=fixed,
            uuid=top.uuid if keep_uuid else None,
            disk_size=disk_size,
            block_size=block_size,
        )
    output_size = header.expected_file_size(header.blocks if fixed else data_blocks)
    folder = dest.parent
    resolved = {p.resolve() for p in paths}
    if dest.exists() or dest.is_symlink():
        if dest.resolve() in resolved:
            refusals.append(
                f"'{dest.name}' is the source itself; choose another name for the clone."
            )
        else:
            refusals.append(
                f"'{dest}' already exists; vdigui never overwrites a file with a "
                "clone. Choose another name or remove it first."
            )
    if not folder.is_dir():
        refusals.append(f"The folder '{folder}' does not exist.")
        free = 0
    else:
        free = free_space(folder)
        refusal = space_refusal(folder, output_size, free, f"the clone '{dest.name}'")
        if refusal:
            refusals.append(refusal)
    refusals.extend(in_use_reasons(paths, writers_only=True))
    if not refusals:  # a damaged source map, and what os.access misses about the folder
        try:
            require_sound(paths)
            check_writable_inputs([], folder=folder)
        except (OperationRefused, ImageCorruptError) as exc:
            refusals.append(str(exc))
    if keep_uuid:
        warnings.append(
            f"The clone keeps the source's UUID {{{top.uuid}}}: VirtualBox refuses "
            "two disks with one UUID, so never register the clone and the source "
            "at the same time."
        )
    return ClonePlan(
        source=leaf,
        chain_paths=paths,
        dest=dest,
        fixed=fixed,
        uuid=header.uuid,
        keep_uuid=keep_uuid,
        disk_size=disk_size,
        block_size=block_size,
        guest_blocks=guest_blocks,
        data_blocks=data_blocks,
        output_size=output_size,
        space_needed=output_size,
        space_free=free,
        refusals=tuple(refusals),
        warnings=tuple(warnings),
        stamps=stamps,
        fs_aware=fs_aware,
        discard_swap=discard_swap,
        usage=usage,
        fs_blocks=fs_blocks,
    )


def _clone_header(
    source: fmt.VdiHeader,
    *,
    fixed: bool,
    uuid: uuidlib.UUID | None,
    disk_size: int,
    block_size: int,
) -> fmt.VdiHeader:
    """A current-VirtualBox layout header with the source's comment and geometry.

    VirtualBox copies the comment and the geometry into a clone; the layout (1 MiB aligned map
    and data) is what current VirtualBox creates, whatever the source used.
    """
    header = new_header(
        fmt.align_up(disk_size, 512),
        image_type=ImageType.FIXED if fixed else ImageType.DYNAMIC,
        block_size=block_size,
        uuid=uuid or uuidlib.uuid4(),
    )
    header = header.replace(
        disk_size=disk_size, comment=source.comment, legacy_geometry=source.legacy_geometry
    )
    if source.lchs is not None:
        header = header.replace(lchs=source.lchs)
    return header


def run_clone(
    plan: ClonePlan,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    verify: bool = True,
) -> CloneResult:
    """Run a clone plan.

    Raises:
        OperationRefused: the plan has refusals, or the source changed since planning.
        OperationCancelled: cancelled; no file was left behind.
        VerificationError: the clone does not read back as the source (it is deleted).
    """
    if plan.refusals:
        raise OperationRefused(" ".join(plan.refusals))
    for path, stamp in zip(plan.chain_paths, plan.stamps, strict=True):
        require_unchanged(path, stamp)
    writers = in_use_reasons(plan.chain_paths, writers_only=True)
    if writers:
        raise OperationRefused(" ".join(writers))
    if plan.dest.exists():
        raise OperationRefused(
            f"'{plan.dest}' already exists; vdigui never overwrites a file with a clone."
        )
    sweep_leftovers(plan.dest.absolute().parent)  # an interrupted run's temp file (preflight)
    with open_paths(plan.chain_paths) as chain:
        header = _clone_header(
            chain.top.header,
            fixed=plan.fixed,
            uuid=plan.uuid,
            disk_size=plan.disk_size,
            block_size=plan.block_size,
        )
        usage = chain_usage(chain, discard_swap=plan.discard_swap) if plan.fs_aware else None

        def usage_after(tmp: Path) -> str | None:
            if usage is None:
                return None
            with open_paths([tmp]) as clone:
                return same_usage(usage, chain_usage(clone, discard_swap=plan.discard_swap))

        stats, verified = rewrite_beside(
            chain,
            plan.dest,
            header,
            keep_parent=False,
            progress=progress,
            cancel=cancel,
            verify=verify,
            cancel_message=CANCELLED,
            drop=None if usage is None else unused_mask(usage),
            check=usage_after,
            commit=lambda tmp: commit_new(tmp, plan.dest),
            failure=lambda problem: (
                f"the clone of '{plan.source.name}' does not read back "
                f"as the source ({problem}); it was deleted and the "
                "source is unchanged."
            ),
        )
    return CloneResult(
        dest=plan.dest,
        uuid=header.uuid,
        modify_uuid=header.modify_uuid,
        stored_blocks=stats.stored,
        zero_blocks=stats.zero_blocks,
        file_size=stats.file_size,
        source_size=sum(s.size for s in plan.stamps),
        hash=stats.source_hash,
        verified=verified,
        fs_blocks=stats.dropped_blocks,
    )
