"""An independent VDI writer for tests, and the model of what the guest should see.

Nothing here imports ``vdigui``: the header is packed field by field at the absolute offsets of
the reference tables (docs/vdi-format.md §1.2-1.4), so a packing or parsing mistake in the
engine cannot hide behind the same mistake here.

Three levels:

- :class:`RawHeader` + :func:`pack_header` -- every header field as stored, packable even when
  invalid (bad-input tests override single fields).
- :class:`RawImage` + :func:`write_raw` -- header, block map entries, physical slot contents,
  extra prefixes and a crash tail, written exactly as given (duplicate slots, entries past EOF,
  wrong cBlocksAllocated, sparse slots for benchmarks).
- :func:`build_image` / :func:`build_chain` -- "this block holds these bytes, that one is ZERO,
  the rest FREE", with any version, banner, placement, block size, cbBlockExtra and slot order;
  they return the expected guest content computed by :func:`model_read`, which knows nothing of
  the engine's reader.

A tiny :func:`write_vbox` writes a settings file for VM-folder tests.
"""

from __future__ import annotations

import random
import struct
import subprocess
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

MIB = 1 << 20
SIGNATURE = 0xBEDA107F
FREE = 0xFFFFFFFF
ZERO = 0xFFFFFFFE
NULL = uuidlib.UUID(int=0)

V1_1 = 0x00010001
V1_0 = 0x00010000
V0_2 = 0x00000002

BANNERS: dict[str, bytes] = {
    "innotek": b"<<< innotek VirtualBox Disk Image >>>\n",
    "InnoTek": b"<<< InnoTek VirtualBox Disk Image >>>\n",
    "sun-xvm": b"<<< Sun xVM VirtualBox Disk Image >>>\n",
    "sun": b"<<< Sun VirtualBox Disk Image >>>\n",
    "oracle-vm": b"<<< Oracle VM VirtualBox Disk Image >>>\n",
    "oracle": b"<<< Oracle VirtualBox Disk Image >>>\n",
    "qemu": b"<<< QEMU VM Virtual Disk Image >>>\n",
    "clonevdi": b"<<< CloneVDI VirtualBox Disk Image >>>\n",
    "empty": b"",
    "garbage": bytes(range(1, 64)),
}

#: A block's content in a layer: bytes (allocated, exactly one block), ZERO marker, or absent
#: from the mapping (FREE).
Content = bytes | Literal["zero"]
Placement = Literal["vbox", "qemu", "packed", "legacy"]


# -- level 1: raw header ------------------------------------------------------------------
@dataclass
class RawHeader:
    """Every pre-header and header field, as stored (no validation at all)."""

    banner: bytes = BANNERS["oracle"]
    signature: int = SIGNATURE
    version: int = V1_1
    header_size: int = 0x190
    image_type: int = 1
    flags: int = 0
    comment: bytes = b""
    offset_blocks: int = MIB
    offset_data: int = 2 * MIB
    legacy_geometry: tuple[int, int, int, int] = (0, 0, 0, 512)
    dummy: int = 0
    disk_size: int = 0
    block_size: int = MIB
    block_extra: int = 0
    blocks: int = 0
    blocks_allocated: int = 0
    uuid_create: uuidlib.UUID = field(default_factory=uuidlib.uuid4)
    uuid_modify: uuidlib.UUID = field(default_factory=uuidlib.uuid4)
    uuid_linkage: uuidlib.UUID = NULL
    uuid_parent_modify: uuidlib.UUID = NULL
    lchs: tuple[int, int, int, int] = (0, 0, 0, 512)

    @property
    def legacy(self) -> bool:
        return self.version == V0_2

    @property
    def map_offset(self) -> int:
        """Where the map really is (v0: right after the 348-byte header)."""
        return 0x48 + 348 if self.legacy else self.offset_blocks

    @property
    def data_offset(self) -> int:
        return 0x48 + 348 + 4 * self.blocks if self.legacy else self.offset_data

    @property
    def slot_size(self) -> int:
        return (0 if self.legacy else self.block_extra) + self.block_size

    @property
    def extra(self) -> int:
        return 0 if self.legacy else self.block_extra


