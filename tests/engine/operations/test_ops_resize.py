"""Resize: grow (dynamic, fixed, a VM with snapshots), shrink, partition growth, refusals, undo.

Oracles: qemu-img (check, info, compare, convert to raw), sfdisk/sgdisk for the tables,
e2fsck/resize2fs for the filesystem, and the independent reader of tests/engine/merge/vmbuild
for snapshot states. Images are made by qemu-img (qemu's 512-byte layout: the map area is tiny,
so growing moves data) or by the builders (VirtualBox's 1 MiB layout: room to grow in place).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import require_tool

from vdigui.engine import create_image
from vdigui.engine.errors import OperationRefused
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg
from vdigui.engine.operations import space as space_mod
from vdigui.engine.operations.resize import plan_resize, resize_limits, run_resize

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "merge"))
from vmbuild import MIB, VmBuilder, read_header_fields, read_state  # noqa: E402

SWAP_GUID = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


@pytest.fixture(autouse=True)
def _no_proc_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mg, "running_hint", lambda folder: None)


def run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=check)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_disk(
    folder: Path,
    qemu_img: str,
    size_mib: int,
    table: str | None = None,
    ext4: tuple[int, int] | None = None,
    *,
    static: bool = False,
    extra: tuple[tuple[int, bytes], ...] = (),
) -> tuple[Path, Path]:
    """A raw disk (sfdisk ``table``, an ext4 filesystem at (start, sectors)) and its VDI."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(size_mib * MIB)
    if table is not None:
        subprocess.run(
            [require_tool("sfdisk"), "-q", str(raw)],
            input=table,
            text=True,
            check=True,
            capture_output=True,
        )
    if ext4 is not None:
        start, sectors = ext4
        fs = folder / "fs.img"
        run(require_tool("mkfs.ext4"), "-q", "-F", fs, f"{sectors // 2}k")
        run(require_tool("debugfs"), "-w", "-R", "write /etc/hostname hostname", fs)
        with open(raw, "r+b") as out:
            out.seek(start * 512)
            out.write(fs.read_bytes())
        fs.unlink()
    with open(raw, "r+b") as out:
        for offset, data in extra:
            out.seek(offset)
            out.write(data)
    vdi = folder / "disk.vdi"
    args = ["convert", "-O", "vdi"] + (["-o", "static=on"] if static else []) + [str(raw), str(vdi)]
    run(qemu_img, *args)
    return raw, vdi


def to_raw(qemu_img: str, vdi: Path) -> Path:
    out = vdi.with_suffix(".out.raw")
    out.unlink(missing_ok=True)
    run(qemu_img, "convert", "-O", "raw", vdi, out)
    return out


def assert_oracles(qemu_img: str, vdi: Path, old_raw: Path, new_size: int) -> Path:
    """qemu-img check clean, virtual size, and the old content kept (the new space zero)."""
    assert run(qemu_img, "check", vdi, check=False).returncode == 0, run(
        qemu_img, "check", vdi, check=False
    ).stdout
    info = json.loads(run(qemu_img, "info", "--output=json", vdi).stdout)
    assert info["virtual-size"] == new_size
    new_raw = to_raw(qemu_img, vdi)
    old = old_raw.read_bytes()
    new = new_raw.read_bytes()
    common = min(len(old), len(new))
    return new_raw if _same_prefix(old, new, common) else pytest.fail("content changed")


def _same_prefix(old: bytes, new: bytes, common: int) -> bool:
    if old[:common] != new[:common]:
        diff = next(i for i in range(common) if old[i] != new[i])
        raise AssertionError(f"the guest content differs first at byte {diff}")
    assert new[common:].count(0) == len(new) - common, "the new space does not read as zeros"
    return True


# -- grow -------------------------------------------------------------------------------------


