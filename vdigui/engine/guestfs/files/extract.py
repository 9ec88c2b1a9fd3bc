"""Copying guest files and folders out to the host, safely: plan everything, then write.

The guest's names and links are hostile input, so the plan is made and checked completely
before the first byte is written (a refused extraction writes nothing):

- every host path is DEST joined with names that :func:`~.api.safe_name` already made single,
  safe components, so nothing can land outside DEST;
- anything that already exists inside DEST must be a real folder where a folder is needed,
  never a symbolic link (links in DEST are not followed), and an existing file is replaced
  only with ``force``;
- names the host cannot hold (too long, or duplicates after escaping) are listed and refused.

Files are written beside their final name as ``.NAME.vdigui-tmp``; after a batch of them (up
to :data:`BATCH_FILES` files or :data:`BATCH_BYTES` bytes) one flush of the filesystem makes
them durable, and only then is each linked into place (which fails rather than overwrite) or,
with ``force``, renamed over the old file. So a power cut leaves every final name absent or
complete, and 100,000 small files cost a few dozen flushes instead of 100,000
(docs/crash-safety.md, "Many new files"). A cancel or an error removes the batch's temporary
files; what was already named stays. Holes and unwritten extents are not written, so sparse
files stay sparse. Guest symbolic links
become host symbolic links with the same target text; they are never followed. Modification
times are set on files, links and created folders (folders last), and the guest's permission
bits (never set-id bits; always usable by their owner) where the filesystem has them. All
writes go through :mod:`vdigui.engine.fileio` (docs/crash-safety.md).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vdigui.engine import fileio
from vdigui.engine.errors import OperationRefused, VdiError
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress

from .api import BaseNamespace, Entry, EntryKind, printable

#: Longest file name (bytes) most host filesystems accept.
NAME_MAX = 255
#: Problems listed in a refusal before "and N more".
_SHOWN = 20
_CHUNK = 4 << 20
#: New files written before one flush of the filesystem makes them durable and they are named.
BATCH_FILES = 4096
#: Bytes written before that flush (it also bounds the dirty pages a batch leaves).
BATCH_BYTES = 256 << 20
#: Files at least this large start write-back on a helper thread while they are written.
WRITEBACK_FILE = 16 << 20


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to create: ``rel`` is the host path relative to DEST."""

    ns: BaseNamespace
    entry: Entry
    rel: tuple[str, ...]


@dataclass(slots=True)
class ExtractPlan:
    """What an extraction will create, and what it leaves out (with reasons).

    Attributes:
        dest: the destination folder.
        items: folders, files and links to create, parents before children.
        skipped: ``(guest path, reason)`` for things not extracted (devices, FIFOs).
        renamed: ``(guest path, note)`` for names shown with escapes.
        problems: reasons the whole extraction is refused (empty: it may run).
        total_bytes: bytes of file content to write.
        force: replace existing files.
    """

    dest: Path
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    total_bytes: int = 0
    force: bool = False

    def refusal(self) -> str:
        """One sentence listing why the plan cannot run."""
        shown = "; ".join(printable(p) for p in self.problems[:_SHOWN])
        more = len(self.problems) - _SHOWN
        tail = f"; and {more} more" if more > 0 else ""
        return (
            f"Nothing was extracted to {self.dest}: {len(self.problems)} problem(s): {shown}{tail}."
        )


@dataclass(frozen=True, slots=True)
class ExtractResult:
    """What was written: counts of files, folders and links, and bytes of content."""

    files: int
    folders: int
    links: int
    bytes: int


def _name_problem(name: str) -> str:
    if len(os.fsencode(name)) > NAME_MAX:
        return f"the name is longer than {NAME_MAX} bytes"
    if os.name == "nt":  # pragma: no cover - Windows hosts
        base = name.split(".", 1)[0].upper()
        if base in {
            "CON",
            "PRN",
            "AUX",
            "NUL",
            *(f"COM{i}" for i in range(1, 10)),
            *(f"LPT{i}" for i in range(1, 10)),
        }:
            return "the name is reserved on Windows"
        if any(c in name for c in '<>:"|?*') or name.endswith((" ", ".")):
            return "the name holds characters Windows does not allow"
    return ""


