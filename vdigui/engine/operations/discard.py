"""The discard advisor: whether the guest's TRIM/UNMAP can shrink each disk, and turning it on.

Why this exists: a dynamic VDI only grows, because VirtualBox frees a block of the image only
when the guest *discards* it, and the guest can discard only when the attachment says so
(``discard="true"`` on the ``<AttachedDevice>``; ``nonrotational="true"`` makes the guest see an
SSD, which is what Windows' Optimize Drives and many Linux setups look for before they trim).
VirtualBox's GUI has no switch for either; they hide in ``VBoxManage storageattach``.

What a discard does to a VDI (docs/vdi-format.md §2.4): VirtualBox works in whole blocks.
A block whose every byte the guest discarded (at once, or piece by piece while the VM runs)
becomes a ZERO entry of the block map; the image's last block is moved into the freed slot and
the file is truncated by one block, so the host file shrinks while the VM runs. A partly
discarded block stays. In a snapshot's differencing image only the blocks that image stores
are freed (as ZERO entries that hide the parent); the older layers belong to the snapshots
and keep their data until the snapshots are deleted.

Which controllers pass a discard on: SATA (AHCI: the ATA TRIM command) and the SCSI family
(LSI Logic, BusLogic, LSI Logic SAS and virtio-scsi, through SCSI UNMAP). The IDE controllers
(PIIX3, PIIX4, ICH6), floppy and USB have no such command. For NVMe vdigui does not know, so it
says so and leaves the attachment alone.

The change itself edits only the current state's attachments (a snapshot's frozen settings
are history), refuses while the VM runs or holds a saved state (VirtualBox refuses storage
changes then too), and saves the ``.vbox`` the VirtualBox way through the operation journal,
with a backup and undo like every other vdigui operation.
"""

from __future__ import annotations

import enum
import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vdigui.engine.errors import OperationRefused
from vdigui.engine.format import ImageType
from vdigui.engine.operations.journal import Journal, backups_dir
from vdigui.engine.operations.space import FileOutcome, SpacePlan
from vdigui.engine.progress import Progress, ProgressFn, no_progress
from vdigui.engine.vbox_edit import VboxDocument
from vdigui.engine.vbox_xml import (
    Attachment,
    MachineSettings,
    parse_settings_root,
    parse_xml_bytes,
)
from vdigui.engine.vmfolder import VmFolder, find_running_vm_hint, load_vm_folder


class Support(enum.Enum):
    """Whether a controller passes the guest's discard on to the image."""

    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


#: controller ``type`` (as the .vbox writes it) -> (bus in plain words, discard support)
_CONTROLLERS: dict[str, tuple[str, Support]] = {
    "PIIX3": ("IDE", Support.NO),
    "PIIX4": ("IDE", Support.NO),
    "ICH6": ("IDE", Support.NO),
    "IDE": ("IDE", Support.NO),
    "AHCI": ("SATA", Support.YES),
    "SATA": ("SATA", Support.YES),
    "LsiLogic": ("SCSI", Support.YES),
    "BusLogic": ("SCSI", Support.YES),
    "LsiLogicSas": ("SAS", Support.YES),
    "VirtioSCSI": ("virtio-scsi", Support.YES),
    "NVMe": ("NVMe", Support.UNKNOWN),
    "I82078": ("floppy", Support.NO),
    "USB": ("USB", Support.NO),
}


@dataclass(frozen=True, slots=True)
class DiskAttachment:
    """One hard disk of the current state, with its discard settings and what vdigui advises.

    Attributes:
        controller: the controller's name as the .vbox writes it ("SATA", "IDE Controller").
        controller_type: the controller's type ("AHCI", "PIIX4", ...).
        bus: the bus in plain words ("SATA", "IDE", "SCSI", ...).
        port, device: where on the controller.
        medium: the attached medium's UUID.
        path: the attached image (the chain's leaf), when the registry names it.
        discard, nonrotational: the current settings.
        support: whether the controller passes a discard on.
        eligible: vdigui can turn discard on for it (supported controller, a VDI image).
        advice: one sentence: why it is or is not eligible, and what to expect.
    """

    controller: str
    controller_type: str
    bus: str
    port: int
    device: int
    medium: str | None
    path: Path | None
    discard: bool
    nonrotational: bool
    support: Support
    eligible: bool
    advice: str

    @property
    def where(self) -> str:
        """ "SATA port 0, device 0" as VirtualBox's storage settings name the slot."""
        return f"{self.controller} port {self.port}, device {self.device}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``vdictl settings --json``)."""
        return {
            "controller": self.controller,
            "controller_type": self.controller_type,
            "bus": self.bus,
            "port": self.port,
            "device": self.device,
            "medium": self.medium,
            "path": str(self.path) if self.path else None,
            "discard": self.discard,
            "nonrotational": self.nonrotational,
            "discard_supported": self.support.value,
            "eligible": self.eligible,
            "advice": self.advice,
        }


