"""Copying guest files and folders out to the host, safely: plan everything, then write.

The guest's names and links are hostile input, so the plan is made and checked completely
before the first byte is written (a refused extraction writes nothing):

- every host path is DEST joined with names that :func:`~.api.safe_name` already made single,
  safe components, so nothing can land outside DEST;
- anything that already exists inside DEST must be a real folder where a folder is needed,
  never a symbolic link (links in DEST are not followed), and an existing file is replaced
  only with ``force``;
- names the host cannot hold (too long, or duplicates after escaping) are listed and refused.

Files are written beside their final name as ``.NAME.vdigui-tmp``, flushed, then linked into
place (which fails rather than overwrite) or, with ``force``, renamed over the old file; holes
and unwritten extents are not written, so sparse files stay sparse. Guest symbolic links
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

from .api import BaseNamespace, Entry, EntryKind, ExtentKind, printable

#: Longest file name (bytes) most host filesystems accept.
NAME_MAX = 255
#: Problems listed in a refusal before "and N more".
_SHOWN = 20
_CHUNK = 4 << 20


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


def run_extract(
    plan: ExtractPlan, *, progress: ProgressFn = no_progress, cancel: CancelToken | None = None
) -> ExtractResult:
    """Carry out ``plan`` (refused with OperationRefused when it has problems)."""
    if plan.problems:
        raise OperationRefused(plan.refusal())
    dest = plan.dest
    fileio.makedirs(dest)
    files = folders = links = 0
    written = 0
    dirs: list[tuple[Path, Entry]] = []  # folders created here (existing ones are left as is)
    for item in plan.items:
        if cancel is not None:
            cancel.raise_if_cancelled(
                f"Cancelled: {files} file(s) were extracted to {dest}; the rest were not."
            )
        target = dest.joinpath(*item.rel)
        entry = item.entry
        _require_real_folder(dest, item.rel[:-1])
        if entry.is_dir:
            if item.rel and not os.path.lexists(target):
                fileio.makedirs(target)
                folders += 1
                dirs.append((target, entry))
        elif entry.kind is EntryKind.SYMLINK:
            _place(target, plan.force, _symlink_maker(entry.target or ""))
            _set_times(target, entry)
            links += 1
        else:

            def write(tmp: Path, item: Item = item) -> None:
                nonlocal written
                written += _write_file(
                    item,
                    tmp,
                    lambda n: progress(
                        Progress("extracting files", written + n, plan.total_bytes, written + n)
                    ),
                    cancel,
                )

            _place(target, plan.force, write)
            _set_times(target, entry)
            files += 1
            progress(Progress("extracting files", written, plan.total_bytes, written))
    for folder, entry in reversed(dirs):
        fileio.fsync_dir(folder)
        if entry.mode is not None:
            # The guest's permission bits, but always usable by the person extracting.
            fileio.chmod(folder, entry.mode & 0o777 | 0o700)
        _set_times(folder, entry)
    fileio.fsync_dir(dest)
    return ExtractResult(files, folders, links, written)


def _symlink_maker(link_target: str) -> Callable[[Path], None]:
    return lambda tmp: fileio.symlink(link_target, tmp)


def _require_real_folder(dest: Path, rel: tuple[str, ...]) -> None:
    """Refuse to write under a parent that turned into a link since planning."""
    for depth in range(1, len(rel) + 1):
        path = dest.joinpath(*rel[:depth])
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise OperationRefused(
                f"{path} is no longer a real folder; extraction stopped "
                "(links inside the destination are not followed)."
            )


def _place(target: Path, force: bool, make: Callable[[Path], None]) -> None:
    """Create via a temporary name beside ``target``, then link (or, forced, rename) it in."""
    # Cut by bytes, not characters: the temporary name must fit NAME_MAX too.
    tmp = target.with_name(f".{os.fsdecode(os.fsencode(target.name)[:200])}.vdigui-tmp")
    fileio.unlink(tmp, missing_ok=True)
    try:
        make(tmp)
        if force:
            fileio.replace(tmp, target)
        else:
            if stat.S_ISLNK(os.lstat(tmp).st_mode):
                # Hard links to symlinks are not portable; a rename after a fresh existence
                # check is the next best thing (the plan already refused existing names).
                if os.path.lexists(target):
                    raise OperationRefused(
                        f"{target} appeared while extracting; it was left as it is."
                    )
                fileio.replace(tmp, target)
            else:
                fileio.link(tmp, target)
                fileio.unlink(tmp)
    except BaseException:
        fileio.unlink(tmp, missing_ok=True)
        raise


def _write_file(
    item: Item, tmp: Path, step: Callable[[int], None], cancel: CancelToken | None
) -> int:
    """Write the file's content to ``tmp`` (holes left unwritten), flush it; bytes written."""
    ns, entry = item.ns, item.entry
    fd = fileio.open_fd(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644
    )
    done = 0
    try:
        for ext in ns.extents(entry):
            if ext.kind not in (ExtentKind.DATA, ExtentKind.INLINE):
                continue
            pos = ext.file_offset
            end = ext.file_offset + ext.length
            while pos < end:
                if cancel is not None:
                    cancel.raise_if_cancelled(f"Cancelled while extracting {entry.path}.")
                take = min(_CHUNK, end - pos)
                data = ns.read(entry, pos, take)
                fileio.pwrite(fd, data, pos)
                pos += take
                done += take
                step(done)
        fileio.ftruncate(fd, entry.size)
        if entry.mode is not None:
            # The guest's permission bits (no set-id bits), always readable by the owner.
            fileio.chmod(tmp, entry.mode & 0o777 | 0o600)
        fileio.fsync(fd)
    finally:
        fileio.close(fd)
    return entry.size


def _set_times(path: Path, entry: Entry) -> None:
    if entry.mtime is None:
        return
    mtime = round(entry.mtime * 1e9)
    atime = round(entry.atime * 1e9) if entry.atime is not None else mtime
    fileio.utime(path, (atime, mtime))


__all__ = ["ExtractPlan", "ExtractResult", "Item", "plan_extract", "run_extract"]
