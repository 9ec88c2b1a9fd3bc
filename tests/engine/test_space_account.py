"""Space accounting: every byte of every file in exactly one category, to the byte.

Expected figures come from the tests' own models of what they wrote: the VM builder's record
of which guest blocks each image received and which state reads which image, the raw layout
written with tests/builders.py, and the guest filesystems' own tools (dumpe2fs for ext4, the
FAT table parsed here for FAT16). Never from the engine under test.
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import sys
import uuid as uuidlib
from pathlib import Path

import numpy as np
import pytest
from builders import FREE, ZERO, RawHeader, RawImage, build_image, place, write_raw

HERE = Path(__file__).resolve().parent
for sub in ("merge", "operations", "guestfs"):
    if str(HERE / sub) not in sys.path:
        sys.path.insert(0, str(HERE / sub))

from vmbuild import MIB, VmBuilder, read_header_fields  # noqa: E402

from vdigui.engine.space_account import CATEGORIES, Category, account_space  # noqa: E402

C = Category


def by_name(account: object) -> dict[str, dict[Category, int]]:
    """Categories per file, keyed by path relative to the account's root."""
    root = account.root  # type: ignore[attr-defined]
    out = {}
    for f in account.files:  # type: ignore[attr-defined]
        assert sum(f.categories.values()) == f.size == f.path.stat().st_size, f.path
        assert f.allocated == f.path.stat().st_blocks * 512
        out[f.path.relative_to(root).as_posix()] = {c: v for c, v in f.categories.items() if v}
    return out


def test_slots_holes_and_tail_of_one_image(tmp_path: Path) -> None:
    """Referenced, hole, unreferenced and trailing bytes of an image written byte by byte."""
    h = place(RawHeader(disk_size=8 * MIB, block_size=MIB, blocks=8), "vbox")
    h.blocks_allocated = 4
    rng = random.Random(3)
    data = [rng.randbytes(MIB) for _ in range(4)]
    # Block 0 -> slot 0 (data), block 1 -> slot 2 (a hole: reads as zeros), block 2 ZERO,
    # block 5 -> slot 3 (data); slot 1 is referenced by nobody; 1000 stray bytes at the end.
    entries = [0, 2, ZERO, FREE, FREE, 3, FREE, FREE]
    path = write_raw(
        tmp_path / "loose.vdi",
        RawImage(h, entries, [data[0], data[1], None, data[3]], tail=b"x" * 1000),
    )
    account = account_space(path)
    (f,) = account.files
    assert f.size == h.data_offset + 4 * MIB + 1000 == path.stat().st_size
    assert {c: v for c, v in f.categories.items() if v} == {
        C.HEADER_AND_MAP: h.data_offset,
        C.ZERO_BLOCKS: MIB,  # slot 2: a host hole
        C.SLACK: MIB + 1000,  # slot 1 and the tail
        C.UNKNOWN: 2 * MIB,  # random bytes, no partition table: not understood
    }
    assert f.allocated < f.size  # the hole costs the host nothing
    # Reading the stored blocks finds nothing more: blocks 0 and 5 are random.
    assert account_space(path, scan_zeros=True).files[0].categories == f.categories


def _track(vm: VmBuilder, written: dict[uuidlib.UUID, set[int]], blocks: list[int]) -> None:
    vm.scribble(blocks)
    written.setdefault(vm.leaves[0], set()).update(blocks)


def _extras(folder: Path) -> dict[str, tuple[Category, int]]:
    """Files besides the images: a log, undo data, and a file nobody knows."""
    (folder / "Logs").mkdir(exist_ok=True)
    (folder / "Logs" / "VBox.log.1").write_bytes(b"log line\n" * 300)
    backup = folder / ".vdigui" / "backups" / "20260101-000000-merge"
    backup.mkdir(parents=True)
    (backup / "before.bin").write_bytes(b"u" * 70_000)
    (folder / "notes.txt").write_bytes(b"my notes")
    return {
        "Logs/VBox.log.1": (C.VIRTUALBOX_OTHER, 2700),
        ".vdigui/backups/20260101-000000-merge/before.bin": (C.UNDO_DATA, 70_000),
        "notes.txt": (C.UNKNOWN, 8),
    }