def test_grow_dynamic_moves_first_blocks_and_undo_restores_bytes(
    tmp_path: Path, qemu_img: str, qemu_io: str
) -> None:
    raw, vdi = make_disk(tmp_path, qemu_img, 8)
    run(qemu_io, "-c", "write -P 0xab 0 3M", "-c", "write -P 0x5c 6M 1M", vdi)
    run(qemu_img, "convert", "-O", "raw", vdi, raw)
    before = vdi.read_bytes()
    old = read_header_fields(vdi)
    plan = plan_resize(vdi, 2048 * MIB)  # 2048 entries: the map outgrows qemu's tiny map area
    assert plan.images[0].moved_slots >= 1 and plan.images[0].new_offset_data > old["off_data"]
    result = run_resize(plan)
    assert result.verified
    new = read_header_fields(vdi)
    assert new["blocks"] == 2048 and new["disk_size"] == 2048 * MIB
    assert new["off_data"] >= new["off_blocks"] + 4 * 2048  # type: ignore[operator]
    assert_oracles(qemu_img, vdi, raw, 2048 * MIB)
    assert run(qemu_img, "compare", raw, vdi).returncode == 0
    jr.undo_last(tmp_path)
    assert vdi.read_bytes() == before


def test_grow_dynamic_in_place_when_the_map_area_has_room(tmp_path: Path, qemu_img: str) -> None:
    vdi = tmp_path / "vb.vdi"
    header = create_image(vdi, 16 * MIB)  # VirtualBox layout: map at 1 MiB, data at 2 MiB
    from vdigui.engine import open_paths

    with open_paths([vdi], writable_top=True) as chain:
        chain.write(5 * MIB, b"\x77" * MIB)
    raw = to_raw(qemu_img, vdi)
    plan = plan_resize(vdi, 100 * MIB)
    assert plan.images[0].moved_slots == 0
    assert plan.images[0].new_offset_data == header.offset_data
    run_resize(plan)
    assert read_header_fields(vdi)["off_data"] == header.offset_data
    assert_oracles(qemu_img, vdi, raw, 100 * MIB)


def test_grow_fixed_in_place_stays_fully_allocated(
    tmp_path: Path, qemu_img: str, qemu_io: str
) -> None:
    raw, vdi = make_disk(tmp_path, qemu_img, 4, static=True)
    run(qemu_io, "-c", "write -P 0x11 0 4M", vdi)
    run(qemu_img, "convert", "-O", "raw", vdi, raw)
    plan = plan_resize(vdi, 300 * MIB)
    assert plan.images[0].fixed and plan.images[0].new_slots == 296
    run_resize(plan)
    f = read_header_fields(vdi)
    assert f["type"] == 2 and f["alloc"] == f["blocks"] == 300
    assert vdi.stat().st_size == f["off_data"] + 300 * MIB  # type: ignore[operator]
    assert_oracles(qemu_img, vdi, raw, 300 * MIB)


def test_grow_gpt_partition_ext4(tmp_path: Path, qemu_img: str) -> None:
    table = (
        f"label: gpt\nstart=2048, size=8192, type={SWAP_GUID}\n"
        f"start=10240, size=40960, type={LINUX_GUID}\n"
    )
    raw, vdi = make_disk(tmp_path, qemu_img, 32, table, ext4=(10240, 40960))
    plan = plan_resize(vdi, 96 * MIB, grow_partition=True)
    assert plan.filesystem == "ext4"
    assert any("resize2fs /dev/sda2" in s for s in plan.guest_steps)
    run_resize(plan)
    assert run(qemu_img, "check", vdi, check=False).returncode == 0
    out = to_raw(qemu_img, vdi)
    verify = run(require_tool("sgdisk"), "-v", out)
    assert "No problems found" in verify.stdout, verify.stdout
    dump = run(require_tool("sfdisk"), "-J", out).stdout
    parts = json.loads(dump)["partitiontable"]["partitions"]
    last_lba = json.loads(dump)["partitiontable"]["lastlba"]
    assert parts[0]["size"] == 8192
    assert parts[1]["start"] == 10240 and parts[1]["start"] + parts[1]["size"] - 1 == last_lba
    assert last_lba == 96 * MIB // 512 - 34
    # the old content: everything but the table sectors (LBA 0..33 and the old backup) reads
    # as before, the filesystem is clean and can be grown into the partition
    old, new = raw.read_bytes(), out.read_bytes()
    assert old[34 * 512 : (10240 + 40960) * 512] == new[34 * 512 : (10240 + 40960) * 512]
    part = tmp_path / "part.img"
    with open(out, "rb") as f, open(part, "wb") as p:
        f.seek(10240 * 512)
        p.write(f.read(parts[1]["size"] * 512))
    assert run(require_tool("e2fsck"), "-fn", part, check=False).returncode == 0
    assert run(require_tool("resize2fs"), part, check=False).returncode == 0
    assert run(require_tool("e2fsck"), "-fn", part, check=False).returncode == 0
    cat = run(require_tool("debugfs"), "-R", "cat /hostname", part).stdout
    assert cat == Path("/etc/hostname").read_text()


