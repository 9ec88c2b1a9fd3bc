"""What the window shows, computed off the GUI thread: the opened folder and one chain.

Why a Qt-free module inside the GUI package: loading a folder and analysing a chain are the slow
parts (header reads, block maps of millions of entries, FIEMAP), so they run on a worker thread
and must not touch Qt. The results are plain values the models and views only display.

Two steps, because they have different costs and lifetimes:

- :func:`load_session` reads the settings and every image header once per open/reload and
  builds the snapshot and media trees and the problem list.
- :func:`load_chain` opens one chain read-only for the selected image and analyses it; the
  returned :class:`ChainData` owns the open files until :meth:`ChainData.close`.
"""

from __future__ import annotations

import contextlib
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from vdigui.engine import (
    Analysis,
    ChainError,
    DiskChain,
    HostExtents,
    ImageIndex,
    MissingParentError,
    Problem,
    Progress,
    ProgressFn,
    SettingsError,
    Severity,
    SnapshotNode,
    UsageMap,
    VdiError,
    VdiHeader,
    VmFolder,
    analyze,
    chain_usage,
    default_search_dirs,
    host_extents,
    load_vm_folder,
    open_paths,
    parse_uuid,
    read_header,
    resolve_chain,
)
from vdigui.gui.blockstates import CountPyramid, layer_codes, make_pyramids, served_codes

#: Header bytes shown in the hex dump.
HEADER_BYTES = 512


@dataclass(eq=False)
class DiskNode:
    """One image in the media tree (a registered medium, a file found on disk, or both).

    Attributes:
        uuid: uuidCreate (header) or the registry UUID.
        path: the file, when known.
        title: what the tree shows.
        header: the header, when the file could be read as a VDI.
        error: why the file cannot be read (missing, not a VDI), else "".
        medium_type: the registry type (Normal, Immutable, ...), "" when unregistered.
        auto_reset: the registry's autoReset flag.
        registered: whether a media registry knows it.
        format: "VDI", "VMDK", ...
        problems: the problems about this image (its badges).
        children: differencing images that link to it.
        parent: the node above, None for a root.
    """

    uuid: uuidlib.UUID | None
    path: Path | None
    title: str
    header: VdiHeader | None = None
    error: str = ""
    medium_type: str = ""
    auto_reset: bool = False
    registered: bool = False
    format: str = "VDI"
    problems: list[Problem] = field(default_factory=list)
    children: list[DiskNode] = field(default_factory=list)
    parent: DiskNode | None = None
    used_by: list[str] = field(default_factory=list)

    @property
    def short_title(self) -> str:
        """The title with a UUID file name shortened ("{9bb9d102…}.vdi")."""
        name = self.title
        if name.startswith("{") and "}" in name and len(name) > 30:
            return name[:9] + "…}" + name[name.index("}") + 1 :]
        return name

    @property
    def inspectable(self) -> bool:
        """Whether a chain can be opened for this node."""
        return self.header is not None and self.path is not None


@dataclass(eq=False)
class SnapNode:
    """One row of the snapshot tree: a snapshot, or the "Current State" pseudo-row.

    Attributes:
        uuid: the snapshot UUID (None for the current state).
        name: the snapshot name or "Current State".
        timestamp: when it was taken.
        description: the snapshot description (a tooltip).
        online: it holds a saved machine state.
        disks: the hard-disk media it references, in attachment order.
        is_current_state: the pseudo-row for the running state.
        is_current_snapshot: the snapshot the current state is based on.
        problems: badges (e.g. a disk it references is missing).
    """

    uuid: uuidlib.UUID | None
    name: str
    timestamp: datetime | None = None
    description: str = ""
    online: bool = False
    disks: list[uuidlib.UUID] = field(default_factory=list)
    is_current_state: bool = False
    is_current_snapshot: bool = False
    modified: bool = False
    problems: list[Problem] = field(default_factory=list)
    children: list[SnapNode] = field(default_factory=list)
    parent: SnapNode | None = None