def _put(buf: bytearray, offset: int, fmt: str, *values: int) -> None:
    struct.pack_into("<" + fmt, buf, offset, *values)


def pack_header(h: RawHeader) -> bytes:
    """Pre-header and header bytes, padded with zeros to 512 bytes (the smallest map offset)."""
    buf = bytearray(0x200)
    buf[0:64] = h.banner[:64].ljust(64, b"\0")
    _put(buf, 0x40, "I", h.signature)
    _put(buf, 0x44, "I", h.version)
    comment = h.comment[:256].ljust(256, b"\0")
    if h.legacy:  # reference 1.4
        _put(buf, 0x48, "I", h.image_type)
        _put(buf, 0x4C, "I", h.flags)
        buf[0x50:0x150] = comment
        _put(buf, 0x150, "IIII", *h.legacy_geometry)
        _put(buf, 0x160, "Q", h.disk_size)
        _put(buf, 0x168, "I", h.block_size)
        _put(buf, 0x16C, "I", h.blocks)
        _put(buf, 0x170, "I", h.blocks_allocated)
        buf[0x174:0x184] = h.uuid_create.bytes_le
        buf[0x184:0x194] = h.uuid_modify.bytes_le
        buf[0x194:0x1A4] = h.uuid_linkage.bytes_le
        return bytes(buf[:0x1A4])
    # reference 1.3
    _put(buf, 0x48, "I", h.header_size)
    _put(buf, 0x4C, "I", h.image_type)
    _put(buf, 0x50, "I", h.flags)
    buf[0x54:0x154] = comment
    _put(buf, 0x154, "I", h.offset_blocks)
    _put(buf, 0x158, "I", h.offset_data)
    _put(buf, 0x15C, "IIII", *h.legacy_geometry)
    _put(buf, 0x16C, "I", h.dummy)
    _put(buf, 0x170, "Q", h.disk_size)
    _put(buf, 0x178, "I", h.block_size)
    _put(buf, 0x17C, "I", h.block_extra)
    _put(buf, 0x180, "I", h.blocks)
    _put(buf, 0x184, "I", h.blocks_allocated)
    buf[0x188:0x198] = h.uuid_create.bytes_le
    buf[0x198:0x1A8] = h.uuid_modify.bytes_le
    buf[0x1A8:0x1B8] = h.uuid_linkage.bytes_le
    buf[0x1B8:0x1C8] = h.uuid_parent_modify.bytes_le
    if h.header_size >= 0x190:
        _put(buf, 0x1C8, "IIII", *h.lchs)
    return bytes(buf)


