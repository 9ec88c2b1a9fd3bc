"""Power loss during compact, compact --defrag, fs-aware compact, clone, convert and export.

None of these has a journal: the next command the user runs is the recovery, run here through
the CLI in process (``vdigui.cli.main``): ``vdictl compact`` (or ``convert``, ``clone``) again,
which first recovers any journal, removes leftover temporary files and then plans and runs
from the file itself; when the first run had already finished, another clone into the
same folder stands for "the next command that writes there".
Acceptable: the image as the power cut left it opens and reads exactly as before (for
fs-aware compaction: every block the guest uses reads as before, the others as before or as
zeros), the next command succeeds and leaves it compact (qemu-img check and compare agree),
and no vdigui temporary file is left behind. A new file (clone or export output) is either
absent or complete and correct.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from builders import build_chain, build_image, model_read, pattern
from crashsim import explore, record
from plcheck import (
    assert_consistent,
    assert_no_leftovers,
    assert_reads,
    finish,
    ref_open,
    ref_read,
    vdictl,
)

from vdigui.engine.operations import compact
from vdigui.engine.operations.clone import plan_clone, run_clone
from vdigui.engine.operations.compact import plan_compact, run_compact
from vdigui.engine.operations.convert import plan_convert, run_convert

BS = 1 << 20  # qemu-img, the oracle, reads only 1 MiB blocks
FREE, ZERO = 0xFFFFFFFF, 0xFFFFFFFE


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several move batches on a tiny image; no /proc scan (not what these tests are about)."""
    monkeypatch.setattr(compact, "MOVE_BATCH_BYTES", 3 * BS)
    monkeypatch.setattr(compact, "busy_reasons", lambda path: ())
    from vdigui.engine.operations import convert

    monkeypatch.setattr(convert, "busy_reasons", lambda path: ())


