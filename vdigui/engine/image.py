"""One VDI file: open, read blocks, write with VirtualBox's allocation rules, create.

Ownership: a :class:`VdiImage` owns one OS file descriptor, opened read-only unless
``writable=True`` is asked for, and closes it in :meth:`VdiImage.close` (or on leaving a
``with`` block). The block map is held in memory as a numpy ``uint32`` array and written back
entry by entry, so a crash never leaves a half-written map.

Write ordering (docs/vdi-format.md §2.2 and §2.5): data first, flushed; then the header and the map
entry, flushed. A new block goes to slot ``cBlocksAllocated`` and carries the content the guest saw
there before (the parent's data in a differencing image). An all-zero block written into a FREE
block of a differencing image becomes a persisted ZERO entry: leaving it FREE would re-expose the
parent's old data after a reopen (VirtualBox's gh-850 bug).
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np

from vdigui.engine import fileio, sniff
from vdigui.engine import format as fmt
from vdigui.engine.errors import ImageCorruptError, VdiError
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO, ImageType, VdiHeader


def is_all_zero(data: bytes | memoryview) -> bool:
    """Whether every byte of ``data`` is zero (one memcmp against a cached zero buffer)."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    return data == _zeros(len(data))


_ZERO_CACHE: dict[int, bytes] = {}


def _zeros(size: int) -> bytes:
    block = _ZERO_CACHE.get(size)
    if block is None:
        block = bytes(size)
        if len(_ZERO_CACHE) < 8:
            _ZERO_CACHE[size] = block
    return block


def zeros(size: int) -> bytes:
    """A shared immutable all-zero buffer of ``size`` bytes."""
    return _zeros(size)


