"""Read VirtualBox settings files (.vbox, pre-1.7 Machines/*.xml, VirtualBox.xml) without disks.

References:
    - VirtualBox ``src/VBox/Main/xml/Settings.cpp`` (``readMachine``, ``readSnapshot``,
      ``readStorageControllers``, ``readMediaRegistry``, ``readMedium``) and
      ``VirtualBox-settings.xsd``; ``docs/vdi-format.md`` section 6.

This module only parses: it never opens a disk image, and it never writes. The disk-aware view
(headers, orphans, mismatches) is :mod:`vdigui.engine.vmfolder`.

Quirks tolerated on purpose, because real files have them:

- both namespaces (``http://www.virtualbox.org/`` and the old
  ``http://www.innotek.de/VirtualBox-settings``) and none at all;
- ``StorageControllers`` under ``<Hardware>`` (1.17+), directly under ``<Machine>`` or
  ``<Snapshot>`` (1.7-1.16, and 1.17 as VirtualBox 6.0 wrote it), or under
  ``<Hardware>/<Platform>``;
- pre-1.7 files: ``<HardDiskAttachments>``, ``<DVDDrive>/<Image>``, and the global
  ``<DiskRegistry>`` with ``<VirtualDiskImage filePath>`` and nested ``<DiffHardDisk>``;
- medium ``type`` in any letter case; Windows paths (drive letters, backslashes, doubled
  separators, UNC) in files written on Windows.

Hostile input: parsing goes through defusedxml with DTDs, entity declarations and external
references all refused, so billion-laughs and XXE files raise :class:`SettingsError` before any
expansion happens. Disagreements inside one file that VirtualBox itself would load or that a
user can repair (a ``currentSnapshot`` naming no snapshot, a UUID registered twice) are
returned as :class:`Problem` values, never raised.
"""

from __future__ import annotations

import os
import re
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

from vdigui.engine.errors import SettingsError, VdiError
from vdigui.engine.format import parse_uuid
from vdigui.engine.sniff import open_regular, regular_file_problem

NAMESPACES = ("http://www.virtualbox.org/", "http://www.innotek.de/VirtualBox-settings")
#: Settings files are small (the largest real sample is 134 KB); refuse absurd sizes early.
MAX_SETTINGS_BYTES = 64 << 20
#: settings.h SETTINGS_MEDIUM_DEPTH_MAX and SETTINGS_SNAPSHOT_DEPTH_MAX.
MAX_MEDIUM_DEPTH = 300
MAX_SNAPSHOT_DEPTH = 250
#: The newest settings version this module was written against (VirtualBox 7.3).
NEWEST_KNOWN_VERSION = (1, 22)

MEDIUM_TYPES = {
    t.lower(): t
    for t in ("Normal", "Immutable", "Writethrough", "Shareable", "Readonly", "MultiAttach")
}
#: Storage children of pre-1.7 ``<HardDisk>`` elements and the format each means.
_OLD_STORAGE = {
    "VirtualDiskImage": "VDI",
    "VMDKImage": "VMDK",
    "VHDImage": "VHD",
    "ISCSIHardDisk": "iSCSI",
    "CustomHardDisk": "",
}
_KINDS = {"HardDisks": "hard-disk", "DVDImages": "dvd", "FloppyImages": "floppy"}
_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|[\\/]{2}[^\\/])")


class Severity(StrEnum):
    """How bad a problem or a check finding is.

    A ``StrEnum``: the JSON output (``vdictl info --json``, reports) keeps the plain words.
    """

    #: VirtualBox would refuse the file, or data is at risk.
    ERROR = "error"
    #: Suspicious or informational; nothing is at risk.
    WARNING = "warning"


MediumKind = Literal["hard-disk", "dvd", "floppy"]


