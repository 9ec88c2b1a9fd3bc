"""Differencing chains: resolve parents by UUID, read through the layers, write into the top.

A chain is a base image and zero or more differencing images, each linked to its parent by
uuidLinkage = parent's uuidCreate. Reading a guest block asks the top layer first: an
allocated block is read from its slot, ZERO reads as zeros without asking further, FREE falls
through to the next layer down; if no layer has the block it reads as zeros
(docs/vdi-format.md §2.1).

Parents are found by UUID among search folders (by default the image's folder, the VM folder
and its snapshot folder), never by file name: VirtualBox names differencing images after their
own UUID and may keep the base anywhere.
"""

from __future__ import annotations

import contextlib
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np

from vdigui.engine import format as fmt
from vdigui.engine.errors import ChainError, ChainLoopError, MissingParentError, VdiError
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO, VdiHeader
from vdigui.engine.image import VdiImage, open_image, zeros
from vdigui.engine.sniff import regular_file_problem

#: Settings files VirtualBox keeps beside the disks; their presence marks a VM folder.
SNAPSHOT_FOLDER_NAMES = ("Snapshots",)


def default_search_dirs(image_path: Path) -> tuple[Path, ...]:
    """The image's folder, the VM folder and its snapshot folder, existing ones only."""
    folder = image_path.resolve().parent
    dirs = [folder]
    if folder.name.lower() == "snapshots":
        dirs.append(folder.parent)
    else:
        dirs.extend(folder / name for name in SNAPSHOT_FOLDER_NAMES)
    return tuple(d for d in dict.fromkeys(dirs) if d.is_dir())


@dataclass
class ImageIndex:
    """uuidCreate -> paths of the VDI files found in some folders (header reads only)."""

    folders: tuple[Path, ...]
    by_uuid: dict[uuidlib.UUID, list[Path]] = field(default_factory=dict)
    headers: dict[Path, VdiHeader] = field(default_factory=dict)
    unreadable: dict[Path, VdiError] = field(default_factory=dict)

    @classmethod
    def scan(cls, folders: Iterable[Path], extra_files: Iterable[Path] = ()) -> ImageIndex:
        """Read the header of every ``*.vdi`` in ``folders`` (not recursive) and ``extra_files``."""
        folder_list = tuple(dict.fromkeys(Path(f).resolve() for f in folders))
        index = cls(folder_list)
        files: list[Path] = []
        for folder in folder_list:
            with contextlib.suppress(OSError):
                files.extend(
                    sorted(
                        p for p in folder.iterdir() if p.suffix.lower() == ".vdi" and p.is_file()
                    )
                )
        files.extend(Path(p).resolve() for p in extra_files)
        for path in dict.fromkeys(files):
            index.add(path)
        return index

    def add(self, path: Path) -> None:
        """Index one file (its header error is remembered, not raised)."""
        path = path.resolve()
        if path in self.headers or path in self.unreadable:
            return
        try:
            header = fmt.read_header(path)
        except VdiError as exc:
            self.unreadable[path] = exc
            return
        self.headers[path] = header
        self.by_uuid.setdefault(header.uuid, []).append(path)

    def find(self, uuid: uuidlib.UUID) -> Path | None:
        """The first file whose uuidCreate is ``uuid``."""
        paths = self.by_uuid.get(uuid)
        return paths[0] if paths else None


@dataclass(frozen=True, slots=True)
class ChainResolution:
    """The files of a chain as far as they could be found (never raises).

    Attributes:
        paths: base first, leaf last; only the part that could be resolved.
        headers: the header of each path.
        error: why resolution stopped early, or None for a complete chain.
    """

    paths: tuple[Path, ...]
    headers: tuple[VdiHeader, ...]
    error: VdiError | None