@dataclass(eq=False)
class Session:
    """Everything loaded from one opened path.

    Attributes:
        source: what the user opened.
        kind: "vm" (a folder or .vbox) or "image" (a single VDI).
        title: for the window title.
        vm: the engine's view of the VM folder (None for a single image).
        snapshot_roots: the snapshot tree (empty for a single image).
        media_roots: the media tree.
        problems: everything the engine found wrong.
        default_disk: what to select first (the current state's disk, or the opened image).
        files: every file the session refers to (the read-only test checks them).
    """

    source: Path
    kind: str
    title: str
    vm: VmFolder | None
    snapshot_roots: list[SnapNode]
    media_roots: list[DiskNode]
    problems: list[Problem]
    default_disk: DiskNode | None

    def iter_disks(self) -> list[DiskNode]:
        """Every media-tree node, parents first."""
        out: list[DiskNode] = []
        stack = list(reversed(self.media_roots))
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out

    def iter_snapshots(self) -> list[SnapNode]:
        """Every snapshot-tree row, parents first."""
        out: list[SnapNode] = []
        stack = list(reversed(self.snapshot_roots))
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out

    def disk_by_uuid(self, uuid: uuidlib.UUID | None) -> DiskNode | None:
        """The media-tree node of ``uuid``."""
        if uuid is None:
            return None
        return next((d for d in self.iter_disks() if d.uuid == uuid), None)

    def find_disk(self, text: str) -> DiskNode | None:
        """A disk by UUID, file name or path (for ``--select``)."""
        wanted = parse_uuid(text)
        for node in self.iter_disks():
            if wanted is not None and node.uuid == wanted:
                return node
            if node.path is not None and (
                node.path.name.lower() == text.lower() or str(node.path) == text
            ):
                return node
        return None

    def find_snapshot(self, text: str) -> SnapNode | None:
        """A snapshot row by name or UUID ("Current State" finds the current state)."""
        wanted = parse_uuid(text)
        rows = self.iter_snapshots()
        for row in rows:
            if wanted is not None and row.uuid == wanted:
                return row
        for row in rows:
            if row.name == text:
                return row
        return next((r for r in rows if r.name.casefold() == text.casefold()), None)


def _is_vdi_path(path: Path) -> bool:
    return path.suffix.lower() == ".vdi"


def load_session(path: Path | str, progress: ProgressFn | None = None) -> Session:
    """Load a VM folder, a .vbox file or a single VDI (header reads only, read-only).

    Raises:
        VdiError: the path is none of those, or cannot be read (one sentence, with the file).
    """
    source = Path(path).expanduser()
    if progress is not None:
        progress(Progress("reading settings and headers", 0, 0))
    if not source.exists():
        raise VdiError(f"'{source}' does not exist.")
    if source.is_file() and source.suffix.lower() not in (".vbox", ".xml"):
        return _load_image(source)
    try:
        vm = load_vm_folder(source)
    except SettingsError as exc:
        images = _folder_images(source) if source.is_dir() else []
        if not images:
            raise
        # A folder of disks without (readable) settings: the lost-.vbox case. Rebuild the
        # media tree from the headers alone, which is what the data depends on anyway.
        return _load_image(images[0], folder=source, note=str(exc))
    return _load_vm(vm, source)


def _folder_images(folder: Path) -> list[Path]:
    """VDI files in ``folder`` and its Snapshots folder, sorted by name."""
    found: list[Path] = []
    for where in (folder, folder / "Snapshots"):
        with contextlib.suppress(OSError):
            found += sorted(
                p for p in where.iterdir() if p.suffix.lower() == ".vdi" and p.is_file()
            )
    return found


