"""Where the space goes: every byte of every file of a VM folder (or of one image), accounted.

Each byte falls into exactly one :class:`Category`, so the categories of a file sum to its size
(its apparent size, ``st_size``); the host allocation (``st_blocks * 512``) is reported beside
it, because a sparse image can be much larger than what it costs the host.

What is read, and why: only headers, block maps, the host file's data/hole layout
(``SEEK_DATA``/``SEEK_HOLE``) and the guest filesystems' own allocation maps (through
:func:`vdigui.engine.usage_report.chain_usage`, the one rule every filesystem-aware operation
applies). Never the data blocks themselves, unless ``scan_zeros`` asks for it: accounting a
folder of 500 GiB must take seconds, not the hour a full read would.

How an image's slots are classified (first rule that applies wins, so each slot gets one):

1. ``zero_blocks``: the slot is all zero and plain compaction drops it. Knowing that a stored
   block is all zero needs its bytes; without reading them, the only cheap proof is the host
   file itself: a slot lying entirely in a hole of a sparse file reads as zeros. So by default
   this counts host holes only, and stored all-zero blocks that the host did write stay in
   the category their other properties give them (the report says so in its notes);
   ``scan_zeros=True`` reads the remaining stored blocks to find them all. ZERO map entries
   cost no bytes of the file, so they add nothing here.
2. ``hidden``: every state (snapshot or current state) that reads *through* the image to a
   later layer finds the block overwritten there (data or a ZERO entry), so only the states
   that end at this image (a snapshot's frozen disk) still see it; deleting that snapshot
   (merging the layers) frees it. An image no state reads through hides nothing.
3. ``unknown``: the guest filesystem the block belongs to was not understood (or the guest
   could not be read at all): vdigui cannot tell whether the guest uses it.
4. ``guest_unused``: the guest's filesystems, read through the chain ending at this image
   (what they wrote through), use none of the block's bytes: filesystem-aware compaction
   frees it.
5. ``guest_data``: everything else the image stores (partly used blocks are kept whole).

The rest of an image file: ``header_and_map`` (pre-header, header, block map and the
alignment before the first slot), and ``slack``: slots no map entry refers to, bytes after
the last slot and a partial slot at the end (compaction frees them).

Other files: ``undo_data`` (everything under ``.vdigui/``: the backups kept for undo and the
operation records), ``virtualbox_other`` (the settings file and its backups, saved states,
logs, NVRAM, screenshots), and ``unknown`` (anything else, including leftovers of interrupted
vdigui operations, which ``vdictl clean`` removes).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from vdigui.engine.chain import open_paths, resolve_chain
from vdigui.engine.errors import VdiError
from vdigui.engine.format import BLOCK_FREE, VdiHeader, is_allocated
from vdigui.engine.guestfs import UsageMap
from vdigui.engine.image import open_image
from vdigui.engine.operations.journal import STATE_DIR
from vdigui.engine.progress import CancelToken, ProgressFn, no_progress
from vdigui.engine.usage_report import chain_usage, zero_blocks


class Category(StrEnum):
    """Where a byte goes (the names are the JSON keys)."""

    HEADER_AND_MAP = "header_and_map"
    GUEST_DATA = "guest_data"
    GUEST_UNUSED = "guest_unused"
    ZERO_BLOCKS = "zero_blocks"
    HIDDEN = "hidden"
    SLACK = "slack"
    UNDO_DATA = "undo_data"
    VIRTUALBOX_OTHER = "virtualbox_other"
    UNKNOWN = "unknown"


CATEGORIES = tuple(Category)
_INDEX = {c: i for i, c in enumerate(CATEGORIES)}

#: What frees each category (printed beside it).
ACTIONS: dict[Category, str] = {
    Category.HEADER_AND_MAP: "nothing: the image's header and block map (only deleting the "
    "image frees them)",
    Category.GUEST_DATA: "nothing: the guest uses it (delete files inside the guest first)",
    Category.GUEST_UNUSED: "filesystem-aware compaction (vdictl compact --fs-aware)",
    Category.ZERO_BLOCKS: "compaction (vdictl compact)",
    Category.HIDDEN: "deleting the snapshot that still sees it (vdictl snapshot delete)",
    Category.SLACK: "compaction (vdictl compact)",
    Category.UNDO_DATA: "discarding the undo data (vdictl undo --discard)",
    Category.VIRTUALBOX_OTHER: "VirtualBox: discard saved states, delete old logs and "
    "settings backups",
    Category.UNKNOWN: "nothing vdigui can tell: look at the file (vdictl clean removes "
    "leftovers of interrupted operations)",
}

#: Short names for legends and hover text (the app's Space tab, the HTML report).
CATEGORY_LABELS: dict[Category, str] = {
    Category.HEADER_AND_MAP: "Header and block map",
    Category.GUEST_DATA: "Data the guest uses",
    Category.GUEST_UNUSED: "Unused by the guest",
    Category.ZERO_BLOCKS: "All-zero blocks",
    Category.HIDDEN: "Hidden by a later layer",
    Category.SLACK: "Slack",
    Category.UNDO_DATA: "vdigui's undo data",
    Category.VIRTUALBOX_OTHER: "VirtualBox's other files",
    Category.UNKNOWN: "Unknown",
}

#: What each category is, in plain words.
CATEGORY_MEANINGS: dict[Category, str] = {
    Category.HEADER_AND_MAP: "The image's header and block map: bookkeeping every image needs; "
    "only deleting the image frees it.",
    Category.GUEST_DATA: "Blocks the guest's filesystems use (its files). Deleting files inside "
    "the guest, then filesystem-aware compaction, frees them.",
    Category.GUEST_UNUSED: "Blocks the image stores but the guest's filesystems no longer use "
    "(deleted files): filesystem-aware compaction drops them.",
    Category.ZERO_BLOCKS: "Blocks the image stores that hold only zeros: compaction drops them.",
    Category.HIDDEN: "Blocks a later layer has overwritten in every state that reads through "
    "this image; only a snapshot still sees them. Deleting that snapshot frees "
    "them.",
    Category.SLACK: "Space in the image no block uses (slots nothing refers to, bytes after the "
    "last block): compaction frees it.",
    Category.UNDO_DATA: "Backups vdigui keeps so its last operation can be undone. Discarding "
    "them frees the space; that operation can then no longer be undone.",
    Category.VIRTUALBOX_OTHER: "VirtualBox's own files: the settings and their backups, saved "
    "states, logs. VirtualBox frees them (discard a saved state, "
    "delete old logs).",
    Category.UNKNOWN: "Bytes vdigui cannot classify: blocks of a filesystem it does not "
    "understand, or files it does not know.",
}

#: Suffixes (lower case) of VirtualBox's own files besides disks.
_VBOX_SUFFIXES = (
    ".vbox",
    ".vbox-prev",
    ".vbox-tmp",
    ".xml-prev",
    ".xml-tmp",
    ".sav",
    ".nvram",
    ".log",
    ".png",
)


@dataclass(frozen=True, slots=True)
class FileSpace:
    """One file's bytes by category.

    Attributes:
        path: the file.
        size: its apparent size (``st_size``); the categories sum to it.
        allocated: what it costs the host (``st_blocks * 512``).
        categories: bytes per category (every category present, zeros included).
        notes: plain sentences about how the file was accounted.
    """

    path: Path
    size: int
    allocated: int
    categories: dict[Category, int]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: path, size, allocated, categories (snake_case names), notes."""
        return {
            "path": str(self.path),
            "size": self.size,
            "allocated": self.allocated,
            "categories": {c.value: self.categories[c] for c in CATEGORIES},
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class SpaceAccount:
    """Every file of a VM folder (or one image) by category, and the totals.

    Attributes:
        root: the folder or image accounted.
        files: one entry per file, in path order.
        zeros_scanned: whether stored blocks were read to find the all-zero ones (otherwise
            ``zero_blocks`` counts host holes only).
        notes: remarks about the whole account.
    """

    root: Path
    files: tuple[FileSpace, ...]
    zeros_scanned: bool
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> dict[Category, int]:
        """Bytes per category over all files."""
        return {c: sum(f.categories[c] for f in self.files) for c in CATEGORIES}

    @property
    def size(self) -> int:
        """Apparent bytes of all files."""
        return sum(f.size for f in self.files)

    @property
    def allocated(self) -> int:
        """Host bytes of all files."""
        return sum(f.allocated for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """``{"files": [...], "total": {NAME: bytes}, ...}`` (see :meth:`FileSpace.to_dict`)."""
        return {
            "root": str(self.root),
            "files": [f.to_dict() for f in self.files],
            "total": {c.value: v for c, v in self.total.items()},
            "size": self.size,
            "allocated": self.allocated,
            "zeros_scanned": self.zeros_scanned,
            "actions": {c.value: ACTIONS[c] for c in CATEGORIES},
            "notes": list(self.notes),
        }


# -- host holes ------------------------------------------------------------------------------
def data_extents(fd: int, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(starts, ends) of the ranges of a file that hold data; None when the host cannot say.

    Everything outside them is a hole (reads as zeros, costs no host space).
    """
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                break
            return None
        end = os.lseek(fd, start, os.SEEK_HOLE)
        starts.append(start)
        ends.append(min(end, size))
        pos = end
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)


def in_holes(
    begin: np.ndarray, end: np.ndarray, extents: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """Bool per range ``[begin, end)``: it lies entirely in holes (no data range meets it)."""
    if extents is None:
        return np.zeros(begin.size, dtype=bool)
    starts, ends = extents
    if starts.size == 0:
        return np.ones(begin.size, dtype=bool)
    first = np.searchsorted(ends, begin, side="right")  # first data range ending after begin
    meets = (first < starts.size) & (starts[np.minimum(first, starts.size - 1)] < end)
    return ~meets


# -- states ------------------------------------------------------------------------------------
@dataclass
class _Layout:
    """The images to account and the states (chains, base first) that read them."""

    images: list[Path]
    states: list[list[Path]]
    #: image -> the chain ending at it (for the guest's usage), when it could be resolved.
    own_chain: dict[Path, list[Path]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _vm_layout(vm: Any) -> _Layout:
    """States of a loaded VM folder: every snapshot's disks and the current state's."""
    layout = _Layout(images=sorted(Path(p).resolve() for p in vm.images), states=[])
    leaves: list[Any] = list(vm.current_disks())
    for node in vm.iter_snapshots():
        leaves.extend(vm.disk_for_snapshot(node))
    seen: set[tuple[Path, ...]] = set()
    for leaf in leaves:
        try:
            chain = [Path(p).resolve() for p in vm.chain_for(leaf)]
        except (VdiError, OSError) as exc:
            layout.notes.append(f"A state's disk could not be followed: {exc}")
            continue
        if tuple(chain) not in seen:
            seen.add(tuple(chain))
            layout.states.append(chain)
    for state in layout.states:
        for i, path in enumerate(state):
            layout.own_chain.setdefault(path, state[: i + 1])
    for image in layout.images:
        if image in layout.own_chain:
            continue
        # No state uses it (a leftover): what opening it would show is its own chain.
        try:
            layout.own_chain[image] = [Path(p).resolve() for p in vm.chain_for(image)]
        except (VdiError, OSError):
            pass
    return layout


def _image_layout(image: Path) -> _Layout:
    """One image: the only state is the chain ending at it."""
    layout = _Layout(images=[image], states=[])
    resolution = resolve_chain(image)
    if resolution.error is None:
        chain = [Path(p).resolve() for p in resolution.paths]
        layout.states.append(chain)
        layout.own_chain[image] = chain
    else:
        layout.notes.append(
            f"The chain of '{image.name}' could not be followed: {resolution.error}"
        )
    return layout


# -- one image -----------------------------------------------------------------------------------
class _Maps:
    """Block maps of the images, each read once."""

    def __init__(self) -> None:
        self._maps: dict[Path, tuple[VdiHeader, np.ndarray]] = {}

    def get(self, path: Path) -> tuple[VdiHeader, np.ndarray]:
        if path not in self._maps:
            with open_image(path) as image:
                self._maps[path] = (image.header, np.array(image.block_map, dtype=np.uint32))
        return self._maps[path]


def hidden_blocks(
    image: Path, states: Iterable[Sequence[Path]], maps: _Maps, blocks: int
) -> np.ndarray:
    """Bool per guest block of ``image``: overwritten in every state reading through it.

    A state reads *through* the image when a later layer follows it in the state's chain;
    states that end at the image see its blocks and do not count. With no such state,
    nothing is hidden.
    """
    hidden: np.ndarray | None = None
    for chain in states:
        if image not in chain:
            continue
        at = list(chain).index(image)
        if at == len(chain) - 1:
            continue
        covered = np.zeros(blocks, dtype=bool)
        for later in chain[at + 1 :]:
            entries = maps.get(later)[1][:blocks]
            covered[: entries.size] |= entries != BLOCK_FREE
        hidden = covered if hidden is None else hidden & covered
    return hidden if hidden is not None else np.zeros(blocks, dtype=bool)


def not_understood_blocks(usage: UsageMap, blocks: int) -> np.ndarray:
    """Bool per guest block: it overlaps a volume whose content vdigui did not understand."""
    out = np.zeros(blocks, dtype=bool)
    bs = usage.block_size
    for v in usage.volumes:
        if v.kept_whole and v.used is None and v.size > 0:
            out[v.start // bs : -(-(v.start + v.size) // bs)] = True
    return out


def _account_image(
    path: Path,
    st: os.stat_result,
    layout: _Layout,
    maps: _Maps,
    *,
    scan_zeros: bool,
    progress: ProgressFn,
    cancel: CancelToken | None,
) -> FileSpace:
    notes: list[str] = []
    header, entries = maps.get(path)
    size = st.st_size
    out = np.zeros(len(CATEGORIES), dtype=np.int64)
    data_start = min(header.slot_offset(0), size)
    out[_INDEX[Category.HEADER_AND_MAP]] = data_start
    slot_size = header.slot_size
    nslots = -(-(size - data_start) // slot_size) if size > data_start else 0
    blocks = min(header.blocks, entries.size)
    entries = entries[:blocks]
    stored = np.flatnonzero(is_allocated(entries))
    slots = entries[stored].astype(np.int64)
    inside = slots < nslots
    stored, slots = stored[inside], slots[inside]
    if (~inside).any():
        notes.append(
            f"{int((~inside).sum())} block(s) of the map point past the end of the "
            "file (the file is truncated; 'vdictl check' says more)."
        )
    # One category per guest block the image stores, by the rules of the module docstring.
    cat = np.full(blocks, _INDEX[Category.GUEST_DATA], dtype=np.int8)
    chain = layout.own_chain.get(path)
    usage: UsageMap | None = None
    zero_found: np.ndarray | None = None
    if chain is None:
        notes.append(
            "Its chain could not be followed, so the guest's use of its blocks is unknown."
        )
    elif stored.size:
        try:
            with open_paths(chain) as opened:
                usage = chain_usage(opened)
                if scan_zeros:
                    zero_found = zero_blocks(opened, stored, progress=progress, cancel=cancel)
                else:
                    zero_found = None
        except (VdiError, OSError, ValueError) as exc:
            notes.append(f"The guest's filesystems could not be read: {exc}")
            zero_found = None
    else:
        zero_found = None
    if usage is None:
        cat[:] = _INDEX[Category.UNKNOWN]
    else:
        used = np.zeros(blocks, dtype=np.int64)
        n = min(blocks, usage.used_bytes.size)
        used[:n] = usage.used_bytes[:n]
        cat[used == 0] = _INDEX[Category.GUEST_UNUSED]
        cat[not_understood_blocks(usage, blocks)] = _INDEX[Category.UNKNOWN]
    cat[hidden_blocks(path, layout.states, maps, blocks)] = _INDEX[Category.HIDDEN]
    begin = header.slot_offset(0) + slots * slot_size
    zero = in_holes(begin, begin + slot_size, _extents(path, size))
    if zero_found is not None:
        zero |= zero_found[stored]
    cat[stored[zero]] = _INDEX[Category.ZERO_BLOCKS]
    # Slots: the category of the block stored in each (the first one if two claim a slot).
    slot_cat = np.full(nslots, _INDEX[Category.SLACK], dtype=np.int8)
    if slots.size and np.bincount(slots, minlength=nslots).max() > 1:
        notes.append("Some slots are claimed by more than one block; each is counted once.")
        unique, first = np.unique(slots, return_index=True)
        slot_cat[unique] = cat[stored[first]]
    else:  # the usual case: each slot named once, no sort needed
        slot_cat[slots] = cat[stored]
    counts = np.bincount(slot_cat, minlength=len(CATEGORIES)).astype(np.int64)
    out += counts * slot_size
    if nslots:
        short = data_start + nslots * slot_size - size  # the last slot is partial
        out[slot_cat[-1]] -= short
    return _file(path, st, out, notes)


def _extents(path: Path, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return data_extents(fd, size)
    finally:
        os.close(fd)


def _file(path: Path, st: os.stat_result, out: np.ndarray, notes: Sequence[str] = ()) -> FileSpace:
    values = {c: int(out[_INDEX[c]]) for c in CATEGORIES}
    if sum(values.values()) != st.st_size:  # a bug, never a silent misreport
        raise VdiError(
            f"Space accounting of '{path}' does not add up ({sum(values.values())} "
            f"of {st.st_size} bytes)."
        )
    return FileSpace(path, st.st_size, st.st_blocks * 512, values, tuple(notes))


def _whole(path: Path, st: os.stat_result, category: Category, note: str = "") -> FileSpace:
    out = np.zeros(len(CATEGORIES), dtype=np.int64)
    out[_INDEX[category]] = st.st_size
    return _file(path, st, out, (note,) if note else ())


# -- other files ---------------------------------------------------------------------------------
def classify_other(path: Path, folder: Path, vbox_files: set[Path]) -> tuple[Category, str]:
    """The category of a file that is not a readable image, and a note (may be empty)."""
    try:
        parts = path.relative_to(folder).parts
    except ValueError:
        parts = (path.name,)
    name = path.name.lower()
    if STATE_DIR in parts[:-1]:
        return Category.UNDO_DATA, ""
    if ".vdigui-tmp" in name:
        return Category.UNKNOWN, (
            "Left behind by an interrupted vdigui operation; 'vdictl clean' removes it."
        )
    if path in vbox_files or "logs" in (p.lower() for p in parts[:-1]):
        return Category.VIRTUALBOX_OTHER, ""
    stripped = name.rstrip("0123456789").rstrip(".")  # VBox.log.1, VBox.log.2, ...
    if stripped.endswith(_VBOX_SUFFIXES) or name.endswith(_VBOX_SUFFIXES):
        return Category.VIRTUALBOX_OTHER, ""
    if name.endswith(".vdi"):
        return Category.UNKNOWN, "Not a readable VDI image (its header could not be read)."
    return Category.UNKNOWN, ""


def _walk(folder: Path) -> list[Path]:
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            out.append(Path(root) / name)
    return out


# -- entry point ---------------------------------------------------------------------------------
def account_space(
    path: Path | str,
    *,
    scan_zeros: bool = False,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> SpaceAccount:
    """Account every byte of a VM folder (a folder or its ``.vbox``) or of one image.

    Reads headers, block maps, host hole layouts and guest filesystem metadata; with
    ``scan_zeros`` also the stored blocks (to find every all-zero one). Changes nothing.

    Raises:
        VdiError: ``path`` does not exist, or is neither a VM folder nor a VDI image.
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise VdiError(f"'{path}' is a symbolic link to nothing (or to itself).")
        raise VdiError(f"'{path}' does not exist.")
    maps = _Maps()
    notes: list[str] = []
    if not scan_zeros:
        notes.append(
            "All-zero blocks are counted only where the host file has holes; stored "
            "all-zero blocks stay in their other category (scanning for zeros reads "
            "them)."
        )
    files: list[FileSpace] = []
    if path.is_file() and path.suffix.lower() != ".vbox":
        image = path.resolve()
        maps.get(image)  # its error names the file and says what it is instead
        layout = _image_layout(image)
        notes.extend(layout.notes)
        files.append(
            _account_image(
                image,
                image.stat(),
                layout,
                maps,
                scan_zeros=scan_zeros,
                progress=progress,
                cancel=cancel,
            )
        )
        return SpaceAccount(path, tuple(files), scan_zeros, tuple(notes))

    from vdigui.engine.vmfolder import load_vm_folder

    vm = load_vm_folder(path)
    folder = vm.folder.resolve()
    layout = _vm_layout(vm)
    notes.extend(layout.notes)
    vbox_files = {vm.settings_path.resolve(), *(Path(p).resolve() for p in vm.backups)}
    if vm.state_file is not None:
        vbox_files.add(Path(vm.state_file).resolve())
    for node in vm.iter_snapshots():
        if node.state_file is not None:
            vbox_files.add(Path(node.state_file).resolve())
    images = set(layout.images)
    outside = [p for p in layout.images if not p.is_relative_to(folder)]
    for file in _walk(folder) + outside:
        if cancel is not None:
            cancel.raise_if_cancelled("Cancelled.")
        st = file.lstat()
        if not stat.S_ISREG(st.st_mode):
            continue  # symbolic links and special files take no space of their own here
        real = file.resolve()
        if real in images:
            try:
                files.append(
                    _account_image(
                        real,
                        st,
                        layout,
                        maps,
                        scan_zeros=scan_zeros,
                        progress=progress,
                        cancel=cancel,
                    )
                )
                continue
            except (VdiError, OSError) as exc:
                files.append(_whole(file, st, Category.UNKNOWN, f"Could not be read: {exc}"))
                continue
        category, note = classify_other(real, folder, vbox_files)
        files.append(_whole(file, st, category, note))
    return SpaceAccount(folder, tuple(files), scan_zeros, tuple(notes))


__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "CATEGORY_LABELS",
    "CATEGORY_MEANINGS",
    "Category",
    "FileSpace",
    "SpaceAccount",
    "account_space",
    "classify_other",
    "data_extents",
    "hidden_blocks",
    "in_holes",
    "not_understood_blocks",
]
