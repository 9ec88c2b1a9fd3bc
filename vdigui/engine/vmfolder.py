"""A VirtualBox VM folder: its settings, its disks, and every way they disagree.

References:
    - ``docs/vdi-format.md`` section 6 (VM folder and .vbox), section 8 (real-world
      failure modes: the checks VirtualBox's Main does on open, and what breaks them) and
      section 11 (the checklist); VirtualBox ``MediumImpl.cpp`` ``i_queryInfo`` for the UUID
      and parent checks this module reproduces as :class:`Problem` values.

The snapshot tree and the medium tree are separate structures linked only by ``<Image uuid>``
(docs/vdi-format.md §6.5), and the medium tree exists twice: once as the registry's nesting and once
as the headers' uuidLinkage. :func:`load_vm_folder` builds all three and reports each disagreement
between the registry, the headers and the files as a Problem, because a broken VM is exactly what a
user brings to a repair tool: raising would hide the rest of the picture. Only a
settings file that cannot be read at all raises :class:`SettingsError`.

Loading reads settings files and the first 512 bytes of VDI files, read-only; it never writes a
byte (tests check this), so it is safe on a VM that is running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdigui.engine import format as fmt
from vdigui.engine.chain import ImageIndex, resolve_chain
from vdigui.engine.errors import SettingsError, VdiError
from vdigui.engine.format import NULL_UUID, VdiHeader, parse_uuid
from vdigui.engine.sniff import regular_file_problem
from vdigui.engine.vbox_xml import (
    Attachment,
    GlobalSettings,
    MachineEntry,
    MachineSettings,
    Medium,
    Problem,
    Severity,
    SnapshotNode,
    load_settings,
)

__all__ = [
    "Attachment",
    "GlobalSettings",
    "MachineEntry",
    "MachineSettings",
    "Medium",
    "Problem",
    "SnapshotNode",
    "VmFolder",
    "find_running_vm_hint",
    "find_settings_file",
    "load_settings",
    "load_vm_folder",
]

_PLATFORMS = "linux|windows|macosx|freebsd|solaris|os2|netbsd|openbsd"
#: ``<Name>-1.xx-<platform>.vbox``: the copy VirtualBox makes once when it bumps the version.
_BUMP_BACKUP = re.compile(
    rf"^(?P<name>.+)-1\.\d+(?:-(?:{_PLATFORMS}))?\.(?:vbox|xml)$", re.IGNORECASE
)
_SAFE_WRITE_SUFFIXES = ("-prev", "-tmp")
_RUNNING_LOG_AGE = 60.0
_VM_PROCESS_NAMES = ("VBoxHeadless", "VirtualBoxVM", "VirtualBox")


@dataclass(frozen=True, slots=True)
class VmFolder:
    """Everything known about one VM folder, settings and disks, as plain values.

    Attributes:
        folder: the machine folder (where the settings file is).
        settings_path: the settings file read.
        machine_uuid, name, os_type: the machine's identity.
        settings_version: e.g. "1.19"; platform: e.g. "linux".
        snapshot_folder: the resolved snapshot folder.
        current_snapshot_uuid: the snapshot the current state is based on.
        current_state_modified: the current state differs from the current snapshot.
        state_file: the saved state of a Saved machine.
        aborted: the VM was running when VirtualBox last stopped.
        root_snapshot: the first snapshot, or None.
        current_attachments: the current state's attachments (they reference the leaves).
        media: every medium of the loaded registries (the machine's own, and the global
            VirtualBox.xml when one was loaded), uuid -> Medium.
        registry_tree: top-level media UUIDs (the registry tree's roots; Medium.children
            gives the rest).
        header_tree: the medium tree rebuilt from VDI headers: uuid -> children uuids, one
            entry per readable image UUID.
        header_roots: images whose header names no parent, or a parent not found.
        images: the header of every readable VDI found (VM folder, snapshot folder and
            registered locations), by resolved path.
        image_paths: uuidCreate -> paths holding it (the registered one first).
        unreadable: path -> error sentence for VDI files whose header failed.
        problems: every disagreement found, errors and warnings.
        backups: settings backups of this same machine (.vbox-prev, -tmp leftovers,
            <Name>-1.xx-<os>.vbox), recognised by Machine uuid.
        global_settings: the VirtualBox.xml whose registry was merged in, if any.
        disks_inspected: False for :meth:`from_settings` views that did not read any disk.
    """

    folder: Path
    settings_path: Path
    machine_uuid: uuidlib.UUID
    name: str
    os_type: str
    settings_version: str
    platform: str
    snapshot_folder: Path
    current_snapshot_uuid: uuidlib.UUID | None
    current_state_modified: bool
    state_file: Path | None
    aborted: bool
    root_snapshot: SnapshotNode | None
    current_attachments: tuple[Attachment, ...]
    media: dict[uuidlib.UUID, Medium] = field(hash=False)
    registry_tree: tuple[uuidlib.UUID, ...]
    header_tree: dict[uuidlib.UUID, tuple[uuidlib.UUID, ...]] = field(hash=False)
    header_roots: tuple[uuidlib.UUID, ...]
    images: dict[Path, VdiHeader] = field(hash=False)
    image_paths: dict[uuidlib.UUID, tuple[Path, ...]] = field(hash=False)
    unreadable: dict[Path, str] = field(hash=False)
    problems: tuple[Problem, ...]
    backups: tuple[Path, ...]
    global_settings: Path | None = None
    disks_inspected: bool = True

    # -- snapshots ------------------------------------------------------------------------
    def iter_snapshots(self) -> Iterator[SnapshotNode]:
        """Every snapshot, depth first, parents before children."""
        if self.root_snapshot is not None:
            yield from self.root_snapshot.iter()

    @property
    def snapshot_count(self) -> int:
        """How many snapshots the machine has."""
        return sum(1 for _ in self.iter_snapshots())

    @property
    def current_snapshot(self) -> SnapshotNode | None:
        """The snapshot the current state is based on, if it exists."""
        for node in self.iter_snapshots():
            if node.uuid == self.current_snapshot_uuid:
                return node
        return None

    def snapshot_by_name_or_uuid(self, text: str) -> SnapshotNode:
        """The snapshot with this UUID (braces optional) or this exact name.

        Raises:
            VdiError: no snapshot matches, or several snapshots share the name (the message
                lists their UUIDs so the user can pick one).
        """
        wanted = parse_uuid(text)
        nodes = list(self.iter_snapshots())
        if wanted is not None:
            for node in nodes:
                if node.uuid == wanted:
                    return node
        matches = [n for n in nodes if n.name == text]
        if not matches:
            matches = [n for n in nodes if n.name.casefold() == text.casefold()]
        if len(matches) == 1:
            return matches[0]
        if matches:
            listed = ", ".join(f"{{{n.uuid}}}" for n in matches)
            raise VdiError(
                f"{len(matches)} snapshots of '{self.name}' are named '{text}' "
                f"({listed}); give the UUID instead."
            )
        raise VdiError(
            f"VM '{self.name}' has no snapshot named or identified by '{text}' "
            f"({self.settings_path})."
        )

    def disk_for_snapshot(
        self, snapshot: SnapshotNode | str, *, device_type: str = "HardDisk"
    ) -> tuple[Medium, ...]:
        """The image(s) a snapshot froze: what its attachments reference (docs/vdi-format.md §6.5).

        Reading the chain that ends at one of these shows the disk as it was when the
        snapshot was taken. Attachments referencing unknown media are skipped (they are
        reported in :attr:`problems`).
        """
        if isinstance(snapshot, str):
            snapshot = self.snapshot_by_name_or_uuid(snapshot)
        return self._media_of(snapshot.attachments, device_type)

    def current_disks(self, *, device_type: str = "HardDisk") -> tuple[Medium, ...]:
        """The images the current state uses (the leaves the guest writes to)."""
        return self._media_of(self.current_attachments, device_type)

    def _media_of(
        self, attachments: tuple[Attachment, ...], device_type: str
    ) -> tuple[Medium, ...]:
        out: list[Medium] = []
        for attachment in attachments:
            if attachment.device_type.lower() != device_type.lower():
                continue
            medium = self.media.get(attachment.medium_uuid) if attachment.medium_uuid else None
            if medium is not None and medium not in out:
                out.append(medium)
        return tuple(out)

    # -- media ----------------------------------------------------------------------------
    def registry_parent_chain(self, uuid: uuidlib.UUID) -> list[Medium]:
        """The registry's view of a medium's ancestry, base first (no disk access)."""
        chain: list[Medium] = []
        current = self.media.get(uuid)
        seen: set[uuidlib.UUID] = set()
        while current is not None and current.uuid not in seen:
            seen.add(current.uuid)
            chain.append(current)
            current = self.media.get(current.parent_uuid) if current.parent_uuid else None
        return list(reversed(chain))

    def chain_for(self, uuid_or_path: uuidlib.UUID | str | Path | Medium) -> list[Path]:
        """The files of the chain ending at a medium, base first, for ``open_paths``.

        ``uuid_or_path`` is a Medium (as :meth:`current_disks` returns), its UUID (text with
        or without braces, or a UUID), or an image path.

        The chain follows the headers' uuidLinkage (that is what the data really depends on),
        looking parents up among the images this folder indexed, registered copies first.

        Raises:
            VdiError: the medium is unknown, not a VDI, or its file is missing.
            MissingParentError, ChainError: as :func:`vdigui.engine.chain.resolve_chain`.
        """
        leaf = self._leaf_path(uuid_or_path)
        index = ImageIndex(
            folders=tuple(dict.fromkeys(p.parent for p in self.images)),
            by_uuid={u: list(paths) for u, paths in self.image_paths.items()},
            headers=dict(self.images),
        )
        resolution = resolve_chain(leaf, index.folders, index)
        if resolution.error is not None:
            raise resolution.error
        return list(resolution.paths)

    def _leaf_path(self, uuid_or_path: uuidlib.UUID | str | Path | Medium) -> Path:
        if isinstance(uuid_or_path, Medium):
            uuid_or_path = uuid_or_path.uuid
        if isinstance(uuid_or_path, Path):
            return uuid_or_path.resolve()
        wanted = (
            uuid_or_path if isinstance(uuid_or_path, uuidlib.UUID) else parse_uuid(uuid_or_path)
        )
        if wanted is None:
            return Path(str(uuid_or_path)).resolve()
        medium = self.media.get(wanted)
        if medium is not None and not medium.inspectable:
            raise VdiError(
                f"Medium {{{wanted}}} ('{medium.location}') is a {medium.format} "
                f"{medium.kind}, which vdigui cannot inspect."
            )
        paths = self.image_paths.get(wanted)
        if paths:
            return paths[0]
        if medium is not None:
            raise VdiError(
                f"The file of medium {{{wanted}}} ('{medium.path}') is missing or unreadable."
            )
        raise VdiError(
            f"No medium or image with UUID {{{wanted}}} belongs to VM '{self.name}' "
            f"({self.settings_path})."
        )

    @property
    def errors(self) -> tuple[Problem, ...]:
        """The problems of severity "error"."""
        return tuple(p for p in self.problems if p.severity == Severity.ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """The problems of severity "warning"."""
        return tuple(p for p in self.problems if p.severity == Severity.WARNING)

    def problems_for(
        self, uuid: uuidlib.UUID | None = None, path: Path | None = None
    ) -> tuple[Problem, ...]:
        """The problems about one medium or file (for marking tree nodes)."""
        return tuple(
            p
            for p in self.problems
            if (uuid is not None and p.uuid == uuid)
            or (path is not None and p.path is not None and p.path == path)
        )

    # -- output ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (``vdictl tree --json``, bug reports).

        UUIDs are lowercase 8-4-4-4-12 text without braces, paths are strings, times are ISO
        8601. Trees are nested lists; every node lists the kinds of the problems about it so
        a renderer can mark it without matching messages.
        """

        def kinds_for(uuid: uuidlib.UUID | None, path: Path | None = None) -> list[str]:
            return sorted({p.kind for p in self.problems_for(uuid, path)})

        def attachment(a: Attachment) -> dict[str, Any]:
            return {
                "controller": a.controller,
                "port": a.port,
                "device": a.device,
                "type": a.device_type,
                "medium": _u(a.medium_uuid),
                "discard": a.discard,
                "nonrotational": a.nonrotational,
                "host_drive": a.host_drive,
            }

        def snapshot(n: SnapshotNode) -> dict[str, Any]:
            return {
                "uuid": _u(n.uuid),
                "name": n.name,
                "timestamp": n.timestamp.isoformat() if n.timestamp else None,
                "description": n.description,
                "online": n.online,
                "state_file": _s(n.state_file),
                "current": n.uuid == self.current_snapshot_uuid,
                "disks": [_u(m.uuid) for m in self.disk_for_snapshot(n)],
                "attachments": [attachment(a) for a in n.attachments],
                "problems": kinds_for(n.uuid),
                "children": [snapshot(c) for c in n.children],
            }

        def header(uuid: uuidlib.UUID) -> dict[str, Any] | None:
            paths = self.image_paths.get(uuid)
            if not paths:
                return None
            h = self.images[paths[0]]
            return {
                "path": str(paths[0]),
                "type": h.image_type.label,
                "disk_size": h.disk_size,
                "block_size": h.block_size,
                "blocks_allocated": h.blocks_allocated,
                "parent_uuid": _u(h.parent_uuid),
                "modify_uuid": _u(h.modify_uuid),
                "parent_modify_uuid": _u(h.parent_modify_uuid),
            }

        def medium(uuid: uuidlib.UUID) -> dict[str, Any]:
            m = self.media[uuid]
            return {
                "uuid": _u(uuid),
                "kind": m.kind,
                "location": m.location,
                "path": str(m.path),
                "format": m.format,
                "type": m.type,
                "auto_reset": m.auto_reset,
                "inspectable": m.inspectable,
                "header": header(uuid),
                "problems": kinds_for(uuid),
                "children": [medium(c) for c in m.children if c in self.media],
            }

        def image(uuid: uuidlib.UUID) -> dict[str, Any]:
            info = header(uuid) or {}
            return {
                "uuid": _u(uuid),
                **info,
                "registered": uuid in self.media,
                "problems": kinds_for(uuid, Path(info["path"]) if info else None),
                "children": [image(c) for c in self.header_tree.get(uuid, ())],
            }

        return {
            "folder": str(self.folder),
            "settings_path": str(self.settings_path),
            "machine_uuid": _u(self.machine_uuid),
            "name": self.name,
            "os_type": self.os_type,
            "settings_version": self.settings_version,
            "platform": self.platform,
            "snapshot_folder": str(self.snapshot_folder),
            "current_snapshot_uuid": _u(self.current_snapshot_uuid),
            "current_state_modified": self.current_state_modified,
            "state_file": _s(self.state_file),
            "aborted": self.aborted,
            "snapshots": [snapshot(self.root_snapshot)] if self.root_snapshot else [],
            "current_state": {
                "disks": [_u(m.uuid) for m in self.current_disks()],
                "attachments": [attachment(a) for a in self.current_attachments],
            },
            "media": [medium(u) for u in self.registry_tree],
            "header_tree": [image(u) for u in self.header_roots],
            "problems": [
                {
                    "severity": p.severity,
                    "kind": p.kind,
                    "message": p.message,
                    "path": _s(p.path),
                    "uuid": _u(p.uuid),
                }
                for p in self.problems
            ],
            "backups": [str(b) for b in self.backups],
            "global_settings": _s(self.global_settings),
            "disks_inspected": self.disks_inspected,
        }

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_settings(
        cls, settings: MachineSettings, *, global_settings: GlobalSettings | None = None
    ) -> VmFolder:
        """A view of a parsed settings file alone, without reading any disk or listing files.

        Useful for settings whose disks are absent (shared samples, a .vbox mailed in a bug
        report): the snapshot and registry trees are complete, the header side is empty.
        """
        media, roots, problems = _merge_registries(settings, global_settings)
        problems.extend(_attachment_problems(settings, media))
        return cls(
            folder=settings.info.folder,
            settings_path=settings.info.settings_path,
            machine_uuid=settings.machine_uuid,
            name=settings.name,
            os_type=settings.os_type,
            settings_version=settings.info.settings_version,
            platform=settings.info.platform,
            snapshot_folder=settings.snapshot_folder,
            current_snapshot_uuid=settings.current_snapshot_uuid,
            current_state_modified=settings.current_state_modified,
            state_file=settings.state_file,
            aborted=settings.aborted,
            root_snapshot=settings.root_snapshot,
            current_attachments=settings.current_attachments,
            media=media,
            registry_tree=roots,
            header_tree={},
            header_roots=(),
            images={},
            image_paths={},
            unreadable={},
            problems=tuple(problems),
            backups=(),
            global_settings=global_settings.info.settings_path if global_settings else None,
            disks_inspected=False,
        )