def test_grow_mbr_primary_partition(tmp_path: Path, qemu_img: str) -> None:
    raw, vdi = make_disk(
        tmp_path, qemu_img, 16, "label: dos\nstart=2048, size=20480, type=83\n", ext4=(2048, 20480)
    )
    run_resize(plan_resize(vdi, 48 * MIB, grow_partition=True))
    out = to_raw(qemu_img, vdi)
    parts = json.loads(run(require_tool("sfdisk"), "-J", out).stdout)["partitiontable"][
        "partitions"
    ]
    assert parts[0]["start"] == 2048 and parts[0]["size"] == 48 * MIB // 512 - 2048
    old, new = raw.read_bytes(), out.read_bytes()
    assert old[512 : 16 * MIB] == new[512 : 16 * MIB]  # only the MBR sector changed
    assert run(qemu_img, "check", vdi, check=False).returncode == 0


def test_grow_mbr_logical_grows_its_container(tmp_path: Path, qemu_img: str) -> None:
    table = (
        "label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=20480, type=5\n"
        "start=12288, size=18432, type=83\n"
    )
    _raw, vdi = make_disk(tmp_path, qemu_img, 16, table)
    plan = plan_resize(vdi, 64 * MIB, grow_partition=True)
    assert plan.table is not None and plan.table.grown is not None
    assert plan.table.grown.name == "EBR logical #5"
    run_resize(plan)
    out = to_raw(qemu_img, vdi)
    parts = json.loads(run(require_tool("sfdisk"), "-J", out).stdout)["partitiontable"][
        "partitions"
    ]
    end = 64 * MIB // 512
    ext = next(p for p in parts if p["type"] == "5")
    logical = next(p for p in parts if p["node"].endswith("5"))
    assert ext["start"] + ext["size"] == end
    assert logical["start"] == 12288 and logical["start"] + logical["size"] == end


def test_grow_partition_refuses_swap_last_and_writes_nothing(tmp_path: Path, qemu_img: str) -> None:
    table = "label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=8192, type=82\n"
    _raw, vdi = make_disk(tmp_path, qemu_img, 16, table)
    before = sha(vdi)
    with pytest.raises(OperationRefused, match=r"MBR #2, is Linux swap.*swapoff"):
        plan_resize(vdi, 64 * MIB, grow_partition=True)
    assert sha(vdi) == before and not (tmp_path / ".vdigui").exists()


# -- shrink -----------------------------------------------------------------------------------