class VdiImage:
    """An open VDI file.

    Attributes:
        path: the file.
        header: the header as last read or written.
        block_map: uint32 entry per map slot (``header.blocks`` entries); treat as read-only
            outside this class.
        writable: whether the file was opened for writing.
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        header: VdiHeader,
        block_map: np.ndarray,
        writable: bool,
        file_size: int,
    ) -> None:
        self.path = path
        self._fd = fd
        self.header = header
        self.block_map = block_map
        self.writable = writable
        self.file_size = file_size
        self._max_slot: tuple[np.ndarray, int] | None = None

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self._fd >= 0:
            fileio.close(self._fd)
            self._fd = -1

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._fd < 0

    def __enter__(self) -> VdiImage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VdiImage({str(self.path)!r}, {self.header.image_type.label})"

    @property
    def fd(self) -> int:
        """The raw descriptor, for operations that stream slots (kept open by this object)."""
        return self._fd

    # -- geometry -------------------------------------------------------------------------
    @property
    def guest_blocks(self) -> int:
        """Blocks that hold guest data: ceil(disk_size / block_size) (cBlocks may be larger)."""
        h = self.header
        return min(h.blocks, -(-h.disk_size // h.block_size))

    @property
    def uuid(self) -> uuidlib.UUID:
        """uuidCreate: the medium's identity."""
        return self.header.uuid

    @property
    def parent_uuid(self) -> uuidlib.UUID:
        """uuidLinkage: the parent's uuidCreate (null for a base)."""
        return self.header.parent_uuid

    @property
    def is_differencing(self) -> bool:
        """Whether reads of FREE blocks fall through to a parent."""
        return self.header.is_differencing

    def entry(self, block: int) -> int:
        """The raw map entry of guest block ``block``."""
        return int(self.block_map[block])

    def allocated_mask(self) -> np.ndarray:
        """Bool per guest block: the block has a slot in this file."""
        return fmt.is_allocated(self.block_map[: self.guest_blocks])

    # -- reading --------------------------------------------------------------------------
    def slot_in_file(self, slot: int) -> bool:
        """Whether slot ``slot`` lies completely inside the file."""
        h = self.header
        return h.slot_offset(slot) + h.block_size <= self.file_size

    def read_slot(self, slot: int, block: int | None = None) -> bytes:
        """The guest data stored in physical slot ``slot`` (``block_size`` bytes).

        Raises:
            ImageCorruptError: the slot lies (partly) past the end of the file.
        """
        h = self.header
        offset = h.slot_offset(slot)
        if offset + h.block_size > self.file_size:
            which = f"guest block {block}" if block is not None else "a block"
            raise ImageCorruptError(
                f"{self.path.name}: the block map sends {which} to slot {slot} at byte "
                f"{offset}, past the end of the {self.file_size}-byte file; run "
                f"'vdictl check' ({self.path})."
            )
        data = os.pread(self._fd, h.block_size, offset)
        if len(data) != h.block_size:
            raise ImageCorruptError(f"{self.path.name}: short read of slot {slot} ({self.path}).")
        return data

    def read_own_block(self, block: int) -> bytes | None:
        """This file's own content for guest block ``block``: None when FREE (ask the parent)."""
        entry = int(self.block_map[block])
        if entry == BLOCK_FREE:
            return None
        if entry == BLOCK_ZERO:
            return zeros(self.header.block_size)
        return self.read_slot(entry, block)

    def read_map_region(self) -> bytes:
        """The raw bytes of the block map as stored in the file."""
        h = self.header
        return os.pread(self._fd, h.map_size, h.offset_blocks)

    def read_raw(self, offset: int, length: int) -> bytes:
        """Raw file bytes (for hex views and backups)."""
        return os.pread(self._fd, length, offset)

    # -- writing --------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if not self.writable:
            raise VdiError(f"{self.path.name} was opened read-only; this is a bug in the caller.")

    def sync(self) -> None:
        """Flush written data and metadata to stable storage."""
        fileio.fsync(self._fd)

    def write_header(self, header: VdiHeader) -> None:
        """Write the header struct (not the banner) and adopt it."""
        self._require_writable()
        fmt.validate_header(header, self.path)
        fileio.pwrite(self._fd, fmt.pack_header(header), fmt.PREHEADER_SIZE)
        self.header = header

    def write_entries(self, blocks: np.ndarray | list[int], values: np.ndarray | list[int]) -> None:
        """Set map entries and write them to the file (contiguous runs in one write each)."""
        self._require_writable()
        blocks = np.asarray(blocks, dtype=np.int64)
        values = np.asarray(values, dtype=np.uint32)
        if blocks.size == 0:
            return
        order = np.argsort(blocks, kind="stable")
        blocks, values = blocks[order], values[order]
        self.block_map[blocks] = values
        self._max_slot = None
        breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
        for run in np.split(blocks, breaks):
            first, last = int(run[0]), int(run[-1])
            data = self.block_map[first : last + 1].astype("<u4").tobytes()
            fileio.pwrite(self._fd, data, self.header.offset_blocks + 4 * first)

    def write_whole_map(self) -> None:
        """Write the in-memory map over the file's map."""
        self._require_writable()
        self._max_slot = None  # the caller changed the array in place
        fileio.pwrite(self._fd, self.block_map.astype("<u4").tobytes(), self.header.offset_blocks)

    def write_slot(self, slot: int, data: bytes | memoryview) -> None:
        """Write one block's data into physical slot ``slot`` (no metadata change)."""
        self._require_writable()
        h = self.header
        if len(data) != h.block_size:
            raise ValueError("write_slot needs exactly one block of data")
        offset = h.slot_offset(slot)
        fileio.pwrite(self._fd, data, offset)
        self.file_size = max(self.file_size, offset + h.block_size)

    def truncate(self, size: int) -> None:
        """Cut (or extend) the file to ``size`` bytes."""
        self._require_writable()
        fileio.ftruncate(self._fd, size)
        self.file_size = size

    def max_slot(self) -> int:
        """The highest slot any entry points at, or -1.

        Cached per map array (write_block asks on every allocation, and a 2 TiB map has two
        million entries); writes through this class keep the cache right, and a map array
        replaced from outside is simply scanned again.
        """
        cached = self._max_slot
        if cached is not None and cached[0] is self.block_map:
            return cached[1]
        live = self.block_map[fmt.is_allocated(self.block_map)]
        value = int(live.max()) if live.size else -1
        self._max_slot = (self.block_map, value)
        return value

    def write_block(self, block: int, data: bytes, visible: bytes, *, durable: bool = True) -> str:
        """Write one whole guest block the way VirtualBox does.

        Args:
            block: guest block index.
            data: the new full-block content (the caller overlays partial writes on ``visible``).
            visible: what the guest sees in this block now (through the chain).
            durable: fsync data before metadata and metadata after (off for fresh temp files
                that are flushed once at the end).

        Returns:
            "in-place", "unchanged", "zero" (a ZERO entry was persisted) or "allocated".
        """
        self._require_writable()
        h = self.header
        entry = int(self.block_map[block])
        if fmt.is_allocated(entry):
            self.write_slot(entry, data)
            if durable:
                self.sync()
            return "in-place"
        if data == visible:
            return "unchanged"
        if is_all_zero(data):
            # Only reachable when what is visible is not zero: a FREE block of a differencing
            # image over non-zero parent data. Persist ZERO so the parent stays hidden.
            self.write_entries([block], [BLOCK_ZERO])
            if durable:
                self.sync()
            return "zero"
        slot = h.blocks_allocated
        if self.max_slot() >= slot:
            raise ImageCorruptError(
                f"{self.path.name}: a map entry points at slot {self.max_slot()} but "
                f"cBlocksAllocated is {slot}, so a new block would be cross-linked; run "
                f"'vdictl repair' first ({self.path})."
            )
        self.write_slot(slot, data)
        if durable:
            self.sync()
        self.write_header(h.replace(blocks_allocated=slot + 1))
        self.write_entries([block], [slot])
        self._max_slot = (self.block_map, slot)  # every other entry is below ``slot``
        if durable:
            self.sync()
        return "allocated"


