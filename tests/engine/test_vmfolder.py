"""Synthetic VM folders: real VDI files made by the engine plus hand-written .vbox text.

Each test breaks one thing the way it breaks in the field (reference section 8) and checks
that load_vm_folder reports it as a Problem of the right kind, without raising and without
writing a byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest

from vdigui.engine import SettingsError, VdiError, create_image, open_paths, read_header
from vdigui.engine.format import VdiHeader
from vdigui.engine.vbox_xml import (
    MachineSettings,
    load_settings,
    parse_settings_root,
    parse_xml_bytes,
)
from vdigui.engine.vmfolder import (
    VmFolder,
    find_running_vm_hint,
    find_settings_file,
    load_vm_folder,
)

MIB = 1 << 20
MACHINE = uuid.UUID("11111111-1111-4111-8111-111111111111")
S1 = uuid.UUID("33333333-3333-4333-8333-333333333331")
S2 = uuid.UUID("33333333-3333-4333-8333-333333333332")
NS = "http://www.virtualbox.org/"


# -- builders -----------------------------------------------------------------------------


def disk(
    u: uuid.UUID,
    location: str,
    *children: str,
    top: bool = True,
    type_: str = "Normal",
    fmt: str = "VDI",
    auto_reset: bool = False,
) -> str:
    """One <HardDisk> element; ``top`` ones carry a type, nested ones don't (like VBox)."""
    attrs = f'uuid="{{{u}}}" location={quoteattr(location)} format="{fmt}"'
    if top:
        attrs += f' type="{type_}"'
    if auto_reset:
        attrs += ' autoReset="true"'
    return f"<HardDisk {attrs}>{''.join(children)}</HardDisk>"


def storage(*images: uuid.UUID | None, under: str = "hardware") -> tuple[str, str]:
    """(inside-Hardware, beside-Hardware) storage XML attaching ``images`` on SATA ports."""
    devices = "".join(
        f'<AttachedDevice type="HardDisk" port="{i}" device="0" discard="true">'
        + (f'<Image uuid="{{{u}}}"/>' if u else "")
        + "</AttachedDevice>"
        for i, u in enumerate(images)
    )
    xml = (
        f'<StorageControllers><StorageController name="SATA" type="AHCI" PortCount="4">'
        f"{devices}</StorageController></StorageControllers>"
    )
    return (xml, "") if under == "hardware" else ("", xml)


def owner_body(*images: uuid.UUID | None, under: str = "hardware") -> str:
    inside, beside = storage(*images, under=under)
    return f'<Hardware><Memory RAMSize="512"/>{inside}</Hardware>{beside}'


def vbox_text(
    disks: str,
    *,
    current: tuple[uuid.UUID | None, ...],
    snapshots: str = "",
    current_snapshot: uuid.UUID | None = None,
    version: str = "1.19-linux",
    name: str = "demo",
    machine_attrs: str = "",
    dvds: str = "",
    under: str = "hardware",
    namespace: str = NS,
) -> str:
    cs = f' currentSnapshot="{{{current_snapshot}}}"' if current_snapshot else ""
    return (
        f'<?xml version="1.0"?>\n<VirtualBox xmlns="{namespace}" version="{version}">\n'
        f'<Machine uuid="{{{MACHINE}}}" name="{name}" OSType="Debian_64"{cs} '
        f'snapshotFolder="Snapshots" {machine_attrs}>'
        f"<MediaRegistry><HardDisks>{disks}</HardDisks>"
        f"<DVDImages>{dvds}</DVDImages></MediaRegistry>"
        f"{snapshots}{owner_body(*current, under=under)}</Machine></VirtualBox>\n"
    )


def snapshot(u: uuid.UUID, name: str, image: uuid.UUID, children: str = "", extra: str = "") -> str:
    inner = f"<Snapshots>{children}</Snapshots>" if children else ""
    return (
        f'<Snapshot uuid="{{{u}}}" name="{name}" timeStamp="2024-05-01T10:00:00Z"{extra}>'
        f"<Description>about {name}</Description>{owner_body(image)}{inner}</Snapshot>"
    )


