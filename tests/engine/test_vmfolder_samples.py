"""The real VirtualBox settings files and images in shared/samples/vbox (see its SOURCES.md).

They are read in place (never copied into the repository); tests that need a VM-folder layout
copy or decompress them into ``tmp_path`` at their original relative paths.
"""

from __future__ import annotations

import gzip
import shutil
import uuid
from pathlib import Path

import pytest

from vdigui.engine import SettingsError, VdiError, open_paths
from vdigui.engine.vbox_xml import GlobalSettings, MachineSettings, load_settings
from vdigui.engine.vmfolder import VmFolder, load_vm_folder

INNOTEK = "http://www.innotek.de/VirtualBox-settings"
VBOX_NS = "http://www.virtualbox.org/"

# file -> (settings version, namespace, machine name, snapshots, media, current hard disk)
MACHINES = {
    "b2b-vm_1.16-macosx_aborted.vbox": ("1.16", VBOX_NS, "b2b-vm", 0, 2, "89216be0"),
    "born2beroot_1.17-linux_vbox6.1_1snap.vbox": ("1.17", VBOX_NS, "born2beroot", 1, 4, "99a7c2c6"),
    "born2beroot_1.18-linux_savedstate.vbox": ("1.18", VBOX_NS, "Born2beroot", 0, 2, "fbbd758c"),
    "goad-dc01_1.19-linux_vbox7.2_2snaps.vbox": ("1.19", VBOX_NS, "GOAD-DC01", 2, 5, "e6800503"),
    "influenza_1.15-windows_vhd-description.vbox": ("1.15", VBOX_NS, "Influenza", 0, 2, "960f2c97"),
    "metasploitable_1.19-windows_3snaps-branching.vbox": (
        "1.19",
        VBOX_NS,
        "Meta",
        3,
        4,
        "9b9fe9b6",
    ),
    "samba-ad-debian_1.19-windows_19snaps-branching.vbox": (
        "1.19",
        VBOX_NS,
        "Debian",
        19,
        22,
        "7e96d184",
    ),
    "streambot_1.12-windows_innotek-ns.vbox": ("1.12", INNOTEK, "StreamBot", 0, 3, "f0985323"),
    "ubuntu_1.16-linux_1snap-savedstates.vbox": ("1.16", VBOX_NS, "Ubuntu", 1, 3, "181848e3"),
    "ubuntu_1.17-windows_vbox6.0_storage-under-machine.vbox": (
        "1.17",
        VBOX_NS,
        "Ubuntu",
        0,
        3,
        "34691cb8",
    ),
    "win2012server2_1.19-windows_savedstate-1snap.vbox": (
        "1.19",
        VBOX_NS,
        "Win2012Server2",
        1,
        3,
        "89067c0f",
    ),
    "windows10_1.15-windows_1snap-savedstate.vbox": (
        "1.15",
        VBOX_NS,
        "Windows 10",
        1,
        2,
        "0b77d7b1",
    ),
    "windoze_1.3-linux_machine.xml": ("1.3", INNOTEK, "Windoze", 0, 0, "af4dca4f"),
    "winxp_1.14-linux_innotek-ns.vbox": ("1.14", INNOTEK, "WinXP", 0, 1, "d4ae40f5"),
}


def _machine(samples: Path, name: str) -> MachineSettings:
    settings = load_settings(samples / name)
    assert isinstance(settings, MachineSettings)
    return settings