# -- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One disagreement found while reading settings or comparing them with the files.

    Attributes:
        severity: "error" when VirtualBox would refuse or data is at risk, "warning" when it
            is only suspicious or informational.
        kind: a short stable slug tools can match on ("uuid-mismatch", "missing-file", ...).
        message: one sentence naming the file.
        path: the file the problem is about, when there is one.
        uuid: the medium or snapshot UUID the problem is about, when there is one.
    """

    severity: Severity
    kind: str
    message: str
    path: Path | None = None
    uuid: uuidlib.UUID | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Medium:
    """One entry of a media registry (hard disk, DVD or floppy image).

    Attributes:
        uuid: the registry UUID (what headers' uuidCreate must equal).
        location: the location exactly as written in the file.
        path: the location resolved against the settings file's folder; absolute unless
            ``foreign_path`` (a Windows path read on another OS, which cannot be resolved).
        format: "VDI", "VMDK", "VHD", "RAW", "iSCSI", ... (upper case as VirtualBox writes it).
        type: Normal/Immutable/Writethrough/Shareable/Readonly/MultiAttach. Differencing
            children carry no type in the file; they get "Normal", as VirtualBox does.
        auto_reset: the diff is reset at every power-on (children of Immutable bases).
        parent_uuid: the registry parent (nesting), None for a base.
        children: the registry children, in file order.
        kind: "hard-disk", "dvd" or "floppy".
        inspectable: a VDI hard disk, i.e. something vdigui can open. VMDK, VHD and the like
            still appear in the trees, marked not inspectable.
        description: the optional ``<Description>`` text.
        registry: the settings file that registered it.
        foreign_path: the location is absolute for another OS (``C:/...`` read on Linux).
    """

    uuid: uuidlib.UUID
    location: str
    path: Path
    format: str
    type: str
    auto_reset: bool
    parent_uuid: uuidlib.UUID | None
    children: tuple[uuidlib.UUID, ...]
    kind: MediumKind
    inspectable: bool
    description: str = ""
    registry: Path | None = None
    foreign_path: bool = False

    @property
    def is_file(self) -> bool:
        """Whether the medium is a local file at all (iSCSI and URLs are not)."""
        return self.format.lower() != "iscsi" and "://" not in self.location

    @property
    def is_differencing(self) -> bool:
        """Whether the registry nests it under a parent."""
        return self.parent_uuid is not None


@dataclass(frozen=True, slots=True)
class Attachment:
    """One ``<AttachedDevice>`` (or pre-1.7 ``<HardDiskAttachment>``).

    Attributes:
        controller: the storage controller's name (pre-1.7: the bus, "IDE" or "SATA").
        port: port (pre-1.7: channel).
        device: device number on the port.
        device_type: "HardDisk", "DVD" or "Floppy".
        medium_uuid: the ``<Image uuid>``; None for an empty drive or a host drive.
        discard: TRIM is passed to the image.
        nonrotational: the guest is told it is an SSD.
        host_drive: the ``<HostDrive src>`` of a passthrough drive, if any.
        controller_type: the controller's ``type`` ("PIIX4", "AHCI", "LsiLogic", "NVMe",
            "VirtioSCSI", ...; pre-1.7 files: the bus), which decides whether a discard
            (TRIM/UNMAP) can reach the image at all.
    """

    controller: str
    port: int
    device: int
    device_type: str
    medium_uuid: uuidlib.UUID | None
    discard: bool = False
    nonrotational: bool = False
    host_drive: str | None = None
    controller_type: str = ""


@dataclass(frozen=True, slots=True)
class SnapshotNode:
    """One ``<Snapshot>``: the attachments it froze and its child snapshots.

    Attributes:
        uuid: the snapshot UUID.
        name: its name, entities decoded.
        timestamp: ``timeStamp`` as a UTC datetime, None when absent or unreadable.
        description: the ``<Description>`` text ("" when none).
        state_file: the saved-state file of an online snapshot, resolved; None when offline.
        attachments: the attachments as they were when the snapshot was taken; they reference
            the images that became read-only then (docs/vdi-format.md §6.5).
        children: child snapshots, in file order.
        parent_uuid: the parent snapshot, None for the first snapshot.
        state_file_text: ``stateFile`` as written.
    """

    uuid: uuidlib.UUID
    name: str
    timestamp: datetime | None
    description: str
    state_file: Path | None
    attachments: tuple[Attachment, ...]
    children: tuple[SnapshotNode, ...]
    parent_uuid: uuidlib.UUID | None
    state_file_text: str | None = None

    @property
    def online(self) -> bool:
        """Whether the snapshot holds a saved machine state (taken while running)."""
        return self.state_file is not None

    def iter(self) -> Iterator[SnapshotNode]:
        """This snapshot and all below it, depth first, parents before children."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))