def attachment_settings(vm: VmFolder) -> list[DiskAttachment]:
    """Every hard-disk attachment of the current state, with discard support and advice."""
    out = []
    for att in vm.current_attachments:
        if att.device_type != "HardDisk" or att.medium_uuid is None:
            continue
        out.append(_describe(vm, att))
    return out


def _describe(vm: VmFolder, att: Attachment) -> DiskAttachment:
    bus, support = _CONTROLLERS.get(
        att.controller_type, (att.controller_type or "unknown", Support.UNKNOWN)
    )
    medium = vm.media.get(att.medium_uuid) if att.medium_uuid else None
    path = medium.path if medium is not None else None
    fmt_name = medium.format.upper() if medium is not None else ""
    is_diff = medium is not None and medium.parent_uuid is not None
    fixed = _is_fixed(vm, path)
    eligible = False
    if support is Support.NO:
        advice = (
            f"The {bus} controller has no TRIM or UNMAP command, so the guest cannot "
            "discard; move the disk to a SATA controller in VirtualBox to use discard."
        )
    elif support is Support.UNKNOWN:
        advice = (
            f"vdigui does not know whether the {bus} controller passes discards on, so "
            "it leaves this attachment alone."
        )
    elif medium is None:
        advice = "The attached medium is not in the registry, so vdigui leaves it alone."
    elif fmt_name and fmt_name != "VDI":
        advice = f"The disk is a {fmt_name} image, not a VDI; vdigui leaves it alone."
    elif fixed:
        advice = "The image is fixed-size: its file never shrinks, so discard would gain nothing."
    else:
        eligible = True
        if is_diff:
            advice = (
                "Discards free blocks only in the current snapshot layer; the older "
                "layers keep their data until their snapshots are deleted."
            )
        else:
            advice = (
                "Whole blocks the guest discards are freed and the file shrinks while the VM runs."
            )
        if att.discard and att.nonrotational:
            advice = "Discard is on. " + advice
    return DiskAttachment(
        controller=att.controller,
        controller_type=att.controller_type,
        bus=bus,
        port=att.port,
        device=att.device,
        medium=str(att.medium_uuid) if att.medium_uuid else None,
        path=path,
        discard=att.discard,
        nonrotational=att.nonrotational,
        support=support,
        eligible=eligible,
        advice=advice,
    )


def _is_fixed(vm: VmFolder, path: Path | None) -> bool:
    header = vm.images.get(path) if path is not None else None
    return header is not None and header.image_type is ImageType.FIXED


#: What the guest must do once discard is on, by guest family.
DISCARD_GUEST_STEPS: tuple[str, ...] = (
    "Linux guest: run 'sudo fstrim -av' once, then enable the weekly timer with "
    "'sudo systemctl enable --now fstrim.timer' (or mount with the 'discard' option).",
    "Windows guest: open 'Defragment and Optimize Drives', select the disk (it now shows as "
    "a solid-state drive) and press Optimize; Windows then retrims on its weekly schedule.",
    "VirtualBox frees only whole blocks (usually 1 MiB) that the guest discarded entirely; "
    "to reclaim the rest at once, use vdigui's filesystem-aware compaction while the VM is "
    "off.",
)


@dataclass(frozen=True, slots=True)
class DiscardChange:
    """One attachment whose settings the plan changes."""

    attachment: DiskAttachment
    discard: bool
    nonrotational: bool

    def line(self) -> str:
        """The change in plain words."""
        a = self.attachment
        name = a.path.name if a.path else a.medium
        before = _flags(a.discard, a.nonrotational)
        after = _flags(self.discard, self.nonrotational)
        return f"{name} ({a.where}): {before} -> {after}"


