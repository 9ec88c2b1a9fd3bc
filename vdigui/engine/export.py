"""Export the guest-visible content of a chain as a raw disk image.

The output is written to a temporary file beside the target, flushed and renamed into place,
so an interrupted export never leaves a file that looks complete. Blocks the guest sees as
zeros (FREE, ZERO, or allocated but all zero) are not written, which leaves holes: the raw
file is sparse wherever the host filesystem supports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vdigui.engine import fileio
from vdigui.engine.chain import DiskChain
from vdigui.engine.errors import VdiError
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO
from vdigui.engine.image import BackgroundFlusher, VdiImage, is_all_zero
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote: ``data_blocks`` blocks of data, the rest left as holes."""

    path: Path
    disk_size: int
    data_blocks: int
    hole_blocks: int


#: Bytes probed at the start of a block: data blocks almost always differ from zero there,
#: so the rest is copied inside the kernel without ever reaching Python.
_PROBE = 4096


def _copy_unless_zero(layer: VdiImage, slot: int, block: int, out_fd: int, out_offset: int,
                      length: int) -> bool:
    """Copy ``length`` bytes of ``slot`` to ``out_fd`` unless they are all zero.

    Returns whether anything was written.
    """
    head = layer.read_slot_part(slot, block, 0, min(_PROBE, length))
    if is_all_zero(head):
        data = layer.read_slot(slot, block)[:length]
        if is_all_zero(data):
            return False
        fileio.pwrite(out_fd, data, out_offset)
        return True
    fileio.pwrite(out_fd, head, out_offset)
    fileio.copy_range(layer.fd, layer.header.slot_offset(slot) + len(head), out_fd,
               out_offset + len(head), length - len(head))
    return True


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
        fd = fileio.open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise VdiError(f"Cannot write '{tmp}': {exc.strerror or exc}.") from exc
    flusher = BackgroundFlusher(fd)
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
                    length = min(bs, chain.disk_size - block * bs)
                    if _copy_unless_zero(layer, entry, block, fd, block * bs, length):
                        written += 1
                        flusher.wrote(length)
            progress(Progress("exporting", block + 1, total, (block + 1) * bs))
        fileio.ftruncate(fd, chain.disk_size)
        flusher.finish()
        fileio.fsync(fd)
        fileio.close(fd)
        fd = -1
        fileio.replace(tmp, out)
        fileio.fsync_dir(out.parent)
    except BaseException:
        flusher.finish()
        if fd >= 0:
            fileio.close(fd)
        fileio.unlink(tmp, missing_ok=True)
        raise
    return ExportResult(out, chain.disk_size, written, total - written)