def align(value: int, to: int) -> int:
    return -(-value // to) * to


def place(h: RawHeader, placement: Placement) -> RawHeader:
    """Set offBlocks/offData the way a given creator lays files out (reference 1.9)."""
    if h.legacy or placement == "legacy":
        return h
    if placement == "vbox":  # current VirtualBox: 1 MiB alignment
        ob = align(0x48 + 400, MIB)
        return replace(h, offset_blocks=ob, offset_data=align(ob + 4 * h.blocks, MIB))
    if placement == "qemu":  # qemu and old VirtualBox: 512-byte alignment
        return replace(h, offset_blocks=0x200, offset_data=0x200 + align(4 * h.blocks, 512))
    if placement == "packed":  # no alignment at all: map right after the header struct
        ob = 0x48 + max(h.header_size, 0x180)
        return replace(h, offset_blocks=ob, offset_data=ob + 4 * h.blocks)
    raise ValueError(placement)


# -- level 2: raw image -------------------------------------------------------------------
@dataclass
class RawImage:
    """A file exactly as written: header, map entries, slots (None = sparse hole), tail."""

    header: RawHeader
    entries: list[int]
    slots: list[bytes | None]
    extra_fill: int = 0xEE
    tail: bytes = b""
    #: Write the map from these bytes instead of ``entries`` (bench: a prebuilt array).
    map_bytes: bytes | None = None

    @property
    def file_size(self) -> int:
        return self.header.data_offset + len(self.slots) * self.header.slot_size + len(self.tail)


def write_raw(path: Path, img: RawImage) -> Path:
    """Write ``img`` to ``path`` (created or truncated). Unwritten regions stay sparse."""
    h = img.header
    with open(path, "wb") as f:
        f.write(pack_header(h))
        f.seek(h.map_offset)
        f.write(
            img.map_bytes
            if img.map_bytes is not None
            else struct.pack(f"<{len(img.entries)}I", *img.entries)
        )
        extra = bytes([img.extra_fill]) * h.extra
        for i, data in enumerate(img.slots):
            if data is None:
                continue
            f.seek(h.data_offset + i * h.slot_size)
            f.write(extra + data)
        f.seek(h.data_offset + len(img.slots) * h.slot_size)
        f.write(img.tail)
        f.truncate(img.file_size)
    return path


# -- level 3: content model ---------------------------------------------------------------
@dataclass
class Built:
    """What build_image wrote and what it should read as."""

    path: Path
    header: RawHeader
    entries: list[int]
    layer: dict[int, Content]
    raw: RawImage
    #: Guest blocks whose entry points past the written slots (reading them must fail).
    unreadable: frozenset[int] = frozenset()

    @property
    def uuid(self) -> uuidlib.UUID:
        return self.header.uuid_create


def pattern(seed: int, size: int) -> bytes:
    """Deterministic non-zero-ish bytes for a block (cheap: a repeated 251-byte cycle)."""
    rng = random.Random(seed)
    cycle = bytes(rng.randrange(1, 256) for _ in range(251))
    return (cycle * (size // 251 + 1))[:size]


def model_read(layers: Sequence[Mapping[int, Content]], disk_size: int, block_size: int) -> bytes:
    """Guest content of a chain (base first): data wins, ZERO hides, FREE falls through."""
    out = bytearray(disk_size)
    blocks = -(-disk_size // block_size)
    for b in range(blocks):
        for layer in reversed(layers):
            c = layer.get(b)
            if c is None:
                continue
            if not isinstance(c, str):
                start = b * block_size
                n = min(block_size, disk_size - start)
                out[start : start + n] = c[:n]
            break
    return bytes(out)


def build_image(
    path: Path,
    disk_size: int,
    layer: Mapping[int, Content] | None = None,
    *,
    block_size: int = MIB,
    block_extra: int = 0,
    version: int = V1_1,
    header_size: int = 0x190,
    banner: bytes = BANNERS["oracle"],
    placement: Placement = "vbox",
    image_type: int | None = None,
    fixed: bool = False,
    parent: RawHeader | None = None,
    slot_order: Literal["sequential", "shuffle", "reverse"] = "sequential",
    seed: int = 0,
    blocks: int | None = None,
    tail: bytes = b"",
    extra_fill: int = 0xEE,
    poke: Mapping[int, int] | None = None,
    override: Mapping[str, object] | None = None,
    **overrides: object,
) -> Built:
    """Write one image holding ``layer`` (guest block -> bytes or "zero"; absent = FREE).

    ``fixed`` writes the identity map with every block allocated (absent blocks become zero
    slots). ``parent`` makes a differencing image linked to that header. ``overrides`` (and
    the ``override`` mapping, for names that clash with parameters such as ``disk_size``)
    replace raw header fields after layout, for invalid headers.

    ``poke`` sets raw map entries after layout (block -> entry): an entry naming a slot that
    is written makes a duplicate (the model then shows that slot's data), an entry past the
    written slots makes a past-EOF entry (listed in ``Built.unreadable``).
    """
    layer = dict(layer or {})
    n_blocks = blocks if blocks is not None else -(-disk_size // block_size)
    if parent is not None:
        kind = 4
    elif fixed:
        kind = 2
    else:
        kind = 1
    h = RawHeader(
        banner=banner,
        version=version,
        header_size=header_size,
        image_type=kind if image_type is None else image_type,
        disk_size=disk_size,
        block_size=block_size,
        block_extra=block_extra,
        blocks=n_blocks,
        uuid_linkage=parent.uuid_create if parent else NULL,
        uuid_parent_modify=parent.uuid_modify if parent else NULL,
    )
    h = place(h, placement)
    entries = [FREE] * n_blocks
    slots: list[bytes | None] = []
    if fixed:
        for b in range(n_blocks):
            c = layer.get(b)
            slots.append(c if isinstance(c, bytes) else bytes(block_size))
            entries[b] = b
            layer[b] = slots[-1]
    else:
        allocated = [b for b in sorted(layer) if isinstance(layer[b], bytes)]
        order = list(allocated)
        if slot_order == "shuffle":
            random.Random(seed).shuffle(order)
        elif slot_order == "reverse":
            order.reverse()
        for slot, b in enumerate(order):
            entries[b] = slot
            data = layer[b]
            assert isinstance(data, bytes) and len(data) == block_size, b
            slots.append(data)
        for b, c in layer.items():
            if c == "zero":
                entries[b] = ZERO
    h.blocks_allocated = len(slots)
    unreadable: set[int] = set()
    for b, entry in (poke or {}).items():
        entries[b] = entry
        unreadable.discard(b)
        if entry == FREE:
            layer.pop(b, None)
        elif entry == ZERO:
            layer[b] = "zero"
        elif entry < len(slots):
            layer[b] = slots[entry] or bytes(block_size)
        else:
            layer.pop(b, None)
            unreadable.add(b)
    for key, value in {**overrides, **(override or {})}.items():
        if not hasattr(h, key):
            raise TypeError(f"unknown header field {key}")
        setattr(h, key, value)
    raw = RawImage(h, entries, slots, extra_fill=extra_fill, tail=tail)
    write_raw(path, raw)
    return Built(path, h, entries, layer, raw, frozenset(unreadable))


@dataclass
class BuiltChain:
    """Files of a chain (base first) and the guest content the model predicts."""

    images: list[Built]
    expected: bytes
    disk_size: int
    block_size: int

    @property
    def leaf(self) -> Path:
        return self.images[-1].path

    @property
    def paths(self) -> list[Path]:
        return [b.path for b in self.images]

    def expected_upto(self, depth: int) -> bytes:
        """What the first ``depth`` layers show."""
        return model_read([b.layer for b in self.images[:depth]], self.disk_size, self.block_size)


def build_chain(
    folder: Path,
    disk_size: int,
    layers: Sequence[Mapping[int, Content]],
    *,
    block_size: int = MIB,
    names: Sequence[str] | None = None,
    slot_order: Literal["sequential", "shuffle", "reverse"] = "shuffle",
    seed: int = 0,
    **kwargs: object,
) -> BuiltChain:
    """Write a base and ``len(layers)-1`` differencing images into ``folder``.

    Differencing images are named ``{uuid}.vdi`` like VirtualBox names them unless ``names``
    is given. ``kwargs`` go to every :func:`build_image` call (placement, block_extra...).
    """
    folder.mkdir(parents=True, exist_ok=True)
    built: list[Built] = []
    for depth, layer in enumerate(layers):
        parent = built[-1].header if built else None
        default = "base.vdi" if depth == 0 else f"{{{uuidlib.uuid4()}}}.vdi"
        name = names[depth] if names else default
        b = build_image(
            folder / name,
            disk_size,
            layer,
            block_size=block_size,
            parent=parent,
            slot_order=slot_order,
            seed=seed + depth,
            **kwargs,
        )  # type: ignore[arg-type]
        built.append(b)
    expected = model_read([b.layer for b in built], disk_size, block_size)
    return BuiltChain(built, expected, disk_size, block_size)


def random_layers(
    rng: random.Random,
    blocks: int,
    block_size: int,
    depth: int,
    density: float = 0.5,
    zero_share: float = 0.2,
) -> list[dict[int, Content]]:
    """Random layer contents: each block of each layer is data, ZERO or FREE."""
    layers: list[dict[int, Content]] = []
    for d in range(depth):
        layer: dict[int, Content] = {}
        for b in range(blocks):
            r = rng.random()
            if r < density:
                # Sometimes an all-zero allocated block, to tell ZERO/FREE/zero-data apart.
                if rng.random() < 0.1:
                    layer[b] = bytes(block_size)
                else:
                    layer[b] = pattern(rng.randrange(1 << 30) + d, block_size)
            elif r < density + zero_share:
                layer[b] = "zero"
        layers.append(layer)
    return layers


# -- helpers for tests --------------------------------------------------------------------
def folder_state(folder: Path) -> dict[str, tuple[int, int, str]]:
    """(size, mtime_ns, sha256) of every file under ``folder``: proof that nothing was written."""
    import hashlib

    state = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            state[str(p.relative_to(folder))] = (
                st.st_size,
                st.st_mtime_ns,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
    return state


def write_vbox(
    path: Path,
    machine_uuid: uuidlib.UUID,
    name: str,
    disks: Sequence[tuple[uuidlib.UUID, str, Sequence[tuple[uuidlib.UUID, str]]]],
    version: str = "1.19",
    snapshot: tuple[str, uuidlib.UUID] | None = None,
) -> Path:
    """A minimal .vbox (reference 6.6): one machine, base disks with nested diffs.

    ``disks`` is a list of (uuid, location, [(diff uuid, diff location), ...]); each diff is
    nested under the previous one and the current state attaches the last. With ``snapshot``
    = (name, uuid), one snapshot attaches the image below each top (what it froze).
    """

    def hd(u: uuidlib.UUID, loc: str, base: bool, inner: str) -> str:
        kind = ' type="Normal"' if base else ""
        return f'<HardDisk uuid="{{{u}}}" location="{loc}" format="VDI"{kind}>{inner}</HardDisk>'

    def controllers(uuids: Sequence[uuidlib.UUID]) -> str:
        attach = "".join(
            f'<AttachedDevice type="HardDisk" hotpluggable="false" port="{port}" device="0">'
            f'<Image uuid="{{{u}}}"/></AttachedDevice>'
            for port, u in enumerate(uuids)
        )
        return (
            f'<StorageControllers><StorageController name="SATA" type="AHCI" '
            f'PortCount="{max(1, len(uuids))}">{attach}</StorageController>'
            "</StorageControllers>"
        )

    parts = []
    for u, loc, diffs in disks:
        inner = ""
        for du, dloc in reversed(diffs):
            inner = hd(du, dloc, False, inner)
        parts.append(hd(u, loc, True, inner))
    chains = [[u, *(d for d, _ in diffs)] for u, _loc, diffs in disks]
    current = [c[-1] for c in chains]
    snap_xml, current_attr = "", ""
    if snapshot is not None:
        snap_name, snap_uuid = snapshot
        frozen = [c[-2] if len(c) > 1 else c[-1] for c in chains]
        current_attr = f' currentSnapshot="{{{snap_uuid}}}"'
        snap_xml = (
            f'<Snapshot uuid="{{{snap_uuid}}}" name="{snap_name}" '
            f'timeStamp="2024-01-01T00:00:00Z"><Hardware>{controllers(frozen)}'
            "</Hardware></Snapshot>"
        )
    text = f"""<?xml version="1.0"?>
<VirtualBox xmlns="http://www.virtualbox.org/" version="{version}-linux">
  <Machine uuid="{{{machine_uuid}}}" name="{name}" OSType="Linux_64"
           snapshotFolder="Snapshots"{current_attr}>
    <MediaRegistry><HardDisks>{"".join(parts)}</HardDisks></MediaRegistry>
    {snap_xml}
    <Hardware>{controllers(current)}</Hardware>
  </Machine>
</VirtualBox>
"""
    path.write_text(text, encoding="utf-8")
    return path


def sparse_file_blocks(path: Path) -> int:
    """Bytes actually allocated on disk for ``path``."""
    return path.stat().st_blocks * 512


# -- a VM for the discard advisor ---------------------------------------------------------


def _trim_vbox(
    sata: uuidlib.UUID,
    fixed: uuidlib.UUID,
    ide: uuidlib.UUID,
    scsi: uuidlib.UUID,
    nvme: uuidlib.UUID,
    snap: uuidlib.UUID,
) -> str:
    def dev(port: int, u: uuidlib.UUID, extra: str = "") -> str:
        return (
            f'<AttachedDevice{extra} type="HardDisk" hotpluggable="false" port="{port}" '
            f'device="0"><Image uuid="{{{u}}}"/></AttachedDevice>'
        )

    def hd(u: uuidlib.UUID, name: str) -> str:
        return f'<HardDisk uuid="{{{u}}}" location="{name}" format="VDI" type="Normal"/>'

    return f"""<?xml version="1.0"?>
<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">
  <Machine uuid="{{{uuidlib.uuid4()}}}" name="Trim" OSType="Linux_64"
           snapshotFolder="Snapshots" currentSnapshot="{{{snap}}}">
    <MediaRegistry>
      <HardDisks>
        {hd(sata, "sata.vdi")}
        {hd(fixed, "fixed.vdi")}
        {hd(ide, "ide.vdi")}
        {hd(scsi, "scsi.vdi")}
        {hd(nvme, "nvme.vdi")}
      </HardDisks>
    </MediaRegistry>
    <Snapshot uuid="{{{snap}}}" name="Old" timeStamp="2024-01-01T00:00:00Z">
      <Hardware>
        <StorageControllers>
          <StorageController name="SATA" type="AHCI" PortCount="2">
            {dev(0, sata)}
          </StorageController>
        </StorageControllers>
      </Hardware>
    </Snapshot>
    <Hardware>
      <StorageControllers>
        <StorageController name="SATA" type="AHCI" PortCount="2">
          {dev(0, sata)}
          {dev(1, fixed)}
        </StorageController>
        <StorageController name="IDE" type="PIIX4" PortCount="2">
          {dev(0, ide)}
        </StorageController>
        <StorageController name="SCSI" type="LsiLogic" PortCount="16">
          {dev(0, scsi, ' nonrotational="true"')}
        </StorageController>
        <StorageController name="NVMe" type="NVMe" PortCount="1">
          {dev(0, nvme)}
        </StorageController>
      </StorageControllers>
    </Hardware>
  </Machine>
</VirtualBox>
"""


def build_trim_vm(folder: Path, qemu_img: str) -> Path:
    """VM 'Trim': SATA (dynamic and fixed), IDE, SCSI (solid-state) and NVMe disks made by
    qemu-img, and one snapshot that froze the SATA disk. Returns the folder."""
    (folder / "Snapshots").mkdir(parents=True)
    uuids = {}
    for name in ("sata", "fixed", "ide", "scsi", "nvme"):
        opts = ["-o", "static=on"] if name == "fixed" else []
        subprocess.run(
            [qemu_img, "create", "-q", "-f", "vdi", *opts, str(folder / f"{name}.vdi"), "4M"],
            check=True,
        )
        raw = (folder / f"{name}.vdi").read_bytes()[0x188:0x198]
        uuids[name] = uuidlib.UUID(bytes_le=raw)  # uuidCreate, little-endian fields
    (folder / "Trim.vbox").write_text(
        _trim_vbox(
            uuids["sata"],
            uuids["fixed"],
            uuids["ide"],
            uuids["scsi"],
            uuids["nvme"],
            uuidlib.uuid4(),
        ),
        encoding="utf-8",
    )
    return folder