def test_vm_folder_by_hand(tmp_path: Path) -> None:
    """Two snapshots, hand-computed: which base blocks only snapshot S1 still sees."""
    vm = VmBuilder(tmp_path / "vm", disk_size=16 * MIB)
    written: dict[uuidlib.UUID, set[int]] = {}
    base = vm.leaves[0]
    _track(vm, written, [0, 1, 2, 3, 4, 5])
    vm.take_snapshot("S1")
    d1 = vm.leaves[0]
    _track(vm, written, [2, 3])
    s2 = vm.take_snapshot("S2", saved_state=True)
    d2 = vm.leaves[0]
    _track(vm, written, [3, 7])
    extras = _extras(vm.folder)
    account = account_space(vm.folder)
    files = by_name(account)
    root = vm.folder.resolve()

    def rel(uid: uuidlib.UUID) -> str:
        return vm.disks[uid].path.resolve().relative_to(root).as_posix()

    def head(uid: uuidlib.UUID) -> int:
        return int(read_header_fields(vm.disks[uid].path)["off_data"])  # type: ignore[arg-type]

    # States: S1 reads [base], S2 reads [base, d1], the current state [base, d1, d2].
    # Base blocks 2 and 3 are overwritten in both states that read through the base; only S1
    # sees them. d1's block 3 is overwritten by d2 in the one state reading through d1.
    # Every other stored block is visible; the disk holds random bytes, no filesystem: unknown.
    assert files[rel(base)] == {C.HEADER_AND_MAP: head(base), C.HIDDEN: 2 * MIB, C.UNKNOWN: 4 * MIB}
    assert files[rel(d1)] == {C.HEADER_AND_MAP: head(d1), C.HIDDEN: MIB, C.UNKNOWN: MIB}
    assert files[rel(d2)] == {C.HEADER_AND_MAP: head(d2), C.UNKNOWN: 2 * MIB}
    assert files["vm.vbox"] == {C.VIRTUALBOX_OTHER: vm.vbox_path().stat().st_size}
    assert s2.state_file is not None
    assert files[s2.state_file] == {C.VIRTUALBOX_OTHER: (vm.folder / s2.state_file).stat().st_size}
    for name, (category, size) in extras.items():
        assert files[name] == {category: size}, name
    assert len(files) == 4 + 3 + 1
    total = account.total
    assert total[C.HIDDEN] == 3 * MIB and total[C.UNDO_DATA] == 70_000
    assert (
        sum(total.values())
        == account.size
        == sum(p.stat().st_size for p in vm.folder.rglob("*") if p.is_file())
    )
    assert written == {base: {0, 1, 2, 3, 4, 5}, d1: {2, 3}, d2: {3, 7}}


def model_hidden(
    vm: VmBuilder, written: dict[uuidlib.UUID, set[int]]
) -> dict[uuidlib.UUID, set[int]]:
    """The rule, from the builder's model: blocks overwritten in every state reading through.

    States: every snapshot's frozen disk and the current leaf; a state reads through an image
    when its chain continues past it.
    """

    def chain(leaf: uuidlib.UUID) -> list[uuidlib.UUID]:
        out: list[uuidlib.UUID] = []
        node: uuidlib.UUID | None = leaf
        while node is not None:
            out.append(node)
            node = vm.disks[node].parent
        return out[::-1]

    states = [chain(s.disks[0]) for s in vm.snaps] + [chain(vm.leaves[0])]
    hidden = {}
    for uid, blocks in written.items():
        through = [c for c in states if uid in c and c[-1] != uid]
        hid = set(blocks) if through else set()
        for c in through:
            later = set().union(*(written.get(u, set()) for u in c[c.index(uid) + 1 :]))
            hid &= later
        hidden[uid] = hid
    return hidden


@pytest.mark.parametrize("snapshots", [1, 3, 5])
def test_vm_folder_snapshots_and_a_branch(tmp_path: Path, snapshots: int) -> None:
    vm = VmBuilder(tmp_path / "vm", disk_size=24 * MIB, seed=snapshots)
    rng = random.Random(snapshots)
    written: dict[uuidlib.UUID, set[int]] = {}
    _track(vm, written, rng.sample(range(24), 12))
    for i in range(snapshots):
        vm.take_snapshot(f"S{i + 1}", saved_state=i == 0)
        _track(vm, written, rng.sample(range(24), 6))
    # A branch: back to the first snapshot, then new writes beside the old line.
    vm.restore(vm.snaps[0])
    written = {u: b for u, b in written.items() if u in vm.disks}
    _track(vm, written, rng.sample(range(24), 5))
    vm.take_snapshot("B1")
    _track(vm, written, rng.sample(range(24), 3))
    hidden = model_hidden(vm, written)
    files = by_name(account_space(vm.folder))
    root = vm.folder.resolve()
    assert any(hidden.values())
    for uid, blocks in written.items():
        name = vm.disks[uid].path.resolve().relative_to(root).as_posix()
        head = int(read_header_fields(vm.disks[uid].path)["off_data"])  # type: ignore[arg-type]
        expected = {
            C.HEADER_AND_MAP: head,
            C.HIDDEN: len(hidden[uid]) * MIB,
            C.UNKNOWN: (len(blocks) - len(hidden[uid])) * MIB,
        }
        assert files[name] == {c: v for c, v in expected.items() if v}, name
    # Images that received no write since (empty diffs): header only.
    for uid, disk in vm.disks.items():
        if uid not in written:
            name = disk.path.resolve().relative_to(root).as_posix()
            assert files[name] == {C.HEADER_AND_MAP: disk.path.stat().st_size}