@dataclass(frozen=True, slots=True)
class MachineEntry:
    """A ``<MachineEntry>`` of a global VirtualBox.xml."""

    uuid: uuidlib.UUID
    src: str
    path: Path
    foreign_path: bool = False


@dataclass(frozen=True, slots=True)
class SettingsFileInfo:
    """What every settings file has: where it is and which dialect it speaks."""

    settings_path: Path
    folder: Path
    namespace: str
    settings_version: str
    platform: str

    @property
    def version_tuple(self) -> tuple[int, int]:
        """The settings version as (major, minor), e.g. (1, 19)."""
        return _version_tuple(self.settings_version)


@dataclass(frozen=True, slots=True)
class MachineSettings:
    """A parsed machine settings file (.vbox, or a pre-1.7 Machines/<Name>/<Name>.xml).

    Attributes:
        info: path, namespace, settings version and platform.
        machine_uuid, name, os_type: the ``<Machine>`` identity.
        snapshot_folder: ``snapshotFolder`` resolved (default "Snapshots").
        current_snapshot_uuid: ``currentSnapshot``, None when there are no snapshots.
        current_state_modified: False only when the file says so (the default is true).
        state_file: the machine's saved state, resolved, when it is Saved.
        aborted: the VM was running when VirtualBox last stopped (crash or kill).
        last_state_change: ``lastStateChange`` as written.
        description: the machine's ``<Description>``.
        root_snapshot: the first snapshot (the one directly under ``<Machine>``).
        current_attachments: the current state's attachments (they reference the leaves).
        media: the file's own registry, uuid -> medium (empty before 1.11: media were global).
        registry_roots: UUIDs of the registry's top-level media, in file order.
        problems: disagreements inside this one file.
    """

    info: SettingsFileInfo
    machine_uuid: uuidlib.UUID
    name: str
    os_type: str
    snapshot_folder: Path
    current_snapshot_uuid: uuidlib.UUID | None
    current_state_modified: bool
    state_file: Path | None
    aborted: bool
    last_state_change: str | None
    description: str
    root_snapshot: SnapshotNode | None
    current_attachments: tuple[Attachment, ...]
    media: dict[uuidlib.UUID, Medium] = field(hash=False)
    registry_roots: tuple[uuidlib.UUID, ...]
    problems: tuple[Problem, ...]
    state_file_text: str | None = None
    snapshot_folder_text: str = "Snapshots"

    def iter_snapshots(self) -> Iterator[SnapshotNode]:
        """Every snapshot, depth first, parents before children."""
        if self.root_snapshot is not None:
            yield from self.root_snapshot.iter()


@dataclass(frozen=True, slots=True)
class GlobalSettings:
    """A parsed global VirtualBox.xml (machine list and the global media registry).

    Attributes:
        info: path, namespace, settings version and platform.
        machine_entries: the ``<MachineRegistry>``.
        media: the global registry, uuid -> medium (``<MediaRegistry>``, or the pre-1.4
            ``<DiskRegistry>``); relative locations resolve against the file's folder.
        registry_roots: top-level media UUIDs in file order.
        default_machine_folder: ``SystemProperties/@defaultMachineFolder`` as written.
        problems: disagreements inside this one file.
    """

    info: SettingsFileInfo
    machine_entries: tuple[MachineEntry, ...]
    media: dict[uuidlib.UUID, Medium] = field(hash=False)
    registry_roots: tuple[uuidlib.UUID, ...]
    default_machine_folder: str | None
    problems: tuple[Problem, ...]


