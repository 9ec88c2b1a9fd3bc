"""Safe files: a new file only ever appears complete, and an in-place change keeps its undo.

Why these belong together: every writing operation promises that a power cut leaves either the
old file or the new one, never a mixture (docs/crash-safety.md). A rebuilt or new file is
written under a hidden temporary name beside its target (same filesystem, so the final rename
is atomic), flushed, then moved into place and the folder flushed; an in-place change first
saves the header and block map beside the image. The plan's :class:`FileStamp` makes sure the
file a plan was made for is still the file being changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from vdigui.engine import fileio
from vdigui.engine import format as fmt
from vdigui.engine.errors import OperationRefused, VdiError
from vdigui.engine.image import VdiImage

#: The cancel sentence of an operation that stops before it touched the original.
NOTHING_CHANGED = "Cancelled: nothing was changed."


# -- file identity ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FileStamp:
    """Identity and state of a file when it was planned, to notice changes before running.

    A plan describes one particular file content; if anything rewrote the file between plan
    and run (a VM started, another tool ran), running the old plan would be wrong.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        """The stamp of ``path`` now."""
        st = path.stat()
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` still is the same, unchanged file."""
        try:
            return FileStamp.of(path) == self
        except OSError:
            return False


def require_unchanged(path: Path, stamp: FileStamp) -> None:
    """Refuse to run a plan whose file changed since it was planned."""
    if not stamp.matches(path):
        raise OperationRefused(
            f"'{path.name}' changed since the operation was planned; plan it again ({path})."
        )


# -- temporary files and atomic commits ---------------------------------------------------
def temp_path_beside(target: Path, tag: str = "tmp") -> Path:
    """A hidden, unique file name in the target's folder.

    Beside the target so the final rename stays on one filesystem (atomic), hidden and marked
    ``vdigui`` so a user who finds a leftover after a power cut knows where it came from.
    """
    return target.with_name(f".{target.name}.vdigui-{tag}-{secrets.token_hex(4)}")


def discard(path: Path | None) -> None:
    """Remove a temporary file if it exists (cleanup after cancel or failure)."""
    if path is not None:
        fileio.unlink(path, missing_ok=True)


def commit_new(tmp: Path, dest: Path) -> None:
    """Move the finished ``tmp`` to ``dest`` without ever overwriting an existing ``dest``.

    A hard link fails if ``dest`` appeared meanwhile, which a rename would silently replace;
    filesystems without hard links fall back to a checked rename.
    """
    try:
        fileio.link(tmp, dest)
    except FileExistsError:
        raise VdiError(
            f"Refusing to overwrite '{dest}': a file of that name appeared while "
            "the operation ran; the new file was not kept."
        ) from None
    except OSError:
        if dest.exists():
            raise VdiError(f"Refusing to overwrite '{dest}': the file already exists.") from None
        fileio.replace(tmp, dest)
    else:
        fileio.unlink(tmp)
    fileio.fsync_dir(dest.parent)


def commit_replace(tmp: Path, dest: Path) -> None:
    """Atomically put ``tmp`` in place of ``dest`` (export over a file) and flush the folder."""
    fileio.replace(tmp, dest)
    fileio.fsync_dir(dest.parent)


def replace_original(tmp: Path, original: Path, stamp: FileStamp) -> None:
    """Swap a rebuilt ``tmp`` in for ``original`` (convert, defrag), if that is unchanged.

    The stamp is checked once more right before the rename: a VM that started writing the
    original while it was being rebuilt would otherwise lose those writes. The rebuilt file
    gets the original's owner and permissions first (:func:`copy_mode`).
    """
    require_unchanged(original, stamp)
    copy_mode(original, tmp)
    commit_replace(tmp, original)


def copy_mode(source: Path, dest: Path) -> None:
    """Give a rebuilt file the owner and permission bits of the file it replaces.

    The owner matters when run as root on a user's disk: a root-owned replacement would lock
    the user's VirtualBox out of their own disk. Best effort: only root may change owners.
    """
    st = source.stat()
    with contextlib.suppress(OSError):
        if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            fileio.chown(dest, st.st_uid, st.st_gid)
    with contextlib.suppress(OSError):
        fileio.chmod(dest, st.st_mode & 0o7777)


def hard_link_warning(path: Path) -> tuple[str, ...]:
    """A warning when a file rebuilt beside itself has other names (they keep the old file)."""
    try:
        links = path.stat().st_nlink
    except OSError:
        return ()
    if links <= 1:
        return ()
    return (
        f"'{path.name}' has {links - 1} other hard link(s); only this name will show the "
        "rebuilt file, the others keep the old one.",
    )


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write a small file completely or not at all (temp + fsync + rename + folder fsync)."""
    fileio.write_file_atomic(path, data, tmp=temp_path_beside(path))


# -- header + map backup ------------------------------------------------------------------
BACKUP_MAGIC = b"VDIGUI-BACKUP 1\n"


def backup_path(image_path: Path) -> Path:
    """Where the header + block map of ``image_path`` are saved before an in-place change."""
    return image_path.with_name(f".{image_path.name}.vdigui-backup")


def write_backup(image: VdiImage) -> Path:
    """Save the first header bytes and the block map of ``image`` beside it.

    Format: the magic line, one JSON line describing the layout, then the raw header bytes
    (``header_bytes`` from offset 0) and the raw map (``map_bytes`` from ``offset_blocks``).
    It is small (the map of a 2 TiB disk is 8 MiB) and written atomically, so whoever finds it
    after a crash can see exactly what the metadata was before vdigui touched the file.
    """
    h = image.header
    header_len = min(fmt.HEADER_READ_SIZE, h.offset_blocks)
    head = image.read_raw(0, header_len)
    block_map = image.read_map_region()
    info = {
        "image": image.path.name,
        "file_size": image.file_size,
        "header_bytes": len(head),
        "offset_blocks": h.offset_blocks,
        "map_bytes": len(block_map),
        "sha256": hashlib.sha256(head + block_map).hexdigest(),
    }
    target = backup_path(image.path)
    write_file_atomic(target, BACKUP_MAGIC + json.dumps(info).encode() + b"\n" + head + block_map)
    return target


def read_backup(path: Path) -> tuple[dict[str, object], bytes, bytes]:
    """Parse a backup written by :func:`write_backup`: (info, header bytes, map bytes)."""
    data = Path(path).read_bytes()
    if not data.startswith(BACKUP_MAGIC):
        raise VdiError(f"'{path}' is not a vdigui backup file.")
    line_end = data.index(b"\n", len(BACKUP_MAGIC))
    info = json.loads(data[len(BACKUP_MAGIC) : line_end])
    body = data[line_end + 1 :]
    head = body[: int(info["header_bytes"])]
    block_map = body[len(head) : len(head) + int(info["map_bytes"])]
    if hashlib.sha256(head + block_map).hexdigest() != info["sha256"]:
        raise VdiError(f"The backup '{path}' is damaged (its checksum does not match).")
    return info, head, block_map
