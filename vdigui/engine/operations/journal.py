"""Crash journal, backups and undo for the operations that rewrite files in place.

Snapshot deletion, bare-chain merges and repairs change existing files. Each of them runs
under a :class:`Journal`: a small JSON file, flushed at every phase change, in the folder's
``.vdigui/`` directory (beside the ``.vbox``), plus a backup folder
``.vdigui/backups/<timestamp>-<kind>/`` that holds, before the first write:

- the first ``offData`` bytes (pre-header, header, block map) and the size of every VDI the
  operation will write to;
- a whole copy of the ``.vbox`` (and of any other small settings file it rewrites).

Files the operation removes are *moved* into the backup folder, never unlinked, and only once
the new state is committed; that is what lets ``vdictl undo`` bring a deleted snapshot back.

Why rollback is always possible before the commit point: the operations never overwrite a
data slot that existed before they started. New data goes to slots appended past the old end
of the file (copy-on-write for blocks the target already held), so restoring the saved
header and map and truncating to the saved size gives back the exact old file. The commit
point is the atomic save of the ``.vbox`` (or, without one, the journal's ``committed`` flag).
Recovery therefore:

- rolls back when the commit point was not reached (restores prefixes, truncates, restores
  the ``.vbox`` and any file already moved away);
- completes when it was (moves the remaining removed files into the backup folder).

After a successful operation the journal becomes ``.vdigui/last-operation.json`` together
with fingerprints of every file it left behind; ``undo`` applies the same restore as a
rollback, but only if none of those files changed since (a VM that ran in the meantime would
otherwise lose its writes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdigui.engine import fileio
from vdigui.engine import format as fmt
from vdigui.engine.errors import OperationRefused, VdiError
from vdigui.engine.vbox_edit import sha256_file, write_settings_file

STATE_DIR = ".vdigui"
JOURNAL_NAME = "journal.json"
LAST_NAME = "last-operation.json"
JOURNAL_VERSION = 1


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
        raise VdiError(f"The vdigui journal '{path}' cannot be read ({exc}); move it away "
                       "only after checking the VM folder by hand.") from exc
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
    def begin(cls, folder: Path, kind: str, plan: dict[str, Any], summary: str,
              vbox: Path | None = None, extra: dict[str, Any] | None = None) -> Journal:
        """Start a journal; refuses while another operation's journal is still open."""
        folder = Path(folder)
        if journal_path(folder).exists():
            raise OperationRefused(
                f"An earlier vdigui operation in '{folder}' did not finish; run any writing "
                "vdictl command (or 'vdictl undo') on that folder to roll it back or complete "
                "it first.")
        backup = state_dir(folder) / "backups" / f"{_timestamp()}-{kind}"
        if backup.exists():
            raise OperationRefused(f"The backup folder '{backup}' already exists; try again.")
        fileio.makedirs(backup)
        data: dict[str, Any] = {
            "version": JOURNAL_VERSION, "kind": kind, "summary": summary,
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "pid": os.getpid(), "plan": plan, "phase": "planned", "committed": False,
            "backup_dir": str(backup), "images": [], "files": [], "removals": [],
            "vbox": str(vbox) if vbox else None, "vbox_new_sha256": None, **(extra or {}),
        }
        journal = cls(folder, data)
        # Create the journal exclusively, so two vdictl runs on one folder cannot both start.
        tmp = journal.path.with_name(f"{JOURNAL_NAME}.{os.getpid()}.new")
        _write_file_durable(tmp, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
        try:
            fileio.link(tmp, journal.path)
        except FileExistsError:
            fileio.remove_tree(backup)
            raise OperationRefused(f"Another vdigui operation is running in '{folder}'; wait "
                                   "for it to finish.") from None
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
    def backup_image(self, path: Path, allowed_uuids: list[str] | None = None) -> None:
        """Save header + map of a VDI and its size before the first write to it."""
        path = Path(path)
        if any(e["path"] == str(path) for e in self.data["images"]):
            return
        length, uuid_text = image_prefix_length(path)
        size = path.stat().st_size
        n = len(self.data["images"]) + len(self.data["files"])
        target = self.backup_dir / f"{n:03d}-{path.name}.head"
        with open(path, "rb") as src:
            prefix = src.read(length)
        _write_file_durable(target, prefix)
        allowed = list(dict.fromkeys([*(allowed_uuids or []), *([uuid_text] if uuid_text else [])]))
        self.data["images"].append({
            "path": str(path), "size": size, "prefix_len": length, "backup": str(target),
            "uuid": uuid_text, "allowed_uuids": allowed,
            "prefix_sha256": hashlib.sha256(prefix).hexdigest(),
        })
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

    def backup_file(self, path: Path) -> None:
        """Save a whole small file (the .vbox) before it is rewritten."""
        path = Path(path)
        if any(e["path"] == str(path) for e in self.data["files"]):
            return
        n = len(self.data["images"]) + len(self.data["files"])
        target = self.backup_dir / f"{n:03d}-{path.name}"
        _write_file_durable(target, path.read_bytes())
        self.data["files"].append({"path": str(path), "backup": str(target),
                                   "sha256": sha256_file(path)})
        self.save()

    def plan_removal(self, path: Path, uuid: str | None, stash: Path | None = None) -> None:
        """Announce that ``path`` will be moved away at commit (default: into the backup)."""
        n = len(self.data["removals"])
        self.data["removals"].append({
            "path": str(path), "uuid": uuid,
            "stash": str(stash or self.backup_dir / "removed" / f"{n:03d}-{Path(path).name}"),
        })

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
            fileio.unlink(tmp, missing_ok=True)

    def perform_removals(self) -> list[str]:
        """Move every planned removal into the backup folder (idempotent); returns notes."""
        notes = []
        self._drop_vbox_tmp()
        for item in self.data["removals"]:
            src, stash = Path(item["path"]), Path(item["stash"])
            if not src.exists():
                continue
            if item.get("uuid") and src.suffix.lower() == ".vdi":
                _, found = image_prefix_length(src)
                if found != item["uuid"]:
                    notes.append(f"kept '{src}': its header UUID is {found}, not the "
                                 f"{item['uuid']} the plan named")
                    continue
            fileio.move_durable(src, stash)
            notes.append(f"moved '{src.name}' to '{stash.parent}'")
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
        touched = {e["path"] for e in self.data["images"]} | {e["path"] for e in
                                                               self.data["files"]}
        self.data["after"] = {p: fingerprint(Path(p)) for p in sorted(touched)}
        self.data["phase"] = "done"
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


def _restore_image(entry: dict[str, Any]) -> list[str]:
    path = Path(entry["path"])
    if not path.exists():
        return [f"'{path}' is missing; it was not restored"]
    _, current = image_prefix_length(path)
    allowed = entry.get("allowed_uuids") or []
    if current is not None and allowed and current not in allowed:
        return [f"'{path.name}' now has UUID {current}, which is not the image vdigui backed "
                "up; it was left alone"]
    prefix = Path(entry["backup"]).read_bytes()
    fd = fileio.open_fd(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        changed = os.pread(fd, len(prefix), 0) != prefix or size != entry["size"]
        if not changed:
            return []
        if size > entry["size"]:
            fileio.ftruncate(fd, entry["size"])
        fileio.pwrite(fd, prefix, 0)
        tail = entry.get("tail_backup")
        if tail and size < entry["size"]:
            with open(tail, "rb") as src:
                pos = entry["tail_start"]
                while chunk := src.read(8 * fmt.MIB):
                    fileio.pwrite(fd, chunk, pos)
                    pos += len(chunk)
        fileio.ftruncate(fd, entry["size"])
        fileio.fsync(fd)
    finally:
        fileio.close(fd)
    return [f"restored the header and block map of '{path.name}'"]


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
        return (f"An interrupted vdigui operation ({self.summary}) was found and "
                f"{self.action}.")


#: Per-kind hooks run after a completed recovery (e.g. nothing extra for merges).
CompletionHook = Callable[[Journal], list[str]]
_COMPLETION_HOOKS: dict[str, CompletionHook] = {}


def register_completion_hook(kind: str, hook: CompletionHook) -> None:
    """Let an operation module add steps to the completion of its interrupted runs."""
    _COMPLETION_HOOKS[kind] = hook


def recover_pending(folder: Path) -> RecoveryResult | None:
    """Roll back or complete an interrupted operation in ``folder``; None if there was none.

    Every writing vdictl command calls this first, so an interruption (cancel, crash, power
    loss) is never left half done.
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
    if journal.is_committed():
        notes = journal.perform_removals()
        hook = _COMPLETION_HOOKS.get(kind)
        if hook is not None:
            notes += hook(journal)
        journal.finish()
        return RecoveryResult(kind, "completed", summary, tuple(notes))
    notes = journal.rollback()
    journal.abandon()
    return RecoveryResult(kind, "rolled back", summary, tuple(notes))


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
        raise OperationRefused(f"There is no vdigui operation in '{folder}' to undo; undo "
                               "covers only the last repair or snapshot deletion.")
    changed = []
    for path, before in (record.get("after") or {}).items():
        if fingerprint(Path(path)) != before:
            changed.append(Path(path).name)
    if changed:
        raise OperationRefused(
            f"Cannot undo '{record.get('summary')}': {', '.join(changed)} changed since "
            "(the VM probably ran), and restoring the old headers would lose those writes; "
            "restore from the backup folder by hand if you must.")
    for item in record.get("removals", []):
        if not Path(item["stash"]).exists() and not Path(item["path"]).exists():
            raise OperationRefused(
                f"Cannot undo '{record.get('summary')}': the removed file "
                f"'{Path(item['path']).name}' is no longer in the backup folder.")
    return record


def undo_last(folder: Path) -> UndoResult:
    """Restore the backed-up headers, maps, settings and removed files of the last operation."""
    folder = Path(folder)
    record = plan_undo(folder)
    journal = Journal.begin(folder, "undo", {}, f"undo of {record.get('summary')}",
                            extra={"undo_of": record})
    notes = _apply_undo(record)
    _close_undo(journal)
    return UndoResult(str(record.get("summary")), tuple(notes))


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
