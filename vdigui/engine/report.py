"""A shareable report of a VM folder (or one image): everything vdigui knows, in one file.

Why: "why is my VM folder so big, and what is wrong with it?" is a question people take to a
forum, and the helpers there need the snapshot tree, the four UUIDs of every image
(docs/vdi-format.md: uuidCreate, uuidModify, uuidLinkage, uuidParentModify), the problems, the
space account and the history of what was done to the folder, not a screenshot of one tab.

How: :func:`build_report` gathers the facts into one plain JSON-ready dict (``vdictl report
--json`` prints it as is); :func:`vdigui.engine.report_html.render_html` draws the HTML page
from that dict alone, so the page and the JSON always say the same. Redaction
(:func:`redact`) is applied to the dict before either is produced, so no path or text escapes
it. Everything read here is read-only: headers, block maps, settings files, the guest
filesystems' allocation maps (through the space account) and vdigui's own records under
``.vdigui/``; no data block is read.

Each section is built on its own: a section that fails (a damaged image, an unreadable
settings file) becomes a note in the report instead of losing the other sections, because a
broken folder is exactly what gets reported.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vdigui import __version__
from vdigui.engine import fileio
from vdigui.engine.analysis import analyze
from vdigui.engine.chain import open_paths, resolve_chain
from vdigui.engine.errors import OperationCancelled, VdiError
from vdigui.engine.format import (
    BLOCK_FREE,
    BLOCK_ZERO,
    NULL_UUID,
    VdiHeader,
    is_allocated,
    read_header,
)
from vdigui.engine.operations import journal as jr
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress

#: Version of the report's JSON layout (bumped when a key changes meaning).
REPORT_VERSION = 1
#: Most cells per row of the block-map picture (a disk of more blocks is binned).
MAP_CELLS = 256
#: Width and height, in cells, of each fragmentation picture.
FRAG_GRID = (160, 48)
#: Seek-distance bounds of the jump classes (as the app's fragmentation view: in order,
#: 2-16 slots, 17-256, 257-4096, over 4096).
JUMP_BOUNDS = (0, 15, 255, 4095)
#: Block-map classes of a layer row, and of the "guest sees" row (followed by one per layer).
LAYER_CLASSES = ("free", "zero", "data")
SERVED_CLASSES = ("none", "zero")


# -- entry points ------------------------------------------------------------------------------
def build_report(
    source: Path | str,
    *,
    redacted: bool = False,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Everything the report shows about ``source`` (a VM folder, its .vbox, or an image).

    Raises:
        VdiError: ``source`` does not exist, or is neither a VM folder nor a VDI image (one
            sentence; nothing else stops the report).
        OperationCancelled: ``cancel`` was set.
    """
    source = Path(source)
    if not source.exists():
        if source.is_symlink():
            raise VdiError(f"'{source}' is a symbolic link to nothing (or to itself).")
        raise VdiError(f"'{source}' does not exist.")
    is_vm = source.is_dir() or source.suffix.lower() in (".vbox", ".xml")
    notes: list[str] = []
    data: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "generator": f"vdigui {__version__}",
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": str(source.absolute()),
        "kind": "vm" if is_vm else "image",
        "redacted": redacted,
        "machine": None,
        "snapshots": [],
        "chain": [],
        "problems": [],
        "space": None,
        "snapshot_costs": None,
        "disks": [],
        "history": [],
        "notes": notes,
    }
    steps: list[tuple[str, Callable[[], None]]] = []
    vm: Any = None
    if is_vm:
        from vdigui.engine.vmfolder import load_vm_folder

        vm = load_vm_folder(source)  # a settings file that cannot be read: nothing to report
        folder = vm.folder
        data["machine"] = _machine(vm)
        data["snapshots"] = _snapshot_tree(vm)
        steps.append(("chain", lambda: data.__setitem__("chain", _vm_chain_table(vm))))
        steps.append(("disks", lambda: data.__setitem__("disks", _vm_disks(vm, notes))))
        steps.append(("costs", lambda: data.__setitem__("snapshot_costs", _costs(vm, notes))))
    else:
        from vdigui.engine.sniff import require_regular_file

        require_regular_file(source)
        read_header(source)  # not a VDI: say so at once, as every other command does
        folder = source.resolve().parent
        steps.append(
            ("chain", lambda: data.__setitem__("chain", _image_chain_table(source, notes)))
        )
        steps.append(("disks", lambda: data.__setitem__("disks", _image_disks(source, notes))))
    steps.append(("problems", lambda: data.__setitem__("problems", _problems(source))))
    steps.append(("space", lambda: data.__setitem__("space", _space(source, cancel))))
    steps.append(("history", lambda: data.__setitem__("history", operation_history(folder))))
    for done, (name, step) in enumerate(steps):
        if cancel is not None:
            cancel.raise_if_cancelled("Cancelled: no report was written.")
        progress(Progress("gathering the report", done, len(steps)))
        try:
            step()
        except OperationCancelled:
            raise
        except (VdiError, OSError, ValueError) as exc:
            notes.append(f"The {_SECTION_NAMES[name]} could not be gathered: {exc}")
        except Exception as exc:  # a bug in one section must not cost the rest of the report
            notes.append(
                f"The {_SECTION_NAMES[name]} could not be gathered because of an "
                f"internal error ({type(exc).__name__}: {exc}); please report it."
            )
    progress(Progress("gathering the report", len(steps), len(steps)))
    return redact(data) if redacted else data