# -- a real guest: ext4 and FAT16 in an MBR ------------------------------------------------------
def ext4_used_blocks(part: Path, disk_blocks: int, start: int) -> np.ndarray:
    """Bool per guest MiB block: an ext4 block the filesystem uses lies in it (dumpe2fs)."""
    from guestfs_images import run

    out = run("dumpe2fs", part).stdout
    bs = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"^Block count:\s+(\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    used = np.ones(count, dtype=bool)
    for line in re.findall(r"^\s+Free blocks: (.*)$", out, re.M):
        for piece in filter(None, (p.strip() for p in line.split(","))):
            a, _, b = piece.partition("-")
            used[int(a) : int(b or a) + 1] = False
    mask = np.zeros(disk_blocks, dtype=bool)
    for block in np.flatnonzero(used).tolist():
        mask[(start + block * bs) // MIB] = True
    return mask


def fat16_used_blocks(part: Path, disk_blocks: int, start: int) -> np.ndarray:
    """Bool per guest MiB block: FAT16 metadata or a cluster in use lies in it (FAT parsed)."""
    raw = part.read_bytes()
    bps, spc = struct.unpack_from("<HB", raw, 11)
    reserved, nfats, root_entries, total16 = struct.unpack_from("<HBHH", raw, 14)
    fatsz = struct.unpack_from("<H", raw, 22)[0]
    total = total16 or struct.unpack_from("<I", raw, 32)[0]
    data = reserved + nfats * fatsz + -(-root_entries * 32 // bps)
    clusters = (total - data) // spc
    mask = np.zeros(disk_blocks, dtype=bool)
    mask[start // MIB : (start + data * bps - 1) // MIB + 1] = True  # boot, FATs, root dir
    fat = np.frombuffer(raw, dtype="<u2", count=clusters + 2, offset=reserved * bps)
    for cluster in (np.flatnonzero(fat[2:]) + 2).tolist():
        first = start + (data + (cluster - 2) * spc) * bps
        mask[first // MIB : (first + spc * bps - 1) // MIB + 1] = True
    return mask


def guest_raw(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 72 MiB raw disk: MBR, ext4 (1-41 MiB), FAT16 (41-65 MiB), 7 MiB unpartitioned.

    Prefilled with a stale non-zero pattern, files copied in and one big file deleted in each
    filesystem. Returns the raw file and, per MiB block, whether the guest uses any byte of it
    (from dumpe2fs and the FAT table; blocks outside every partition are unused).
    """
    from guestfs_images import make_fs, make_tree, need, prefill, run

    need("sfdisk", "mke2fs", "debugfs", "dumpe2fs", "mkfs.vfat", "mcopy", "mdel")
    disk = 72 * MIB
    layout = (("ext4", 1 * MIB, 40 * MIB, "83"), ("fat16", 41 * MIB, 24 * MIB, "e"))
    tree = make_tree(tmp_path / "tree", big=4 * MIB)
    raw = prefill(tmp_path / "disk.raw", disk)  # stale non-zero bytes everywhere
    run(
        "sfdisk",
        "-q",
        raw,
        stdin="label: dos\n"
        + "".join(f"start={s // 512}, size={n // 512}, type={t}\n" for _, s, n, t in layout),
    )
    blocks = disk // MIB
    used = np.zeros(blocks, dtype=bool)
    used[0] = True  # the MBR
    for kind, start, size, _ in layout:
        part = tmp_path / f"{kind}.img"
        make_fs(kind, part, size, tree)
        if kind == "ext4":
            run("debugfs", "-w", "-R", "rm /sub/big.bin", part)
            used |= ext4_used_blocks(part, blocks, start)
        else:
            run("mdel", "-i", part, "::/sub/big.bin")
            used |= fat16_used_blocks(part, blocks, start)
        with open(raw, "r+b") as f, open(part, "rb") as p:
            f.seek(start)
            shutil.copyfileobj(p, f)
    return raw, used


def test_guest_filesystems_split_data_and_unused(tmp_path: Path) -> None:
    from fsaware_disk import raw_to_vdi

    raw, used = guest_raw(tmp_path)
    blocks = used.size
    vdi = raw_to_vdi(raw, tmp_path / "guest.vdi")
    head = int(read_header_fields(vdi)["off_data"])  # type: ignore[arg-type]
    # raw_to_vdi stores every block that is not all zero (the tools zero a few).
    content = np.frombuffer(raw.read_bytes(), dtype=np.uint8).reshape(blocks, MIB)
    stored = content.any(axis=1)
    assert read_header_fields(vdi)["alloc"] == int(stored.sum())
    (f,) = account_space(vdi).files
    assert 5 < int((stored & ~used).sum()) < blocks - 5
    assert {c: v for c, v in f.categories.items() if v} == {
        C.HEADER_AND_MAP: head,
        C.GUEST_DATA: int((stored & used).sum()) * MIB,
        C.GUEST_UNUSED: int((stored & ~used).sum()) * MIB,
    }
    assert set(CATEGORIES) == set(f.categories)


def test_guest_filesystems_under_a_snapshot(tmp_path: Path) -> None:
    """A VM whose base holds the guest; after a snapshot the guest writes into a block it uses
    and into one no filesystem uses: both hide the base's copies."""
    raw, used = guest_raw(tmp_path)
    content = np.frombuffer(raw.read_bytes(), dtype=np.uint8).reshape(used.size, MIB)
    vm = VmBuilder(tmp_path / "vm", disk_size=used.size * MIB)
    stored = content.any(axis=1)
    for block in np.flatnonzero(stored).tolist():
        vm.write(block * MIB, content[block].tobytes())
    base = vm.leaves[0]
    vm.take_snapshot("S1", saved_state=True)
    child = vm.leaves[0]
    # Block 0 (the MBR and the boot-loader gap after it, which the guest owns) gets new
    # boot-loader bytes; a block no filesystem uses gets new garbage.
    rewrite, scribble = 0, int(np.flatnonzero(~used & stored)[0])
    vm.write(rewrite * MIB + 64 * 1024, random.Random(1).randbytes(4096))
    vm.scribble([scribble])
    assert read_header_fields(vm.disks[child].path)["alloc"] == 2
    files = by_name(account_space(vm.folder))
    root = vm.folder.resolve()

    def rel(uid: uuidlib.UUID) -> str:
        return vm.disks[uid].path.resolve().relative_to(root).as_posix()

    def head(uid: uuidlib.UUID) -> int:
        return int(read_header_fields(vm.disks[uid].path)["off_data"])  # type: ignore[arg-type]

    others = stored.copy()
    others[[rewrite, scribble]] = False
    assert files[rel(base)] == {
        C.HEADER_AND_MAP: head(base),
        C.HIDDEN: 2 * MIB,
        C.GUEST_DATA: int((others & used).sum()) * MIB,
        C.GUEST_UNUSED: int((others & ~used).sum()) * MIB,
    }
    assert files[rel(child)] == {
        C.HEADER_AND_MAP: head(child),
        C.GUEST_DATA: MIB,
        C.GUEST_UNUSED: MIB,
    }


# -- the account's figures are what the actions then free ---------------------------------------
def test_compaction_frees_the_all_zero_and_slack_figures(tmp_path: Path) -> None:
    """Plain compaction shrinks the file by the account's all-zero blocks plus slack, within
    one block (measured on the file itself, not taken from the compaction's own report)."""
    from vdigui.engine.operations.compact import plan_compact, run_compact

    rng = random.Random(7)
    data = {b: rng.randbytes(MIB) for b in range(0, 24, 2)}
    zeros = {b: bytes(MIB) for b in range(1, 24, 4)}
    built = build_image(tmp_path / "z.vdi", 32 * MIB, {**data, **zeros})
    with open(built.path, "ab") as f:  # a partial slot past the last one: slack
        f.write(b"\x01" * (MIB // 2))
    (f_space,) = account_space(built.path, scan_zeros=True).files
    promised = f_space.categories[C.ZERO_BLOCKS] + f_space.categories[C.SLACK]
    assert f_space.categories[C.ZERO_BLOCKS] == len(zeros) * MIB
    before = built.path.stat().st_size
    run_compact(plan_compact(built.path))
    freed = before - built.path.stat().st_size
    assert abs(freed - promised) <= MIB, (freed, promised)


def test_fs_aware_compaction_frees_the_unused_figure(tmp_path: Path) -> None:
    """Filesystem-aware compaction also drops what the guest no longer uses: the file shrinks
    by all-zero + slack + unused-by-the-guest, within one block."""
    from fsaware_disk import raw_to_vdi

    from vdigui.engine.operations.compact import plan_compact, run_compact

    raw, _used = guest_raw(tmp_path)
    vdi = raw_to_vdi(raw, tmp_path / "guest.vdi")
    (f_space,) = account_space(vdi, scan_zeros=True).files
    cats = f_space.categories
    promised = cats[C.ZERO_BLOCKS] + cats[C.SLACK] + cats[C.GUEST_UNUSED]
    assert cats[C.GUEST_UNUSED] >= 4 * MIB  # the deleted big files, at least
    before = vdi.stat().st_size
    run_compact(plan_compact(vdi, fs_aware=True))
    freed = before - vdi.stat().st_size
    assert abs(freed - promised) <= MIB, (freed, promised)
