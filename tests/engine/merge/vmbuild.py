"""Synthetic VM folders with snapshot trees, and an independent model of every state.

The builder writes real VDI files with the engine (``create_image`` + ``DiskChain.write``) and
its own ``.vbox`` text. Every state (each snapshot, and the current state) is kept as the
bytes the guest must see, in numpy arrays updated by the builder itself: the expected side
never comes from the engine's reader. :func:`read_state` is a second, minimal VDI reader
written here from the format description, used to read what is on disk after an operation.
"""

from __future__ import annotations

import os
import struct
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vdigui.engine import create_image, fileio, open_chain

MIB = 1 << 20
NS = "{http://www.virtualbox.org/}"


@dataclass
class Snap:
    uuid: uuidlib.UUID
    name: str
    disks: list[uuidlib.UUID]  # the images frozen by this snapshot, one per VM disk
    parent: Snap | None
    children: list[Snap] = field(default_factory=list)
    state_file: str | None = None


@dataclass
class Disk:
    uuid: uuidlib.UUID
    path: Path
    parent: uuidlib.UUID | None
    base_type: str = "Normal"


class VmBuilder:
    """A VM folder whose every state is modelled independently of the engine."""

    def __init__(
        self,
        folder: Path,
        *,
        disk_size: int = 16 * MIB,
        ndisks: int = 1,
        seed: int = 1,
        name: str = "vm",
        base_types: tuple[str, ...] = (),
    ) -> None:
        self.folder = folder
        self.name = name
        self.vm_uuid = uuidlib.uuid4()
        self.disk_size = disk_size
        self.rng = np.random.default_rng(seed)
        self.disks: dict[uuidlib.UUID, Disk] = {}
        self.snaps: list[Snap] = []
        self.root: Snap | None = None
        self.current_snapshot: Snap | None = None
        self.leaves: list[uuidlib.UUID] = []
        self.content: list[np.ndarray] = []
        self.expected: dict[uuidlib.UUID, list[np.ndarray]] = {}
        self.machine_state_file: str | None = None
        (folder / "Snapshots").mkdir(parents=True, exist_ok=True)
        for i in range(ndisks):
            path = folder / (f"{name}.vdi" if i == 0 else f"{name}-disk{i}.vdi")
            header = create_image(path, disk_size)
            kind = base_types[i] if i < len(base_types) else "Normal"
            self.disks[header.uuid] = Disk(header.uuid, path, None, kind)
            self.leaves.append(header.uuid)
            self.content.append(np.zeros(disk_size, dtype=np.uint8))

    # -- guest writes ---------------------------------------------------------------------
    def chain_paths(self, leaf: uuidlib.UUID) -> list[Path]:
        paths = []
        node: uuidlib.UUID | None = leaf
        while node is not None:
            paths.append(self.disks[node].path)
            node = self.disks[node].parent
        return paths[::-1]

    def write(self, offset: int, data: bytes, disk: int = 0) -> None:
        leaf = self.disks[self.leaves[disk]].path
        search = [self.folder, self.folder / "Snapshots", leaf.parent]
        with open_chain(leaf, writable=True, search_dirs=search) as chain:
            chain.write(offset, data, durable=False)
            chain.top.sync()
        self.content[disk][offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def scribble(
        self, blocks: list[int], disk: int = 0, *, zero: bool = False, partial: bool = False
    ) -> None:
        """Random (or zero) data over whole blocks, or over a middle part of them."""
        for b in blocks:
            start, length = b * MIB, MIB
            if partial:
                start += 4096 * int(self.rng.integers(1, 100))
                length = 8192
            payload = (
                bytes(length)
                if zero
                else self.rng.integers(0, 256, length, dtype=np.uint8).tobytes()
            )
            self.write(start, payload, disk)

    # -- snapshots ------------------------------------------------------------------------
    def take_snapshot(self, name: str, *, saved_state: bool = False) -> Snap:
        frozen = list(self.leaves)
        snap = Snap(uuidlib.uuid4(), name, frozen, self.current_snapshot)
        if saved_state:
            snap.state_file = f"Snapshots/{name.replace(' ', '_')}-{snap.uuid.hex[:6]}.sav"
            (self.folder / snap.state_file).write_bytes(b"saved state of " + name.encode())
        if self.current_snapshot is None:
            self.root = snap
        else:
            self.current_snapshot.children.append(snap)
        self.snaps.append(snap)
        self.expected[snap.uuid] = [c.copy() for c in self.content]
        for i, leaf in enumerate(frozen):
            if self._base_type(leaf).lower() not in ("writethrough", "shareable", "readonly"):
                self.leaves[i] = self._new_diff(leaf)
        self.current_snapshot = snap
        self.write_vbox()
        return snap

    def _base_type(self, uid: uuidlib.UUID) -> str:
        while self.disks[uid].parent is not None:
            uid = self.disks[uid].parent  # type: ignore[assignment]
        return self.disks[uid].base_type

    def _new_diff(self, parent: uuidlib.UUID) -> uuidlib.UUID:
        uid = uuidlib.uuid4()
        path = self.folder / "Snapshots" / f"{{{uid}}}.vdi"
        create_image(path, parent=self.disks[parent].path, uuid=uid)
        self.disks[uid] = Disk(uid, path, parent)
        return uid

    def restore(self, snap: Snap) -> None:
        """Like VirtualBox: fresh diffs under the snapshot's disks (old leaves kept if used)."""
        for i, frozen in enumerate(snap.disks):
            old = self.leaves[i]
            if not any(d.parent == old for d in self.disks.values()) and not any(
                old in s.disks for s in self.snaps
            ):
                self.disks[old].path.unlink()
                del self.disks[old]
            self.leaves[i] = self._new_diff(frozen)
        self.content = [c.copy() for c in self.expected[snap.uuid]]
        self.current_snapshot = snap
        self.write_vbox()

    # -- settings -------------------------------------------------------------------------
    def vbox_path(self) -> Path:
        return self.folder / f"{self.name}.vbox"

    def _location(self, disk: Disk) -> str:
        try:
            return disk.path.relative_to(self.folder).as_posix()
        except ValueError:
            return str(disk.path)

    def _disk_xml(self, disk: Disk, indent: str) -> str:
        kids = [d for d in self.disks.values() if d.parent == disk.uuid]
        type_attr = f' type="{disk.base_type}"' if disk.parent is None else ""
        head = (
            f'{indent}<HardDisk uuid="{{{disk.uuid}}}" location="{self._location(disk)}" '
            f'format="VDI"{type_attr}'
        )
        if not kids:
            return head + "/>\n"
        inner = "".join(self._disk_xml(k, indent + "  ") for k in kids)
        return head + ">\n" + inner + f"{indent}</HardDisk>\n"

    def _hardware(self, images: list[uuidlib.UUID], indent: str) -> str:
        devices = "".join(
            f'{indent}      <AttachedDevice type="HardDisk" hotpluggable="false" port="{i}" '
            f'device="0">\n{indent}        <Image uuid="{{{u}}}"/>\n'
            f"{indent}      </AttachedDevice>\n"
            for i, u in enumerate(images)
        )
        return (
            f'{indent}<Hardware>\n{indent}  <Memory RAMSize="1024"/>\n'
            f"{indent}  <StorageControllers>\n"
            f'{indent}    <StorageController name="SATA" type="AHCI" PortCount="4" '
            f'useHostIOCache="false" Bootable="true">\n{devices}'
            f"{indent}    </StorageController>\n{indent}  </StorageControllers>\n"
            f"{indent}</Hardware>\n"
        )

    def _snap_xml(self, snap: Snap, indent: str) -> str:
        state = f' stateFile="{snap.state_file}"' if snap.state_file else ""
        out = (
            f'{indent}<Snapshot uuid="{{{snap.uuid}}}" name="{snap.name}" '
            f'timeStamp="2024-05-01T10:00:00Z"{state}>\n'
            f"{indent}  <Description>about {snap.name}</Description>\n"
            + self._hardware(snap.disks, indent + "  ")
        )
        if snap.children:
            out += f"{indent}  <Snapshots>\n"
            out += "".join(self._snap_xml(c, indent + "    ") for c in snap.children)
            out += f"{indent}  </Snapshots>\n"
        return out + f"{indent}</Snapshot>\n"

    def vbox_text(self) -> str:
        current = (
            f' currentSnapshot="{{{self.current_snapshot.uuid}}}"' if self.current_snapshot else ""
        )
        state = f' stateFile="{self.machine_state_file}"' if self.machine_state_file else ""
        bases = [d for d in self.disks.values() if d.parent is None]
        registry = "".join(self._disk_xml(d, "        ") for d in bases)
        snaps = self._snap_xml(self.root, "    ") if self.root else ""
        return (
            '<?xml version="1.0"?>\n<!--\n** DO NOT EDIT THIS FILE.\n-->\n'
            '<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">\n'
            f'  <Machine uuid="{{{self.vm_uuid}}}" name="{self.name}" OSType="Ubuntu_64"'
            f'{current}{state} snapshotFolder="Snapshots" '
            'lastStateChange="2024-05-02T09:00:00Z">\n'
            f"    <MediaRegistry>\n      <HardDisks>\n{registry}      </HardDisks>\n"
            "    </MediaRegistry>\n"
            '    <ExtraData>\n      <ExtraDataItem name="Future/Thing" value="k&#xE9;ep"/>\n'
            "    </ExtraData>\n"
            f"{snaps}{self._hardware(self.leaves, '    ')}"
            '    <FutureElement mode="keep"><!-- unknown --></FutureElement>\n'
            "  </Machine>\n</VirtualBox>\n"
        )

    def write_vbox(self) -> None:
        self.vbox_path().write_text(self.vbox_text(), encoding="utf-8")

    def snap(self, name: str) -> Snap:
        return next(s for s in self.snaps if s.name == name)


# -- independent reading ----------------------------------------------------------------------


def _u(raw: bytes, off: int) -> uuidlib.UUID:
    return uuidlib.UUID(bytes_le=raw[off : off + 16])


def read_header_fields(path: Path) -> dict[str, object]:
    raw = path.read_bytes()[:512]
    (off_blocks, off_data) = struct.unpack_from("<II", raw, 0x154)
    disk_size, bs, extra, blocks, alloc = struct.unpack_from("<QIIII", raw, 0x170)
    return {
        "type": struct.unpack_from("<I", raw, 0x4C)[0],
        "off_blocks": off_blocks,
        "off_data": off_data,
        "disk_size": disk_size,
        "bs": bs,
        "extra": extra,
        "blocks": blocks,
        "alloc": alloc,
        "uuid": _u(raw, 0x188),
        "parent": _u(raw, 0x1A8),
    }


def index_folder(folder: Path) -> dict[uuidlib.UUID, Path]:
    out = {}
    for path in [*folder.glob("*.vdi"), *(folder / "Snapshots").glob("*.vdi")]:
        out[read_header_fields(path)["uuid"]] = path  # type: ignore[index]
    return out


def read_state(folder: Path, leaf: uuidlib.UUID) -> np.ndarray:
    """The guest bytes of the chain ending at ``leaf``, read without the engine."""
    index = index_folder(folder)
    chain = []
    node = leaf
    while node != uuidlib.UUID(int=0):
        path = index[node]
        fields = read_header_fields(path)
        chain.append((path, fields))
        node = fields["parent"]  # type: ignore[assignment]
    size = chain[0][1]["disk_size"]
    out = np.zeros(size, dtype=np.uint8)  # type: ignore[call-overload]
    done = np.zeros(-(-size // MIB), dtype=bool)  # type: ignore[operator]
    for path, f in chain:  # top first
        data = path.read_bytes()
        entries = np.frombuffer(
            data,
            dtype="<u4",
            count=f["blocks"],  # type: ignore[call-overload]
            offset=f["off_blocks"],
        )  # type: ignore[arg-type]
        bs = f["bs"]
        for b in range(done.size):
            if done[b] or entries[b] == 0xFFFFFFFF:
                continue
            done[b] = True
            end = min(size, (b + 1) * bs)  # type: ignore[operator]
            if entries[b] == 0xFFFFFFFE:
                continue
            start = f["off_data"] + int(entries[b]) * (bs + f["extra"]) + f["extra"]  # type: ignore[operator]
            chunk = np.frombuffer(data, dtype=np.uint8, count=end - b * bs, offset=start)  # type: ignore[operator]
            out[b * bs : end] = chunk  # type: ignore[operator]
    return out


def vbox_states(
    vbox: Path,
) -> tuple[dict[uuidlib.UUID, list[uuidlib.UUID]], list[uuidlib.UUID], uuidlib.UUID | None]:
    """Per snapshot: its attached images; the current state's images; currentSnapshot."""
    root = ET.parse(vbox).getroot()
    machine = root.find(NS + "Machine")
    assert machine is not None

    def images(owner: ET.Element) -> list[uuidlib.UUID]:
        hw = owner.find(NS + "Hardware")
        assert hw is not None
        return [uuidlib.UUID(i.get("uuid", "").strip("{}")) for i in hw.iter(NS + "Image")]

    snaps = {
        uuidlib.UUID(s.get("uuid", "").strip("{}")): images(s)
        for s in machine.iter(NS + "Snapshot")
    }
    cur = machine.get("currentSnapshot")
    return snaps, images(machine), uuidlib.UUID(cur.strip("{}")) if cur else None


def registry_ok(vbox: Path) -> None:
    """Every registered disk exists, has the registry UUID and links to the registry parent."""
    root = ET.parse(vbox).getroot()
    folder = vbox.parent

    def walk(el: ET.Element, parent: uuidlib.UUID | None) -> None:
        for hd in el.findall(NS + "HardDisk"):
            uid = uuidlib.UUID(hd.get("uuid", "").strip("{}"))
            fields = read_header_fields(folder / hd.get("location", ""))
            assert fields["uuid"] == uid
            assert fields["parent"] == (parent or uuidlib.UUID(int=0)), hd.get("location")
            if parent is None:
                assert fields["type"] in (1, 2), "a base must not say differencing"
                assert hd.get("type")
            else:
                assert hd.get("type") is None
            walk(hd, uid)

    hds = root.find(f"{NS}Machine/{NS}MediaRegistry/{NS}HardDisks")
    assert hds is not None
    walk(hds, None)


def assert_all_states(vm: VmBuilder, *, deleted: set[uuidlib.UUID] = frozenset()) -> None:
    """Every remaining snapshot and the current state read exactly as modelled."""
    snaps, current, _ = vbox_states(vm.vbox_path())
    expected_snaps = {s.uuid for s in vm.snaps} - set(deleted)
    assert set(snaps) == expected_snaps
    for uid, images in snaps.items():
        for i, image in enumerate(images):
            got = read_state(vm.folder, image)
            assert np.array_equal(got, vm.expected[uid][i]), f"snapshot {uid} disk {i}"
    for i, image in enumerate(current):
        assert np.array_equal(read_state(vm.folder, image), vm.content[i]), f"current disk {i}"
    registry_ok(vm.vbox_path())


# -- oracles for "the end state is clean" ------------------------------------------------------


def base_images(folder: Path) -> list[Path]:
    """Every image in ``folder`` (and its Snapshots) whose header links to no parent."""
    paths = [*folder.glob("*.vdi"), *(folder / "Snapshots").glob("*.vdi")]
    return [p for p in paths if read_header_fields(p)["parent"] == uuidlib.UUID(int=0)]


def assert_qemu_clean(qemu_img: str, *images: Path) -> None:
    """``qemu-img check`` reports no errors and no leaks (qemu reads VDI bases only)."""
    import subprocess

    for image in images:
        out = subprocess.run(
            [qemu_img, "check", "-f", "vdi", str(image)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "No errors were found" in out.stdout, out.stdout


def assert_check_clean(path: Path, qemu_img: str, *, allow: tuple[str, ...] = ()) -> None:
    """``vdictl check PATH`` exits 0 (or finds only ``allow`` kinds) and qemu-img agrees."""
    from vdigui.cli import main
    from vdigui.engine import check_path

    targets = [path]
    if path.is_dir() and not any(path.glob("*.vbox")):  # a bare chain: check every image
        targets = sorted(path.glob("*.vdi"))
    for target in targets:
        if allow:
            report = check_path(target)
            assert all(f.kind in allow for f in report.findings), report.findings
        else:
            assert main(["check", str(target)]) == 0
    folder = path if path.is_dir() else path.parent
    assert_qemu_clean(qemu_img, *base_images(folder))


class WritesInto(fileio.FileOps):
    """Performs every call and remembers the descriptors open for writing on ``target``.

    The base of the tests' corrupting FileOps: they change one write into that file (a data
    block, a map entry, a header) and let every other call through unchanged.
    """

    def __init__(self, target: Path) -> None:
        self.target = target.resolve()
        self.fds: set[int] = set()

    def open(self, path: Path, flags: int, mode: int) -> int:
        fd = super().open(path, flags, mode)
        if path.resolve() == self.target and flags & (os.O_RDWR | os.O_WRONLY):
            self.fds.add(fd)
        return fd

    def close(self, fd: int) -> None:
        self.fds.discard(fd)
        super().close(fd)