def _load_image(path: Path, *, folder: Path | None = None, note: str = "") -> Session:
    """A single image (or a folder of them): the media tree linked by header UUIDs."""
    path = path.resolve()
    problems: list[Problem] = []
    if folder is not None:
        problems.append(
            Problem(
                Severity.WARNING,
                "no-settings",
                f"{note.rstrip('.')}; the disk tree below was rebuilt from the image headers.",
                None,
                None,
            )
        )
        for candidate in _folder_images(folder):
            try:
                read_header(candidate)
            except VdiError:
                continue
            path = candidate.resolve()
            break
    header = read_header(path)  # raises HeaderError with a clear sentence for non-VDI files
    dirs = (
        default_search_dirs(path)
        if folder is None
        else tuple(d.resolve() for d in (folder, folder / "Snapshots") if d.is_dir())
    )
    index = ImageIndex.scan(dirs, extra_files=[path])
    nodes: dict[uuidlib.UUID, DiskNode] = {}
    for file, head in index.headers.items():
        if head.uuid in nodes:
            problems.append(
                Problem(
                    Severity.ERROR,
                    "duplicate-uuid",
                    f"'{file.name}' has the same UUID {{{head.uuid}}} as "
                    f"'{nodes[head.uuid].title}'; VirtualBox refuses to register both.",
                    file,
                    head.uuid,
                )
            )
            continue
        nodes[head.uuid] = DiskNode(head.uuid, file, file.name, header=head)
    for file, exc in index.unreadable.items():
        if file == path:
            continue
        problems.append(Problem(Severity.WARNING, "unreadable-image", str(exc), file, None))
    roots: list[DiskNode] = []
    for node in nodes.values():
        assert node.header is not None
        parent_uuid = node.header.parent_uuid
        parent = nodes.get(parent_uuid)
        if node.header.is_differencing and parent is None:
            problems.append(
                Problem(
                    Severity.ERROR,
                    "missing-parent",
                    f"Parent {{{parent_uuid}}} of '{node.title}' was not found (looked in: "
                    f"{', '.join(str(f) for f in index.folders)}).",
                    node.path,
                    node.uuid,
                )
            )
        if parent is not None and parent is not node:
            node.parent = parent
            parent.children.append(node)
        else:
            roots.append(node)
    for problem in problems:
        for node in nodes.values():
            if problem.uuid == node.uuid or (
                problem.path is not None and problem.path == node.path
            ):
                node.problems.append(problem)
    selected = nodes.get(header.uuid)
    if folder is not None:
        # Select the newest leaf of the first tree: most likely what the VM last used.
        leaves = [n for n in nodes.values() if not n.children]
        selected = max(leaves, key=lambda n: _mtime(n.path), default=selected)
        return Session(folder, "image", folder.name, None, [], roots, problems, selected)
    return Session(path, "image", path.name, None, [], roots, problems, selected)


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path is not None else 0.0
    except OSError:
        return 0.0


def _load_vm(vm: VmFolder, source: Path) -> Session:
    problems = list(vm.problems)
    nodes: dict[uuidlib.UUID, DiskNode] = {}

    def make(uuid: uuidlib.UUID) -> DiskNode:
        medium = vm.media.get(uuid)
        paths = vm.image_paths.get(uuid, ())
        file = paths[0] if paths else (medium.path if medium is not None else None)
        header = vm.images.get(file) if file is not None else None
        error = ""
        if header is None:
            if medium is not None and not medium.inspectable:
                error = f"a {medium.format} {medium.kind}, which vdigui cannot inspect"
            elif file is not None and file in vm.unreadable:
                error = vm.unreadable[file]
            else:
                error = "the file is missing"
        title = file.name if file is not None else (medium.location if medium else str(uuid))
        node = DiskNode(
            uuid,
            file,
            title,
            header=header,
            error=error,
            medium_type=medium.type
            if medium and medium.parent_uuid is None
            else ("" if medium is None else medium.type),
            auto_reset=bool(medium and medium.auto_reset),
            registered=medium is not None,
            format=medium.format if medium is not None else "VDI",
        )
        nodes[uuid] = node
        return node

    # The header tree is what the data depends on; registry-only media hang where the
    # registry puts them.
    def attach(uuid: uuidlib.UUID, parent: DiskNode | None, roots: list[DiskNode]) -> None:
        if uuid in nodes:
            return
        node = make(uuid)
        node.parent = parent
        (parent.children if parent is not None else roots).append(node)
        for child in vm.header_tree.get(uuid, ()):
            attach(child, node, roots)

    roots: list[DiskNode] = []
    ordered_roots = sorted(
        vm.header_roots, key=lambda u: (vm.media.get(u) is None, not vm.header_tree.get(u))
    )
    for uuid in ordered_roots:
        attach(uuid, None, roots)
    for uuid, children in vm.header_tree.items():  # anything the roots did not reach
        if uuid not in nodes:
            attach(uuid, None, roots)
        del children
    for medium in vm.media.values():
        if medium.uuid in nodes or medium.kind != "hard-disk":
            continue
        parent = nodes.get(medium.parent_uuid) if medium.parent_uuid else None
        attach(medium.uuid, parent, roots)
    for node in nodes.values():
        node.problems = [
            p
            for p in problems
            if (p.uuid is not None and p.uuid == node.uuid)
            or (p.path is not None and node.path is not None and p.path == node.path)
        ]

    current = vm.current_disks()
    default = nodes.get(current[0].uuid) if current else None
    if default is None:
        default = next((n for n in nodes.values() if n.inspectable), None)
    snap_roots = _snapshot_rows(vm, problems, set(nodes))
    for root in snap_roots:
        for row in _walk(root):
            for uuid in row.disks:
                if uuid in nodes and row.name not in nodes[uuid].used_by:
                    nodes[uuid].used_by.append(row.name)
    return Session(source, "vm", vm.name, vm, snap_roots, roots, problems, default)