def resolve_chain(
    leaf: Path | str, search_dirs: Sequence[Path] | None = None, index: ImageIndex | None = None
) -> ChainResolution:
    """Follow uuidLinkage from ``leaf`` down to a base, by header reads only."""
    problem = regular_file_problem(leaf)  # a link loop would make resolve() raise
    if problem is not None:
        return ChainResolution((), (), VdiError(problem))
    leaf = Path(leaf).resolve()
    dirs = tuple(search_dirs) if search_dirs is not None else default_search_dirs(leaf)
    try:
        leaf_header = fmt.read_header(leaf)
    except VdiError as exc:
        return ChainResolution((), (), exc)
    if index is None:
        index = ImageIndex.scan(dirs)
    paths, headers = [leaf], [leaf_header]
    seen = {leaf_header.uuid}
    current, header = leaf, leaf_header
    while header.parent_uuid != fmt.NULL_UUID:
        parent_path = index.find(header.parent_uuid)
        if parent_path is None:
            err: VdiError = MissingParentError(str(header.parent_uuid), current, index.folders)
            return ChainResolution(tuple(reversed(paths)), tuple(reversed(headers)), err)
        parent = index.headers[parent_path]
        if parent.uuid in seen:
            err = ChainLoopError(
                f"The chain of '{leaf.name}' loops: '{parent_path.name}' "
                f"({{{parent.uuid}}}) is its own ancestor."
            )
            return ChainResolution(tuple(reversed(paths)), tuple(reversed(headers)), err)
        if parent.disk_size != header.disk_size:
            err = ChainError(
                f"'{current.name}' has a disk size of {header.disk_size} bytes but "
                f"its parent '{parent_path.name}' has {parent.disk_size}; a chain "
                "needs equal sizes."
            )
            return ChainResolution(tuple(reversed(paths)), tuple(reversed(headers)), err)
        if parent.block_size != header.block_size:
            err = ChainError(
                f"'{current.name}' uses {header.block_size}-byte blocks but its "
                f"parent '{parent_path.name}' uses {parent.block_size}; vdigui "
                "reads only chains with one block size."
            )
            return ChainResolution(tuple(reversed(paths)), tuple(reversed(headers)), err)
        seen.add(parent.uuid)
        paths.append(parent_path)
        headers.append(parent)
        current, header = parent_path, parent
    if header.image_type == fmt.ImageType.DIFFERENCING:
        err = ChainError(
            f"'{current.name}' is the base of the chain (it links to no parent) "
            "but its header says it is a differencing image."
        )
        return ChainResolution(tuple(reversed(paths)), tuple(reversed(headers)), err)
    return ChainResolution(tuple(reversed(paths)), tuple(reversed(headers)), None)