def test_every_sample_is_known(samples: Path) -> None:
    names = {p.name for p in samples.iterdir() if p.suffix in (".vbox", ".xml")}
    globals_ = {n for n in names if n.startswith("global_")}
    assert names - globals_ == set(MACHINES)
    assert len(globals_) == 3


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_machine_samples_parse(samples: Path, name: str) -> None:
    version, namespace, machine_name, snapshots, media, current = MACHINES[name]
    settings = _machine(samples, name)
    assert settings.info.settings_version == version
    assert settings.info.namespace == namespace
    assert settings.name == machine_name
    assert len(list(settings.iter_snapshots())) == snapshots
    assert len(settings.media) == media
    disks = [a for a in settings.current_attachments if a.device_type == "HardDisk"]
    assert [str(a.medium_uuid)[:8] for a in disks] == [current]
    assert settings.problems == ()
    if snapshots:
        assert settings.current_snapshot_uuid in {n.uuid for n in settings.iter_snapshots()}
    else:
        assert settings.current_snapshot_uuid is None


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_machine_samples_load_as_vm_folders_without_disks(samples: Path, name: str) -> None:
    """Their disks are absent: every one still loads, the gaps are problems, not crashes."""
    vm = load_vm_folder(samples / name)
    assert vm.name == MACHINES[name][2]
    assert vm.snapshot_count == MACHINES[name][3]
    kinds = {p.kind for p in vm.problems}
    # The only VDI in the samples folder is windoze's, registered in no .vbox: an orphan for
    # every VM but windoze's own pre-1.7 settings, which find it by UUID beside them (see
    # test_windoze_old_layout_in_one_folder).
    windoze = name == "windoze_1.3-linux_machine.xml"
    assert ("orphan-image" in kinds) != windoze
    assert kinds <= {"missing-file", "orphan-image", "missing-state-file", "unknown-medium"}
    for problem in vm.problems:
        assert problem.message.endswith(".")
    missing = {p.uuid for p in vm.problems if p.kind == "missing-file"}
    for medium in vm.media.values():
        assert medium.uuid in missing or (windoze and medium.path.is_file())
    view = VmFolder.from_settings(_machine(samples, name))
    assert not view.disks_inspected and view.images == {}


def test_samba_ad_19_branching_snapshots(samples: Path) -> None:
    settings = _machine(samples, "samba-ad-debian_1.19-windows_19snaps-branching.vbox")
    nodes = list(settings.iter_snapshots())
    assert len(nodes) == 19
    assert nodes[0].name == "Instantánea 1" and nodes[0].parent_uuid is None

    def depth(node: object) -> int:
        return 1 + max((depth(c) for c in node.children), default=0)  # type: ignore[attr-defined]

    assert depth(settings.root_snapshot) == 10
    branching = [n.name for n in nodes if len(n.children) > 1]
    assert branching == ["Instantánea 3", "Definitiva", "Before AD"]
    assert all(n.online and n.state_file is not None for n in nodes)
    current = next(n for n in nodes if n.uuid == settings.current_snapshot_uuid)
    assert current.name == "DEBIAN AD NO PSSWD"
    assert current.timestamp is not None and current.timestamp.year == 2025
    assert all(n.parent_uuid == p.uuid for p in nodes for n in p.children)
    disk = next(a for a in settings.current_attachments if a.device_type == "HardDisk")
    assert disk.nonrotational and not disk.discard
    # 19 VMDK diffs nested under one base, the media tree branching too.
    assert settings.registry_roots[0] == uuid.UUID("1acdebe7-9e5b-44bd-8ec9-4b4b17e48b75")
    hard = [m for m in settings.media.values() if m.kind == "hard-disk"]
    assert len(hard) == 20 and sum(1 for m in hard if m.parent_uuid is None) == 1
    assert not any(m.inspectable for m in hard)
    assert {m.format for m in hard} == {"VMDK"}
    assert [m.kind for m in settings.media.values()].count("dvd") == 2


def test_samba_ad_snapshot_helpers(samples: Path) -> None:
    vm = load_vm_folder(samples / "samba-ad-debian_1.19-windows_19snaps-branching.vbox")
    first = vm.snapshot_by_name_or_uuid("Instantánea 1")
    assert first.uuid == uuid.UUID("8d856da2-fc63-4932-8fe1-248856092c04")
    assert vm.snapshot_by_name_or_uuid("{8d856da2-fc63-4932-8fe1-248856092c04}") is first
    assert [m.location for m in vm.disk_for_snapshot(first)] == ["Debian.vmdk"]
    assert [str(m.uuid)[:8] for m in vm.current_disks()] == ["7e96d184"]
    chain = vm.registry_parent_chain(vm.current_disks()[0].uuid)
    assert chain[0].location == "Debian.vmdk" and chain[-1].parent_uuid == chain[-2].uuid
    # The frozen image of the current snapshot is the parent of the current leaf.
    current = vm.current_snapshot
    assert current is not None
    assert vm.disk_for_snapshot(current)[0].uuid == vm.current_disks()[0].parent_uuid
    with pytest.raises(VdiError, match="which vdigui cannot inspect"):
        vm.chain_for(vm.current_disks()[0].uuid)