# -- loading ------------------------------------------------------------------------------


def load_vm_folder(path: Path | str, *, global_settings: Path | str | None = None) -> VmFolder:
    """Load a VM folder (or a settings file directly) and cross-check it with its disks.

    Args:
        path: a folder holding one machine settings file, or the settings file itself.
        global_settings: a VirtualBox.xml whose media registry should be merged in (media
            registered globally: settings before 1.11, or DVDs added from the Manager). When
            omitted, the old layout ``<home>/Machines/<Name>/<Name>.xml`` picks up
            ``<home>/VirtualBox.xml`` by itself; nothing else is guessed, so results do not
            depend on the user's own VirtualBox installation.

    Raises:
        SettingsError: no settings file, several candidates, or one that cannot be parsed.
    """
    settings_path = find_settings_file(path)
    settings = load_settings(settings_path)
    if not isinstance(settings, MachineSettings):
        raise SettingsError(
            f"'{settings_path}' is a global VirtualBox.xml, not a machine "
            "settings file; open the VM's .vbox instead."
        )
    glob = _load_global(settings, global_settings)
    if glob is None:
        settings = _with_folder_registry(settings)
    view = VmFolder.from_settings(settings, global_settings=glob)
    problems = list(view.problems)
    scan = _scan_disks(settings, view.media, problems)
    problems.extend(_state_file_problems(view))
    backups = _find_backups(settings, problems)
    return VmFolder(
        folder=view.folder,
        settings_path=view.settings_path,
        machine_uuid=view.machine_uuid,
        name=view.name,
        os_type=view.os_type,
        settings_version=view.settings_version,
        platform=view.platform,
        snapshot_folder=view.snapshot_folder,
        current_snapshot_uuid=view.current_snapshot_uuid,
        current_state_modified=view.current_state_modified,
        state_file=view.state_file,
        aborted=view.aborted,
        root_snapshot=view.root_snapshot,
        current_attachments=view.current_attachments,
        media=view.media,
        registry_tree=view.registry_tree,
        header_tree=scan.header_tree,
        header_roots=scan.header_roots,
        images=scan.images,
        image_paths=scan.image_paths,
        unreadable=scan.unreadable,
        problems=tuple(problems),
        backups=backups,
        global_settings=view.global_settings,
        disks_inspected=True,
    )