class DiskChain:
    """Open layers of one virtual disk, base first. Owns (and closes) the layer images."""

    def __init__(self, layers: Sequence[VdiImage]) -> None:
        if not layers:
            raise ChainError("A chain needs at least one image.")
        self.layers: tuple[VdiImage, ...] = tuple(layers)
        base = self.layers[0].header
        # VirtualBox rounds a cbDisk that is not a multiple of 512 down (docs/vdi-format.md
        # §1.5): the guest never sees the odd tail, so neither do reads, exports or clones.
        self.disk_size = base.disk_size // 512 * 512
        self.block_size = base.block_size
        self.guest_blocks = -(-self.disk_size // self.block_size)
        self._serving: np.ndarray | None = None

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close every layer."""
        for layer in self.layers:
            layer.close()

    def __enter__(self) -> DiskChain:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def top(self) -> VdiImage:
        """The newest layer (the one the guest writes to)."""
        return self.layers[-1]

    @property
    def base(self) -> VdiImage:
        """The base image."""
        return self.layers[0]

    # -- layer maps -----------------------------------------------------------------------
    def entries(self) -> np.ndarray:
        """uint32 array (layers x guest blocks) of raw map entries, base row first."""
        rows = []
        for layer in self.layers:
            row = layer.block_map[: self.guest_blocks]
            if row.size < self.guest_blocks:  # a layer with fewer map entries: FREE beyond
                row = np.concatenate(
                    [row, np.full(self.guest_blocks - row.size, BLOCK_FREE, dtype=np.uint32)]
                )
            rows.append(row)
        return np.vstack(rows)

    def serving_layers(self, upto: int | None = None) -> np.ndarray:
        """int16 per guest block: the index of the layer that serves it, -1 when none does.

        ``upto`` limits the view to layers ``0..upto-1`` (what a layer's parent chain shows).
        A ZERO entry serves its block (as zeros); FREE falls through.
        """
        if upto is None and self._serving is not None:
            return self._serving
        entries = self.entries()
        if upto is not None:
            entries = entries[:upto]
        result = np.full(self.guest_blocks, -1, dtype=np.int16)
        for index in range(entries.shape[0]):
            result[entries[index] != BLOCK_FREE] = index
        if upto is None:
            self._serving = result
        return result

    def serving(self, upto: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per guest block: the index of the layer serving it (-1 = none) and that layer's entry.

        What every copy loop needs to read the guest view without walking maps block by
        block; ``upto`` restricts the view to the first ``upto`` layers (what a layer's
        parents show). The entries are views of the layers' maps, never a copy of all rows.
        """
        total = self.guest_blocks
        layers = self.layers if upto is None else self.layers[:upto]
        layer = np.full(total, -1, dtype=np.int16)
        entry = np.full(total, BLOCK_FREE, dtype=np.uint32)
        for index, image in enumerate(layers):
            row = image.block_map[:total]
            mask = row != BLOCK_FREE
            layer[: row.size][mask] = index
            entry[: row.size][mask] = row[mask]
        return layer, entry

    def invalidate(self) -> None:
        """Forget cached per-block data after a write changed a map."""
        self._serving = None

    # -- reading --------------------------------------------------------------------------
    def read_block(self, block: int, upto: int | None = None) -> bytes:
        """The full guest block ``block`` as the chain (or its first ``upto`` layers) shows it."""
        top = len(self.layers) if upto is None else upto
        for layer in reversed(self.layers[:top]):
            if block >= layer.header.blocks:
                continue
            entry = int(layer.block_map[block])
            if entry == BLOCK_FREE:
                continue
            if entry == BLOCK_ZERO:
                return zeros(self.block_size)
            return layer.read_slot(entry, block)
        return zeros(self.block_size)

    def read(self, offset: int, length: int) -> bytes:
        """Guest bytes ``[offset, offset+length)``; the range must lie inside the disk."""
        if offset < 0 or length < 0 or offset + length > self.disk_size:
            raise VdiError(
                f"Read of {length} bytes at {offset} is outside the {self.disk_size}-byte disk."
            )
        bs = self.block_size
        out = bytearray()
        pos = offset
        end = offset + length
        while pos < end:
            block, within = divmod(pos, bs)
            take = min(bs - within, end - pos)
            data = self.read_block(block)
            out += data[within : within + take]
            pos += take
        return bytes(out)

    @property
    def size(self) -> int:
        """Guest disk size (so a chain can serve as a guest-filesystem reader)."""
        return self.disk_size

    # -- writing --------------------------------------------------------------------------
    def write(self, offset: int, data: bytes, *, durable: bool = True) -> None:
        """Write guest bytes into the top layer with VirtualBox's allocation rules."""
        top = self.top
        if not top.writable:
            raise VdiError(f"{top.path.name} was opened read-only; open the chain writable.")
        if offset < 0 or offset + len(data) > self.disk_size:
            raise VdiError(
                f"Write of {len(data)} bytes at {offset} is outside the {self.disk_size}-byte disk."
            )
        bs = self.block_size
        pos, end, src = offset, offset + len(data), 0
        while pos < end:
            block, within = divmod(pos, bs)
            take = min(bs - within, end - pos)
            visible = self.read_block(block)
            merged = bytearray(visible)
            merged[within : within + take] = data[src : src + take]
            # Bytes past the disk end in the last block are always zeros (docs/vdi-format.md §1.11).
            tail = self.disk_size - block * bs
            if tail < bs:
                merged[tail:] = bytes(bs - tail)
            top.write_block(block, bytes(merged), visible, durable=durable)
            pos += take
            src += take
        self.invalidate()


def open_chain(
    leaf: Path | str,
    *,
    search_dirs: Sequence[Path] | None = None,
    writable: bool = False,
    index: ImageIndex | None = None,
) -> DiskChain:
    """Open the chain that ends at ``leaf`` (only the top layer writable, if asked).

    Raises:
        MissingParentError: a parent UUID was found in no search folder.
        ChainError: a loop, a size mismatch or a base whose header says differencing.
        HeaderError: a header fails its checks.
    """
    resolution = resolve_chain(leaf, search_dirs, index)
    if resolution.error is not None:
        raise resolution.error
    return open_paths(resolution.paths, writable_top=writable)


def open_paths(paths: Sequence[Path], *, writable_top: bool = False) -> DiskChain:
    """Open already-resolved chain files (base first); closes what it opened on failure."""
    layers: list[VdiImage] = []
    try:
        for i, path in enumerate(paths):
            layers.append(open_image(path, writable=writable_top and i == len(paths) - 1))
    except BaseException:
        for layer in layers:
            layer.close()
        raise
    return DiskChain(layers)