def _flags(discard: bool, nonrotational: bool) -> str:
    return (
        f"discard {'on' if discard else 'off'}, {'solid-state' if nonrotational else 'rotational'}"
    )


@dataclass(frozen=True, slots=True)
class DiscardPlan:
    """What ``run_discard`` will change, planned read-only.

    Attributes:
        folder: the VM folder; vbox: its settings file; vbox_sha256: its bytes when planned
            (the run refuses if the file changed since).
        turn_on: the requested state.
        attachments: every hard disk of the current state, eligible or not.
        changes: the attachments that change (empty: nothing to do).
        space: the space figures (only the settings file and its backup change).
    """

    folder: Path
    vbox: Path
    vbox_sha256: str
    turn_on: bool
    attachments: tuple[DiskAttachment, ...]
    changes: tuple[DiscardChange, ...]
    space: SpacePlan

    def lines(self) -> list[str]:
        """The plan in plain words."""
        if not self.changes:
            state = "on" if self.turn_on else "off"
            return [f"Nothing to change: discard is already {state} on every eligible disk."]
        out = [f"Change {len(self.changes)} attachment(s) in '{self.vbox.name}':"]
        out += [f"  {c.line()}" for c in self.changes]
        out += self.space.total_lines()
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``--dry-run --json``)."""
        return {
            "folder": str(self.folder),
            "vbox": str(self.vbox),
            "turn_on": self.turn_on,
            "attachments": [a.to_dict() for a in self.attachments],
            "changes": [
                {
                    "controller": c.attachment.controller,
                    "port": c.attachment.port,
                    "device": c.attachment.device,
                    "discard": c.discard,
                    "nonrotational": c.nonrotational,
                }
                for c in self.changes
            ],
            "space": self.space.to_dict(),
        }


def plan_discard(folder: Path | str, turn_on: bool) -> DiscardPlan:
    """Plan turning discard (and the solid-state flag) on or off for the eligible disks.

    Turning on sets both ``discard`` and ``nonrotational`` on every eligible attachment;
    turning off clears ``discard`` on every attachment that has it (the solid-state flag is
    the user's own choice then and stays).

    Raises:
        OperationRefused: the VM runs or holds a saved state.
        SettingsError: the .vbox cannot be read.
    """
    vm = load_vm_folder(folder)
    _refuse_if_busy(vm)
    atts = attachment_settings(vm)
    changes: list[DiscardChange] = []
    for a in atts:
        if turn_on and a.eligible and not (a.discard and a.nonrotational):
            changes.append(DiscardChange(a, True, True))
        elif not turn_on and a.discard:
            changes.append(DiscardChange(a, False, a.nonrotational))
    raw = vm.settings_path.read_bytes()
    size = len(raw)
    # The saved file differs by a few attributes; the backup of the old one is the undo data.
    delta = sum(_attr_delta(c) for c in changes)
    outcome = FileOutcome(vm.settings_path, size, size + delta)
    space = SpacePlan(
        files=(outcome,) if changes else (),
        undo_bytes=size if changes else 0,
        undo_dir=backups_dir(vm.folder) if changes else None,
        peak_extra=2 * size if changes else 0,
        keep_undo=True,
    )
    return DiscardPlan(
        vm.folder,
        vm.settings_path,
        hashlib.sha256(raw).hexdigest(),
        turn_on,
        tuple(atts),
        tuple(changes),
        space,
    )


def _attr_delta(change: DiscardChange) -> int:
    """Bytes the settings file grows by: ' discard="true"' is 15, ' nonrotational="true"' 21."""
    a = change.attachment
    delta = 0
    if change.discard != a.discard:
        delta += 15 if change.discard else -15
    if change.nonrotational != a.nonrotational:
        delta += 21 if change.nonrotational else -21
    return delta


def _refuse_if_busy(vm: VmFolder) -> None:
    hint = find_running_vm_hint(vm.folder)
    if hint:
        raise OperationRefused(f"{hint} Power the VM off before changing its disk settings.")
    if vm.state_file is not None:
        raise OperationRefused(
            f"The VM '{vm.name}' holds a saved state; VirtualBox refuses storage changes "
            "then. Start it and shut it down (or discard the saved state) first."
        )


@dataclass(frozen=True, slots=True)
class DiscardResult:
    """What ``run_discard`` changed."""

    changed: int
    backup_dir: Path | None
    notes: tuple[str, ...]


def run_discard(plan: DiscardPlan, *, progress: ProgressFn = no_progress) -> DiscardResult:
    """Apply the plan: edit the attachments and save the .vbox through the journal.

    The settings file is backed up first and the journal names the backup before the save, so
    a crash at any point leaves the old or the new file (write_settings_file renames
    atomically), and ``vdictl undo`` restores the old one.
    """
    if not plan.changes:
        return DiscardResult(0, None, ("nothing to change",))
    doc = VboxDocument.load(plan.vbox)
    if hashlib.sha256(doc.original_bytes).hexdigest() != plan.vbox_sha256:
        raise OperationRefused(f"'{plan.vbox.name}' changed since the plan was made; plan again.")
    vm = load_vm_folder(plan.folder)
    _refuse_if_busy(vm)
    progress(Progress("saving settings", 0, 1))
    elements = doc.disk_devices(doc.machine)
    for change in plan.changes:
        a = change.attachment
        el = elements.get((a.controller, a.port, a.device))
        if el is None:
            raise OperationRefused(
                f"'{plan.vbox.name}' has no attachment at {a.where} any more; plan again."
            )
        _set_flag(el, "nonrotational", change.nonrotational)
        _set_flag(el, "discard", change.discard)
    data = doc.to_bytes()
    _verify(plan, data)
    state = "on" if plan.turn_on else "off"
    journal = Journal.begin(
        plan.folder,
        "settings",
        plan.to_dict(),
        f"discard {state} for {len(plan.changes)} disk(s)",
        plan.vbox,
    )
    try:
        journal.backup_file(plan.vbox, save=False)
        journal.set_phase("backed-up")
        journal.save_vbox(data)
    except Exception:
        if not journal.is_committed():
            journal.rollback()
            journal.abandon()
        raise
    notes = journal.complete()
    backup = journal.backup_dir
    journal.finish()
    progress(Progress("saving settings", 1, 1))
    return DiscardResult(len(plan.changes), backup, tuple(notes))


def _verify(plan: DiscardPlan, data: bytes) -> None:
    """Read the new settings back as VirtualBox would and check every attachment.

    The planned changes must be there, and nothing else may differ: a .vbox that reads
    differently anywhere else is not saved.
    """
    before = parse_settings_root(parse_xml_bytes(plan.vbox.read_bytes(), plan.vbox), plan.vbox)
    after = parse_settings_root(parse_xml_bytes(data, plan.vbox), plan.vbox)
    if not isinstance(before, MachineSettings) or not isinstance(after, MachineSettings):
        raise OperationRefused(f"'{plan.vbox.name}' is not a machine settings file.")
    wanted = {
        (c.attachment.controller, c.attachment.port, c.attachment.device): (
            c.discard,
            c.nonrotational,
        )
        for c in plan.changes
    }
    expected = []
    for att in before.current_attachments:
        flags = wanted.get((att.controller, att.port, att.device), (att.discard, att.nonrotational))
        if att.device_type != "HardDisk" or att.medium_uuid is None:
            flags = (att.discard, att.nonrotational)
        expected.append(replace(att, discard=flags[0], nonrotational=flags[1]))
    if (
        tuple(expected) != after.current_attachments
        or before.root_snapshot != after.root_snapshot
        or before.media != after.media
    ):
        raise OperationRefused(
            f"The edited '{plan.vbox.name}' did not read back as planned; "
            "nothing was changed. Please report this."
        )


def _set_flag(element: ET.Element, name: str, value: bool) -> None:
    """Set or drop a boolean attribute the way VirtualBox writes it (only when true).

    VirtualBox writes ``nonrotational`` then ``discard`` before ``type``; a new attribute is
    placed there so the file reads as VirtualBox would have saved it.
    """
    if not value:
        element.attrib.pop(name, None)
        return
    if name in element.attrib:
        element.set(name, "true")
        return
    order = ["passthrough", "tempeject", "nonrotational", "discard"]
    items = list(element.attrib.items())
    element.attrib.clear()
    placed = False
    for key, val in items:
        if not placed and (key not in order or order.index(key) > order.index(name)):
            element.set(name, "true")
            placed = True
        element.set(key, val)
    if not placed:
        element.set(name, "true")