def layer_of(blocks: int, seed: int, *, markers: int = 2) -> dict[int, object]:
    """Most blocks allocated, a fifth of those all zero, a few ZERO markers, shuffled."""
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(blocks), blocks - 3))
    zero = set(rng.sample(chosen, blocks // 5))
    layer: dict[int, object] = {
        b: bytes(BS) if b in zero else pattern(seed * 1000 + b, BS) for b in chosen
    }
    for b in rng.sample(chosen, markers):
        layer[b] = "zero"
    return layer


def assert_compact(path: Path) -> None:
    img = ref_open(path)
    live = sorted(e for e in img.entries if e < ZERO)
    assert live == list(range(len(live))), "the next compact left holes"
    assert img.blocks_allocated == len(live)
    assert img.file_size == img.offset_data + len(live) * img.block_size


def qemu_ok(qemu_img: str, path: Path, expected: bytes, tmp: Path) -> None:
    """qemu-img agrees: the image checks clean and reads as ``expected``."""
    from opshelpers import assert_qemu_clean, assert_qemu_same_raw

    raw = tmp / "expected.raw"
    if not raw.exists() or raw.read_bytes() != expected:
        raw.write_bytes(expected)
    assert_qemu_clean(qemu_img, path)
    assert_qemu_same_raw(qemu_img, raw, path)


@pytest.mark.parametrize("defrag", [False, True], ids=["in-place", "defrag"])
def test_compact(shm_root: Path, tmp_path: Path, qemu_img: str, defrag: bool) -> None:
    blocks = 16
    folder = shm_root / "vm"
    folder.mkdir()
    built = build_image(
        folder / "d.vdi",
        blocks * BS,
        layer_of(blocks, 5),
        block_size=BS,  # type: ignore[arg-type]
        placement="qemu",
        slot_order="shuffle",
        seed=5,
    )
    path = built.path
    expected = model_read([built.layer], blocks * BS, BS)
    rec, error = record(folder, lambda: run_compact(plan_compact(path, defrag=defrag)))
    assert error is None, error

    def check(_state: object) -> str:
        assert path.exists(), "the image is gone"
        assert_consistent(path)
        assert_reads([path], expected, "the image as the power cut left it")
        out = vdictl("compact", path, *(["--defrag"] if defrag else []))  # the next command
        assert_reads([path], expected, "the image after the next compact")
        assert_compact(path)
        qemu_ok(qemu_img, path, expected, tmp_path)
        vdictl("check", path)
        assert_no_leftovers(folder)
        return "already compact" if "already compact" in out else "changed by next run"

    # The next compact loses power too (a second cut) at a few points.
    finish(
        explore(
            "compact --defrag" if defrag else "compact",
            folder,
            rec,
            check,
            seed=1,
            per_barrier=12,
            nested=3,
            nested_states=12,
            recover=lambda: vdictl("compact", path, *(["--defrag"] if defrag else [])),
        )
    )


def test_compact_differencing(shm_root: Path) -> None:
    blocks = 14
    folder = shm_root / "vm"
    rng = random.Random(9)
    base = {b: pattern(b, BS) for b in range(blocks) if rng.random() < 0.8}
    top = layer_of(blocks, 6)
    for b in (1, 2, 3):  # identical to the parent: dropped as FREE
        top[b] = base.get(b, bytes(BS))
    chain = build_chain(
        folder,
        blocks * BS,
        [base, top],
        block_size=BS,
        placement="qemu",  # type: ignore[list-item]
        names=["base.vdi", "top.vdi"],
        seed=6,
    )
    paths = chain.paths
    rec, error = record(folder, lambda: run_compact(plan_compact(paths[-1])))
    assert error is None, error

    def check(_state: object) -> str:
        assert_consistent(paths[-1])
        assert_reads(paths, chain.expected, "the chain as the power cut left it")
        vdictl("compact", paths[-1])
        assert_reads(paths, chain.expected, "the chain after the next compact")
        assert_compact(paths[-1])
        vdictl("check", paths[-1])
        assert_no_leftovers(folder)
        return "ok"

    finish(
        explore(
            "compact (differencing)",
            folder,
            rec,
            check,
            seed=2,
            per_barrier=12,
            nested=3,
            nested_states=12,
            recover=lambda: vdictl("compact", paths[-1]),
        )
    )


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed"])
def test_clone(shm_root: Path, tmp_path: Path, qemu_img: str, fixed: bool) -> None:
    blocks = 12
    folder = shm_root / "vm"
    rng = random.Random(3)
    layers = [
        {b: pattern(100 + b, BS) for b in range(blocks) if rng.random() < 0.6},
        layer_of(blocks, 7),
    ]
    chain = build_chain(
        folder,
        blocks * BS,
        layers,
        block_size=BS,
        placement="qemu",  # type: ignore[arg-type]
        names=["base.vdi", "top.vdi"],
        seed=3,
    )
    dest = folder / "clone.vdi"
    sources = {p: p.read_bytes() for p in chain.paths}
    rec, error = record(folder, lambda: run_clone(plan_clone(chain.leaf, dest, fixed=fixed)))
    assert error is None, error

    def check(_state: object) -> str:
        for p, data in sources.items():
            assert p.read_bytes() == data, f"the source {p.name} changed"
        if dest.exists():
            assert_consistent(dest)
            img = ref_open(dest)
            assert img.image_type == (2 if fixed else 1)
            assert_reads([dest], chain.expected, "the clone the power cut left")
            qemu_ok(qemu_img, dest, chain.expected, tmp_path)
            again = folder / "again.vdi"  # the next command writing in that folder
            vdictl("clone", chain.leaf, again)
            again.unlink()
            outcome = "clone complete"
        else:
            vdictl("clone", chain.leaf, dest, *(["--fixed"] if fixed else []))  # tries again
            assert_reads([dest], chain.expected, "the clone made after the power cut")
            qemu_ok(qemu_img, dest, chain.expected, tmp_path)
            outcome = "no clone"
        vdictl("check", dest)
        assert_no_leftovers(folder)
        return outcome

    finish(
        explore(
            f"clone ({'fixed' if fixed else 'dynamic'})", folder, rec, check, seed=3, per_barrier=12
        )
    )


@pytest.mark.parametrize("to", ["fixed", "dynamic"])
def test_convert(shm_root: Path, tmp_path: Path, qemu_img: str, to: str) -> None:
    blocks = 12
    folder = shm_root / "vm"
    folder.mkdir()
    layer = layer_of(blocks, 8, markers=0)
    built = build_image(
        folder / "d.vdi",
        blocks * BS,
        layer,
        block_size=BS,
        placement="qemu",  # type: ignore[arg-type]
        fixed=(to == "dynamic"),
        slot_order="sequential",
        seed=8,
    )
    path = built.path
    expected = model_read([built.layer], blocks * BS, BS)
    before_type = ref_open(path).image_type
    rec, error = record(folder, lambda: run_convert(plan_convert(path, to)))  # type: ignore[arg-type]
    assert error is None, error
    want = 2 if to == "fixed" else 1

    def check(_state: object) -> str:
        assert path.exists(), "the image is gone"
        assert_consistent(path)
        assert_reads([path], expected, "the image as the power cut left it")
        kind = ref_open(path).image_type
        assert kind in (before_type, want)
        if kind != want:  # the user runs the conversion again
            vdictl("convert", path, "--to", to)
            assert_reads([path], expected, "the image converted after the power cut")
            assert ref_open(path).image_type == want
        else:  # the next command writing in that folder
            vdictl("clone", path, folder / "again.vdi")
            (folder / "again.vdi").unlink()
        qemu_ok(qemu_img, path, expected, tmp_path)
        vdictl("check", path)
        assert_no_leftovers(folder)
        return "converted" if kind == want else "unchanged"

    finish(explore(f"convert to {to}", folder, rec, check, seed=4, per_barrier=12))


def test_export(shm_root: Path) -> None:
    """``vdictl export``: the raw file is absent or complete, never a wrong full-size file."""
    blocks = 10
    folder = shm_root / "vm"
    rng = random.Random(4)
    layers = [
        {b: pattern(200 + b, BS) for b in range(blocks) if rng.random() < 0.6},
        layer_of(blocks, 9),
    ]
    chain = build_chain(
        folder,
        blocks * BS,
        layers,
        block_size=BS,
        placement="qemu",  # type: ignore[arg-type]
        names=["base.vdi", "top.vdi"],
        seed=4,
    )
    out = folder / "disk.raw"
    sources = {p: p.read_bytes() for p in chain.paths}
    rec, error = record(folder, lambda: vdictl("export", chain.leaf, out))
    assert error is None, error

    def check(_state: object) -> str:
        for p, data in sources.items():
            assert p.read_bytes() == data, f"the source {p.name} changed"
        if out.exists():
            assert out.read_bytes() == chain.expected, "the raw file is there but wrong"
            outcome = "export complete"
            vdictl("export", chain.leaf, folder / "again.raw")  # the next command there
            (folder / "again.raw").unlink()
        else:
            vdictl("export", chain.leaf, out)  # the user tries again
            assert out.read_bytes() == chain.expected
            outcome = "no export"
        assert_no_leftovers(folder)
        return outcome

    finish(explore("export", folder, rec, check, seed=6, per_barrier=12))


# -- filesystem-aware compaction ------------------------------------------------------------
FS_BS = 64 << 10
PART_START = 2048  # sectors
PART_SIZE = 16 << 20


def guest_disk(folder: Path, work: Path) -> tuple[Path, dict[str, str]]:
    """An MBR disk with one ext4 filesystem whose free space holds stale data (a deleted
    file), as a dynamic VDI with 64 KiB blocks; returns (vdi, the files' hashes)."""
    from guestfs_images import fs_check, make_fs, make_tree, need, place, prefill, run

    need("sfdisk", "mke2fs", "debugfs", "e2fsck")
    raw = prefill(work / "disk.raw", PART_START * 512 + PART_SIZE)
    run(
        "sfdisk",
        "-q",
        raw,
        stdin=f"label: dos\nstart={PART_START}, size={PART_SIZE // 512}, type=83\n",
    )
    part = work / "ext4.img"
    make_fs("ext4", part, PART_SIZE, make_tree(work / "tree", big=2 << 20))
    run("debugfs", "-w", "-R", "rm /sub/big.bin", part)
    hashes = fs_check("ext4", part, work / "files")
    place(raw, part, PART_START)
    vdi = folder / "guest.vdi"
    from vdigui.engine import create_image, open_paths  # test setup only, not the oracle

    data = raw.read_bytes()
    create_image(vdi, len(data), block_size=FS_BS)
    with open_paths([vdi], writable_top=True) as chain:
        for off in range(0, len(data), FS_BS):
            chunk = data[off : off + FS_BS]
            if chunk.count(0) != len(chunk):
                chain.write(off, chunk, durable=False)
        chain.top.sync()
    assert ref_read([vdi]) == data
    return vdi, hashes


def test_compact_fs_aware(shm_root: Path, tmp_path: Path) -> None:
    """Every block reads as before or (dropped, unused by the guest) as zeros; the ext4
    inside checks clean with the same files (e2fsck, debugfs) in every state."""
    from guestfs_images import fs_check

    folder = shm_root / "vm"
    folder.mkdir()
    vdi, hashes = guest_disk(folder, tmp_path)
    before = ref_read([vdi])
    zero = bytes(FS_BS)
    rec, error = record(folder, lambda: run_compact(plan_compact(vdi, fs_aware=True)))
    assert error is None, error
    dropped = sum(
        1
        for b in range(0, len(before), FS_BS)
        if ref_read([vdi])[b : b + FS_BS] != before[b : b + FS_BS]
    )
    assert dropped >= 8, "the stale blocks should have been dropped"
    checks = [0]

    def guest_ok(what: str) -> None:
        now = ref_read([vdi])
        bad = [
            b // FS_BS
            for b in range(0, len(before), FS_BS)
            if now[b : b + FS_BS] not in (before[b : b + FS_BS], zero)
        ]
        assert not bad, f"{what}: guest blocks {bad[:8]} read neither as before nor as zeros"
        checks[0] += 1
        part = tmp_path / f"p{checks[0]}.img"
        part.write_bytes(now[PART_START * 512 : PART_START * 512 + PART_SIZE])
        assert fs_check("ext4", part, tmp_path / f"f{checks[0]}") == hashes, (
            f"{what}: the guest's files differ"
        )
        part.unlink()

    def check(_state: object) -> str:
        assert_consistent(vdi)
        guest_ok("the image as the power cut left it")
        out = vdictl("compact", vdi, "--fs-aware")
        assert_consistent(vdi)
        guest_ok("the image after the next compact --fs-aware")
        assert_compact(vdi)
        vdictl("check", vdi)
        assert_no_leftovers(folder)
        return "already compact" if "already compact" in out else "changed by next run"

    finish(explore("compact --fs-aware", folder, rec, check, seed=5, per_barrier=4, max_states=30))