def test_shrink_moves_slots_down_and_truncates(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    _raw, vdi = make_disk(
        tmp_path, qemu_img, 64, "label: dos\nstart=2048, size=38912, type=83\n", ext4=(2048, 38912)
    )
    # a block past the new end stored first (slot order != guest order)
    run(qemu_io, "-c", "write -P 0x99 50M 1M", "-c", "write -P 0x42 19M 1M", vdi)
    raw = to_raw(qemu_img, vdi)
    before = vdi.read_bytes()
    with pytest.raises(OperationRefused) as refused:
        plan_resize(vdi, 16 * MIB)
    minimum = (2048 + 38912) * 512  # the partition's end, from the sfdisk input
    assert f"the smallest size is {minimum:,} bytes" in str(refused.value)
    assert vdi.read_bytes() == before
    plan = plan_resize(vdi, 24 * MIB)
    assert plan.min_size == minimum and plan.images[0].dropped_slots == 1
    assert plan.images[0].moved_slots >= 1
    run_resize(plan)
    f = read_header_fields(vdi)
    assert f["blocks"] == 24 and f["disk_size"] == 24 * MIB
    assert vdi.stat().st_size == f["off_data"] + f["alloc"] * MIB  # type: ignore[operator]
    assert run(qemu_img, "check", vdi, check=False).returncode == 0
    out = to_raw(qemu_img, vdi)
    assert out.read_bytes() == raw.read_bytes()[: 24 * MIB]
    assert run(require_tool("sfdisk"), "-V", out, check=False).returncode == 0
    jr.undo_last(tmp_path)
    assert vdi.read_bytes() == before


def test_shrink_gpt_moves_the_backup_table(tmp_path: Path, qemu_img: str) -> None:
    raw, vdi = make_disk(
        tmp_path, qemu_img, 64, f"label: gpt\nstart=2048, size=20480, type={LINUX_GUID}\n"
    )
    minimum = (2048 + 20480 + 33) * 512
    with pytest.raises(OperationRefused, match=f"the smallest size is {minimum:,} bytes"):
        plan_resize(vdi, 11 * MIB)
    run_resize(plan_resize(vdi, 12 * MIB))
    out = to_raw(qemu_img, vdi)
    assert "No problems found" in run(require_tool("sgdisk"), "-v", out).stdout
    assert out.read_bytes()[34 * 512 : 22528 * 512] == raw.read_bytes()[34 * 512 : 22528 * 512]


def test_shrink_refused_without_a_partition_table(tmp_path: Path, qemu_img: str) -> None:
    _raw, vdi = make_disk(tmp_path, qemu_img, 8)
    with pytest.raises(OperationRefused, match="no partition table"):
        plan_resize(vdi, 4 * MIB)


# -- VM folders -------------------------------------------------------------------------------


def test_vm_with_two_snapshots_grows_every_layer(tmp_path: Path, qemu_img: str) -> None:
    vm = VmBuilder(tmp_path / "vm", disk_size=6 * MIB)
    vm.scribble([0, 1, 2, 5])
    vm.take_snapshot("one")
    vm.scribble([1, 3])
    vm.scribble([2], zero=True)
    vm.take_snapshot("two")
    vm.scribble([4, 5])
    before_files = {p: p.read_bytes() for p in vm.folder.rglob("*.vdi")}
    vbox_before = vm.vbox_path().read_bytes()
    plan = plan_resize(vm.folder, 20 * MIB)
    # snapshot "one" froze the base, "two" the first differencing image
    assert [c.role for c in plan.images] == ["base", "snapshot layer", "current state"]
    result = run_resize(plan)
    assert result.verified
    assert vm.vbox_path().read_bytes() == vbox_before  # the .vbox stores no size
    for snap in vm.snaps:
        state = read_state(vm.folder, snap.disks[0])
        assert state.size == 20 * MIB
        assert np.array_equal(state[: 6 * MIB], vm.expected[snap.uuid][0])
        assert not state[6 * MIB :].any()
    current = read_state(vm.folder, vm.leaves[0])
    assert current.size == 20 * MIB and np.array_equal(current[: 6 * MIB], vm.content[0])
    assert run(qemu_img, "check", vm.folder / "vm.vdi", check=False).returncode == 0
    from vdigui.cli import main

    assert main(["check", str(vm.folder)]) == 0
    jr.undo_last(vm.folder)
    assert {p: p.read_bytes() for p in vm.folder.rglob("*.vdi")} == before_files


@pytest.mark.parametrize("kind", ["dynamic", "fixed", "vm"])
def test_the_largest_size_offered_is_the_largest_the_plan_accepts(
    tmp_path: Path, qemu_img: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """With the host's free space pinned, the limit and the plan draw the same line."""
    if kind == "vm":
        vm = VmBuilder(tmp_path / "vm", disk_size=6 * MIB)
        vm.scribble([0, 1])
        vm.take_snapshot("one")
        vm.scribble([2])
        source: Path = vm.folder
    else:
        source = make_disk(tmp_path, qemu_img, 8, static=kind == "fixed")[1]
    before = {p: sha(p) for p in source.parent.rglob("*") if p.is_file()}
    free = 300 * MIB + 12345
    monkeypatch.setattr(space_mod, "free_space", lambda folder: free)
    limits = resize_limits(source)
    high = limits.max_size
    assert limits.current_size < high < 4 << 50
    assert "free host space" in limits.max_why
    plan = plan_resize(source, high)
    assert plan.space.peak_extra <= free
    with pytest.raises(OperationRefused, match="Not enough free space"):
        plan_resize(source, high + MIB)
    if kind == "fixed":  # a fixed image takes the whole new space at once
        assert high - limits.current_size <= free
    assert {p: sha(p) for p in source.parent.rglob("*") if p.is_file()} == before


def test_vm_shrink_with_snapshots_is_refused(tmp_path: Path) -> None:
    vm = VmBuilder(tmp_path / "vm", disk_size=6 * MIB)
    vm.take_snapshot("one")
    with pytest.raises(OperationRefused, match="delete the snapshots first"):
        plan_resize(vm.folder, 4 * MIB)


def test_image_sources_with_snapshots_are_refused(tmp_path: Path) -> None:
    vm = VmBuilder(tmp_path / "vm", disk_size=6 * MIB)
    vm.take_snapshot("one")
    with pytest.raises(OperationRefused, match="give the VM folder instead"):
        plan_resize(vm.folder / "vm.vdi", 12 * MIB)
    with pytest.raises(OperationRefused, match="differencing image"):
        plan_resize(vm.disks[vm.leaves[0]].path, 12 * MIB)


def test_sizes_out_of_range_are_refused(tmp_path: Path, qemu_img: str) -> None:
    _raw, vdi = make_disk(tmp_path, qemu_img, 8)
    with pytest.raises(OperationRefused, match="multiple of 512"):
        plan_resize(vdi, 8 * MIB + 100)
    with pytest.raises(OperationRefused, match="outside what VirtualBox supports"):
        plan_resize(vdi, 4096)


def test_no_undo_discards_backups(tmp_path: Path, qemu_img: str) -> None:
    _raw, vdi = make_disk(tmp_path, qemu_img, 8)
    result = run_resize(plan_resize(vdi, 16 * MIB), keep_undo=False)
    assert not result.undoable
    assert not any(jr.backups_dir(tmp_path).rglob("*.head"))
    with pytest.raises(OperationRefused):
        jr.plan_undo(tmp_path)
    shutil.rmtree(tmp_path / ".vdigui")


def test_cancel_rolls_back_to_the_old_bytes(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    from vdigui.engine.errors import OperationCancelled
    from vdigui.engine.progress import CancelToken, Progress

    _raw, vdi = make_disk(tmp_path, qemu_img, 8)
    run(qemu_io, "-c", "write -P 0xab 0 3M", vdi)
    before = vdi.read_bytes()
    token = CancelToken()
    phases: list[str] = []

    def progress(event: Progress) -> None:
        phases.append(event.phase)
        token.cancel()

    with pytest.raises(OperationCancelled):
        run_resize(plan_resize(vdi, 1024 * MIB), progress=progress, cancel=token)
    assert phases and vdi.read_bytes() == before
    assert not jr.journal_path(tmp_path).exists()
    assert jr.last_operation(tmp_path) is None


def test_plan_refuses_an_image_changed_since(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    _raw, vdi = make_disk(tmp_path, qemu_img, 8)
    plan = plan_resize(vdi, 16 * MIB)
    run(qemu_io, "-c", "write -P 0x01 4M 1M", vdi)
    before = vdi.read_bytes()
    with pytest.raises(OperationRefused, match="changed since the plan"):
        run_resize(plan)
    assert vdi.read_bytes() == before


def _fs_image(folder: Path, kind: str, sectors: int, payload: bytes) -> Path:
    """A filesystem image of ``sectors`` with one file "data.bin" holding ``payload``."""
    fs = folder / f"{kind}.img"
    with open(fs, "wb") as f:
        f.truncate(sectors * 512)
    src = folder / "data.bin"
    src.write_bytes(payload)
    if kind == "ntfs":
        run(
            require_tool("mkntfs"),
            "-q",
            "-F",
            "-Q",
            "-s",
            "512",
            "-p",
            "2048",
            "-H",
            "255",
            "-S",
            "63",
            fs,
        )
        run(require_tool("ntfscp"), fs, src, "data.bin")
    else:
        run(require_tool("mkfs.vfat"), "-F", "16", "-h", "2048", fs)
        run(require_tool("mcopy"), "-i", fs, src, "::data.bin")
    return fs


@pytest.mark.parametrize(
    ("kind", "ptype", "step"), [("ntfs", "7", "Extend Volume"), ("vfat", "e", "fatresize")]
)
def test_grow_keeps_ntfs_and_fat_clean(
    tmp_path: Path, qemu_img: str, kind: str, ptype: str, step: str
) -> None:
    payload = np.random.default_rng(5).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    fs = _fs_image(tmp_path, kind, 40960, payload)
    raw, vdi = make_disk(
        tmp_path / "d", qemu_img, 32, f"label: dos\nstart=2048, size=40960, type={ptype}\n"
    )
    with open(raw, "r+b") as out:
        out.seek(2048 * 512)
        out.write(fs.read_bytes())
    vdi.unlink()
    run(qemu_img, "convert", "-O", "vdi", raw, vdi)
    plan = plan_resize(vdi, 64 * MIB, grow_partition=True)
    assert any(step in s for s in plan.guest_steps), plan.guest_steps
    run_resize(plan)
    out = to_raw(qemu_img, vdi)
    assert out.read_bytes()[512 : 32 * MIB] == raw.read_bytes()[512 : 32 * MIB]
    part = tmp_path / "part.img"
    part.write_bytes(out.read_bytes()[2048 * 512 : (2048 + 40960) * 512])
    if kind == "ntfs":
        assert run(require_tool("ntfsfix"), "-n", part, check=False).returncode == 0
        got = subprocess.run(
            [require_tool("ntfscat"), str(part), "data.bin"], capture_output=True, check=True
        ).stdout
    else:
        assert run(require_tool("fsck.vfat"), "-n", part, check=False).returncode == 0
        got = subprocess.run(
            [require_tool("mtype"), "-i", str(part), "::data.bin"], capture_output=True, check=True
        ).stdout
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    parts = json.loads(run(require_tool("sfdisk"), "-J", out).stdout)["partitiontable"][
        "partitions"
    ]
    assert parts[0]["start"] + parts[0]["size"] == 64 * MIB // 512


def test_shrink_fixed_image(tmp_path: Path, qemu_img: str) -> None:
    raw, vdi = make_disk(
        tmp_path,
        qemu_img,
        32,
        "label: dos\nstart=2048, size=10240, type=83\n",
        ext4=(2048, 10240),
        static=True,
    )
    run_resize(plan_resize(vdi, 16 * MIB))
    f = read_header_fields(vdi)
    assert f["type"] == 2 and f["blocks"] == f["alloc"] == 16
    assert vdi.stat().st_size == f["off_data"] + 16 * MIB  # type: ignore[operator]
    assert run(qemu_img, "check", vdi, check=False).returncode == 0
    assert to_raw(qemu_img, vdi).read_bytes() == raw.read_bytes()[: 16 * MIB]


def test_vm_grow_partition_writes_only_the_current_state(tmp_path: Path) -> None:
    """The table edit goes into the current state's layer; every snapshot keeps its old MBR."""
    import struct

    vm = VmBuilder(tmp_path / "vm", disk_size=8 * MIB)
    mbr = bytearray(512)
    struct.pack_into("<B3xB3xII", mbr, 446, 0, 0x83, 2048, 8 * MIB // 512 - 2048)
    mbr[510:512] = b"\x55\xaa"
    vm.write(0, bytes(mbr))
    vm.scribble([3])
    vm.take_snapshot("one")
    vm.scribble([5])
    vm.take_snapshot("two")
    plan = plan_resize(vm.folder, 16 * MIB, grow_partition=True)
    run_resize(plan)
    for snap in vm.snaps:
        state = read_state(vm.folder, snap.disks[0])
        assert np.array_equal(state[: 8 * MIB], vm.expected[snap.uuid][0])
    current = read_state(vm.folder, vm.leaves[0])
    start, count = struct.unpack_from("<II", current.tobytes(), 446 + 8)
    assert (start, count) == (2048, 16 * MIB // 512 - 2048)
    assert np.array_equal(current[512 : 8 * MIB], vm.content[0][512:])


def test_lchs_cylinders_follow_the_size_as_virtualbox_computes_them(tmp_path: Path) -> None:
    import struct

    vdi = tmp_path / "g.vdi"
    create_image(vdi, 16 * MIB)
    with open(vdi, "r+b") as f:  # a geometry VirtualBox set at a VM start: 32 cyl, 16 h, 63 s
        f.seek(0x1C8)
        f.write(struct.pack("<4I", 32, 16, 63, 512))
    run_resize(plan_resize(vdi, 64 * MIB))
    with open(vdi, "rb") as f:
        f.seek(0x1C8)
        assert struct.unpack("<4I", f.read(16)) == (64 * MIB // 512 // 16 // 63, 16, 63, 512)
        f.seek(0x15C)
        assert struct.unpack("<4I", f.read(16)) == (0, 0, 0, 512)  # legacy geometry kept