def plan_extract(
    sources: Sequence[tuple[BaseNamespace, Entry]], dest: Path, *, force: bool = False
) -> ExtractPlan:
    """Plan copying each ``(namespace, entry)`` into the folder ``dest`` as ``dest/NAME``.

    The root of a volume is copied as its contents. Nothing is written here.
    """
    plan = ExtractPlan(Path(dest), force=force)
    seen_rel: dict[tuple[str, ...], str] = {}

    def add(ns: BaseNamespace, entry: Entry, rel: tuple[str, ...]) -> None:
        label = f"{ns.volume}:{entry.path}"
        if entry.name_note:
            plan.renamed.append((label, entry.name_note))
        problem = _name_problem(rel[-1]) if rel else ""
        if problem:
            plan.problems.append(f"{label}: {problem}")
            return
        if rel in seen_rel:
            plan.problems.append(f"{label}: the same host name as {seen_rel[rel]}")
            return
        seen_rel[rel] = label
        if entry.kind is EntryKind.OTHER:
            plan.skipped.append((label, "devices, FIFOs and sockets are not extracted"))
            return
        if entry.kind is EntryKind.SYMLINK and "\0" in (entry.target or ""):
            plan.problems.append(f"{label}: the link target holds a NUL character")
            return
        plan.items.append(Item(ns, entry, rel))
        if entry.kind is EntryKind.FILE:
            plan.total_bytes += entry.size

    for ns, top in sources:
        base: tuple[str, ...] = () if top.path == "/" else (top.name,)
        if not top.is_dir:
            add(ns, top, base)
            continue
        if base:
            add(ns, top, base)
        prefix = len(top.path.rstrip("/"))

        def onerror(path: str, exc: VdiError, ns: BaseNamespace = ns) -> None:
            plan.problems.append(f"{ns.volume}:{path}: {exc}")

        for dirpath, entries in ns.walk(top.path, onerror=onerror):
            inner = tuple(p for p in dirpath[prefix:].split("/") if p)
            for entry in entries:
                add(ns, entry, base + inner + (entry.name,))
    _check_host(plan)
    return plan


def _check_host(plan: ExtractPlan) -> None:
    """What already exists in DEST: real folders may be reused; links are never followed."""
    dest = plan.dest
    if dest.exists() and not dest.is_dir():
        plan.problems.append(f"{dest} exists and is not a folder")
        return
    checked: dict[tuple[str, ...], str] = {}

    def kind_at(rel: tuple[str, ...]) -> str:
        if rel not in checked:
            try:
                mode = os.lstat(dest.joinpath(*rel)).st_mode
            except FileNotFoundError:
                checked[rel] = "missing"
            else:
                checked[rel] = (
                    "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "other"
                )
        return checked[rel]

    for item in plan.items:
        for depth in range(1, len(item.rel)):
            parent = item.rel[:depth]
            kind = kind_at(parent)
            if kind == "link":
                plan.problems.append(
                    f"{dest.joinpath(*parent)} is a symbolic link; links "
                    "inside the destination are not followed"
                )
            elif kind == "other":
                plan.problems.append(f"{dest.joinpath(*parent)} exists and is not a folder")
            if kind in ("link", "other"):
                break
        if not item.rel:
            continue
        kind = kind_at(item.rel)
        target = dest.joinpath(*item.rel)
        if item.entry.is_dir:
            if kind in ("link", "other"):
                plan.problems.append(f"{target} exists and is not a folder")
        elif kind == "dir":
            plan.problems.append(f"{target} exists and is a folder")
        elif kind in ("link", "other") and not plan.force:
            plan.problems.append(f"{target} already exists (use --force to replace it)")
    plan.problems = list(dict.fromkeys(plan.problems))


@dataclass(frozen=True, slots=True)
class _Written:
    """A file written under its temporary name, waiting for the batch's flush."""

    tmp: Path
    target: Path
    entry: Entry


def run_extract(
    plan: ExtractPlan, *, progress: ProgressFn = no_progress, cancel: CancelToken | None = None
) -> ExtractResult:
    """Carry out ``plan`` (refused with OperationRefused when it has problems)."""
    if plan.problems:
        raise OperationRefused(plan.refusal())
    dest = plan.dest
    fileio.makedirs(dest)
    folders = links = 0
    written = 0
    named: list[int] = [0]  # files in place (a list: _name_batch adds as it goes)
    dirs: list[tuple[Path, Entry]] = []  # folders created here (existing ones are left as is)
    batch: list[_Written] = []
    batch_bytes = 0
    real_folders: set[tuple[str, ...]] = set()
    dest_fd = os.open(dest, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))  # for the flushes
    try:
        for item in plan.items:
            if cancel is not None:
                cancel.raise_if_cancelled(
                    f"Cancelled: {named[0]} file(s) were extracted to {dest}; the rest were not."
                )
            target = dest.joinpath(*item.rel)
            entry = item.entry
            _require_real_folder(dest, item.rel[:-1], real_folders)
            if entry.is_dir:
                if item.rel and not os.path.lexists(target):
                    fileio.makedirs(target)
                    folders += 1
                    dirs.append((target, entry))
            elif entry.kind is EntryKind.SYMLINK:
                tmp = _tmp_name(target)
                fileio.unlink(tmp, missing_ok=True)
                try:
                    fileio.symlink(entry.target or "", tmp)
                    _name(tmp, target, plan.force, link=True)
                except BaseException:
                    fileio.unlink(tmp, missing_ok=True)
                    raise
                _set_times(target, entry)
                links += 1
            else:
                tmp = _tmp_name(target)
                batch.append(_Written(tmp, target, entry))  # before writing: cleaned on error
                base = written

                def step(n: int, base: int = base) -> None:
                    progress(Progress("extracting files", base + n, plan.total_bytes, base + n))

                written += _write_file(item, tmp, step, cancel)
                batch_bytes += entry.size
                progress(Progress("extracting files", written, plan.total_bytes, written))
                if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                    _name_batch(batch, dest_fd, plan.force, named)
                    batch_bytes = 0
        _name_batch(batch, dest_fd, plan.force, named)
        for folder, entry in reversed(dirs):
            if entry.mode is not None:
                # The guest's permission bits, but always usable by the person extracting.
                fileio.chmod(folder, entry.mode & 0o777 | 0o700)
            _set_times(folder, entry)
        fileio.sync_filesystem(dest_fd)  # the last names, the folders and their times
    except BaseException:
        for w in batch:  # written but never named: nothing partial is left behind
            fileio.unlink(w.tmp, missing_ok=True)
        raise
    finally:
        os.close(dest_fd)
    return ExtractResult(named[0], folders, links, written)


