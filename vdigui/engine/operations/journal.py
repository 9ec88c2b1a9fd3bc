"""Crash journal, backups and undo for the operations that rewrite files in place.

Snapshot deletion, bare-chain merges and repairs change existing files. Each of them runs
under a :class:`Journal`: a small JSON file, flushed at every phase change, in the folder's
``.vdigui/`` directory (beside the ``.vbox``), plus a backup folder
``.vdigui/backups/<timestamp>-<kind>/`` that holds, before the first write:

- the first ``offData`` bytes (pre-header, header, block map) and the size of every VDI the
  operation will write to;
- when undo data is kept, the *before-images* of exactly the data slots an in-place write
  will overwrite (one file per image, see :func:`write_before_images`): a backward merge
  writes the child's blocks over the parent's existing slots, so that the parent stays dense
  and exact;
- a whole copy of the ``.vbox`` (and of any other small settings file it rewrites).

Why rollback is always possible before the commit point: every byte the operation changes
inside the old extent of a file is in a before-image, in the saved header+map prefix, or
past the saved size (new slots appended at ``cBlocksAllocated``). Restoring is therefore
"write the before-images back, write the saved prefix back, truncate to the saved size",
which gives back the exact old file. The commit point is the atomic save of the ``.vbox``
(or, without one, the journal's ``committed`` flag). Recovery therefore:

- rolls back when the commit point was not reached (before-images, prefixes, truncation,
  the ``.vbox``, any file already moved away);
- completes when it was (removes the merged-away files: moved into the backup folder when
  undo data is kept, unlinked when it is not).

A merge that keeps no undo data writes no before-images, so it cannot be rolled back once it
has written over a slot. Its journal says ``"recovery": "roll-forward"``: once the backups
are named (any phase after ``planned``), recovery *finishes* it instead. The operation's own
module redoes its writes from the unchanged source image and commits
(:func:`vdigui.engine.operations.merge.roll_forward`, docs/crash-safety.md "Roll-forward");
:func:`reset_image` puts a target's saved header and map back first, which makes the redo
start from the same state every time.

After a successful operation the journal becomes ``.vdigui/last-operation.json`` together
with fingerprints of every file it left behind; ``undo`` applies the same restore as a
rollback, but only if none of those files changed since (a VM that ran in the meantime would
otherwise lose its writes) and only while the undo data is kept (``keep_undo`` and no
:func:`discard_undo_data` since).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import struct
import uuid as uuidlib
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vdigui.engine import fileio
from vdigui.engine import format as fmt
from vdigui.engine.errors import OperationRefused, VdiError
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress
from vdigui.engine.units import human_size
from vdigui.engine.vbox_edit import sha256_file, write_settings_file

STATE_DIR = ".vdigui"
JOURNAL_NAME = "journal.json"
LAST_NAME = "last-operation.json"
JOURNAL_VERSION = 1
#: The journal's ``recovery``: how an interrupted operation is finished before its commit point.
ROLL_BACK = "roll-back"
ROLL_FORWARD = "roll-forward"


def state_dir(folder: Path) -> Path:
    """The ``.vdigui`` folder of a VM folder (or of a bare chain's folder)."""
    return Path(folder) / STATE_DIR


def journal_path(folder: Path) -> Path:
    """Where an unfinished operation's journal lives."""
    return state_dir(folder) / JOURNAL_NAME


def write_json_durable(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically and durably (temp file, fsync, rename, fsync of the folder)."""
    fileio.makedirs(path.parent)
    payload = json.dumps(data, indent=1, sort_keys=True).encode("utf-8")
    fileio.write_file_atomic(path, payload, tmp=path.with_name(path.name + ".tmp"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise VdiError(
            f"The vdigui journal '{path}' cannot be read ({exc}); move it away "
            "only after checking the VM folder by hand."
        ) from exc
    return data if isinstance(data, dict) else None


def image_prefix_length(path: Path) -> tuple[int, str | None]:
    """Bytes of header + map to back up (``offData``) and the header UUID, from a raw read.

    A header that does not parse is backed up in its first MiB so a repair can still be
    undone.
    """
    with open(path, "rb") as f:
        raw = f.read(fmt.HEADER_READ_SIZE)
        size = f.seek(0, 2)
    try:
        header = fmt.parse_header(raw, path, size)
    except VdiError:
        return min(size, fmt.MIB), None
    return min(size, header.offset_data), str(header.uuid)


def prefix_ranges(prefix: bytes, path: Path) -> list[tuple[int, int]]:
    """(offset, length) parts of a header+map prefix worth saving: header and map only.

    VirtualBox lays a new image out with the map at 1 MiB and the data at the next MiB, so
    the prefix is mostly zero padding that no operation writes. When the padding really is
    all zero, only the first 512 bytes (pre-header and header) and the map are saved, which
    makes the undo data of each image about 2 MiB smaller; otherwise the whole prefix.
    """
    whole = [(0, len(prefix))]
    try:
        header = fmt.parse_header(prefix[: fmt.HEADER_READ_SIZE], path)
    except VdiError:
        return whole
    head = fmt.HEADER_READ_SIZE
    start, end = header.offset_blocks, header.offset_blocks + header.map_size
    if header.is_legacy or start < head or end > len(prefix):
        return whole
    gaps = (prefix[head:start], prefix[end:])
    if any(gap.count(0) != len(gap) for gap in gaps):
        return whole
    return [(0, head), (start, end - start)]


def prefix_backup_size(path: Path) -> int:
    """Bytes :meth:`Journal.backup_image` keeps for ``path`` (for space plans)."""
    length, _ = image_prefix_length(path)
    with open(path, "rb") as f:
        prefix = f.read(length)
    return sum(n for _, n in prefix_ranges(prefix, path))


def fingerprint(path: Path) -> dict[str, Any] | None:
    """Size plus a hash of the header and map (VDIs) or the whole file (small files)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if path.suffix.lower() == ".vdi":
        length, _ = image_prefix_length(path)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read(length)).hexdigest()
        return {"size": size, "prefix_sha256": digest}
    return {"size": size, "sha256": sha256_file(path)}


# -- before-images ------------------------------------------------------------------------
#: Record layout of a before-images file: magic, file offset, length, crc32 of the data,
#: crc32 of the preceding 24 bytes; then ``length`` bytes of data.
_BI_MAGIC = b"VDIGBIM1"
_BI_HEAD = struct.Struct("<8sQQII")
#: Bytes read and written per before-image record (a run of adjacent slots).
BEFORE_IMAGE_RUN = 16 * fmt.MIB


def before_image_bytes(slot_count: int, slot_size: int, runs: int | None = None) -> int:
    """Size of a before-images file holding ``slot_count`` slots in ``runs`` records."""
    records = slot_count if runs is None else runs
    return slot_count * slot_size + records * _BI_HEAD.size


def _slot_runs(slots: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """(first slot, count) runs of consecutive slots, each at most ``limit`` slots long."""
    out: list[tuple[int, int]] = []
    if slots.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    for run in np.split(slots, breaks):
        start = 0
        while start < run.size:
            count = min(limit, run.size - start)
            out.append((int(run[start]), count))
            start += count
    return out


def write_before_images(
    image_fd: int,
    header: fmt.VdiHeader,
    slots: Sequence[int] | np.ndarray,
    dest: Path,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> tuple[int, int]:
    """Save the current content of ``slots`` of an image into the new file ``dest``, durably.

    One record per run of adjacent slots, each self-validating (offset, length and a crc32 of
    the data, plus a crc32 of the record head), so a torn record after a power cut reads as
    absent rather than as garbage data. The file is written, fsynced, and its folder fsynced
    before this returns; only then may the slots be overwritten.

    Returns:
        (records written, bytes of the file).
    """
    ordered = np.unique(np.asarray(slots, dtype=np.int64))
    slot_size = header.slot_size
    per_run = max(1, BEFORE_IMAGE_RUN // slot_size)
    runs = _slot_runs(ordered, per_run)
    buf = bytearray(per_run * slot_size)
    fd = fileio.open_fd(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    pos = 0
    done = 0
    try:
        for first, count in runs:
            if cancel is not None:
                cancel.raise_if_cancelled("Cancelled: rolling back.")
            length = count * slot_size
            view = memoryview(buf)[:length]
            offset = header.offset_data + first * slot_size
            got = os.preadv(image_fd, [view], offset)
            if got != length:
                raise VdiError(f"Short read while saving the before-images into '{dest}'.")
            crc = zlib.crc32(view)
            head = _BI_MAGIC + struct.pack("<QQI", offset, length, crc)
            record = _BI_HEAD.pack(_BI_MAGIC, offset, length, crc, zlib.crc32(head))
            fileio.pwritev(fd, [record, view], pos)
            pos += len(record) + length
            done += count
            progress(Progress("saving before-images", done, int(ordered.size), done * slot_size))
        fileio.fsync(fd)
    finally:
        fileio.close(fd)
    fileio.fsync_dir(dest.parent)
    return len(runs), pos


def read_before_images(path: Path) -> Iterator[tuple[int, bytes]]:
    """The valid records of a before-images file as (file offset, data), in order.

    Reading stops at the first record that is short, has a bad head or a bad data checksum:
    records are written in order, so what follows a torn record was never made durable.
    """
    with open(path, "rb") as f:
        while True:
            raw = f.read(_BI_HEAD.size)
            if len(raw) < _BI_HEAD.size:
                return
            magic, offset, length, crc, head_crc = _BI_HEAD.unpack(raw)
            if magic != _BI_MAGIC or zlib.crc32(raw[:-4]) != head_crc:
                return
            data = f.read(length)
            if len(data) != length or zlib.crc32(data) != crc:
                return
            yield offset, data


def _timestamp() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond:06d}Z"


@dataclass
class Journal:
    """One in-progress operation on a folder.

    Attributes:
        folder: the VM folder (or bare chain folder) the journal belongs to.
        data: the JSON document (plan, phase, backups, removals, commit marker).
    """

    folder: Path
    data: dict[str, Any]

    # -- lifetime -------------------------------------------------------------------------
    @classmethod
    def begin(
        cls,
        folder: Path,
        kind: str,
        plan: dict[str, Any],
        summary: str,
        vbox: Path | None = None,
        extra: dict[str, Any] | None = None,
        *,
        keep_undo: bool = True,
    ) -> Journal:
        """Start a journal; refuses while another operation's journal is still open.

        ``keep_undo`` False: removed files are unlinked (not moved) once committed, and the
        backup folder is deleted when the operation completes (no undo afterwards).
        """
        folder = Path(folder)
        if journal_path(folder).exists():
            raise OperationRefused(
                f"An earlier vdigui operation in '{folder}' did not finish; run any writing "
                "vdictl command (or 'vdictl undo') on that folder to roll it back or complete "
                "it first."
            )
        backup = state_dir(folder) / "backups" / f"{_timestamp()}-{kind}"
        if backup.exists():
            raise OperationRefused(f"The backup folder '{backup}' already exists; try again.")
        fileio.makedirs(backup)
        data: dict[str, Any] = {
            "version": JOURNAL_VERSION,
            "kind": kind,
            "summary": summary,
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "plan": plan,
            "phase": "planned",
            "committed": False,
            "backup_dir": str(backup),
            "images": [],
            "files": [],
            "removals": [],
            "vbox": str(vbox) if vbox else None,
            "vbox_new_sha256": None,
            "keep_undo": keep_undo,
            **(extra or {}),
        }
        journal = cls(folder, data)
        # Create the journal exclusively, so two vdictl runs on one folder cannot both start.
        tmp = journal.path.with_name(f"{JOURNAL_NAME}.{os.getpid()}.new")
        _write_file_durable(tmp, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
        try:
            fileio.link(tmp, journal.path)
        except FileExistsError:
            fileio.remove_tree(backup)
            raise OperationRefused(
                f"Another vdigui operation is running in '{folder}'; wait for it to finish."
            ) from None
        finally:
            fileio.unlink(tmp, missing_ok=True)
        fileio.fsync_dir(journal.path.parent)
        return journal

    @classmethod
    def load(cls, folder: Path) -> Journal | None:
        """The unfinished journal of ``folder``, if any."""
        data = _read_json(journal_path(folder))
        return None if data is None else cls(Path(folder), data)

    @property
    def path(self) -> Path:
        """The journal file."""
        return journal_path(self.folder)

    @property
    def backup_dir(self) -> Path:
        """This operation's backup folder."""
        return Path(self.data["backup_dir"])

    def save(self) -> None:
        """Flush the journal to disk (atomic replace + fsync)."""
        write_json_durable(self.path, self.data)

    def set_phase(self, phase: str, **fields: Any) -> None:
        """Record progress durably."""
        self.data["phase"] = phase
        self.data.update(fields)
        self.save()

    # -- backups --------------------------------------------------------------------------
    def backup_image(
        self, path: Path, allowed_uuids: list[str] | None = None, *, save: bool = True
    ) -> None:
        """Save header + map of a VDI and its size before the first write to it.

        ``save`` False leaves the journal update to the caller's next :meth:`save` (which must
        come before the first write): a backup the journal never names is harmless.
        """
        path = Path(path)
        if any(e["path"] == str(path) for e in self.data["images"]):
            return
        length, uuid_text = image_prefix_length(path)
        size = path.stat().st_size
        n = len(self.data["images"]) + len(self.data["files"])
        target = self.backup_dir / f"{n:03d}-{path.name}.head"
        with open(path, "rb") as src:
            prefix = src.read(length)
        ranges = prefix_ranges(prefix, path)
        _write_file_durable(target, b"".join(prefix[o : o + n] for o, n in ranges))
        allowed = list(dict.fromkeys([*(allowed_uuids or []), *([uuid_text] if uuid_text else [])]))
        self.data["images"].append(
            {
                "path": str(path),
                "size": size,
                "prefix_len": length,
                "backup": str(target),
                "uuid": uuid_text,
                "allowed_uuids": allowed,
                "prefix_sha256": hashlib.sha256(prefix).hexdigest(),
                "prefix_ranges": [list(r) for r in ranges],
            }
        )
        if save:
            self.save()

    def backup_tail(self, path: Path, start: int) -> None:
        """Save the bytes of a VDI from ``start`` to its end (before a repair cuts them)."""
        entry = next((e for e in self.data["images"] if e["path"] == str(path)), None)
        if entry is None:
            raise VdiError("backup_image must precede backup_tail (bug)")
        target = Path(entry["backup"]).with_suffix(".tail")
        _copy_tail_durable(path, start, target)
        entry["tail_start"] = start
        entry["tail_backup"] = str(target)
        self.save()

    def backup_before_images(
        self,
        image_fd: int,
        path: Path,
        header: fmt.VdiHeader,
        slots: Sequence[int] | np.ndarray,
        *,
        progress: ProgressFn = no_progress,
        cancel: CancelToken | None = None,
    ) -> int:
        """Save the slots an in-place write will overwrite; returns the file's size.

        The journal names the file before it is written (a crash while writing leaves only
        valid records, which are all true before-images), and records the record count
        once it is durable; only then may the caller overwrite the slots.
        """
        entry = next((e for e in self.data["images"] if e["path"] == str(path)), None)
        if entry is None:
            raise VdiError("backup_image must precede backup_before_images (bug)")
        target = Path(entry["backup"]).with_suffix(".before")
        entry["before_images"] = str(target)
        entry["before_records"] = None
        self.save()
        records, size = write_before_images(
            image_fd, header, slots, target, progress=progress, cancel=cancel
        )
        entry["before_records"] = records
        entry["before_bytes"] = size
        self.save()
        return size

    def backup_file(self, path: Path, *, save: bool = True) -> None:
        """Save a whole small file (the .vbox) before it is rewritten (``save``: as above)."""
        path = Path(path)
        if any(e["path"] == str(path) for e in self.data["files"]):
            return
        n = len(self.data["images"]) + len(self.data["files"])
        target = self.backup_dir / f"{n:03d}-{path.name}"
        _write_file_durable(target, path.read_bytes())
        self.data["files"].append(
            {"path": str(path), "backup": str(target), "sha256": sha256_file(path)}
        )
        if save:
            self.save()

    def plan_removal(self, path: Path, uuid: str | None, stash: Path | None = None) -> None:
        """Announce that ``path`` will be moved away at commit (default: into the backup)."""
        n = len(self.data["removals"])
        self.data["removals"].append(
            {
                "path": str(path),
                "uuid": uuid,
                "stash": str(stash or self.backup_dir / "removed" / f"{n:03d}-{Path(path).name}"),
            }
        )

    # -- commit, rollback, completion --------------------------------------------------------
    def save_vbox(self, document_bytes: bytes) -> None:
        """Write the new .vbox (the commit point), recording its hash first."""
        vbox = Path(self.data["vbox"])
        self.data["vbox_new_sha256"] = hashlib.sha256(document_bytes).hexdigest()
        self.set_phase("saving-vbox")
        write_settings_file(vbox, document_bytes)
        self.set_phase("committed", committed=True)

    def is_committed(self) -> bool:
        """Whether the new state was committed (flag, or the new .vbox is on disk)."""
        if self.data.get("committed"):
            return True
        new = self.data.get("vbox_new_sha256")
        vbox = self.data.get("vbox")
        return bool(new and vbox and sha256_file(Path(vbox)) == new)

    def commit(self) -> None:
        """Mark the commit point for operations without a .vbox."""
        self.set_phase("committed", committed=True)

    def _drop_vbox_tmp(self) -> None:
        """A ``-tmp`` beside the .vbox left by an interrupted save of ours is garbage."""
        if self.data.get("vbox") and self.data.get("vbox_new_sha256"):
            tmp = Path(self.data["vbox"] + "-tmp")
            if tmp.exists():
                fileio.unlink(tmp, missing_ok=True)
                fileio.fsync_dir(tmp.parent)  # before the journal that names it goes

    def rolls_forward(self) -> bool:
        """Whether recovery must finish this operation rather than roll it back.

        True for a ``roll-forward`` journal whose backups are named: before that point
        nothing was written, and rolling back (dropping the journal) is exact.
        """
        return (
            self.data.get("recovery") == ROLL_FORWARD
            and self.data.get("phase", "planned") != "planned"
        )

    def image_entry(self, path: Path) -> dict[str, Any]:
        """The backup record of the image ``path`` (its saved header+map and size)."""
        entry: dict[str, Any] | None = next(
            (e for e in self.data["images"] if e["path"] == str(path)), None
        )
        if entry is None:
            raise VdiError(
                f"The vdigui journal in '{self.folder}' has no backup of "
                f"'{Path(path).name}' (bug); restore the folder by hand."
            )
        return entry

    @property
    def keep_undo(self) -> bool:
        """Whether undo data is kept after the operation (default for old journals: yes)."""
        return bool(self.data.get("keep_undo", True))

    def perform_removals(self) -> list[str]:
        """Remove every planned removal (idempotent); returns notes.

        With undo data kept, files are moved into the backup folder (or their stash); without
        it, merged-away images and saved states are unlinked, so their space comes back.
        Quarantined files (a stash outside the backup folder) are always moved.
        """
        notes = []
        self._drop_vbox_tmp()
        for item in self.data["removals"]:
            src, stash = Path(item["path"]), Path(item["stash"])
            if not src.exists():
                continue
            if item.get("uuid") and src.suffix.lower() == ".vdi":
                _, found = image_prefix_length(src)
                if found != item["uuid"]:
                    notes.append(
                        f"kept '{src}': its header UUID is {found}, not the "
                        f"{item['uuid']} the plan named"
                    )
                    continue
            if not self.keep_undo and _is_inside_dir(stash, self.backup_dir):
                fileio.unlink(src)
                fileio.fsync_dir(src.parent)
                notes.append(f"deleted '{src.name}'")
                continue
            fileio.move_durable(src, stash)
            notes.append(f"moved '{src.name}' to '{stash.parent}'")
        return notes

    def complete(self) -> list[str]:
        """After the commit point: removals, then (without undo data) the backups go."""
        notes = self.perform_removals()
        if not self.keep_undo:
            freed = fileio.remove_tree(self.backup_dir)
            if freed:
                notes.append(f"discarded {human_size(freed)} of backups (no undo is kept)")
        return notes

    def rollback(self) -> list[str]:
        """Restore every backup taken so far; returns what was done, in words."""
        notes: list[str] = []
        self._drop_vbox_tmp()
        for item in reversed(self.data["removals"]):
            src, stash = Path(item["path"]), Path(item["stash"])
            if stash.exists() and not src.exists():
                fileio.move_durable(stash, src)
                notes.append(f"moved '{src.name}' back")
        for entry in reversed(self.data["images"]):
            notes.extend(_restore_image(entry))
        for entry in self.data["files"]:
            path = Path(entry["path"])
            if sha256_file(path) != entry["sha256"]:
                write_settings_file(path, Path(entry["backup"]).read_bytes())
                notes.append(f"restored '{path.name}'")
        return notes

    def finish(self, summary_extra: dict[str, Any] | None = None) -> None:
        """Close the journal: keep it as the last operation (for undo) and remove it."""
        touched = {e["path"] for e in self.data["images"]} | {e["path"] for e in self.data["files"]}
        self.data["after"] = {p: fingerprint(Path(p)) for p in sorted(touched)}
        self.data["phase"] = "done"
        self.data["undoable"] = self.keep_undo
        self.data["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        if summary_extra:
            self.data.update(summary_extra)
        write_json_durable(state_dir(self.folder) / LAST_NAME, self.data)
        fileio.unlink(self.path)
        fileio.fsync_dir(self.path.parent)

    def abandon(self) -> None:
        """Drop a journal whose operation was rolled back, and its now useless backups."""
        self.data["phase"] = "rolled-back"
        fileio.unlink(self.path, missing_ok=True)
        fileio.fsync_dir(self.path.parent)
        if not any(Path(r["stash"]).exists() for r in self.data["removals"]):
            fileio.remove_tree(self.backup_dir)


def _prefix_parts(entry: dict[str, Any]) -> list[tuple[int, bytes]]:
    """The saved header+map prefix of an image as (file offset, bytes) parts."""
    saved = Path(entry["backup"]).read_bytes()
    parts: list[tuple[int, bytes]] = []
    pos = 0
    for offset, length in entry.get("prefix_ranges") or [(0, len(saved))]:
        parts.append((offset, saved[pos : pos + length]))
        pos += length
    return parts


def reset_image(entry: dict[str, Any]) -> None:
    """Put an image's saved header and map back, then its saved size (a roll-forward's start).

    Data slots are left as they are: a roll-forward writes every slot it changes again.
    The header and map are flushed before the file is cut, so a crash in between never
    leaves an entry pointing past the end of the file (the map is the original one, whose
    slots all lie within the saved size). Idempotent.

    Raises:
        VdiError: the file is missing or now has another UUID than the one backed up.
    """
    path = Path(entry["path"])
    if not path.exists():
        raise VdiError(
            f"'{path}' is missing, so the interrupted operation cannot be finished; "
            "restore it and run the command again."
        )
    _, current = image_prefix_length(path)
    allowed = entry.get("allowed_uuids") or []
    if current is not None and allowed and current not in allowed:
        raise VdiError(
            f"'{path.name}' now has UUID {current}, which is not the image vdigui "
            "backed up, so the interrupted operation cannot be finished."
        )
    parts = _prefix_parts(entry)
    fd = fileio.open_fd(path, os.O_RDWR)
    try:
        rewrote = False
        for offset, data in parts:
            if os.pread(fd, len(data), offset) != data:
                fileio.pwrite(fd, data, offset)
                rewrote = True
        if rewrote:
            fileio.fsync(fd)
        if os.fstat(fd).st_size != entry["size"]:
            fileio.ftruncate(fd, entry["size"])
            fileio.fsync(fd)
    finally:
        fileio.close(fd)


def _restore_image(entry: dict[str, Any]) -> list[str]:
    """Before-images, then the saved header+map prefix, then the saved size (and tail)."""
    path = Path(entry["path"])
    if not path.exists():
        return [f"'{path}' is missing; it was not restored"]
    _, current = image_prefix_length(path)
    allowed = entry.get("allowed_uuids") or []
    if current is not None and allowed and current not in allowed:
        return [
            f"'{path.name}' now has UUID {current}, which is not the image vdigui backed "
            "up; it was left alone"
        ]
    parts = _prefix_parts(entry)
    before = entry.get("before_images")
    before_path = Path(before) if before and Path(before).exists() else None
    expected = entry.get("before_records")
    if expected is not None:  # the slots were (or may have been) overwritten: all must be here
        readable = sum(1 for _ in read_before_images(before_path)) if before_path else 0
        if readable < expected:
            raise VdiError(
                f"The before-images in '{before}' are damaged ({readable} of "
                f"{expected} records readable), so '{path.name}' cannot be restored "
                "exactly; keep the backup folder and restore by hand."
            )
    notes: list[str] = []
    fd = fileio.open_fd(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        rewrote = 0
        for offset, data in read_before_images(before_path) if before_path else ():
            if offset + len(data) > entry["size"]:
                continue  # never written past the saved extent (a bug guard)
            if os.pread(fd, len(data), offset) != data:
                fileio.pwrite(fd, data, offset)
                rewrote += len(data)
        # The cut tail is compared, not only its length: a power cut during an earlier
        # rollback can leave the file at its old length with torn tail sectors.
        tail = entry.get("tail_backup")
        if tail:
            with open(tail, "rb") as src:
                pos = entry["tail_start"]
                while chunk := src.read(8 * fmt.MIB):
                    if os.pread(fd, len(chunk), pos) != chunk:
                        fileio.pwrite(fd, chunk, pos)
                        rewrote += len(chunk)
                    pos += len(chunk)
        changed = (
            rewrote > 0
            or size != entry["size"]
            or any(os.pread(fd, len(data), off) != data for off, data in parts)
        )
        if not changed:
            return []
        for off, data in parts:
            fileio.pwrite(fd, data, off)
        fileio.ftruncate(fd, entry["size"])
        fileio.fsync(fd)
    finally:
        fileio.close(fd)
    if rewrote:
        notes.append(f"wrote back {rewrote} bytes of overwritten blocks in '{path.name}'")
    notes.append(f"restored the header and block map of '{path.name}'")
    return notes


def _is_inside_dir(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def _write_file_durable(path: Path, data: bytes) -> None:
    fileio.makedirs(path.parent)
    fileio.write_file_durable(path, data)


def _copy_tail_durable(src: Path, start: int, path: Path) -> None:
    """Copy ``src`` from byte ``start`` to its end into the new file ``path``, flushed."""
    in_fd = os.open(src, os.O_RDONLY)
    try:
        length = max(0, os.fstat(in_fd).st_size - start)
        out_fd = fileio.open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fileio.copy_range(in_fd, start, out_fd, 0, length)
            fileio.fsync(out_fd)
        finally:
            fileio.close(out_fd)
    finally:
        os.close(in_fd)
    fileio.fsync_dir(path.parent)


# -- recovery and undo --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """What recovery did with an interrupted operation.

    Attributes:
        kind: the operation ("snapshot-delete", "merge", "repair", "undo").
        action: "rolled back" or "completed".
        summary: the operation's one-line description.
        notes: the individual steps, in words.
    """

    kind: str
    action: str
    summary: str
    notes: tuple[str, ...]

    def message(self) -> str:
        """One sentence for the CLI."""
        return f"An interrupted vdigui operation ({self.summary}) was found and {self.action}."


#: Per-kind hooks run after a completed recovery (e.g. nothing extra for merges).
CompletionHook = Callable[[Journal], list[str]]
_COMPLETION_HOOKS: dict[str, CompletionHook] = {}


def register_completion_hook(kind: str, hook: CompletionHook) -> None:
    """Let an operation module add steps to the completion of its interrupted runs."""
    _COMPLETION_HOOKS[kind] = hook


def recover_pending(folder: Path) -> RecoveryResult | None:
    """Roll back or complete an interrupted operation in ``folder``; None if there was none.

    Every writing vdictl command calls this first, so an interruption (cancel, crash, power
    loss) is never left half done. A ``roll-forward`` journal (a merge without undo data)
    past its ``planned`` phase is finished rather than rolled back.
    """
    journal = Journal.load(folder)
    if journal is None:
        return None
    kind = journal.data.get("kind", "?")
    summary = journal.data.get("summary", kind)
    if kind == "undo":
        if "undo_of" not in journal.data:  # died while starting: nothing was touched
            journal.abandon()
            return RecoveryResult(kind, "rolled back", summary, ())
        notes = _apply_undo(journal.data["undo_of"])
        _close_undo(journal)
        return RecoveryResult(kind, "completed", summary, tuple(notes))
    if not journal.is_committed() and journal.rolls_forward():
        notes = _roll_forward(journal)  # ends at the commit point
        notes += journal.complete()
        hook = _COMPLETION_HOOKS.get(kind)
        if hook is not None:
            notes += hook(journal)
        journal.finish()
        return RecoveryResult(kind, "completed", summary, tuple(notes))
    if journal.is_committed():
        notes = journal.complete()
        hook = _COMPLETION_HOOKS.get(kind)
        if hook is not None:
            notes += hook(journal)
        journal.finish()
        return RecoveryResult(kind, "completed", summary, tuple(notes))
    notes = journal.rollback()
    journal.abandon()
    return RecoveryResult(kind, "rolled back", summary, tuple(notes))


def _roll_forward(journal: Journal) -> list[str]:
    """Finish an uncommitted roll-forward operation up to its commit point (see module doc)."""
    kind = journal.data.get("kind")
    if kind in ("snapshot-delete", "merge"):
        from vdigui.engine.operations.merge import roll_forward  # merge imports this module

        return roll_forward(journal)
    raise VdiError(
        f"The interrupted vdigui operation in '{journal.folder}' ({kind}) must be "
        "finished, but this vdigui does not know how; use the vdigui that began it."
    )


def last_operation(folder: Path) -> dict[str, Any] | None:
    """The record of the last finished operation in ``folder`` (what undo would revert)."""
    return _read_json(state_dir(folder) / LAST_NAME)


@dataclass(frozen=True, slots=True)
class UndoResult:
    """What ``undo`` restored."""

    summary: str
    notes: tuple[str, ...]


def plan_undo(folder: Path) -> dict[str, Any]:
    """The last operation, checked to be undoable; raises OperationRefused with the reason."""
    record = last_operation(folder)
    if record is None or record.get("undone"):
        raise OperationRefused(
            f"There is no vdigui operation in '{folder}' to undo; undo "
            "covers only the last repair or snapshot deletion."
        )
    if record.get("undoable") is False:
        why = (
            "its undo data was discarded"
            if record.get("undo_discarded")
            else "it ran without keeping undo data"
        )
        raise OperationRefused(f"Cannot undo '{record.get('summary')}': {why}.")
    changed = []
    for path, before in (record.get("after") or {}).items():
        if fingerprint(Path(path)) != before:
            changed.append(Path(path).name)
    if changed:
        raise OperationRefused(
            f"Cannot undo '{record.get('summary')}': {', '.join(changed)} changed since "
            "(the VM probably ran), and restoring the old headers would lose those writes; "
            "restore from the backup folder by hand if you must."
        )
    for entry in record.get("images", []):
        needed = [entry.get("backup"), entry.get("before_images"), entry.get("tail_backup")]
        gone = [Path(n).name for n in needed if n and not Path(n).exists()]
        if gone:
            raise OperationRefused(
                f"Cannot undo '{record.get('summary')}': its backup of "
                f"'{Path(entry['path']).name}' ({', '.join(gone)}) is no longer in the backup "
                "folder."
            )
        expected = entry.get("before_records")
        if expected and sum(1 for _ in read_before_images(Path(entry["before_images"]))) < expected:
            raise OperationRefused(
                f"Cannot undo '{record.get('summary')}': the before-images of "
                f"'{Path(entry['path']).name}' in '{entry['before_images']}' are damaged, so "
                "it cannot be restored exactly; nothing was changed."
            )
    for item in record.get("removals", []):
        if not Path(item["stash"]).exists() and not Path(item["path"]).exists():
            raise OperationRefused(
                f"Cannot undo '{record.get('summary')}': the removed file "
                f"'{Path(item['path']).name}' is no longer in the backup folder."
            )
    return record


def undo_last(folder: Path, *, progress: ProgressFn = no_progress) -> UndoResult:
    """Restore the backed-up headers, maps, settings and removed files of the last operation.

    Args:
        folder: the VM folder (or bare chain folder) of the operation.
        progress: called with the phase "undoing" (0 of 1 at the start, 1 of 1 at the end).
    """
    folder = Path(folder)
    record = plan_undo(folder)
    progress(Progress("undoing", 0, 1))
    journal = Journal.begin(
        folder, "undo", {}, f"undo of {record.get('summary')}", extra={"undo_of": record}
    )
    notes = _apply_undo(record)
    _close_undo(journal)
    progress(Progress("undoing", 1, 1))
    return UndoResult(str(record.get("summary")), tuple(notes))


def backups_dir(folder: Path) -> Path:
    """Where every operation of ``folder`` keeps its undo data."""
    return state_dir(folder) / "backups"


def undo_data_usage(folder: Path) -> int:
    """Bytes of undo data kept under ``.vdigui/backups`` of ``folder`` (0 when none)."""
    total = 0
    for root, _dirs, files in os.walk(backups_dir(Path(folder))):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


def discard_undo_data(folder: Path) -> int:
    """Delete the kept undo data of ``folder``; returns the bytes freed.

    The last operation is marked as no longer undoable first (so a power cut half-way
    leaves a record that refuses undo, never one that undoes from partial backups). Refused
    while an operation's journal is open: its backups are what recovery needs.
    """
    folder = Path(folder)
    if journal_path(folder).exists():
        raise OperationRefused(
            f"An unfinished vdigui operation in '{folder}' still needs its "
            "backups; run any writing vdictl command on that folder first "
            "so it is rolled back or completed."
        )
    record = last_operation(folder)
    if record is not None and record.get("undoable", True) and not record.get("undone"):
        record["undoable"] = False
        record["undo_discarded"] = True
        write_json_durable(state_dir(folder) / LAST_NAME, record)
    return fileio.remove_tree(backups_dir(folder))


def _apply_undo(record: dict[str, Any]) -> list[str]:
    shadow = Journal(Path(), record)
    return shadow.rollback()


def _close_undo(journal: Journal) -> None:
    record = journal.data["undo_of"]
    record["undone"] = True
    write_json_durable(state_dir(journal.folder) / LAST_NAME, record)
    fileio.remove_tree(journal.backup_dir)  # the undo's own (empty) backups
    fileio.unlink(journal.path, missing_ok=True)
    fileio.fsync_dir(journal.path.parent)


def new_uuid() -> uuidlib.UUID:
    """A random UUID (one place to patch in tests)."""
    return uuidlib.uuid4()