# -- entry points -------------------------------------------------------------------------


def load_settings(path: Path | str) -> MachineSettings | GlobalSettings:
    """Parse one settings file, machine or global, without opening any disk image.

    Raises:
        SettingsError: the file cannot be read, is not well-formed, is hostile (DTD, entity,
            external reference), is not a VirtualBox settings file, or lacks an attribute
            VirtualBox requires. The message is one sentence naming the file.
    """
    path = Path(path).absolute()
    root = parse_xml_file(path)
    return parse_settings_root(root, path)


def parse_xml_file(path: Path) -> Element:
    """Read and parse ``path`` safely; every failure is a one-sentence SettingsError."""
    problem = regular_file_problem(path)  # a FIFO named x.vbox must not block the open
    if problem is not None:
        raise SettingsError(problem)
    try:
        fd = open_regular(path)
        with open(fd, "rb") as f:
            data = f.read(MAX_SETTINGS_BYTES + 1)
    except VdiError as exc:
        raise SettingsError(str(exc)) from exc
    except OSError as exc:
        raise SettingsError(f"Cannot read settings file '{path}': {exc.strerror or exc}.") from exc
    if len(data) > MAX_SETTINGS_BYTES:
        raise SettingsError(
            f"Settings file '{path}' is larger than "
            f"{MAX_SETTINGS_BYTES >> 20} MiB, which no VirtualBox file is."
        )
    return parse_xml_bytes(data, path)


def parse_xml_bytes(data: bytes, path: Path) -> Element:
    """Parse settings XML held in memory, refusing DTDs, entities and external references."""
    try:
        root: Element = SafeET.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DTDForbidden:
        raise SettingsError(
            f"Settings file '{path}' declares a DTD, which VirtualBox never "
            "writes; refusing to read it."
        ) from None
    except defusedxml.EntitiesForbidden:
        raise SettingsError(
            f"Settings file '{path}' declares XML entities (an entity-"
            "expansion attack is possible); refusing to read it."
        ) from None
    except defusedxml.ExternalReferenceForbidden:
        raise SettingsError(
            f"Settings file '{path}' references an external resource; refusing to read it."
        ) from None
    except ParseError as exc:
        raise SettingsError(f"Settings file '{path}' is not well-formed XML ({exc}).") from None
    except (ValueError, UnicodeError) as exc:
        raise SettingsError(f"Settings file '{path}' cannot be parsed as XML ({exc}).") from None
    return root


def parse_settings_root(root: Element, path: Path) -> MachineSettings | GlobalSettings:
    """Turn a parsed document into MachineSettings or GlobalSettings."""
    namespace = _strip_namespaces(root)
    if root.tag != "VirtualBox":
        raise SettingsError(
            f"'{path}' is not a VirtualBox settings file: its root element is "
            f"<{root.tag}>, expected <VirtualBox>."
        )
    version_text = root.get("version")
    if not version_text:
        raise SettingsError(
            f"Settings file '{path}' has no version attribute on <VirtualBox>, "
            "which VirtualBox requires."
        )
    version, _, platform = version_text.partition("-")
    if not re.fullmatch(r"\d+\.\d+", version):
        raise SettingsError(
            f"Settings file '{path}' has version '{version_text}', expected "
            "'<major>.<minor>-<platform>' such as '1.19-linux'."
        )
    info = SettingsFileInfo(path, path.parent, namespace, version, platform)
    ctx = _Context(info)
    if _version_tuple(version) > NEWEST_KNOWN_VERSION:
        ctx.problem(
            Severity.WARNING,
            "future-settings-version",
            f"'{path.name}' has settings version {version}, newer than the "
            f"{NEWEST_KNOWN_VERSION[0]}.{NEWEST_KNOWN_VERSION[1]} vdigui knows; it is "
            "read as far as it is understood.",
            path,
        )
    machine = _child(root, "Machine")
    if machine is not None:
        return _parse_machine(machine, ctx)
    glob = _child(root, "Global")
    if glob is not None:
        return _parse_global(glob, ctx)
    raise SettingsError(
        f"Settings file '{path}' has neither <Machine> nor <Global> under <VirtualBox>."
    )