def _read_map(fd: int, header: VdiHeader, path: Path) -> np.ndarray:
    # Read straight into the array: a bytes object plus a converted copy doubled the peak
    # memory of every map read (64 MiB more for an 8 TiB disk's 32 MiB map).
    entries = np.empty(header.blocks, dtype="<u4")
    view = entries.data.cast("B")
    got = 0
    while got < header.map_size:
        n = os.preadv(fd, [view[got:]], header.offset_blocks + got)
        if n <= 0:
            break
        got += n
    if got != header.map_size:
        raise ImageCorruptError(
            f"{path} is truncated: its block map is cut short by the end "
            f"of the file ({got} of {header.map_size} bytes)."
        )
    return entries.astype(np.uint32, copy=False)


def open_image(path: Path | str, *, writable: bool = False) -> VdiImage:
    """Open a VDI file, validating its header and reading its block map.

    Raises:
        HeaderError: the header fails a check (the message names the field).
        VdiError: the file cannot be opened.
    """
    path = Path(path)
    # Anything but a regular file is refused before it is opened (a FIFO named x.vdi would
    # block an open forever), and the open itself never blocks; fstat re-checks the type in
    # case the name was swapped in between.
    sniff.require_regular_file(path)
    flags = (
        (os.O_RDWR if writable else os.O_RDONLY)
        | getattr(os, "O_BINARY", 0)
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_NOCTTY", 0)
    )
    try:
        fd = fileio.open_fd(path, flags)
    except OSError as exc:
        raise VdiError(f"Cannot open {path}: {exc.strerror or exc}.") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise VdiError(
                f"{path} is {sniff.file_kind(st.st_mode)}, not a disk image file; "
                "vdigui reads only regular files."
            )
        size = st.st_size
        raw = os.pread(fd, fmt.HEADER_READ_SIZE, 0)
        header = fmt.parse_header_of_file(fd, raw, path, size)
        block_map = _read_map(fd, header, path)
    except OSError as exc:  # an I/O error: still the engine's error type
        fileio.close(fd)
        raise VdiError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    except BaseException:
        fileio.close(fd)
        raise
    return VdiImage(path, fd, header, block_map, writable, size)


@contextlib.contextmanager
def opened(path: Path | str, *, writable: bool = False) -> Iterator[VdiImage]:
    """``with opened(p) as img:`` — open_image as a context manager."""
    image = open_image(path, writable=writable)
    try:
        yield image
    finally:
        image.close()


