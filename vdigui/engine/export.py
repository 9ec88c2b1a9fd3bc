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
from vdigui.engine.image import BackgroundFlusher, VdiImage, fsync_dir, is_all_zero
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
        os.pwrite(out_fd, data, out_offset)
        return True
    os.pwrite(out_fd, head, out_offset)
    copy_range(layer.fd, layer.header.slot_offset(slot) + len(head), out_fd,
               out_offset + len(head), length - len(head))
    return True


def copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, length: int) -> None:
    """Copy bytes between files in the kernel where possible (copy_file_range), else by hand."""
    while length > 0:
        done = 0
        if _KERNEL_COPY[0]:
            try:
                done = os.copy_file_range(src_fd, dst_fd, length, src_offset, dst_offset)
            except OSError:
                _KERNEL_COPY[0] = False
        if done <= 0:
            chunk = os.pread(src_fd, min(length, 8 << 20), src_offset)
            if not chunk:
                raise VdiError("Unexpected end of file while copying data.")
            done = os.pwrite(dst_fd, chunk, dst_offset)
        src_offset += done
        dst_offset += done
        length -= done


_KERNEL_COPY = [hasattr(os, "copy_file_range")]


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
        os.ftruncate(fd, chain.disk_size)
        flusher.finish()
        os.fsync(fd)
        os.close(fd)
        fd = -1
        tmp.replace(out)
        fsync_dir(out.parent)
    except BaseException:
        flusher.finish()
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return ExportResult(out, chain.disk_size, written, total - written)