_SECTION_NAMES = {
    "chain": "chain table",
    "disks": "block-map and fragmentation pictures",
    "costs": "snapshot cost map",
    "problems": "list of problems",
    "space": "space account",
    "history": "operation history",
}


def report_bytes(data: dict[str, Any], *, as_json: bool = False) -> bytes:
    """The file content of a report: the HTML page, or the JSON (UTF-8, indented)."""
    if as_json:
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    from vdigui.engine.report_html import render_html

    return render_html(data).encode("utf-8")


def write_report(
    source: Path | str,
    output: Path | str,
    *,
    as_json: bool = False,
    redacted: bool = False,
    overwrite: bool = False,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> Path:
    """Build the report of ``source`` and write it to ``output`` atomically; returns the path.

    The file appears complete or not at all (temp file, fsync, rename); a refused or failed
    report writes nothing.

    Raises:
        VdiError: ``output`` exists and ``overwrite`` is False, its folder does not exist, or
            ``source`` cannot be reported on.
    """
    output = Path(output)
    refuse_output(output, overwrite=overwrite)
    data = build_report(source, redacted=redacted, progress=progress, cancel=cancel)
    payload = report_bytes(data, as_json=as_json)
    if cancel is not None:
        cancel.raise_if_cancelled("Cancelled: no report was written.")
    refuse_output(output, overwrite=overwrite)  # it may have appeared meanwhile
    fileio.write_file_atomic(output, payload, mode=0o644)
    return output


def refuse_output(output: Path, *, overwrite: bool) -> None:
    """Raise VdiError (one sentence) when the report may not be written to ``output``."""
    if output.is_dir():
        raise VdiError(f"'{output}' is a folder; give the report a file name.")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise VdiError(
            f"'{output}' already exists; choose another name or pass --force to replace it."
        )
    if not output.parent.is_dir():
        raise VdiError(f"The folder of '{output}' does not exist.")


# -- redaction ---------------------------------------------------------------------------------
def redaction_rules(
    home: str | None = None, user: str | None = None
) -> list[tuple[re.Pattern[str], str]]:
    """(pattern, replacement) pairs: the home folder becomes ``~``, the user name ``<user>``.

    The home folder is matched whole (``/home/al`` does not eat ``/home/alice``) and in its
    resolved form too; the user name wherever letters and digits do not continue it (so
    ``alice-laptop`` is hidden too, but a short name does not mangle ordinary words). A home
    of ``/`` (some service accounts) is not replaced.
    """
    if home is None:
        home = str(Path.home())
    if user is None:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = ""
    rules: list[tuple[re.Pattern[str], str]] = []
    homes = {home.rstrip("/")}
    try:
        homes.add(str(Path(home).resolve()).rstrip("/"))
    except (OSError, RuntimeError):
        pass
    for h in sorted((h for h in homes if h.count("/") >= 1 and len(h) > 1), key=len, reverse=True):
        rules.append((re.compile(re.escape(h) + r"(?![A-Za-z0-9._~-])"), "~"))
    if user:
        rules.append(
            (re.compile(r"(?<![A-Za-z0-9])" + re.escape(user) + r"(?![A-Za-z0-9])"), "<user>")
        )
    return rules


def redact(value: Any, rules: list[tuple[re.Pattern[str], str]] | None = None) -> Any:
    """``value`` (nested dicts, lists, strings) with every string redacted, keys included."""
    if rules is None:
        rules = redaction_rules()
    if isinstance(value, str):
        for pattern, replacement in rules:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, dict):
        return {redact(k, rules): redact(v, rules) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, rules) for v in value]
    return value