def _hard_disks(vm: VmFolder, attachments: tuple) -> list[uuidlib.UUID]:
    return [
        a.medium_uuid
        for a in attachments
        if a.device_type.lower() == "harddisk" and a.medium_uuid is not None
    ]


def _snapshot_rows(
    vm: VmFolder, problems: list[Problem], known: set[uuidlib.UUID]
) -> list[SnapNode]:
    """The snapshot tree with "Current State" under the current snapshot, as VirtualBox does.

    A problem about a medium that has no node of its own (an attachment naming an unknown
    UUID) is badged on the snapshot rows that reference it, so it is still seen in the tree.
    """
    del known  # every referenced disk's problems are shown, known or not

    def badges(uuid: uuidlib.UUID | None, disks: list[uuidlib.UUID]) -> list[Problem]:
        # The snapshot's own problems and those of the disks it uses: a user looking at a
        # snapshot should see that its disk is broken without opening the media tree.
        return [
            p
            for p in problems
            if (uuid is not None and p.uuid == uuid) or (p.uuid is not None and p.uuid in disks)
        ]

    def build(node: SnapshotNode, parent: SnapNode | None) -> SnapNode:
        row = SnapNode(
            node.uuid,
            node.name,
            node.timestamp,
            node.description,
            node.online,
            _hard_disks(vm, node.attachments),
            is_current_snapshot=node.uuid == vm.current_snapshot_uuid,
            parent=parent,
        )
        row.problems = badges(node.uuid, row.disks)
        row.children = [build(child, row) for child in node.children]
        return row

    current = SnapNode(
        None,
        "Current State",
        None,
        "The machine as it is now; the guest writes to these disks.",
        vm.state_file is not None,
        _hard_disks(vm, vm.current_attachments),
        is_current_state=True,
        modified=vm.current_state_modified,
    )
    current.problems = badges(None, current.disks)
    if vm.root_snapshot is None:
        return [current]
    root = build(vm.root_snapshot, None)
    anchor = next((r for r in _walk(root) if r.is_current_snapshot), None)
    if anchor is None:
        return [root, current]
    current.parent = anchor
    anchor.children.append(current)
    return [root]


def _walk(row: SnapNode) -> list[SnapNode]:
    out = [row]
    for child in row.children:
        out.extend(_walk(child))
    return out


# -- one chain ---------------------------------------------------------------------------


@dataclass(eq=False)
class ChainData:
    """One opened chain and its analysis (owns the open, read-only files).

    Attributes:
        target: the media-tree node that was selected (the chain's leaf).
        chain: the open layers, base first (only as far as they were found).
        analysis: per-block figures from the engine.
        host: the host-file extents of each layer.
        raw_header: the leaf's first 512 bytes, for the hex dump.
        error: why the chain is incomplete ("" when complete); blocks a missing parent would
            serve show as not served.
        zero_masks: per layer, bool per guest block: allocated and all zero (after a scan).
        usage: what the guest's filesystems use of each block, through the whole chain
            (partition bar, guest-use row, volumes in the fragmentation tab); None when the
            chain is incomplete or could not be analysed (``usage_error`` says why).
    """

    target: DiskNode
    chain: DiskChain
    analysis: Analysis
    host: tuple[HostExtents, ...]
    raw_header: bytes
    error: str = ""
    zero_masks: list[np.ndarray | None] = field(default_factory=list)
    codes: tuple[np.ndarray, np.ndarray] | None = None
    pyramids: list[CountPyramid] | None = None
    usage: UsageMap | None = None
    usage_error: str = ""

    @property
    def headers(self) -> tuple[VdiHeader, ...]:
        """The header of each layer, base first."""
        return tuple(layer.header for layer in self.chain.layers)

    @property
    def paths(self) -> tuple[Path, ...]:
        """The file of each layer, base first."""
        return tuple(layer.path for layer in self.chain.layers)

    def close(self) -> None:
        """Close the layer files."""
        self.chain.close()


