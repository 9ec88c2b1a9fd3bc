"""Export the guest-visible content of a chain as a raw disk image.

The output is written to a temporary file beside the target, flushed and renamed into place,
so an interrupted export never leaves a file that looks complete. The copy runs through the
shared pipeline (:mod:`vdigui.engine.copier`), which reads back and compares what it wrote.
Blocks the guest sees as zeros (FREE, ZERO, or allocated but all zero) are not written, which
leaves holes: the raw file is sparse wherever the host filesystem supports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdigui.engine import fileio
from vdigui.engine.chain import DiskChain
from vdigui.engine.copier import TempOutput, copy_blocks
from vdigui.engine.errors import VdiError, VerificationError
from vdigui.engine.format import BLOCK_ZERO
from vdigui.engine.operations._rewrite import source_spec
from vdigui.engine.operations.safefile import commit_new, commit_replace, temp_path_beside
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress

CANCELLED = "Cancelled: no output file was written."


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote: ``data_blocks`` blocks of data, the rest left as holes.

    ``verified`` is True when every block written was read back and matched, None when
    verification was off.
    """

    path: Path
    disk_size: int
    data_blocks: int
    hole_blocks: int
    verified: bool | None = None


def export_raw(
    chain: DiskChain,
    out: Path | str,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Write the guest content of ``chain`` to the raw file ``out``.

    The blocks go through the copy pipeline (:mod:`vdigui.engine.copier`); with ``verify``
    each written run is read back and compared with the bytes read from the chain.

    Raises:
        VdiError: ``out`` exists (and ``overwrite`` is false) or cannot be written.
        VerificationError: a block reads back differently (no output file is left behind).
        OperationCancelled: cancelled; no output file is left behind.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise VdiError(f"Refusing to overwrite '{out}': the file already exists.")
    bs = chain.block_size
    total = chain.guest_blocks
    try:
        tmp = TempOutput(temp_path_beside(out))
    except OSError as exc:
        raise VdiError(f"Cannot write in '{out.parent}': {exc.strerror or exc}.") from exc
    try:
        layer, entry = chain.serving()
        needed = np.flatnonzero((layer >= 0) & (entry != BLOCK_ZERO))
        spec = source_spec(chain, needed, layer, entry)
        shown = [0]

        def report(done_jobs: int) -> None:
            done = int(needed[done_jobs - 1]) + 1
            if done > shown[0]:
                shown[0] = done
                progress(Progress("exporting", done, total, done * bs))

        outcome = copy_blocks(
            spec,
            tmp.fd,
            dst=needed.astype(np.int64) * bs,
            verify=verify,
            report=report,
            cancel=cancel,
            cancel_message=CANCELLED,
        )
        if cancel is not None:
            cancel.raise_if_cancelled(CANCELLED)
        if shown[0] < total:
            progress(Progress("exporting", total, total, total * bs))
        if outcome.mismatch is not None:
            raise VerificationError(
                f"Verification failed: guest block {int(needed[outcome.mismatch])} of the "
                f"export '{out.name}' reads back differently; the export was deleted."
            )
        fileio.ftruncate(tmp.fd, chain.disk_size)
        tmp.sync()
        if overwrite:
            commit_replace(tmp.path, out)
        else:
            commit_new(tmp.path, out)
        tmp.close()
    except BaseException:
        tmp.discard()
        raise
    return ExportResult(
        out, chain.disk_size, outcome.stored, total - outcome.stored, True if verify else None
    )