# -- machine and snapshots ---------------------------------------------------------------------
def _u(value: Any) -> str | None:
    return str(value) if value is not None else None


def _machine(vm: Any) -> dict[str, Any]:
    return {
        "name": vm.name,
        "uuid": _u(vm.machine_uuid),
        "folder": str(vm.folder),
        "settings_path": str(vm.settings_path),
        "os_type": vm.os_type,
        "settings_version": vm.settings_version,
        "state_file": _u(vm.state_file),
        "aborted": vm.aborted,
        "current_state_modified": vm.current_state_modified,
        "snapshot_count": vm.snapshot_count,
    }


def _medium_paths(vm: Any, media: Any) -> list[str]:
    return [str(m.path) if m.path is not None else str(m.location) for m in media]


def _snapshot_tree(vm: Any) -> list[dict[str, Any]]:
    """Nested snapshots, with the current state as a child of the snapshot it is based on."""
    current = {
        "name": "Current state",
        "uuid": None,
        "current_state": True,
        "timestamp": None,
        "description": "",
        "state_file": _u(vm.state_file),
        "modified": vm.current_state_modified,
        "disks": _medium_paths(vm, vm.current_disks()),
        "children": [],
    }

    def node(n: Any) -> dict[str, Any]:
        children = [node(c) for c in n.children]
        if n.uuid == vm.current_snapshot_uuid:
            children.append(current)
        return {
            "name": n.name,
            "uuid": _u(n.uuid),
            "current_state": False,
            "timestamp": n.timestamp.isoformat() if n.timestamp else None,
            "description": n.description,
            "state_file": _u(n.state_file),
            "current": n.uuid == vm.current_snapshot_uuid,
            "disks": _medium_paths(vm, vm.disk_for_snapshot(n)),
            "children": children,
        }

    if vm.root_snapshot is None:
        return [current]
    tree = [node(vm.root_snapshot)]
    if vm.current_snapshot is None:  # based on no snapshot that exists: show it beside
        tree.append(current)
    return tree


# -- chain table -------------------------------------------------------------------------------
def chain_row(path: Path, header: VdiHeader, depth: int, **extra: Any) -> dict[str, Any]:
    """One image of the chain table: its four UUIDs and what its header says."""
    try:
        file_size: int | None = path.stat().st_size
    except OSError:
        file_size = None
    linkage = header.parent_uuid
    parent_modify = header.parent_modify_uuid
    return {
        "path": str(path),
        "name": path.name,
        "depth": depth,
        "type": header.image_type.label,
        "disk_size": header.disk_size,
        "block_size": header.block_size,
        "blocks": header.blocks,
        "blocks_allocated": header.blocks_allocated,
        "file_size": file_size,
        "uuid_create": str(header.uuid),
        "uuid_modify": str(header.modify_uuid),
        "uuid_linkage": None if linkage == NULL_UUID else str(linkage),
        "uuid_parent_modify": None if parent_modify == NULL_UUID else str(parent_modify),
        **extra,
    }