def find_settings_file(path: Path | str) -> Path:
    """The machine settings file a user means by ``path`` (a folder or a file).

    In a folder, backups (``*.vbox-prev``, ``*.vbox-tmp``, ``<Name>-1.xx-<os>.vbox``) are
    skipped; a folder of the pre-1.7 layout may hold ``<Name>.xml`` instead of a .vbox.

    Raises:
        SettingsError: the path does not exist, or the folder holds no settings file or
            several real ones (they are listed).
    """
    path = Path(path).absolute()
    if not path.is_dir():
        problem = regular_file_problem(path)  # a FIFO, a device, a link loop: never opened
        if problem is not None:
            raise SettingsError(problem)
    if path.is_file():
        if path.suffix.lower() in (".vdi", ".vmdk", ".vhd", ".iso"):
            raise SettingsError(
                f"'{path}' is a disk image, not a VM folder or a machine settings file."
            )
        return path
    if not path.is_dir():
        raise SettingsError(f"'{path}' does not exist.")
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        raise SettingsError(f"Cannot list folder '{path}': {exc.strerror or exc}.") from exc
    vbox = [p for p in entries if p.suffix.lower() == ".vbox" and p.is_file()]
    real = [p for p in vbox if not _BUMP_BACKUP.match(p.name)]
    if not real:
        real = vbox  # a VM literally named like "x-1.5-linux" is not a backup of anything
    if not real:
        real = [
            p for p in entries if p.suffix.lower() == ".xml" and p.is_file() and _is_machine_xml(p)
        ]
    if len(real) == 1:
        return real[0]
    if not real:
        leftovers = [
            p.name for p in entries if p.name.lower().endswith((".vbox-prev", ".vbox-tmp"))
        ]
        hint = (
            f"; backups exist ({', '.join(leftovers)}): open one of them explicitly"
            if leftovers
            else ""
        )
        raise SettingsError(
            f"Folder '{path}' holds no VirtualBox machine settings file (.vbox){hint}."
        )
    names = ", ".join(p.name for p in real)
    raise SettingsError(
        f"Folder '{path}' holds several machine settings files ({names}); "
        "open one of them directly."
    )