# -- parsing helpers ----------------------------------------------------------------------


class _Context:
    """Per-file parsing state: where relative paths resolve and the problems found."""

    def __init__(self, info: SettingsFileInfo) -> None:
        self.info = info
        self.path = info.settings_path
        self.windows = info.platform.lower() in ("windows", "os2")
        self.problems: list[Problem] = []

    def problem(
        self,
        severity: Severity,
        kind: str,
        message: str,
        path: Path | None = None,
        uuid: uuidlib.UUID | None = None,
    ) -> None:
        self.problems.append(Problem(severity, kind, message, path, uuid))

    def error(self, element: Element, what: str) -> SettingsError:
        return SettingsError(f"Settings file '{self.path}': <{element.tag}> {what}.")

    def required(self, element: Element, name: str) -> str:
        value = element.get(name)
        if value is None:
            raise self.error(element, f"has no '{name}' attribute, which VirtualBox requires")
        return value

    def uuid(self, element: Element, name: str, *, required: bool = True) -> uuidlib.UUID | None:
        text = self.required(element, name) if required else element.get(name)
        if text is None or (not required and not text.strip()):
            return None
        value = parse_uuid(text)
        if value is None:
            raise self.error(element, f'has {name}="{text}", which is not a UUID')
        return value

    def number(self, element: Element, name: str, default: int) -> int:
        text = element.get(name)
        if text is None:
            return default
        try:
            return int(text) if text.strip().isdigit() else int(text, 0)
        except ValueError:
            raise self.error(element, f'has {name}="{text}", expected a number') from None

    def flag(self, element: Element, name: str, default: bool) -> bool:
        text = element.get(name)
        if text is None:
            return default
        low = text.strip().lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise self.error(element, f'has {name}="{text}", expected true or false')

    def resolve(self, location: str) -> tuple[Path, bool]:
        return resolve_location(location, self.info.folder, windows_file=self.windows)


def resolve_location(location: str, base: Path, *, windows_file: bool = False) -> tuple[Path, bool]:
    """Resolve a location as VirtualBox wrote it; returns (path, is_foreign).

    Relative locations are relative to ``base`` (the machine folder, or the VirtualBox home
    for VirtualBox.xml). Files written on Windows use backslashes and drive letters; on a
    POSIX host such an absolute path cannot be resolved, so it is kept (with '/' separators)
    and flagged foreign rather than wrongly joined to ``base``. No disk access happens here.
    """
    text = location.strip()
    windowsish = windows_file or bool(_WINDOWS_ABS.match(text))
    if windowsish and os.sep == "/":
        unc = text[:2] in ("\\\\", "//")
        text = re.sub(r"[\\/]+", "/", text.replace("\\", "/"))
        if unc:
            # \\server\share means nothing on POSIX; keep it visible, flagged foreign.
            return Path("/" + text), True
    if os.sep == "/" and re.match(r"^[A-Za-z]:/", text):
        return Path(text), True
    candidate = Path(text)
    if not candidate.is_absolute():
        if os.sep == "\\" and text.startswith("/"):
            return candidate, True
        candidate = base / candidate
    return Path(os.path.normpath(candidate)), False


def _strip_namespaces(root: Element) -> str:
    """Drop the namespace from every tag (both VirtualBox namespaces read the same)."""
    namespace = ""
    if root.tag.startswith("{"):
        namespace = root.tag[1:].partition("}")[0]
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.partition("}")[2]
    return namespace


def _child(element: Element, tag: str) -> Element | None:
    for child in element:
        if child.tag == tag:
            return child
    return None


def _children(element: Element | None, tag: str) -> list[Element]:
    if element is None:
        return []
    return [child for child in element if child.tag == tag]


def _text_of(element: Element, tag: str) -> str:
    child = _child(element, tag)
    return (child.text or "") if child is not None else ""