def test_goad_two_snapshots_and_hand_added_branch(samples: Path) -> None:
    settings = _machine(samples, "goad-dc01_1.19-linux_vbox7.2_2snaps.vbox")
    nodes = list(settings.iter_snapshots())
    assert [n.name for n in nodes] == ["push_1766163705_7292", "push_1766170151_8843"]
    assert nodes[1].parent_uuid == nodes[0].uuid and settings.current_snapshot_uuid == nodes[1].uuid
    base = settings.media[settings.registry_roots[0]]
    assert base.format == "VMDK" and not base.inspectable and base.type == "Normal"
    assert len(base.children) == 2  # the chain used by the snapshots, and the added branch
    frozen = [a.medium_uuid for n in nodes for a in n.attachments]
    assert frozen == [base.uuid, base.children[0]]


def test_metasploitable_branches_and_windows_absolute_base(samples: Path) -> None:
    settings = _machine(samples, "metasploitable_1.19-windows_3snaps-branching.vbox")
    root = settings.root_snapshot
    assert root is not None and root.name == "Sicherungspunkt 1"
    assert [c.name for c in root.children] == [
        "Root. End Practice One",
        "Root Hacked - Student version",
    ]
    base = settings.media[settings.registry_roots[0]]
    assert base.location.startswith("C:/Users/joerg/")
    assert base.foreign_path
    vm = load_vm_folder(samples / "metasploitable_1.19-windows_3snaps-branching.vbox")
    problem = next(p for p in vm.problems if p.uuid == base.uuid)
    assert problem.kind == "missing-file" and "another operating system" in problem.message


def test_storage_controller_placements(samples: Path) -> None:
    # 1.16: StorageControllers beside Hardware, in Machine and Snapshot.
    ubuntu = _machine(samples, "ubuntu_1.16-linux_1snap-savedstates.vbox")
    assert ubuntu.root_snapshot is not None
    assert [str(a.medium_uuid)[:8] for a in ubuntu.root_snapshot.attachments] == ["6b60802b"]
    assert ubuntu.state_file is not None and ubuntu.root_snapshot.state_file is not None
    # 1.17 written by 6.1: inside Hardware, for the snapshot too.
    born = _machine(samples, "born2beroot_1.17-linux_vbox6.1_1snap.vbox")
    assert born.root_snapshot is not None
    assert [(a.controller, a.device_type) for a in born.root_snapshot.attachments] == [
        ("IDE", "DVD"),
        ("SATA", "HardDisk"),
    ]
    # 1.17 written by 6.0: directly under Machine.
    vm6 = _machine(samples, "ubuntu_1.17-windows_vbox6.0_storage-under-machine.vbox")
    assert [(a.controller, a.port, a.device_type) for a in vm6.current_attachments] == [
        ("IDE", 0, "DVD"),
        ("SATA", 0, "HardDisk"),
    ]


def test_misc_machine_attributes(samples: Path) -> None:
    b2b = _machine(samples, "b2b-vm_1.16-macosx_aborted.vbox")
    assert b2b.aborted and b2b.info.platform == "macosx"
    win = _machine(samples, "win2012server2_1.19-windows_savedstate-1snap.vbox")
    assert win.state_file is not None and win.root_snapshot is not None
    assert not win.root_snapshot.online
    vhd = _machine(samples, "influenza_1.15-windows_vhd-description.vbox")
    disk = vhd.media[vhd.registry_roots[0]]
    assert disk.format == "VHD" and not disk.inspectable and vhd.description
    win10 = _machine(samples, "windows10_1.15-windows_1snap-savedstate.vbox")
    assert win10.root_snapshot is not None and win10.root_snapshot.name == "Снимок 1"
    xp = _machine(samples, "winxp_1.14-linux_innotek-ns.vbox")
    assert next(a for a in xp.current_attachments if a.device_type == "HardDisk").nonrotational
    bot = _machine(samples, "streambot_1.12-windows_innotek-ns.vbox")
    dvd = next(m for m in bot.media.values() if m.location.startswith("//UNKNOWN"))
    assert dvd.kind == "dvd" and dvd.type == "Readonly" and not dvd.inspectable