class Vm:
    """A VM folder: demo.vdi <- Snapshots/{d1}.vdi <- Snapshots/{d2}.vdi, two snapshots."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "demo"
        self.snaps = self.folder / "Snapshots"
        self.snaps.mkdir(parents=True)
        self.base_path = self.folder / "demo.vdi"
        self.base = create_image(self.base_path, 4 * MIB)
        self.d1 = self.diff(self.base)
        self.d2 = self.diff(self.d1)
        self.settings = self.folder / "demo.vbox"

    def diff(self, parent: VdiHeader, **kw: object) -> VdiHeader:
        u = uuid.uuid4()
        return create_image(self.snaps / f"{{{u}}}.vdi", parent=parent, uuid=u, **kw)  # type: ignore[arg-type]

    def path(self, h: VdiHeader) -> Path:
        return self.base_path if h.uuid == self.base.uuid else self.snaps / f"{{{h.uuid}}}.vdi"

    def loc(self, h: VdiHeader) -> str:
        return "demo.vdi" if h.uuid == self.base.uuid else f"Snapshots/{{{h.uuid}}}.vdi"

    def registry(self) -> str:
        return disk(
            self.base.uuid,
            "demo.vdi",
            disk(
                self.d1.uuid,
                self.loc(self.d1),
                disk(self.d2.uuid, self.loc(self.d2), top=False),
                top=False,
            ),
        )

    def snapshots(self) -> str:
        return snapshot(S1, "clean", self.base.uuid, snapshot(S2, "work", self.d1.uuid))

    def write(self, disks: str | None = None, **kw: object) -> Path:
        kw.setdefault("current", (self.d2.uuid,))
        kw.setdefault("snapshots", self.snapshots())
        kw.setdefault("current_snapshot", S2)
        text = vbox_text(self.registry() if disks is None else disks, **kw)  # type: ignore[arg-type]
        self.settings.write_text(text, encoding="utf-8")
        return self.settings

    def load(self, disks: str | None = None, **kw: object) -> VmFolder:
        self.write(disks, **kw)
        return load_vm_folder(self.folder)


@pytest.fixture
def vm(tmp_path: Path) -> Vm:
    return Vm(tmp_path)


def kinds(folder: VmFolder) -> list[str]:
    return sorted(p.kind for p in folder.problems)


def tree_digest(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root: size, mtime and content hash (to prove nothing was written)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path)] = (
                st.st_size,
                st.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return out


# -- a clean folder -----------------------------------------------------------------------


def test_clean_vm_folder(vm: Vm) -> None:
    vm.write()
    before = tree_digest(vm.folder)
    folder = load_vm_folder(vm.folder)
    assert find_running_vm_hint(vm.folder) is None
    assert tree_digest(vm.folder) == before  # opening and inspecting wrote nothing

    assert folder.problems == ()
    assert folder.machine_uuid == MACHINE and folder.name == "demo"
    assert folder.settings_version == "1.19" and folder.platform == "linux"
    assert folder.snapshot_folder == vm.snaps
    assert folder.registry_tree == (vm.base.uuid,)
    assert folder.header_tree == {
        vm.base.uuid: (vm.d1.uuid,),
        vm.d1.uuid: (vm.d2.uuid,),
        vm.d2.uuid: (),
    }
    assert folder.header_roots == (vm.base.uuid,)
    assert set(folder.images) == {vm.base_path, vm.path(vm.d1), vm.path(vm.d2)}
    assert [n.name for n in folder.iter_snapshots()] == ["clean", "work"]
    clean = folder.snapshot_by_name_or_uuid("clean")
    assert clean.description == "about clean" and clean.parent_uuid is None
    assert folder.snapshot_by_name_or_uuid(f"{{{S2}}}").name == "work"
    assert folder.snapshot_by_name_or_uuid(str(S2).upper()).name == "work"
    assert folder.current_snapshot is not None and folder.current_snapshot.uuid == S2
    assert [m.uuid for m in folder.disk_for_snapshot(clean)] == [vm.base.uuid]
    assert [m.uuid for m in folder.disk_for_snapshot("work")] == [vm.d1.uuid]
    assert [m.uuid for m in folder.current_disks()] == [vm.d2.uuid]
    assert folder.current_attachments[0].discard
    assert folder.chain_for(vm.d2.uuid) == [vm.base_path, vm.path(vm.d1), vm.path(vm.d2)]
    assert folder.chain_for(vm.path(vm.d1)) == [vm.base_path, vm.path(vm.d1)]
    assert folder.chain_for(f"{{{vm.base.uuid}}}") == [vm.base_path]
    with open_paths(folder.chain_for(vm.d2.uuid)) as chain:
        assert chain.read(0, 512) == bytes(512)
    assert folder.backups == ()
    with pytest.raises(VdiError, match="no snapshot named or identified by 'nope'"):
        folder.snapshot_by_name_or_uuid("nope")
    with pytest.raises(VdiError, match="No medium or image with UUID"):
        folder.chain_for(uuid.uuid4())


def test_storage_under_machine_and_platform(vm: Vm) -> None:
    folder = vm.load(under="machine", version="1.16-linux")
    assert [m.uuid for m in folder.current_disks()] == [vm.d2.uuid]
    text = vbox_text(vm.registry(), current=(vm.d2.uuid,), version="1.20-linux")
    text = text.replace("<StorageControllers>", "<Platform><StorageControllers>").replace(
        "</StorageControllers>", "</StorageControllers></Platform>"
    )
    vm.settings.write_text(text)
    assert [m.uuid for m in load_vm_folder(vm.settings).current_disks()] == [vm.d2.uuid]


def test_media_types_auto_reset_and_kinds(vm: Vm) -> None:
    other = create_image(vm.folder / "shared.vdi", MIB, fixed=True)
    dvd = uuid.uuid4()
    disks = (
        disk(
            vm.base.uuid,
            "demo.vdi",
            disk(vm.d1.uuid, vm.loc(vm.d1), top=False, auto_reset=True),
            type_="immutable",
        )
        + disk(other.uuid, "shared.vdi", type_="SHAREABLE")
        + disk(uuid.uuid4(), "Other.vmdk", fmt="VMDK", type_="MultiAttach")
    )
    folder = vm.load(
        disks,
        current=(vm.d1.uuid, other.uuid),
        snapshots="",
        current_snapshot=None,
        dvds=f'<Image uuid="{{{dvd}}}" location="x.iso"/>',
    )
    media = folder.media
    assert media[vm.base.uuid].type == "Immutable"
    assert media[vm.d1.uuid].auto_reset and media[vm.d1.uuid].type == "Normal"
    assert media[other.uuid].type == "Shareable"
    vmdk = next(m for m in media.values() if m.format == "VMDK")
    assert vmdk.type == "MultiAttach" and not vmdk.inspectable and vmdk.kind == "hard-disk"
    assert media[dvd].kind == "dvd" and media[dvd].format == "RAW" and not media[dvd].inspectable
    # d2 is on disk but no longer registered: an orphan.
    assert kinds(folder) == ["missing-file", "missing-file", "orphan-image"]
    assert {p.severity for p in folder.problems if p.uuid == dvd} == {"warning"}


# -- one problem kind each ----------------------------------------------------------------


def test_uuid_mismatch(vm: Vm) -> None:
    """sethduuid on a registered disk (reference 8.2)."""
    stale = uuid.uuid4()
    disks = disk(
        stale,
        "demo.vdi",
        disk(vm.d1.uuid, vm.loc(vm.d1), disk(vm.d2.uuid, vm.loc(vm.d2), top=False), top=False),
    )
    folder = vm.load(
        disks, snapshots=snapshot(S1, "clean", stale, snapshot(S2, "work", vm.d1.uuid))
    )
    problem = next(p for p in folder.problems if p.kind == "uuid-mismatch")
    assert problem.message == (
        f"UUID {{{vm.base.uuid}}} in the header of 'demo.vdi' does not "
        f"match {{{stale}}} stored in the media registry."
    )
    assert problem.severity == "error" and problem.path == vm.base_path
    # The child's linkage names the real base, not the registry's: a parent mismatch too.
    assert "parent-mismatch" in kinds(folder)
    assert "orphan-image" in kinds(folder)  # the header UUID is registered nowhere


def test_parent_mismatch(vm: Vm) -> None:
    """A diff nested under the wrong parent in the registry (reference 8.3)."""
    disks = disk(
        vm.base.uuid,
        "demo.vdi",
        disk(vm.d1.uuid, vm.loc(vm.d1), top=False),
        disk(vm.d2.uuid, vm.loc(vm.d2), top=False),
    )
    folder = vm.load(disks)
    assert kinds(folder) == ["parent-mismatch"]
    problem = folder.problems[0]
    assert problem.uuid == vm.d2.uuid
    assert problem.message == (
        f"The header of '{{{vm.d2.uuid}}}.vdi' names parent "
        f"{{{vm.d1.uuid}}}, but the media registry nests it under "
        f"{{{vm.base.uuid}}}."
    )
    # The header tree keeps the truth; the registry tree shows what VirtualBox believes.
    assert folder.header_tree[vm.d1.uuid] == (vm.d2.uuid,)
    assert folder.media[vm.base.uuid].children == (vm.d1.uuid, vm.d2.uuid)


def test_missing_file_is_a_problem_not_a_crash(vm: Vm) -> None:
    vm.write()
    vm.path(vm.d2).unlink()
    folder = load_vm_folder(vm.folder)
    assert kinds(folder) == ["missing-file"]
    assert folder.problems[0].message == (
        f"Registered hard-disk {{{vm.d2.uuid}}} is missing: 'Snapshots/{{{vm.d2.uuid}}}.vdi' "
        "does not exist."
    )
    with pytest.raises(VdiError, match="is missing or unreadable"):
        folder.chain_for(vm.d2.uuid)
    assert folder.chain_for(vm.d1.uuid)[-1] == vm.path(vm.d1)


def test_moved_file_is_pointed_at(vm: Vm) -> None:
    vm.write()
    vm.path(vm.d1).rename(vm.folder / "moved.vdi")
    folder = load_vm_folder(vm.folder)
    assert kinds(folder) == ["missing-file", "orphan-image"] or kinds(folder) == ["missing-file"]
    missing = next(p for p in folder.problems if p.kind == "missing-file")
    assert f"a file with this UUID exists at '{vm.folder / 'moved.vdi'}'" in missing.message


def test_orphan_image(vm: Vm) -> None:
    orphan = vm.diff(vm.d1)
    folder = vm.load()
    assert kinds(folder) == ["orphan-image"]
    assert folder.problems[0].path == vm.path(orphan)
    assert folder.problems[0].uuid == orphan.uuid
    assert folder.header_tree[vm.d1.uuid] == tuple(sorted((vm.d2.uuid, orphan.uuid), key=str))
    assert folder.chain_for(orphan.uuid)[-1] == vm.path(orphan)


def test_duplicate_uuid_among_files(vm: Vm) -> None:
    """A copied disk keeps its uuidCreate (reference 8.1)."""
    shutil.copyfile(vm.base_path, vm.folder / "demo-copy.vdi")
    folder = vm.load()
    assert kinds(folder) == ["duplicate-uuid"]
    assert folder.problems[0].path == vm.folder / "demo-copy.vdi"
    # The registered copy wins when building chains.
    assert folder.image_paths[vm.base.uuid][0] == vm.base_path
    assert folder.chain_for(vm.d1.uuid)[0] == vm.base_path


def test_duplicate_uuid_in_registry(vm: Vm) -> None:
    disks = vm.registry() + disk(vm.d1.uuid, "elsewhere.vdi")
    folder = vm.load(disks)
    assert kinds(folder) == ["duplicate-uuid"]
    assert folder.media[vm.d1.uuid].location == vm.loc(vm.d1)


def test_base_is_differencing(vm: Vm) -> None:
    disks = disk(vm.d1.uuid, vm.loc(vm.d1), disk(vm.d2.uuid, vm.loc(vm.d2), top=False))
    folder = vm.load(disks, snapshots="", current_snapshot=None)
    # demo.vdi is now unregistered, and d1 is registered as a base.
    assert kinds(folder) == ["base-is-differencing", "orphan-image"]
    problem = next(p for p in folder.problems if p.kind == "base-is-differencing")
    assert problem.message == (
        f"'{{{vm.d1.uuid}}}.vdi' is a base disk in the media registry "
        "but its header says it is a differencing image."
    )


def test_size_and_block_size_mismatch(vm: Vm) -> None:
    bigger = vm.diff(vm.d2.replace(disk_size=8 * MIB))
    other_blocks = vm.diff(vm.d2, block_size=512 * 1024)
    disks = disk(
        vm.base.uuid,
        "demo.vdi",
        disk(
            vm.d1.uuid,
            vm.loc(vm.d1),
            disk(
                vm.d2.uuid,
                vm.loc(vm.d2),
                disk(bigger.uuid, vm.loc(bigger), top=False),
                disk(other_blocks.uuid, vm.loc(other_blocks), top=False),
                top=False,
            ),
            top=False,
        ),
    )
    folder = vm.load(disks)
    assert kinds(folder) == ["block-size-mismatch", "size-mismatch"]
    size = next(p for p in folder.problems if p.kind == "size-mismatch")
    assert size.uuid == bigger.uuid
    assert size.message == (
        f"'{{{bigger.uuid}}}.vdi' has a disk size of {8 * MIB} bytes but "
        f"its parent '{{{vm.d2.uuid}}}.vdi' has {4 * MIB}; a chain needs "
        "equal sizes."
    )
    with pytest.raises(VdiError, match="a chain needs equal sizes"):
        folder.chain_for(bigger.uuid)


def test_parent_modify_mismatch_is_a_warning(vm: Vm) -> None:
    stale = vm.diff(vm.d2.replace(modify_uuid=uuid.uuid4()))
    disks = disk(
        vm.base.uuid,
        "demo.vdi",
        disk(
            vm.d1.uuid,
            vm.loc(vm.d1),
            disk(vm.d2.uuid, vm.loc(vm.d2), disk(stale.uuid, vm.loc(stale), top=False), top=False),
            top=False,
        ),
    )
    folder = vm.load(disks)
    assert kinds(folder) == ["parent-modify-mismatch"]
    assert folder.problems[0].severity == "warning" and folder.errors == ()
    assert folder.warnings == folder.problems


def test_missing_parent(vm: Vm) -> None:
    lost = uuid.uuid4()
    child = vm.diff(vm.d2.replace(uuid=lost))
    disks = vm.registry() + disk(lost, "lost.vdi", disk(child.uuid, vm.loc(child), top=False))
    folder = vm.load(disks)
    assert kinds(folder) == ["missing-file", "missing-parent"]
    problem = next(p for p in folder.problems if p.kind == "missing-parent")
    assert problem.message == (
        f"Parent {{{lost}}} of '{{{child.uuid}}}.vdi' was not found among "
        "the VM's images (it is registered as 'lost.vdi', whose file is "
        "missing or unreadable)."
    )
    assert child.uuid in folder.header_roots
    with pytest.raises(VdiError, match=f"Parent image {{{lost}}}"):
        folder.chain_for(child.uuid)


def test_parent_loop(vm: Vm) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    create_image(vm.snaps / "a.vdi", parent=vm.base.replace(uuid=b), uuid=a)
    create_image(vm.snaps / "b.vdi", parent=vm.base.replace(uuid=a), uuid=b)
    folder = vm.load()
    assert kinds(folder) == [
        "orphan-image",
        "orphan-image",
        "parent-loop",
        "parent-modify-mismatch",
        "parent-modify-mismatch",
    ]
    with pytest.raises(VdiError, match="loops"):
        folder.chain_for(a)


def test_unreadable_image(vm: Vm) -> None:
    vm.write()
    data = bytearray(vm.path(vm.d1).read_bytes())
    data[0x40:0x44] = b"\0\0\0\0"  # the signature
    vm.path(vm.d1).write_bytes(bytes(data))
    (vm.snaps / "junk.vdi").write_bytes(b"not a disk")
    folder = load_vm_folder(vm.folder)
    assert kinds(folder) == ["missing-parent", "unreadable-image", "unreadable-image"]
    registered = next(
        p for p in folder.problems if p.kind == "unreadable-image" and p.uuid == vm.d1.uuid
    )
    assert "u32Signature" in registered.message and registered.path == vm.path(vm.d1)
    assert vm.snaps / "junk.vdi" in folder.unreadable


def test_current_snapshot_missing_and_unknown_medium(vm: Vm) -> None:
    ghost, dvd = uuid.uuid4(), uuid.uuid4()
    folder = vm.load(current_snapshot=ghost, current=(vm.d2.uuid, uuid.UUID(int=7)))
    assert kinds(folder) == ["current-snapshot-missing", "unknown-medium"]
    missing = next(p for p in folder.problems if p.kind == "current-snapshot-missing")
    assert missing.message == (
        f"'demo.vbox' names current snapshot {{{ghost}}}, but no snapshot has that UUID."
    )
    assert folder.current_snapshot is None
    text = vm.settings.read_text().replace(
        "</StorageController></StorageControllers></Hardware></Machine>",
        f'<AttachedDevice type="DVD" port="3" device="0"><Image uuid="{{{dvd}}}"/>'
        "</AttachedDevice></StorageController></StorageControllers></Hardware></Machine>",
    )
    vm.settings.write_text(text)
    folder = load_vm_folder(vm.settings)
    unknown = {p.uuid: p.severity for p in folder.problems if p.kind == "unknown-medium"}
    assert unknown == {uuid.UUID(int=7): "error", dvd: "warning"}


def test_snapshots_without_current_snapshot(vm: Vm) -> None:
    folder = vm.load(current_snapshot=None)
    assert kinds(folder) == ["current-snapshot-missing"]
    assert "no currentSnapshot attribute" in folder.problems[0].message


def test_missing_state_files_and_failed_save(vm: Vm) -> None:
    snaps = snapshot(
        S1,
        "clean",
        vm.base.uuid,
        snapshot(S2, "work", vm.d1.uuid),
        extra=' stateFile="Snapshots/2024-05-01T10-00-00-000000000Z.sav"',
    )
    vm.write(snapshots=snaps, machine_attrs='stateFile="Snapshots/now.sav"')
    shutil.copyfile(vm.settings, vm.folder / "demo.vbox-tmp")
    (vm.folder / "demo.vbox-prev").write_text("<VirtualBox")  # truncated: not a backup
    (vm.snaps / "now.sav").write_bytes(b"")
    folder = load_vm_folder(vm.folder)
    assert kinds(folder) == ["failed-save", "missing-state-file"]
    assert folder.backups == (vm.folder / "demo.vbox-tmp",)
    assert folder.root_snapshot is not None and folder.root_snapshot.online
    assert folder.state_file == vm.snaps / "now.sav"


def test_future_settings_version_is_read(vm: Vm) -> None:
    folder = vm.load(version="1.99-linux")
    assert kinds(folder) == ["future-settings-version"]
    assert folder.problems[0].severity == "warning"


def test_innotek_namespace_and_pre_17_attachments(tmp_path: Path) -> None:
    base = create_image(tmp_path / "old.vdi", MIB)
    text = (
        f'<VirtualBox xmlns="http://www.innotek.de/VirtualBox-settings" version="1.3-linux">'
        f'<Machine uuid="{{{MACHINE}}}" name="old" OSType="winxp">'
        f'<Hardware><DVDDrive passthrough="false"><HostDrive src="/dev/sr0"/></DVDDrive>'
        f'</Hardware><HardDiskAttachments><HardDiskAttachment hardDisk="{{{base.uuid}}}" '
        f'bus="SATA" channel="2" device="0"/></HardDiskAttachments></Machine></VirtualBox>'
    )
    (tmp_path / "old.xml").write_text(text)
    glob = (
        f'<VirtualBox xmlns="http://www.innotek.de/VirtualBox-settings" version="1.3-linux">'
        f'<Global><DiskRegistry><HardDisks><HardDisk uuid="{{{base.uuid}}}" type="normal">'
        f'<VirtualDiskImage filePath="old.vdi"/></HardDisk></HardDisks></DiskRegistry>'
        f"</Global></VirtualBox>"
    )
    (tmp_path / "global.xml").write_text(glob)
    folder = load_vm_folder(tmp_path / "old.xml", global_settings=tmp_path / "global.xml")
    assert folder.problems == ()
    hd, dvd = folder.current_attachments
    assert (hd.controller, hd.port, hd.device_type) == ("SATA", 2, "HardDisk")
    assert dvd.device_type == "DVD" and dvd.host_drive == "/dev/sr0" and dvd.medium_uuid is None
    assert folder.chain_for(base.uuid) == [tmp_path / "old.vdi"]
    with pytest.raises(SettingsError, match="is a machine settings file, not a global"):
        load_vm_folder(tmp_path / "old.xml", global_settings=tmp_path / "old.xml")


def test_load_settings_without_disks(vm: Vm) -> None:
    vm.write(machine_attrs='currentStateModified="false" aborted="true"')
    shutil.rmtree(vm.snaps)
    settings = load_settings(vm.settings)
    assert isinstance(settings, MachineSettings)
    assert not settings.current_state_modified and settings.aborted
    assert [n.name for n in settings.iter_snapshots()] == ["clean", "work"]
    view = VmFolder.from_settings(settings)
    assert view.problems == () and not view.disks_inspected


# -- choosing the settings file -----------------------------------------------------------


def test_find_settings_file(vm: Vm) -> None:
    vm.write()
    shutil.copyfile(vm.settings, vm.folder / "demo-1.18-linux.vbox")
    shutil.copyfile(vm.settings, vm.folder / "demo.vbox-prev")
    assert find_settings_file(vm.folder) == vm.settings
    assert load_vm_folder(vm.folder).backups == (
        vm.folder / "demo-1.18-linux.vbox",
        vm.folder / "demo.vbox-prev",
    )
    shutil.copyfile(vm.settings, vm.folder / "second.vbox")
    with pytest.raises(SettingsError) as info:
        load_vm_folder(vm.folder)
    assert str(info.value) == (
        f"Folder '{vm.folder}' holds several machine settings files "
        "(demo.vbox, second.vbox); open one of them directly."
    )
    empty = vm.folder.parent / "empty"
    empty.mkdir()
    (empty / "x.vbox-prev").write_text("")
    with pytest.raises(
        SettingsError,
        match=r"holds no VirtualBox machine settings file \(\.vbox"
        r"\); backups exist \(x\.vbox-prev\)",
    ):
        load_vm_folder(empty)
    with pytest.raises(SettingsError, match="does not exist"):
        load_vm_folder(empty / "nothing")
    with pytest.raises(SettingsError, match="is a disk image, not a VM folder"):
        load_vm_folder(vm.base_path)


# -- hostile and malformed XML ------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE VirtualBox [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">
<Machine uuid="{11111111-1111-4111-8111-111111111111}" name="&lol9;" OSType="x"/>
</VirtualBox>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE VirtualBox [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">
<Machine uuid="{11111111-1111-4111-8111-111111111111}" name="&xxe;" OSType="x"/>
</VirtualBox>
"""
PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE VirtualBox [<!ENTITY % ext SYSTEM "http://127.0.0.1/evil.dtd"> %ext;]>
<VirtualBox version="1.19-linux"><Machine uuid="{11111111-1111-4111-8111-111111111111}"
 name="x" OSType="x"/></VirtualBox>