def _name_batch(batch: list[_Written], dest_fd: int, force: bool, named: list[int]) -> None:
    """One flush makes the batch's contents durable; then each file gets its final name.

    Files leave ``batch`` as they are named, so an error leaves only unnamed ones in it.
    """
    if not batch:
        return
    fileio.sync_filesystem(dest_fd)
    while batch:
        w = batch[0]
        _name(w.tmp, w.target, force, link=False)
        batch.pop(0)
        named[0] += 1


def _require_real_folder(dest: Path, rel: tuple[str, ...], checked: set[tuple[str, ...]]) -> None:
    """Refuse to write under a parent that turned into a link since planning.

    ``checked`` holds the parents already found real in this run (each is looked at once).
    """
    for depth in range(1, len(rel) + 1):
        parent = rel[:depth]
        if parent in checked:
            continue
        path = dest.joinpath(*parent)
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise OperationRefused(
                f"{path} is no longer a real folder; extraction stopped "
                "(links inside the destination are not followed)."
            )
        checked.add(parent)


def _tmp_name(target: Path) -> Path:
    """``.NAME.vdigui-tmp`` beside ``target`` (cut by bytes: it must fit NAME_MAX too)."""
    return target.with_name(f".{os.fsdecode(os.fsencode(target.name)[:200])}.vdigui-tmp")


def _name(tmp: Path, target: Path, force: bool, *, link: bool) -> None:
    """Give ``tmp`` (a symbolic ``link`` or a file) its final name, never overwriting unless
    ``force``."""
    if force:
        fileio.replace(tmp, target)
        return
    if link:
        # Not rename_noreplace: where it falls back to a hard link, a hard link to a symbolic
        # link is not portable. A rename after a fresh existence check is the next best thing
        # (the plan already refused existing names).
        if os.path.lexists(target):
            raise OperationRefused(f"{target} appeared while extracting; it was left as it is.")
        fileio.replace(tmp, target)
        return
    try:
        fileio.rename_noreplace(tmp, target)
    except FileExistsError:
        raise OperationRefused(
            f"{target} appeared while extracting; it was left as it is."
        ) from None


def _write_file(
    item: Item, tmp: Path, step: Callable[[int], None], cancel: CancelToken | None
) -> int:
    """Write the file's content to ``tmp`` (holes left unwritten); bytes written.

    Not flushed here: the batch's one flush does that (:func:`_name_batch`). A large file
    starts write-back on a helper thread while it is written, so that flush finds little
    left; a small one does not (starting it cost 30 us per file, a sixth of the run).
    """
    from vdigui.engine.copier import Writeback

    ns, entry = item.ns, item.entry
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = fileio.open_fd(tmp, flags, 0o600)
    except FileExistsError:  # left by an earlier run that lost power: ours to replace
        fileio.unlink(tmp)
        fd = fileio.open_fd(tmp, flags, 0o600)
    writeback = Writeback(fd) if entry.size >= WRITEBACK_FILE else None
    done = stored_end = 0
    try:
        for pos, data in ns.stored_pieces(entry, _CHUNK):
            if cancel is not None:
                cancel.raise_if_cancelled(f"Cancelled while extracting {entry.path}.")
            fileio.pwrite(fd, data, pos)
            if writeback is not None:
                writeback.add(pos, len(data))
            done += len(data)
            stored_end = max(stored_end, pos + len(data))
            step(done)
        if stored_end != entry.size:  # a hole at the end (or an empty file's nothing)
            fileio.ftruncate(fd, entry.size)
        if entry.mode is not None:
            # The guest's permission bits (no set-id bits), always readable by the owner.
            fileio.fchmod(fd, entry.mode & 0o777 | 0o600)
        times = _times(entry)
        if times is not None:  # on the open file: naming it later keeps them
            fileio.futime(fd, times)
    finally:
        if writeback is not None:
            writeback.close()
        fileio.close(fd)
    return entry.size


def _times(entry: Entry) -> tuple[int, int] | None:
    """(atime, mtime) in nanoseconds for ``utime``, or None when the guest keeps none."""
    if entry.mtime is None:
        return None
    mtime = round(entry.mtime * 1e9)
    return (round(entry.atime * 1e9) if entry.atime is not None else mtime, mtime)


def _set_times(path: Path, entry: Entry) -> None:
    times = _times(entry)
    if times is not None:
        fileio.utime(path, times)


__all__ = ["ExtractPlan", "ExtractResult", "Item", "plan_extract", "run_extract"]