def test_windows10_real_base_and_diff(samples: Path, tmp_path: Path) -> None:
    """The complete .vbox + base + diff set, at its original relative paths: a clean tree."""
    folder = tmp_path / "Windows 10"
    (folder / "Snapshots").mkdir(parents=True)
    shutil.copyfile(
        samples / "windows10_1.15-windows_1snap-savedstate.vbox", folder / "Windows 10.vbox"
    )
    base_gz = samples / "windows10_1.15-windows_base-dynamic-empty.vdi.gz"
    diff_gz = samples / "windows10_1.15-windows_diff-0b77d7b1.vdi.gz"
    diff_path = folder / "Snapshots" / "{0b77d7b1-a7f9-4bc4-953a-f50c2d3ade39}.vdi"
    (folder / "Windows 10.vdi").write_bytes(gzip.decompress(base_gz.read_bytes()))
    diff_path.write_bytes(gzip.decompress(diff_gz.read_bytes()))

    vm = load_vm_folder(folder)
    assert [p.kind for p in vm.problems] == ["missing-state-file"]  # the .sav is not shipped
    base = uuid.UUID("99414d56-0b0c-4ae6-b3aa-65a52bcfda9e")
    diff = uuid.UUID("0b77d7b1-a7f9-4bc4-953a-f50c2d3ade39")
    assert vm.registry_tree == (base,)
    assert vm.media[base].children == (diff,) and vm.media[diff].parent_uuid == base
    assert vm.header_tree == {base: (diff,), diff: ()}
    assert vm.header_roots == (base,)
    assert all(m.inspectable for m in vm.media.values())
    assert vm.chain_for(diff) == [folder / "Windows 10.vdi", diff_path]
    assert vm.chain_for(vm.disk_for_snapshot("Снимок 1")[0].uuid) == [folder / "Windows 10.vdi"]
    with open_paths(vm.chain_for(vm.current_disks()[0].uuid)) as chain:
        assert chain.disk_size == 32_702_611_456
        assert chain.read(0, 4096) == bytes(4096)

    sav = vm.root_snapshot.state_file if vm.root_snapshot else None
    assert sav is not None
    sav.write_bytes(b"")
    assert load_vm_folder(folder / "Windows 10.vbox").problems == ()


def test_windoze_old_layout_with_global_registry(samples: Path, tmp_path: Path) -> None:
    """Pre-1.7: Machines/<Name>/<Name>.xml, disks in the global DiskRegistry."""
    home = tmp_path / ".VirtualBox"
    (home / "Machines" / "Windoze").mkdir(parents=True)
    (home / "VDI").mkdir()
    shutil.copyfile(samples / "global_1.3-linux_VirtualBox.xml", home / "VirtualBox.xml")
    shutil.copyfile(
        samples / "windoze_1.3-linux_machine.xml", home / "Machines" / "Windoze" / "Windoze.xml"
    )
    shutil.copyfile(samples / "windoze_1.3-era_sun-xvm_empty-10G.vdi", home / "VDI" / "Windoze.vdi")

    vm = load_vm_folder(home / "Machines" / "Windoze")
    assert vm.settings_path.name == "Windoze.xml"
    assert vm.global_settings == home / "VirtualBox.xml"
    assert vm.problems == ()
    disk = vm.current_disks()
    assert len(disk) == 1 and disk[0].inspectable and disk[0].path == home / "VDI" / "Windoze.vdi"
    assert vm.current_attachments[0].controller == "IDE"
    header = vm.images[home / "VDI" / "Windoze.vdi"]
    assert header.uuid == disk[0].uuid and header.disk_size == 10 << 30
    assert vm.chain_for(str(disk[0].uuid)) == [home / "VDI" / "Windoze.vdi"]