"""
DTD_ONLY = """<?xml version="1.0"?>
<!DOCTYPE VirtualBox SYSTEM "VirtualBox-settings.dtd">
<VirtualBox version="1.19-linux"><Machine uuid="{11111111-1111-4111-8111-111111111111}"
 name="x" OSType="x"/></VirtualBox>
"""


@pytest.mark.parametrize(
    "text",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY, DTD_ONLY],
    ids=["billion-laughs", "external-entity", "parameter-entity", "dtd"],
)
def test_hostile_xml_is_refused_and_nothing_is_written(tmp_path: Path, text: str) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    target = folder / "evil.vbox"
    target.write_text(text)
    before = tree_digest(tmp_path)
    with pytest.raises(SettingsError) as info:
        load_vm_folder(folder)
    assert str(info.value) == (
        f"Settings file '{target}' declares a DTD, which VirtualBox "
        "never writes; refusing to read it."
    )
    with pytest.raises(SettingsError):
        load_settings(target)
    assert find_running_vm_hint(folder) is None
    assert tree_digest(tmp_path) == before


MALFORMED = {
    "truncated": ('<VirtualBox version="1.19-linux"><Machine', "is not well-formed XML"),
    "not-virtualbox": ("<html/>", "its root element is <html>, expected <VirtualBox>"),
    "no-version": ("<VirtualBox><Machine/></VirtualBox>", "has no version attribute"),
    "bad-version": ('<VirtualBox version="new"><Machine/></VirtualBox>', "has version 'new'"),
    "empty-document": ('<VirtualBox version="1.19-linux"/>', "has neither <Machine> nor <Global>"),
    "no-uuid": (
        '<VirtualBox version="1.19-linux"><Machine name="x"/></VirtualBox>',
        "<Machine> has no 'uuid' attribute, which VirtualBox requires.",
    ),
    "bad-uuid": (
        '<VirtualBox version="1.19-linux"><Machine uuid="{zz}" name="x"/></VirtualBox>',
        '<Machine> has uuid="{zz}", which is not a UUID.',
    ),
    "no-name": (
        f'<VirtualBox version="1.19-linux"><Machine uuid="{{{MACHINE}}}"/></VirtualBox>',
        "<Machine> has no 'name' attribute",
    ),
    "bad-type": (
        vbox_text(disk(MACHINE, "x.vdi", type_="Sticky"), current=()),
        '<HardDisk> has type="Sticky", expected one of Normal, Immutable',
    ),
    "no-location": (
        vbox_text(f'<HardDisk uuid="{{{MACHINE}}}" format="VDI"/>', current=()),
        "<HardDisk> has no location",
    ),
    "bad-port": (
        vbox_text("", current=(None,)).replace('port="0"', 'port="x"'),
        'has port="x", expected a number',
    ),
    "no-device-type": (
        vbox_text("", current=(None,)).replace('type="HardDisk" ', ""),
        "<AttachedDevice> has no 'type' attribute",
    ),
    "two-root-snapshots": (
        vbox_text(
            "",
            current=(),
            snapshots=snapshot(S1, "a", MACHINE) + snapshot(S2, "b", MACHINE),
            current_snapshot=S1,
        ),
        "has 2 <Snapshot> children",
    ),
    "bad-bool": (
        vbox_text("", current=(), machine_attrs='aborted="maybe"'),
        'has aborted="maybe", expected true or false',
    ),
    "not-utf8": (
        '<?xml version="1.0" encoding="utf-8"?><VirtualBox version="1.19-linux" a="\xff"/>',
        "is not well-formed XML",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_settings_give_one_sentence(tmp_path: Path, name: str) -> None:
    text, expected = MALFORMED[name]
    target = tmp_path / "bad.vbox"
    target.write_bytes(text.encode("latin-1") if name == "not-utf8" else text.encode())
    with pytest.raises(SettingsError) as info:
        load_vm_folder(tmp_path)
    message = str(info.value)
    assert expected in message
    assert str(target) in message
    assert message.endswith(".") and "\n" not in message


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    nested = ""
    for _ in range(301):
        nested = disk(uuid.uuid4(), "d.vdi", nested, top=False)
    (tmp_path / "deep.vbox").write_text(vbox_text(nested, current=()))
    with pytest.raises(SettingsError, match="deeper than VirtualBox's limit of 300 media"):
        load_vm_folder(tmp_path)


# -- is it running? -----------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_running_hints(vm: Vm) -> None:
    vm.write()
    assert find_running_vm_hint(vm.folder) is None
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; f=open(sys.argv[1],'rb'); print(1, flush=True); time.sleep(30)",
            str(vm.path(vm.d2)),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline()
        hint = find_running_vm_hint(vm.folder)
        assert hint is not None and f"process {holder.pid}" in hint
        assert f"'{{{vm.d2.uuid}}}.vdi' is held open" in hint
        assert find_running_vm_hint(vm.path(vm.d1)) == hint  # an image finds its VM folder
    finally:
        holder.kill()
        holder.wait()
    (vm.folder / "Logs").mkdir()
    (vm.folder / "Logs" / "VBox.log").write_text("log\n")
    assert find_running_vm_hint(vm.folder) is None  # a fresh log alone is not enough on Linux
    fake = subprocess.Popen(
        [
            "bash",
            "-c",
            'exec -a VBoxHeadless "$0" -c "import time; time.sleep(30)" '
            '--comment demo --startvm "$1"',
            sys.executable,
            str(MACHINE),
        ]
    )
    try:
        deadline = time.monotonic() + 5
        hint = None
        while hint is None and time.monotonic() < deadline:
            hint = find_running_vm_hint(vm.folder)
            time.sleep(0.05)
        assert hint is not None
        assert f"process {fake.pid} (VBoxHeadless) was started for it" in hint
        assert "Logs/VBox.log was written" in hint
    finally:
        fake.kill()
        fake.wait()
    os.utime(vm.folder / "Logs" / "VBox.log", (time.time() - 3600, time.time() - 3600))
    assert find_running_vm_hint(vm.folder) is None
    assert find_running_vm_hint(vm.folder / "not-there") is None


def test_chain_headers_match_engine(vm: Vm) -> None:
    folder = vm.load()
    for path, header in folder.images.items():
        assert read_header(path) == header


def test_to_dict_is_json_and_marks_problems(vm: Vm) -> None:
    orphan = vm.diff(vm.d1)
    folder = vm.load()
    data = json.loads(json.dumps(folder.to_dict()))
    assert data["machine_uuid"] == str(MACHINE) and data["name"] == "demo"
    (root,) = data["snapshots"]
    assert root["name"] == "clean" and root["disks"] == [str(vm.base.uuid)]
    assert root["children"][0]["current"] is True
    assert data["current_state"]["disks"] == [str(vm.d2.uuid)]
    (base,) = data["media"]
    assert base["header"]["type"] == "dynamic" and base["children"][0]["uuid"] == str(vm.d1.uuid)
    (image_root,) = data["header_tree"]
    d1 = image_root["children"][0]
    flagged = next(c for c in d1["children"] if c["uuid"] == str(orphan.uuid))
    assert flagged["registered"] is False and flagged["problems"] == ["orphan-image"]
    assert [p["kind"] for p in data["problems"]] == ["orphan-image"]


def test_chain_for_medium_and_running_hint_from_an_image(vm: Vm) -> None:
    folder = vm.load()
    (leaf,) = folder.current_disks()
    assert folder.chain_for(leaf) == folder.chain_for(leaf.uuid)
    assert find_running_vm_hint(vm.path(vm.d2)) is None


def test_mutated_settings_raise_only_settings_error(tmp_path: Path) -> None:
    """Random damage to a real-shaped .vbox either parses or raises SettingsError, never else."""
    u = uuid.uuid4()
    original = vbox_text(
        disk(u, "a.vdi", disk(uuid.uuid4(), "Snapshots/b.vdi", top=False)),
        current=(u,),
        snapshots=snapshot(S1, "s", u, snapshot(S2, "t", u)),
        current_snapshot=S2,
    ).encode()
    rng = random.Random(1234)
    target = tmp_path / "m.vbox"
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                del data[pos : pos + rng.randint(1, 40)]
            elif action == 1:
                data[pos:pos] = data[rng.randrange(len(data)) :][: rng.randint(1, 60)]
            else:
                data[pos] = rng.choice(b'<>"={}/- x0&;')
        try:
            parse_settings_root(parse_xml_bytes(bytes(data), target), target)
            outcomes["parsed"] += 1
        except SettingsError as exc:
            assert str(exc).endswith(".") and "\n" not in str(exc), str(exc)
            outcomes["refused"] += 1
    assert outcomes["parsed"] and outcomes["refused"]
