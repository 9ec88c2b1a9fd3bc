"""Convert an image in place between fixed and dynamic, keeping its identity.

Why "in place" means "rebuild beside, then swap": the .vbox refers to the disk by uuidCreate and
file name, so both must survive; and an image half rewritten in place would be neither fixed nor
dynamic. So the new layout is written to a hidden temporary file beside the original, with the
same uuidCreate, uuidModify, parent UUIDs, comment and geometry, verified against the original's
guest content, and renamed over it atomically. Until that rename the original is untouched; after
it the new file is complete. Free space is checked up front, because the old and new file
coexist until the swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vdigui.engine.chain import open_paths, resolve_chain
from vdigui.engine.errors import OperationRefused, VdiError
from vdigui.engine.format import ImageType, is_allocated
from vdigui.engine.image import open_image
from vdigui.engine.operations._rewrite import rewrite_beside
from vdigui.engine.operations.inuse import busy_reasons, in_place_refusals, take_exclusive_lock
from vdigui.engine.operations.preflight import check_writable_inputs, sweep_leftovers
from vdigui.engine.operations.safefile import (
    NOTHING_CHANGED,
    FileStamp,
    hard_link_warning,
    replace_original,
    require_unchanged,
)
from vdigui.engine.operations.space import SpacePlan, free_space, space_refusal
from vdigui.engine.progress import CancelToken, ProgressFn, no_progress
from vdigui.engine.sniff import require_regular_file

Target = Literal["fixed", "dynamic"]


@dataclass(frozen=True, slots=True)
class ConvertPlan:
    """What a conversion will do. A plan with refusals cannot run.

    Attributes:
        path: the image converted.
        to: "fixed" or "dynamic".
        from_type: its type now ("dynamic", "fixed", "differencing", "undo").
        disk_size: the virtual disk size.
        block_size: bytes per block.
        data_blocks: blocks holding a slot now (the most a dynamic result stores).
        size_before: the file's size now.
        size_after: the new file's size: exact for fixed, an upper bound for dynamic.
        space_needed: host bytes the new file needs while both exist.
        space_free: host bytes free beside the image.
        refusals: sentences saying why it cannot run (empty: it can).
        warnings: sentences worth reading first.
        stamp: the file's state when planned.
    """

    path: Path
    to: Target
    from_type: str
    disk_size: int
    block_size: int
    data_blocks: int
    size_before: int
    size_after: int
    space_needed: int
    space_free: int
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]
    stamp: FileStamp

    @property
    def space(self) -> SpacePlan:
        """The space figures every plan states (the old file is replaced, not kept)."""
        return SpacePlan.without_undo(
            self.path, self.size_before, self.size_after, self.space_needed
        )

    @property
    def can_run(self) -> bool:
        """Whether nothing refuses the conversion."""
        return not self.refusals


@dataclass(frozen=True, slots=True)
class ConvertResult:
    """What a conversion did.

    Attributes:
        path: the image (same name, same uuidCreate and uuidModify).
        to: the new type.
        size_before: file size before.
        size_after: file size after.
        stored_blocks: blocks of data in the new file (every block when fixed).
        zero_blocks: blocks that read as zeros (not stored when dynamic).
        hash: the guest digest (XXH3-128 per block, GuestDigest).
        verified: True when the new file was re-read and matched; None with verify off.
    """

    path: Path
    to: Target
    size_before: int
    size_after: int
    stored_blocks: int
    zero_blocks: int
    hash: str | None
    verified: bool | None


def plan_convert(path: Path | str, to: Target) -> ConvertPlan:
    """Plan converting ``path`` to a fixed or dynamic image. Fast and read-only.

    Raises:
        VdiError: the image cannot be read at all, or ``to`` is not "fixed" or "dynamic".
    """
    path = Path(path)
    if to not in ("fixed", "dynamic"):
        raise VdiError(f"Cannot convert to '{to}': choose fixed or dynamic.")
    require_regular_file(path)  # missing, a FIFO, a device, a link loop: no hang
    refusals: list[str] = []
    warnings: list[str] = []
    stamp = FileStamp.of(path)
    with open_image(path) as image:
        h = image.header
        data_blocks = int(np.count_nonzero(is_allocated(image.block_map)))
        size_before = image.file_size
    from_type = h.image_type.label
    if h.is_differencing:
        if to == "fixed":
            refusals.append(
                f"'{path.name}' is a differencing image: its unallocated blocks "
                "show its parent's data, so it cannot become a fixed image. Clone it "
                "with 'vdictl clone --fixed' for a standalone fixed copy."
            )
        else:
            refusals.append(
                f"'{path.name}' is a differencing image, which is already stored "
                "dynamically; use 'vdictl compact' to shrink it."
            )
    elif (h.image_type == ImageType.FIXED) == (to == "fixed"):
        refusals.append(f"'{path.name}' is already a {from_type} image.")
    if to == "fixed":
        size_after = h.offset_data + h.blocks * h.block_size
    else:
        size_after = h.offset_data + min(data_blocks, h.blocks) * h.block_size
    if not refusals:
        # Only a base reaches here; its chain is itself, but a broken header shows now.
        resolution = resolve_chain(path)
        if resolution.error is not None:
            refusals.append(str(resolution.error))
    free = free_space(path.parent)
    refusal = space_refusal(path.parent, size_after, free, f"the converted copy of '{path.name}'")
    if refusal:
        refusals.append(refusal)
    refusals.extend(in_place_refusals(path, "the converted image is built beside the original"))
    if not refusals:  # a damaged map, and what os.access misses (root, immutable, ro fs)
        try:
            check_writable_inputs([path], folder=path.resolve().parent)
        except OperationRefused as exc:
            refusals.append(str(exc))
    warnings.extend(hard_link_warning(path))
    if to == "fixed":
        warnings.append(
            f"The fixed image takes {size_after} bytes on the host whatever the guest stores."
        )
    return ConvertPlan(
        path=path,
        to=to,
        from_type=from_type,
        disk_size=h.disk_size,
        block_size=h.block_size,
        data_blocks=data_blocks,
        size_before=size_before,
        size_after=size_after,
        space_needed=size_after,
        space_free=free,
        refusals=tuple(refusals),
        warnings=tuple(warnings),
        stamp=stamp,
    )


def run_convert(
    plan: ConvertPlan,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    verify: bool = True,
) -> ConvertResult:
    """Run a conversion plan: build beside, verify, swap atomically.

    Raises:
        OperationRefused: the plan has refusals, or the file changed or is now in use.
        OperationCancelled: cancelled; the original is untouched and no file is left behind.
        VerificationError: the new file reads differently (it is deleted; the original kept).
    """
    if plan.refusals:
        raise OperationRefused(" ".join(plan.refusals))
    require_unchanged(plan.path, plan.stamp)
    reasons = busy_reasons(plan.path)
    if reasons:
        raise OperationRefused(" ".join(reasons))
    # Rebuild beside the real file: replacing a symlink would leave its target stale.
    target = plan.path.resolve()
    sweep_leftovers(target.parent)  # an interrupted run's temp file (preflight)
    with open_paths([target], writable_top=True) as chain:
        # Writable only to hold an exclusive lock: nothing writes the original.
        take_exclusive_lock(chain.top.fd, plan.path)
        header = chain.top.header.replace(
            image_type=ImageType.FIXED if plan.to == "fixed" else ImageType.DYNAMIC
        )
        stats, verified = rewrite_beside(
            chain,
            target,
            header,
            keep_parent=False,
            progress=progress,
            cancel=cancel,
            verify=verify,
            cancel_message=NOTHING_CHANGED,
            phase="converting blocks",
            commit=lambda tmp: replace_original(tmp, target, plan.stamp),
            failure=lambda problem: (
                f"the converted '{plan.path.name}' reads differently "
                f"({problem}); it was deleted and the original is "
                "unchanged."
            ),
        )
    return ConvertResult(
        path=plan.path,
        to=plan.to,
        size_before=plan.size_before,
        size_after=stats.file_size,
        stored_blocks=stats.stored,
        zero_blocks=stats.zero_blocks,
        hash=stats.source_hash,
        verified=verified,
    )
