"""Export the guest-visible content of a chain as a raw disk image.

The output is written to a temporary file beside the target, flushed and renamed into place,
so an interrupted export never leaves a file that looks complete. Blocks the guest sees as
zeros (FREE, ZERO, or allocated but all zero) are not written, which leaves holes: the raw
file is sparse wherever the host filesystem supports it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from vdigui.engine.chain import DiskChain
from vdigui.engine.errors import VdiError
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO
from vdigui.engine.image import fsync_dir, is_all_zero
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote: ``data_blocks`` blocks of data, the rest left as holes."""

    path: Path
    disk_size: int
    data_blocks: int
    hole_blocks: int


def export_raw(chain: DiskChain, out: Path | str, *, progress: ProgressFn = no_progress,
               cancel: CancelToken | None = None, overwrite: bool = False) -> ExportResult:
    """Write the guest content of ``chain`` to the raw file ``out``.

    Raises:
        VdiError: ``out`` exists (and ``overwrite`` is false) or cannot be written.
        OperationCancelled: cancelled; no output file is left behind.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise VdiError(f"Refusing to overwrite '{out}': the file already exists.")
    tmp = out.with_name(f".{out.name}.vdigui-tmp")
    bs = chain.block_size
    total = chain.guest_blocks
    written = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise VdiError(f"Cannot write '{tmp}': {exc.strerror or exc}.") from exc
    try:
        serving = chain.serving_layers()
        for block in range(total):
            if cancel is not None:
                cancel.raise_if_cancelled("Cancelled: no output file was written.")
            layer_index = int(serving[block])
            if layer_index >= 0:
                layer = chain.layers[layer_index]
                entry = int(layer.block_map[block])
                if entry not in (BLOCK_FREE, BLOCK_ZERO):
                    data = layer.read_slot(entry, block)
                    if not is_all_zero(data):
                        length = min(bs, chain.disk_size - block * bs)
                        os.pwrite(fd, data[:length] if length < bs else data, block * bs)
                        written += 1
            progress(Progress("exporting", block + 1, total, (block + 1) * bs))
        os.ftruncate(fd, chain.disk_size)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        tmp.replace(out)
        fsync_dir(out.parent)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return ExportResult(out, chain.disk_size, written, total - written)