def _is_machine_xml(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"<VirtualBox" in head and b"<Machine" in head


def _load_global(settings: MachineSettings, explicit: Path | str | None) -> GlobalSettings | None:
    if explicit is not None:
        loaded = load_settings(explicit)
        if not isinstance(loaded, GlobalSettings):
            raise SettingsError(
                f"'{explicit}' is a machine settings file, not a global VirtualBox.xml."
            )
        return loaded
    folder = settings.info.folder
    candidate = folder.parent.parent / "VirtualBox.xml"
    if folder.parent.name == "Machines" and candidate.is_file():
        loaded = load_settings(candidate)
        if isinstance(loaded, GlobalSettings):
            return loaded
    return None


def _with_folder_registry(settings: MachineSettings) -> MachineSettings:
    """Register, by UUID, attached disks that only a missing global registry would name.

    Before settings 1.11 a machine's media were registered in the global VirtualBox.xml, and
    before 1.7 a VM lived as ``<Name>.xml`` beside its disks. Copied out of ``~/.VirtualBox``
    (``Name.xml`` and ``Name.vdi`` in one folder), such a VM names its disk only by UUID;
    VirtualBox would find it through the global registry, so vdigui finds the image whose
    header says that UUID in the VM folder or its snapshot folder (and its parents by
    uuidLinkage), exactly as the registry would have described it. Newer settings carry their
    own registry and are left alone.
    """
    if settings.info.version_tuple >= (1, 11):
        return settings
    attached: list[uuidlib.UUID] = []
    for attachments in (
        settings.current_attachments,
        *(n.attachments for n in settings.iter_snapshots()),
    ):
        for a in attachments:
            if (
                a.medium_uuid is not None
                and a.device_type.lower() == "harddisk"
                and a.medium_uuid not in settings.media
            ):
                attached.append(a.medium_uuid)
    if not attached:
        return settings
    folders = [settings.info.folder, settings.snapshot_folder]
    index = ImageIndex.scan([f for f in folders if f.is_dir()])
    found: dict[uuidlib.UUID, tuple[Path, VdiHeader]] = {}
    for uuid in dict.fromkeys(attached):
        current: uuidlib.UUID | None = uuid
        while current is not None and current not in found and current not in settings.media:
            path = index.find(current)
            if path is None:
                break
            header = index.headers[path]
            found[current] = (path, header)
            current = header.parent_uuid if header.parent_uuid != NULL_UUID else None
    if not found:
        return settings
    children: dict[uuidlib.UUID, list[uuidlib.UUID]] = {}
    for uuid, (_path, header) in found.items():
        if header.parent_uuid in found:
            children.setdefault(header.parent_uuid, []).append(uuid)
    media = dict(settings.media)
    roots = list(settings.registry_roots)
    for uuid, (path, header) in found.items():
        parent = header.parent_uuid if header.parent_uuid in found else None
        try:
            location = str(path.relative_to(settings.info.folder.resolve()))
        except ValueError:
            location = str(path)
        media[uuid] = Medium(
            uuid=uuid,
            location=location,
            path=path,
            format="VDI",
            type="Normal",
            auto_reset=False,
            parent_uuid=parent,
            children=tuple(children.get(uuid, ())),
            kind="hard-disk",
            inspectable=True,
            registry=None,
        )
        if parent is None:
            roots.append(uuid)
    return dataclasses.replace(settings, media=media, registry_roots=tuple(roots))


def _merge_registries(
    settings: MachineSettings, glob: GlobalSettings | None
) -> tuple[dict[uuidlib.UUID, Medium], tuple[uuidlib.UUID, ...], list[Problem]]:
    media = dict(settings.media)
    roots = list(settings.registry_roots)
    problems = list(settings.problems)
    if glob is not None:
        problems.extend(glob.problems)
        for uuid, medium in glob.media.items():
            if uuid in media:
                problems.append(
                    Problem(
                        Severity.ERROR,
                        "duplicate-uuid",
                        f"Medium {{{uuid}}} is registered both in "
                        f"'{settings.info.settings_path.name}' ('{media[uuid].location}') and in "
                        f"'{glob.info.settings_path.name}' ('{medium.location}'); VirtualBox "
                        "refuses duplicate UUIDs.",
                        medium.path,
                        uuid,
                    )
                )
                continue
            media[uuid] = medium
        roots.extend(u for u in glob.registry_roots if u not in settings.media)
    order = {"hard-disk": 0, "dvd": 1, "floppy": 2}
    roots.sort(key=lambda u: order[media[u].kind])
    return media, tuple(roots), problems


def _attachment_problems(
    settings: MachineSettings, media: dict[uuidlib.UUID, Medium]
) -> list[Problem]:
    users: dict[uuidlib.UUID, tuple[str, list[str]]] = {}
    places: list[tuple[str, tuple[Attachment, ...]]] = [
        ("the current state", settings.current_attachments)
    ]
    places.extend((f"snapshot '{n.name}'", n.attachments) for n in settings.iter_snapshots())
    for where, attachments in places:
        for attachment in attachments:
            uuid = attachment.medium_uuid
            if uuid is None or uuid in media:
                continue
            users.setdefault(uuid, (attachment.device_type, []))[1].append(where)
    problems = []
    for uuid, (device_type, wheres) in users.items():
        severity = Severity.ERROR if device_type.lower() == "harddisk" else Severity.WARNING
        problems.append(
            Problem(
                severity,
                "unknown-medium",
                f"{device_type} medium {{{uuid}}} attached in {', '.join(wheres)} is in no loaded "
                f"media registry ('{settings.info.settings_path.name}'"
                + ("" if severity == Severity.ERROR else " and perhaps the global VirtualBox.xml")
                + ").",
                settings.info.settings_path,
                uuid,
            )
        )
    return problems


def _state_file_problems(view: VmFolder) -> list[Problem]:
    problems = []
    owners: list[tuple[str, Path | None, uuidlib.UUID | None]] = [
        ("the machine", view.state_file, None)
    ]
    owners.extend((f"snapshot '{n.name}'", n.state_file, n.uuid) for n in view.iter_snapshots())
    for owner, state, uuid in owners:
        if state is not None and not state.exists():
            problems.append(
                Problem(
                    Severity.WARNING,
                    "missing-state-file",
                    f"The saved state of {owner} ('{state}') is missing, so that state cannot be "
                    "restored.",
                    state,
                    uuid,
                )
            )
    return problems


# -- disks --------------------------------------------------------------------------------


@dataclass
class _Scan:
    images: dict[Path, VdiHeader]
    image_paths: dict[uuidlib.UUID, tuple[Path, ...]]
    unreadable: dict[Path, str]
    header_tree: dict[uuidlib.UUID, tuple[uuidlib.UUID, ...]]
    header_roots: tuple[uuidlib.UUID, ...]


def _scan_disks(
    settings: MachineSettings, media: dict[uuidlib.UUID, Medium], problems: list[Problem]
) -> _Scan:
    """Index the VDI headers and add every registry/header/file disagreement to problems."""
    registered_paths: dict[uuidlib.UUID, Path] = {}
    registered_files: list[Path] = []
    for medium in media.values():
        if not medium.is_file or medium.foreign_path:
            continue
        with contextlib.suppress(OSError):
            if medium.inspectable and medium.path.is_file():
                resolved = medium.path.resolve()
                registered_paths[medium.uuid] = resolved
                registered_files.append(resolved)
    folders = [settings.info.folder, settings.snapshot_folder]
    index = ImageIndex.scan([f for f in folders if f.is_dir()], registered_files)
    scanned_folders = set(index.folders)

    # The registered copy of a UUID comes first, so chains prefer what VirtualBox would use.
    image_paths: dict[uuidlib.UUID, tuple[Path, ...]] = {}
    for uuid, found in index.by_uuid.items():
        registered_copy = registered_paths.get(uuid)
        image_paths[uuid] = tuple(sorted(found, key=lambda p: (p != registered_copy, str(p))))
    headers = index.headers
    unreadable = {p: str(e) for p, e in index.unreadable.items()}
    reported_unreadable: set[Path] = set()

    def add(
        severity: Severity, kind: str, message: str, path: Path | None, uuid: uuidlib.UUID | None
    ) -> None:
        problems.append(Problem(severity, kind, message, path, uuid))

    # Registry against files and headers.
    for medium in media.values():
        if not medium.is_file:
            continue
        where = medium.path
        if medium.foreign_path or not where.exists():
            elsewhere = image_paths.get(medium.uuid) if medium.inspectable else None
            hint = f"; a file with this UUID exists at '{elsewhere[0]}'" if elsewhere else ""
            foreign = " (a path of another operating system)" if medium.foreign_path else ""
            severity = Severity.ERROR if medium.kind == "hard-disk" else Severity.WARNING
            add(
                severity,
                "missing-file",
                f"Registered {medium.kind} {{{medium.uuid}}} is missing: '{medium.location}'"
                f"{foreign} does not exist{hint}.",
                where,
                medium.uuid,
            )
            continue
        if not medium.inspectable:
            continue
        resolved = where.resolve()
        if resolved in unreadable:
            reported_unreadable.add(resolved)
            add(
                Severity.ERROR,
                "unreadable-image",
                f"Registered image '{where.name}' {{{medium.uuid}}} cannot be read: "
                f"{unreadable[resolved]}",
                resolved,
                medium.uuid,
            )
            continue
        header = headers.get(resolved)
        if header is None:
            add(
                Severity.ERROR,
                "unreadable-image",
                f"Registered image '{medium.location}' {{{medium.uuid}}} is not a regular file.",
                resolved,
                medium.uuid,
            )
            continue
        if header.uuid != medium.uuid:
            add(
                Severity.ERROR,
                "uuid-mismatch",
                f"UUID {{{header.uuid}}} in the header of '{where.name}' does not match "
                f"{{{medium.uuid}}} stored in the media registry.",
                resolved,
                medium.uuid,
            )
        if medium.parent_uuid is None:
            if header.is_differencing:
                what = (
                    "its header says it is a differencing image"
                    if header.image_type == fmt.ImageType.DIFFERENCING
                    else f"its header links to parent {{{header.parent_uuid}}}"
                )
                add(
                    Severity.ERROR,
                    "base-is-differencing",
                    f"'{where.name}' is a base disk in the media registry but {what}.",
                    resolved,
                    medium.uuid,
                )
        elif header.parent_uuid != medium.parent_uuid:
            said = (
                "no parent"
                if header.parent_uuid == NULL_UUID
                else f"parent {{{header.parent_uuid}}}"
            )
            add(
                Severity.ERROR,
                "parent-mismatch",
                f"The header of '{where.name}' names {said}, but the media registry nests it "
                f"under {{{medium.parent_uuid}}}.",
                resolved,
                medium.uuid,
            )

    # Files the registry does not know, unreadable ones, duplicates.
    for path, message in sorted(unreadable.items()):
        if path not in reported_unreadable:
            add(
                Severity.ERROR,
                "unreadable-image",
                f"Image '{path.name}' cannot be read: {message}",
                path,
                None,
            )
    for uuid, paths in image_paths.items():
        if len(paths) > 1:
            listed = ", ".join(f"'{p}'" for p in paths)
            add(
                Severity.ERROR,
                "duplicate-uuid",
                f"{len(paths)} files share uuidCreate {{{uuid}}} ({listed}); VirtualBox can "
                "register only one of them.",
                paths[1],
                uuid,
            )
        for path in paths:
            if uuid not in media and path.parent in scanned_folders:
                add(
                    Severity.ERROR,
                    "orphan-image",
                    f"Image '{path.name}' {{{uuid}}} in '{path.parent}' is in no loaded media "
                    "registry (an orphan).",
                    path,
                    uuid,
                )

    # The header tree, and the chain checks along it.
    preferred = {uuid: paths[0] for uuid, paths in image_paths.items()}
    children: dict[uuidlib.UUID, list[uuidlib.UUID]] = {uuid: [] for uuid in preferred}
    roots: list[uuidlib.UUID] = []
    for uuid, path in preferred.items():
        header = headers[path]
        parent_uuid = header.parent_uuid
        if parent_uuid == NULL_UUID:
            roots.append(uuid)
            continue
        parent_path = preferred.get(parent_uuid)
        if parent_path is None:
            roots.append(uuid)
            registered = media.get(parent_uuid)
            extra = (
                f" (it is registered as '{registered.location}', whose file is missing "
                "or unreadable)"
                if registered
                else ""
            )
            add(
                Severity.ERROR,
                "missing-parent",
                f"Parent {{{parent_uuid}}} of '{path.name}' was not found among the VM's "
                f"images{extra}.",
                path,
                uuid,
            )
            continue
        children[parent_uuid].append(uuid)
        parent = headers[parent_path]
        if parent.disk_size != header.disk_size:
            add(
                Severity.ERROR,
                "size-mismatch",
                f"'{path.name}' has a disk size of {header.disk_size} bytes but its parent "
                f"'{parent_path.name}' has {parent.disk_size}; a chain needs equal sizes.",
                path,
                uuid,
            )
        if parent.block_size != header.block_size:
            add(
                Severity.ERROR,
                "block-size-mismatch",
                f"'{path.name}' uses {header.block_size}-byte blocks but its parent "
                f"'{parent_path.name}' uses {parent.block_size}.",
                path,
                uuid,
            )
        if (
            header.parent_modify_uuid != NULL_UUID
            and header.parent_modify_uuid != parent.modify_uuid
        ):
            add(
                Severity.WARNING,
                "parent-modify-mismatch",
                f"uuidParentModify of '{path.name}' ({{{header.parent_modify_uuid}}}) differs "
                f"from uuidModify of its parent '{parent_path.name}' "
                f"({{{parent.modify_uuid}}}): the parent was written or merged into after the "
                "child was made.",
                path,
                uuid,
            )
    problems.extend(_loop_problems(preferred, headers))
    return _Scan(
        images=dict(headers),
        image_paths=image_paths,
        unreadable=unreadable,
        header_tree={u: tuple(sorted(c, key=str)) for u, c in children.items()},
        header_roots=tuple(roots),
    )


def _loop_problems(
    preferred: dict[uuidlib.UUID, Path], headers: dict[Path, VdiHeader]
) -> list[Problem]:
    problems: list[Problem] = []
    reported: set[uuidlib.UUID] = set()
    for start in preferred:
        seen: list[uuidlib.UUID] = []
        current: uuidlib.UUID | None = start
        while current is not None and current in preferred and current not in seen:
            seen.append(current)
            parent = headers[preferred[current]].parent_uuid
            current = parent if parent != NULL_UUID else None
        if current is not None and current in seen and current not in reported:
            cycle = seen[seen.index(current) :]
            reported.update(cycle)
            names = " -> ".join(f"'{preferred[u].name}'" for u in cycle)
            problems.append(
                Problem(
                    Severity.ERROR,
                    "parent-loop",
                    f"The parent links of {names} form a loop, so none of them has a base.",
                    preferred[current],
                    current,
                )
            )
    return problems


# -- backups ------------------------------------------------------------------------------


def _find_backups(settings: MachineSettings, problems: list[Problem]) -> tuple[Path, ...]:
    """Settings copies of the same machine in its folder, recognised by Machine uuid."""
    current = settings.info.settings_path
    backups: list[Path] = []
    try:
        entries = sorted(settings.info.folder.iterdir())
    except OSError:
        return ()
    for path in entries:
        if path == current or not path.is_file():
            continue
        lower = path.name.lower()
        leftover_tmp = lower.endswith("-tmp") and lower[:-4].endswith((".vbox", ".xml"))
        is_candidate = (
            lower.endswith(_SAFE_WRITE_SUFFIXES)
            and lower.rsplit("-", 1)[0].endswith((".vbox", ".xml"))
        ) or (bool(_BUMP_BACKUP.match(path.name)))
        if not is_candidate:
            continue
        try:
            other = load_settings(path)
        except SettingsError:
            if leftover_tmp:
                problems.append(
                    Problem(
                        Severity.WARNING,
                        "failed-save",
                        f"'{path.name}' is an unreadable leftover of a settings save that did "
                        "not finish.",
                        path,
                    )
                )
            continue
        if isinstance(other, MachineSettings) and other.machine_uuid == settings.machine_uuid:
            backups.append(path)
            if leftover_tmp:
                problems.append(
                    Problem(
                        Severity.WARNING,
                        "failed-save",
                        f"'{path.name}' is left over from a settings save that did not finish; "
                        f"compare it with '{current.name}' before deleting it.",
                        path,
                    )
                )
    return tuple(backups)


# -- is it running? -----------------------------------------------------------------------


def find_running_vm_hint(folder: Path | str) -> str | None:
    """A sentence saying why the VM in ``folder`` looks running, or None. Best-effort, cheap.

    Signals, in order:

    1. a VirtualBox VM process (``VBoxHeadless``, ``VirtualBoxVM``) whose command line names
       this VM's UUID, name or settings file, found through ``/proc/*/cmdline`` (Linux); its
       log ``Logs/VBox.log`` written within the last 60 s is added as supporting detail;
    2. where ``/proc`` does not exist (macOS, Windows), a ``Logs/VBox.log`` written within
       the last 60 s is taken as the hint by itself, since no process list can be read;
    3. any process other than this one holding a VDI of the folder open
       (``/proc/<pid>/fd`` links; only processes we may inspect are seen, so running as
       another user than VirtualBox can miss them).

    Never raises for unreadable folders or processes: a None answer means "nothing
    suggests it", not "proven stopped". Writers should still refuse a VM that VirtualBox
    holds, and VirtualBox holds its own locks; this is the early, friendly warning.
    """
    folder = _vm_folder_of(Path(folder).absolute())
    log_age = _log_age(folder)
    recent_log = log_age is not None and log_age <= _RUNNING_LOG_AGE
    proc = Path("/proc")
    if not proc.is_dir():
        if recent_log:
            return (
                f"The VM in '{folder}' looks running: its Logs/VBox.log was written "
                f"{log_age:.0f} s ago."
            )
        return None
    for pid, cmdline in _processes(proc):
        program = Path(cmdline[0]).name if cmdline else ""
        if not any(program.startswith(n) for n in _VM_PROCESS_NAMES):
            continue
        if _names_this_vm(cmdline, folder):
            detail = (
                f", and its Logs/VBox.log was written {log_age:.0f} s ago" if recent_log else ""
            )
            return (
                f"The VM in '{folder}' looks running: process {pid} ({program}) was "
                f"started for it{detail}."
            )
    holder = _vdi_holder(proc, folder)
    if holder is not None:
        pid, name, path = holder
        return f"'{path.name}' is held open by process {pid} ({name}), so the VM may be running."
    return None


def _vm_folder_of(path: Path) -> Path:
    """The VM folder of a folder, a settings file or an image (possibly in Snapshots/)."""
    folder = path.parent if path.is_file() else path
    if path.is_file() and path.suffix.lower() != ".vdi":
        return folder
    for candidate in (folder, folder.parent):
        with contextlib.suppress(OSError):
            if any(candidate.glob("*.vbox")):
                return candidate
    return folder


def _names_this_vm(cmdline: list[str], folder: Path) -> bool:
    """Whether a VM process's arguments name this VM (UUID, exact name, or settings file)."""
    try:
        settings = load_settings(find_settings_file(folder))
    except (SettingsError, OSError):
        settings = None
    if not isinstance(settings, MachineSettings):
        return any(arg.endswith(".vbox") and Path(arg).parent == folder for arg in cmdline)
    machine = str(settings.machine_uuid).lower()
    settings_file = str(settings.info.settings_path)
    for arg in cmdline:
        if machine in arg.lower() or arg == settings.name or arg == settings_file:
            return True
    return False


def _log_age(folder: Path) -> float | None:
    try:
        return max(0.0, time.time() - (folder / "Logs" / "VBox.log").stat().st_mtime)
    except OSError:
        return None


def _processes(proc: Path) -> Iterator[tuple[int, list[str]]]:
    with contextlib.suppress(OSError):
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
            if args:
                yield int(entry.name), args


def _vdi_holder(proc: Path, folder: Path) -> tuple[int, str, Path] | None:
    try:
        resolved = folder.resolve()
    except OSError:
        return None
    prefix = str(resolved) + os.sep
    own = os.getpid()
    with contextlib.suppress(OSError):
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == own:
                continue
            try:
                fds = list((entry / "fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    target = str(fd.readlink())
                except OSError:
                    continue
                if target.startswith(prefix) and target.lower().endswith(".vdi"):
                    try:
                        name = (entry / "comm").read_text().strip()
                    except OSError:
                        name = "?"
                    return int(entry.name), name, Path(target)
    return None


def _u(value: uuidlib.UUID | None) -> str | None:
    return str(value) if value is not None else None


def _s(value: Path | None) -> str | None:
    return str(value) if value is not None else None