def chain_paths(session: Session, node: DiskNode) -> tuple[list[Path], str]:
    """The files of the chain ending at ``node``, base first, and why it is incomplete."""
    if node.path is None or node.header is None:
        raise VdiError(f"'{node.title}' cannot be inspected: {node.error or 'no file'}.")
    if session.vm is not None and node.uuid is not None:
        try:
            return session.vm.chain_for(node.uuid), ""
        except (MissingParentError, ChainError) as exc:
            partial = resolve_chain(node.path, _search_dirs(session, node.path))
            return list(partial.paths) or [node.path], str(exc)
        except VdiError:
            pass
    resolution = resolve_chain(node.path, _search_dirs(session, node.path))
    if not resolution.paths:
        raise resolution.error or VdiError(f"'{node.path}' cannot be read.")
    return list(resolution.paths), str(resolution.error) if resolution.error else ""


def _search_dirs(session: Session, path: Path) -> tuple[Path, ...]:
    dirs = list(default_search_dirs(path))
    if session.vm is not None:
        dirs += [session.vm.folder, session.vm.snapshot_folder]
    return tuple(d for d in dict.fromkeys(dirs) if d.is_dir())


def load_chain(session: Session, node: DiskNode, progress: ProgressFn | None = None) -> ChainData:
    """Open and analyse the chain that ends at ``node`` (read-only; runs on a worker).

    A chain whose parent is missing is still opened as far as it goes, so the user sees
    what the present layers hold; :attr:`ChainData.error` says what is missing.
    """
    paths, error = chain_paths(session, node)
    if progress is not None:
        progress(Progress("opening the chain", 0, len(paths) + 1))
    chain = open_paths(paths)
    try:
        analysis = analyze(chain)
        hosts = []
        for i, layer in enumerate(chain.layers, start=1):
            if progress is not None:
                progress(Progress("reading host extents", i, len(paths) + 1))
            hosts.append(host_extents(layer.path))
        raw = chain.top.read_raw(0, HEADER_BYTES)
        codes = (layer_codes(analysis.entries), served_codes(analysis.entries, analysis.serving))
        pyramids = make_pyramids(*codes, prepare=True)  # the block map's counts, off the GUI
        usage, usage_error = guest_usage(chain, error, progress)
    except BaseException:
        chain.close()
        raise
    return ChainData(
        node,
        chain,
        analysis,
        tuple(hosts),
        raw,
        error,
        [None] * len(chain.layers),
        codes,
        pyramids,
        usage,
        usage_error,
    )


def guest_usage(
    chain: DiskChain, chain_error: str = "", progress: ProgressFn | None = None
) -> tuple[UsageMap | None, str]:
    """The guest filesystems' usage of ``chain`` (metadata reads only), or why there is none.

    An incomplete chain is not analysed: blocks of the missing parent would read as zeros and
    the filesystems found would be nonsense.
    """
    if chain_error:
        return None, "The chain is incomplete, so the guest's filesystems cannot be read."
    if progress is not None:
        progress(Progress("reading the guest's filesystems", 0, 1))
    try:
        return chain_usage(chain), ""
    except (VdiError, OSError, ValueError) as exc:
        return None, f"The guest's filesystems could not be read: {exc}"


def read_first_bytes(path: Path, size: int = HEADER_BYTES) -> bytes:
    """The first bytes of any file (for showing what a non-VDI file starts with)."""
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read(size)
    return b""


def file_mtime(path: Path) -> datetime | None:
    """A file's modification time (local), or None."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime)
    except OSError:
        return None