def _vm_chain_table(vm: Any) -> list[dict[str, Any]]:
    """Every image vdigui found for the VM, in the order of the tree the headers link."""
    users: dict[Path, list[str]] = {}
    for n in vm.iter_snapshots():
        for m in vm.disk_for_snapshot(n):
            if m.path is not None:
                users.setdefault(Path(m.path).resolve(), []).append(n.name)
    for m in vm.current_disks():
        if m.path is not None:
            users.setdefault(Path(m.path).resolve(), []).append("Current state")
    rows: list[dict[str, Any]] = []
    seen: set[Any] = set()

    def walk(uuid: Any, depth: int) -> None:
        if uuid in seen:
            return
        seen.add(uuid)
        paths = vm.image_paths.get(uuid)
        if paths:
            path = paths[0]
            rows.append(
                chain_row(
                    path,
                    vm.images[path],
                    depth,
                    registered=uuid in vm.media,
                    used_by=users.get(Path(path).resolve(), []),
                    problems=sorted({p.kind for p in vm.problems_for(uuid, path)}),
                )
            )
        for child in vm.header_tree.get(uuid, ()):
            walk(child, depth + 1)

    for root in vm.header_roots:
        walk(root, 0)
    for uuid in vm.image_paths:  # images in a parent loop belong to no root
        walk(uuid, 0)
    for path, message in sorted(vm.unreadable.items()):
        rows.append({"path": str(path), "name": Path(path).name, "depth": 0, "unreadable": message})
    return rows


def _image_chain_table(image: Path, notes: list[str]) -> list[dict[str, Any]]:
    resolution = resolve_chain(image)
    if resolution.error is not None:
        notes.append(f"The chain of '{image.name}' could not be followed: {resolution.error}")
    paths = list(resolution.paths) or [image]
    rows = []
    for depth, path in enumerate(paths):
        try:
            rows.append(chain_row(Path(path), read_header(path), depth))
        except (VdiError, OSError) as exc:
            rows.append(
                {"path": str(path), "name": Path(path).name, "depth": depth, "unreadable": str(exc)}
            )
    return rows


# -- problems, space, costs --------------------------------------------------------------------
def _problems(source: Path) -> list[dict[str, Any]]:
    from vdigui.engine.check import check_path

    report = check_path(source)
    return [
        {"severity": f.severity, "kind": f.kind, "path": str(f.path), "message": f.message}
        for f in report.findings
    ]


def _space(source: Path, cancel: CancelToken | None) -> dict[str, Any]:
    """The space account, exactly as ``vdictl space --json`` prints it."""
    from vdigui.engine.space_account import account_space

    return account_space(source, cancel=cancel).to_dict()


def _costs(vm: Any, notes: list[str]) -> list[dict[str, Any]] | None:
    """The snapshot cost map, exactly as ``vdictl snapshot list --cost --json`` prints it."""
    if vm.root_snapshot is None:
        return []
    try:
        from vdigui.engine.snapshot_cost import snapshot_costs
    except ImportError:
        notes.append("This version of vdigui has no snapshot cost map.")
        return None
    return [c.to_dict() for c in snapshot_costs(vm.settings_path)]


# -- pictures ----------------------------------------------------------------------------------
def _vm_disks(vm: Any, notes: list[str]) -> list[dict[str, Any]]:
    """The pictures of every disk of the current state (the chains the guest reads)."""
    disks = []
    for i, medium in enumerate(vm.current_disks(), start=1):
        try:
            chain = [Path(p) for p in vm.chain_for(medium)]
        except (VdiError, OSError) as exc:
            notes.append(f"Disk {i} of the current state could not be followed: {exc}")
            continue
        disks.append(disk_pictures(chain, f"Disk {i}: {chain[-1].name}"))
    return disks