def new_header(
    disk_size: int,
    *,
    image_type: ImageType = ImageType.DYNAMIC,
    block_size: int | None = None,
    uuid: uuidlib.UUID | None = None,
    parent: VdiHeader | None = None,
    comment: str = "",
) -> VdiHeader:
    """A header laid out the way current VirtualBox lays out new images.

    0x190 header, the map at 1 MiB, data at the next 1 MiB boundary after the map, random
    uuidCreate and uuidModify, and for a differencing image the parent's uuidCreate and
    uuidModify as uuidLinkage and uuidParentModify.
    """
    if parent is not None:
        disk_size = parent.disk_size
        image_type = ImageType.DIFFERENCING
    if block_size is None:
        # A diff takes its parent's block size unless told otherwise: a chain needs one size.
        block_size = parent.block_size if parent is not None else fmt.DEFAULT_BLOCK_SIZE
    if disk_size <= 0 or disk_size % 512:
        raise VdiError(f"Disk size {disk_size} bytes is not a positive multiple of 512.")
    if block_size & (block_size - 1) or not fmt.MIN_BLOCK_SIZE <= block_size <= fmt.MAX_BLOCK_SIZE:
        raise VdiError(
            f"Block size {block_size} bytes is not a power of two between 512 bytes and 128 MiB."
        )
    blocks = -(-disk_size // block_size)
    offset_blocks = fmt.align_up(fmt.END_OF_V1PLUS, fmt.DATA_ALIGN)
    offset_data = fmt.align_up(offset_blocks + 4 * blocks, fmt.DATA_ALIGN)
    fixed = image_type == ImageType.FIXED
    return VdiHeader(
        banner=fmt.BANNER.rstrip("\n"),
        version=fmt.VERSION_1_1,
        header_size=fmt.HEADER_V1PLUS_SIZE,
        image_type=image_type,
        flags=0,
        comment=comment,
        offset_blocks=offset_blocks,
        offset_data=offset_data,
        legacy_geometry=(0, 0, 0, 512),
        disk_size=disk_size,
        block_size=block_size,
        block_extra=0,
        blocks=blocks,
        blocks_allocated=blocks if fixed else 0,
        uuid=uuid or uuidlib.uuid4(),
        modify_uuid=uuidlib.uuid4(),
        parent_uuid=parent.uuid if parent else fmt.NULL_UUID,
        parent_modify_uuid=parent.modify_uuid if parent else fmt.NULL_UUID,
        lchs=(0, 0, 0, 512),
    )


def write_new_image(path: Path, header: VdiHeader, *, preallocate: bool = False) -> None:
    """Write an empty image with ``header`` to ``path`` (which must not exist), flushed.

    A fixed header gets the identity map and a file preallocated to its full size; any other
    gets an all-FREE map. The caller renames temp files into place; this writes in place.
    """
    fixed = header.image_type == ImageType.FIXED
    if fixed:
        block_map = np.arange(header.blocks, dtype="<u4")
    else:
        block_map = np.full(header.blocks, BLOCK_FREE, dtype="<u4")
    fd = fileio.open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        banner = header.banner if header.banner.endswith("\n") else header.banner + "\n"
        fileio.pwrite(fd, fmt.pack_preheader(banner, header.version), 0)
        fileio.pwrite(fd, fmt.pack_header(header), fmt.PREHEADER_SIZE)
        fileio.pwrite(fd, block_map.tobytes(), header.offset_blocks)
        end = header.expected_file_size(header.blocks if fixed else 0)
        fileio.ftruncate(fd, end)
        if fixed and preallocate:
            fileio.fallocate(fd, header.offset_data, end - header.offset_data)
        fileio.fsync(fd)
    finally:
        fileio.close(fd)


def create_image(
    path: Path | str,
    disk_size: int = 0,
    *,
    fixed: bool = False,
    parent: Path | str | VdiHeader | None = None,
    block_size: int | None = None,
    uuid: uuidlib.UUID | None = None,
    comment: str = "",
) -> VdiHeader:
    """Create a dynamic, fixed or differencing image at ``path`` atomically.

    The file is written beside the target under a temporary name, flushed, and renamed into
    place, so a crash leaves either nothing or a complete image. An existing file is never
    overwritten.
    """
    path = Path(path)
    if path.exists():
        raise VdiError(f"Refusing to create '{path}': a file of that name already exists.")
    parent_header: VdiHeader | None
    if parent is None or isinstance(parent, VdiHeader):
        parent_header = parent
    else:
        parent_header = fmt.read_header(parent)
    header = new_header(
        disk_size,
        image_type=ImageType.FIXED if fixed else ImageType.DYNAMIC,
        block_size=block_size,
        uuid=uuid,
        parent=parent_header,
        comment=comment,
    )
    tmp = path.with_name(f".{path.name}.vdigui-tmp")
    fileio.unlink(tmp, missing_ok=True)
    try:
        write_new_image(tmp, header, preallocate=fixed)
        fileio.link(tmp, path)  # fails if path appeared meanwhile: never overwrite
    finally:
        fileio.unlink(tmp, missing_ok=True)
    fsync_dir(path.parent)
    return header


def fsync_dir(folder: Path) -> None:
    """Flush a directory so renames in it survive power loss (no-op where unsupported)."""
    fileio.fsync_dir(folder)