def test_windoze_old_layout_in_one_folder(samples: Path, tmp_path: Path) -> None:
    """Name.xml beside Name.vdi, no VirtualBox.xml: the disk resolves by UUID, no orphan."""
    folder = tmp_path / "Windoze"
    folder.mkdir()
    shutil.copyfile(samples / "windoze_1.3-linux_machine.xml", folder / "Windoze.xml")
    shutil.copyfile(samples / "windoze_1.3-era_sun-xvm_empty-10G.vdi", folder / "Windoze.vdi")
    for vm in (load_vm_folder(folder), load_vm_folder(folder / "Windoze.xml")):
        assert vm.problems == ()
        (disk,) = vm.current_disks()
        assert disk.path == folder / "Windoze.vdi" and disk.inspectable
        assert vm.chain_for(disk) == [folder / "Windoze.vdi"]
        assert vm.registry_tree == (disk.uuid,)

    alone = load_vm_folder(samples / "windoze_1.3-linux_machine.xml")
    assert not [p for p in alone.problems if p.kind in ("unknown-medium", "orphan-image")]
    found = alone.current_disks()[0].path
    assert found == (samples / "windoze_1.3-era_sun-xvm_empty-10G.vdi").resolve()


def test_global_files(samples: Path) -> None:
    old = load_settings(samples / "global_1.3-linux_VirtualBox.xml")
    assert isinstance(old, GlobalSettings)
    assert old.info.namespace == INNOTEK and old.info.settings_version == "1.3"
    assert [e.src for e in old.machine_entries] == ["Machines/Windoze/Windoze.xml"]
    (disk,) = old.media.values()
    assert disk.format == "VDI" and disk.type == "Normal" and disk.location == "VDI/Windoze.vdi"
    assert disk.path == samples / "VDI" / "Windoze.vdi"

    mid = load_settings(samples / "global_1.10-linux_VirtualBox.xml")
    assert isinstance(mid, GlobalSettings)
    (vmdk,) = mid.media.values()
    assert vmdk.format == "VMDK" and not vmdk.inspectable
    assert vmdk.path == Path("/home/jldugger/.VirtualBox/HardDisks/devvm.vmdk")

    new = load_settings(samples / "global_1.12-windows_vbox6.1_VirtualBox.xml")
    assert isinstance(new, GlobalSettings)
    assert len(new.machine_entries) == 5 and new.media == {}
    assert new.default_machine_folder == "C:\\Users\\USER\\VirtualBox VMs"
    doubled = new.machine_entries[0]
    assert "\\\\" in doubled.src
    assert doubled.path.as_posix() == (
        "C:/Program Files/Huawei/eNSP/VBoxServer/AR_Base/AR_Base.vbox"
    )
    assert doubled.foreign_path

    with pytest.raises(SettingsError, match=r"global VirtualBox\.xml, not a machine"):
        load_vm_folder(samples / "global_1.12-windows_vbox6.1_VirtualBox.xml")


def test_version_bump_backup_is_recognised(samples: Path, tmp_path: Path) -> None:
    src = samples / "born2beroot_1.18-linux_savedstate.vbox"
    shutil.copyfile(src, tmp_path / "Born2beroot.vbox")
    shutil.copyfile(src, tmp_path / "Born2beroot-1.18-linux.vbox")
    shutil.copyfile(src, tmp_path / "Born2beroot.vbox-prev")
    other = samples / "b2b-vm_1.16-macosx_aborted.vbox"
    shutil.copyfile(other, tmp_path / "b2b-vm-1.16-macosx.vbox")  # another machine's copy
    vm = load_vm_folder(tmp_path)
    assert vm.settings_path == tmp_path / "Born2beroot.vbox"
    assert vm.backups == (
        tmp_path / "Born2beroot-1.18-linux.vbox",
        tmp_path / "Born2beroot.vbox-prev",
    )