def _image_disks(image: Path, notes: list[str]) -> list[dict[str, Any]]:
    resolution = resolve_chain(image)
    if resolution.error is not None:
        return []  # already noted by the chain table
    return [disk_pictures([Path(p) for p in resolution.paths], image.name)]


def disk_pictures(paths: list[Path], label: str) -> dict[str, Any]:
    """The block-map cells and fragmentation grids of one chain (maps only, no data read)."""
    with open_paths(paths) as chain:
        analysis = analyze(chain)
        block_size = chain.block_size
        disk_size = chain.disk_size
    entries = analysis.entries
    blocks = int(entries.shape[1]) if entries.ndim == 2 else 0
    layers = len(analysis.paths)
    k = max(1, -(-blocks // MAP_CELLS))
    rows = []
    for i in range(layers):
        codes = np.full(blocks, 2, dtype=np.int64)
        codes[entries[i] == BLOCK_FREE] = 0
        codes[entries[i] == BLOCK_ZERO] = 1
        rows.append(
            {
                "label": analysis.paths[i].name,
                "kind": "layer",
                "layer": i,
                "classes": list(LAYER_CLASSES),
                "counts": bin_counts(codes, k, 3),
            }
        )
    served = np.zeros(blocks, dtype=np.int64)
    has = analysis.serving >= 0
    layer_of = analysis.serving[has].astype(np.int64)
    is_zero = entries[layer_of, np.flatnonzero(has)] == BLOCK_ZERO
    served[has] = np.where(is_zero, 1, 2 + layer_of)
    rows.append(
        {
            "label": "guest sees",
            "kind": "served",
            "layer": None,
            "classes": [*SERVED_CLASSES, *(p.name for p in analysis.paths)],
            "counts": bin_counts(served, k, 2 + layers),
        }
    )
    frag = []
    for i in range(layers):
        stats = analysis.layer_frag[i]
        frag.append(
            {
                "label": analysis.paths[i].name,
                "layer": i,
                "allocated": stats.allocated,
                "discontinuities": stats.discontinuities,
                "longest_run": stats.longest_run,
                "in_order_share": round(stats.in_order_share, 6),
                "mean_jump": round(stats.mean_jump, 3),
                **frag_grid(entries[i], blocks),
            }
        )
    cf = analysis.chain_frag
    return {
        "label": label,
        "paths": [str(p) for p in analysis.paths],
        "disk_size": disk_size,
        "block_size": block_size,
        "blocks": blocks,
        "cell_blocks": k,
        "serving_counts": list(analysis.serving_counts),
        "block_map": rows,
        "fragmentation": frag,
        "chain_fragmentation": {
            "allocated": cf.allocated,
            "discontinuities": cf.discontinuities,
            "longest_run": cf.longest_run,
            "in_order_share": round(cf.in_order_share, 6),
        },
    }


def bin_counts(codes: np.ndarray, k: int, classes: int) -> list[list[int]]:
    """Per cell of ``k`` blocks, how many blocks of each class it holds (class 0 first)."""
    cells = -(-codes.size // k) if codes.size else 0
    cell = np.arange(codes.size, dtype=np.int64) // k
    flat = np.bincount(cell * classes + codes, minlength=cells * classes)
    return flat.reshape(cells, classes).astype(int).tolist()


def frag_grid(entries: np.ndarray, blocks: int) -> dict[str, Any]:
    """The fragmentation picture of one layer: guest block (x) against slot in the file (y).

    Each cell holds the worst seek class (0 in order .. 4 over 4096 slots) among the blocks
    that fall into it, as the app's view colours its pixels: the worst, because a long seek
    among in-order blocks is what costs time; "." is an empty cell. Rows run from the top
    (highest slots) down.
    """
    width, height = FRAG_GRID
    found = np.flatnonzero(is_allocated(entries[:blocks]))
    slots = entries[found].astype(np.int64)
    top = int(slots.max()) + 1 if slots.size else 1
    grid = np.full(width * height, -1, dtype=np.int8)
    if slots.size:
        jump = np.zeros(slots.size, dtype=np.int64)
        jump[1:] = np.abs(np.diff(slots) - 1)
        classes = np.searchsorted(np.array(JUMP_BOUNDS), jump, side="left").astype(np.int8)
        xi = np.clip(found * width // max(blocks, 1), 0, width - 1)
        yi = np.clip(slots * height // top, 0, height - 1)
        np.maximum.at(grid, (height - 1 - yi) * width + xi, classes)
    chars = np.array(list(".01234"))
    rows = ["".join(chars[grid[r * width : (r + 1) * width] + 1]) for r in range(height)]
    return {"grid": rows, "slots": top if slots.size else 0}


# -- history -----------------------------------------------------------------------------------
_BACKUP_NAME = re.compile(r"^(?P<stamp>\d{8}T\d{6})(?P<micro>\d{6})Z-(?P<kind>.+)$")


def _folder_size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


def operation_history(folder: Path) -> list[dict[str, Any]]:
    """vdigui's operations on ``folder``, oldest first, from its records under ``.vdigui/``.

    Sources: the record of the last finished operation (``last-operation.json``), the journal
    of an unfinished one (``journal.json``), and one backup folder per operation whose undo
    data is still kept (``backups/<time>-<kind>/``). Never raises for a damaged record: it is
    listed as such.
    """
    state = jr.state_dir(Path(folder))
    entries: dict[str, dict[str, Any]] = {}  # by backup folder

    def record_entry(path: Path, status: str) -> None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            entries[str(path)] = {
                "kind": "?",
                "summary": f"unreadable record '{path}': {exc}",
                "started": None,
                "finished": None,
                "status": "unreadable",
                "undo_data": None,
                "record": str(path),
            }
            return
        if not isinstance(record, dict):
            return
        if status == "done":
            if record.get("undone"):
                status = "undone"
            elif record.get("undo_discarded"):
                status = "done, undo data discarded"
            elif record.get("undoable") is False:
                status = "done, no undo data kept"
            else:
                status = "done, can be undone"
        key = str(record.get("backup_dir") or path)
        entries[key] = {
            "kind": str(record.get("kind", "?")),
            "summary": str(record.get("summary", "")),
            "started": record.get("started"),
            "finished": record.get("finished"),
            "status": status,
            "undo_data": None,
            "record": str(path),
        }

    record_entry(state / jr.LAST_NAME, "done")
    record_entry(state / jr.JOURNAL_NAME, "unfinished (the next writing command recovers it)")
    backups = jr.backups_dir(Path(folder))
    try:
        kept = sorted(p for p in backups.iterdir() if p.is_dir())
    except OSError:
        kept = []
    for path in kept:
        entry = entries.get(str(path))
        if entry is None:
            match = _BACKUP_NAME.match(path.name)
            started = None
            if match:
                when = dt.datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S")
                started = when.replace(tzinfo=dt.UTC).isoformat(timespec="seconds")
            entry = {
                "kind": match["kind"] if match else "?",
                "summary": "",
                "started": started,
                "finished": None,
                "status": "done earlier (its undo data is kept)",
                "undo_data": None,
                "record": None,
            }
            entries[str(path)] = entry
        entry["undo_data"] = _folder_size(path)
        entry["backup_dir"] = str(path)
    out = sorted(entries.values(), key=lambda e: (e["started"] is None, str(e["started"])))
    return out


__all__ = [
    "FRAG_GRID",
    "JUMP_BOUNDS",
    "LAYER_CLASSES",
    "MAP_CELLS",
    "REPORT_VERSION",
    "SERVED_CLASSES",
    "bin_counts",
    "build_report",
    "chain_row",
    "disk_pictures",
    "frag_grid",
    "operation_history",
    "redact",
    "redaction_rules",
    "refuse_output",
    "report_bytes",
    "write_report",
]