def _version_tuple(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    try:
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def _timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    for pattern in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text.strip(), pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


# -- media registry -----------------------------------------------------------------------


class _Registry:
    """Collects media from one file's registry, keyed by UUID, noting duplicates."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self._built: dict[uuidlib.UUID, Medium] = {}
        self._order: list[uuidlib.UUID] = []
        self.roots: list[uuidlib.UUID] = []

    @property
    def media(self) -> dict[uuidlib.UUID, Medium]:
        """The media in file order (parents before their children)."""
        return {uuid: self._built[uuid] for uuid in self._order}

    def read(self, registry: Element | None) -> None:
        if registry is None:
            return
        for group in registry:
            kind = _KINDS.get(group.tag)
            if kind is None:
                continue
            for element in group:
                if element.tag in ("HardDisk", "Image", "DiffHardDisk"):
                    self._read_medium(element, kind, None, 1)  # type: ignore[arg-type]

    def _read_medium(
        self, element: Element, kind: MediumKind, parent: uuidlib.UUID | None, depth: int
    ) -> uuidlib.UUID | None:
        """Read one medium and its nested children; None for a duplicate (not kept)."""
        ctx = self.ctx
        if depth > MAX_MEDIUM_DEPTH:
            raise ctx.error(
                element, f"is nested deeper than VirtualBox's limit of {MAX_MEDIUM_DEPTH} media"
            )
        uuid = ctx.uuid(element, "uuid")
        assert uuid is not None
        location, fmt = self._location_and_format(element, kind)
        type_text = element.get("type")
        if type_text is None:
            medium_type = "Readonly" if kind == "dvd" and parent is None else "Normal"
        else:
            medium_type = MEDIUM_TYPES.get(type_text.strip().lower(), "")
            if not medium_type:
                raise ctx.error(
                    element,
                    f'has type="{type_text}", expected one of {", ".join(MEDIUM_TYPES.values())}',
                )
        if uuid in self._order:
            ctx.problem(
                Severity.ERROR,
                "duplicate-uuid",
                f"'{ctx.path.name}' registers medium {{{uuid}}} twice ('{location}' "
                f"and '{self._built[uuid].location if uuid in self._built else '?'}'); "
                "VirtualBox refuses duplicate UUIDs.",
                ctx.path,
                uuid,
            )
            return None
        self._order.append(uuid)
        if parent is None:
            self.roots.append(uuid)
        children: list[uuidlib.UUID] = []
        for child in element:
            if child.tag in ("HardDisk", "DiffHardDisk", "Image"):
                child_uuid = self._read_medium(child, kind, uuid, depth + 1)
                if child_uuid is not None:
                    children.append(child_uuid)
        path, foreign = ctx.resolve(location)
        medium = Medium(
            uuid=uuid,
            location=location,
            path=path,
            format=fmt,
            type=medium_type,
            auto_reset=ctx.flag(element, "autoReset", False),
            parent_uuid=parent,
            children=tuple(children),
            kind=kind,
            inspectable=kind == "hard-disk" and fmt.upper() == "VDI",
            description=_text_of(element, "Description"),
            registry=ctx.path,
            foreign_path=foreign,
        )
        self._built[uuid] = medium
        return uuid

    def _location_and_format(self, element: Element, kind: MediumKind) -> tuple[str, str]:
        location = element.get("location") or element.get("src") or element.get("filePath")
        fmt = element.get("format") or ""
        if location is None:
            # Pre-1.4 DiskRegistry: the storage is a child element (VirtualDiskImage, ...).
            for child in element:
                if child.tag in _OLD_STORAGE:
                    fmt = fmt or child.get("format") or _OLD_STORAGE[child.tag]
                    if child.tag == "ISCSIHardDisk":
                        location = f"iscsi://{child.get('server', '')}/{child.get('target', '')}"
                    else:
                        location = child.get("filePath") or child.get("location")
                    break
        if location is None:
            raise self.ctx.error(element, "has no location, which VirtualBox requires")
        if not fmt:
            suffix = Path(location.replace("\\", "/")).suffix.lstrip(".").upper()
            fmt = (suffix or "VDI") if kind == "hard-disk" else "RAW"
        return location, fmt


# -- machine ------------------------------------------------------------------------------


def _parse_machine(machine: Element, ctx: _Context) -> MachineSettings:
    machine_uuid = ctx.uuid(machine, "uuid")
    assert machine_uuid is not None
    name = ctx.required(machine, "name")
    registry = _Registry(ctx)
    registry.read(_child(machine, "MediaRegistry"))
    snapshot_folder_text = machine.get("snapshotFolder") or "Snapshots"
    snapshot_folder, _ = ctx.resolve(snapshot_folder_text)
    state_text = machine.get("stateFile")
    state_file = ctx.resolve(state_text)[0] if state_text else None

    snapshots = _children(machine, "Snapshot")
    root_snapshot = None
    seen: set[uuidlib.UUID] = set()
    if len(snapshots) > 1:
        raise ctx.error(
            machine,
            f"has {len(snapshots)} <Snapshot> children; VirtualBox allows "
            "one (the first snapshot) and nests the rest in <Snapshots>",
        )
    if snapshots:
        root_snapshot = _parse_snapshot(snapshots[0], None, ctx, 1, seen)

    current_snapshot = ctx.uuid(machine, "currentSnapshot", required=False)
    if current_snapshot is not None and current_snapshot not in seen:
        ctx.problem(
            Severity.ERROR,
            "current-snapshot-missing",
            f"'{ctx.path.name}' names current snapshot {{{current_snapshot}}}, but no "
            "snapshot has that UUID.",
            ctx.path,
            current_snapshot,
        )
    elif current_snapshot is None and root_snapshot is not None:
        ctx.problem(
            Severity.ERROR,
            "current-snapshot-missing",
            f"'{ctx.path.name}' has snapshots but no currentSnapshot attribute, which "
            "VirtualBox requires.",
            ctx.path,
        )

    return MachineSettings(
        info=ctx.info,
        machine_uuid=machine_uuid,
        name=name,
        os_type=machine.get("OSType", ""),
        snapshot_folder=snapshot_folder,
        current_snapshot_uuid=current_snapshot,
        current_state_modified=ctx.flag(machine, "currentStateModified", True),
        state_file=state_file,
        aborted=ctx.flag(machine, "aborted", False),
        last_state_change=machine.get("lastStateChange"),
        description=_text_of(machine, "Description"),
        root_snapshot=root_snapshot,
        current_attachments=_parse_attachments(machine, ctx),
        media=registry.media,
        registry_roots=tuple(registry.roots),
        problems=tuple(ctx.problems),
        state_file_text=state_text,
        snapshot_folder_text=snapshot_folder_text,
    )


def _parse_snapshot(
    element: Element,
    parent: uuidlib.UUID | None,
    ctx: _Context,
    depth: int,
    seen: set[uuidlib.UUID],
) -> SnapshotNode:
    if depth > MAX_SNAPSHOT_DEPTH:
        raise ctx.error(
            element, f"is nested deeper than VirtualBox's limit of {MAX_SNAPSHOT_DEPTH} snapshots"
        )
    uuid = ctx.uuid(element, "uuid")
    assert uuid is not None
    name = ctx.required(element, "name")
    if uuid in seen:
        ctx.problem(
            Severity.ERROR,
            "duplicate-uuid",
            f"'{ctx.path.name}' has two snapshots with UUID {{{uuid}}}.",
            ctx.path,
            uuid,
        )
    seen.add(uuid)
    wrappers = _children(element, "Snapshots")
    if len(wrappers) > 1:
        raise ctx.error(element, "has more than one <Snapshots> child; VirtualBox allows one")
    children = tuple(
        _parse_snapshot(child, uuid, ctx, depth + 1, seen)
        for wrapper in wrappers
        for child in _children(wrapper, "Snapshot")
    )
    state_text = element.get("stateFile")
    return SnapshotNode(
        uuid=uuid,
        name=name,
        timestamp=_timestamp(element.get("timeStamp")),
        description=_text_of(element, "Description"),
        state_file=ctx.resolve(state_text)[0] if state_text else None,
        attachments=_parse_attachments(element, ctx),
        children=children,
        parent_uuid=parent,
        state_file_text=state_text,
    )


def _parse_attachments(owner: Element, ctx: _Context) -> tuple[Attachment, ...]:
    """Attachments of a Machine or Snapshot, wherever this settings version put them."""
    hardware = _child(owner, "Hardware")
    containers = [owner]
    if hardware is not None:
        containers.append(hardware)
        containers.extend(_children(hardware, "Platform"))
    out: list[Attachment] = []
    for container in containers:
        for controllers in _children(container, "StorageControllers"):
            for controller in _children(controllers, "StorageController"):
                controller_name = ctx.required(controller, "name")
                controller_type = controller.get("type") or ""
                for device in _children(controller, "AttachedDevice"):
                    out.append(
                        _parse_attached_device(device, controller_name, controller_type, ctx)
                    )
    # Pre-1.7: hard disks in <HardDiskAttachments>, DVD and floppy images in <Hardware>.
    for attachments in _children(owner, "HardDiskAttachments"):
        for item in _children(attachments, "HardDiskAttachment"):
            uuid = ctx.uuid(item, "hardDisk")
            bus = item.get("bus") or item.get("controller") or "IDE"
            out.append(
                Attachment(
                    controller=bus,
                    port=ctx.number(item, "channel", 0),
                    device=ctx.number(item, "device", 0),
                    device_type="HardDisk",
                    medium_uuid=uuid,
                    controller_type=bus,
                )
            )
    if hardware is not None:
        for tag, device_type, controller_name, port in (
            ("DVDDrive", "DVD", "IDE", 1),
            ("FloppyDrive", "Floppy", "Floppy", 0),
        ):
            for drive in _children(hardware, tag):
                image = _child(drive, "Image")
                host = _child(drive, "HostDrive")
                if image is None and host is None:
                    continue
                out.append(
                    Attachment(
                        controller=controller_name,
                        port=port,
                        device=0,
                        device_type=device_type,
                        medium_uuid=ctx.uuid(image, "uuid") if image is not None else None,
                        host_drive=host.get("src") if host is not None else None,
                    )
                )
    return tuple(out)


def _parse_attached_device(
    device: Element, controller: str, controller_type: str, ctx: _Context
) -> Attachment:
    device_type = ctx.required(device, "type")
    image = _child(device, "Image")
    host = _child(device, "HostDrive")
    return Attachment(
        controller=controller,
        port=ctx.number(device, "port", 0),
        device=ctx.number(device, "device", 0),
        device_type=device_type,
        medium_uuid=ctx.uuid(image, "uuid") if image is not None else None,
        discard=ctx.flag(device, "discard", False),
        nonrotational=ctx.flag(device, "nonrotational", False),
        host_drive=host.get("src") if host is not None else None,
        controller_type=controller_type,
    )


# -- global -------------------------------------------------------------------------------


def _parse_global(glob: Element, ctx: _Context) -> GlobalSettings:
    entries: list[MachineEntry] = []
    for registry in _children(glob, "MachineRegistry"):
        for entry in _children(registry, "MachineEntry"):
            uuid = ctx.uuid(entry, "uuid")
            assert uuid is not None
            src = ctx.required(entry, "src")
            path, foreign = ctx.resolve(src)
            entries.append(MachineEntry(uuid, src, path, foreign))
    media = _Registry(ctx)
    for tag in ("MediaRegistry", "DiskRegistry"):
        media.read(_child(glob, tag))
    props = _child(glob, "SystemProperties")
    return GlobalSettings(
        info=ctx.info,
        machine_entries=tuple(entries),
        media=media.media,
        registry_roots=tuple(media.roots),
        default_machine_folder=props.get("defaultMachineFolder") if props is not None else None,
        problems=tuple(ctx.problems),
    )
