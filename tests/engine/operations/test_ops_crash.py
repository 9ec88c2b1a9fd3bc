"""Crash safety of compact, clone and convert: an I/O error at every call, and kill -9.

Two kinds of interruption, both through the one I/O boundary (``vdigui.engine.fileio``):

- an ``EIO`` injected at the k-th file-changing call, for every k of the run (the operation
  must clean up after itself, or leave a state the next run finishes);
- a real ``vdictl`` process killed with SIGKILL just before its N-th file-changing call
  (tests/powerloss/kill_driver.py), N chosen below the total of an uninterrupted run; a run
  that finishes before the kill fails the test.

Both model process death (the page cache survives); power loss is tests/powerloss. After any
interruption the image must open, read exactly as before (independent reader; qemu for
bases), have no cross-linked or out-of-range entries (qemu-img check may only report the
inflated cBlocksAllocated VirtualBox's own compaction also leaves), and the next command
must finish the job cleanly.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from builders import MIB, build_chain, build_image, model_read, pattern
from opshelpers import (
    ZERO,
    assert_qemu_clean,
    assert_qemu_consistent,
    assert_qemu_same_raw,
    ref_open,
    ref_read,
)

from vdigui.engine import fileio
from vdigui.engine.check import check_image
from vdigui.engine.image import open_image
from vdigui.engine.operations import compact
from vdigui.engine.operations.compact import plan_compact, run_compact
from vdigui.engine.operations.safefile import backup_path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "powerloss"))
from killrun import kill_mid, kill_points, total_calls

COUNTED = (
    "open",
    "pwrite",
    "pwritev",
    "copy_range",
    "ftruncate",
    "fsync",
    "fdatasync",
    "replace",
    "link",
    "unlink",
    "mkdir",
    "rmdir",
    "fsync_dir",
)
BEST_EFFORT = ("chmod", "chown", "fallocate")


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs folder when there is one: these tests reproduce hundreds of interruptions, and
    a process crash (unlike a power cut) does not care whether fsync reached the disk."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="vdigui-ops-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def many_moves_layer(blocks: int, allocated: int, zero: int, seed: int) -> dict[int, object]:
    """``allocated`` data blocks of which ``zero`` are all zero, spread over the disk."""
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(blocks), allocated))
    zeros = set(rng.sample(chosen, zero))
    return {b: bytes(MIB) if b in zeros else pattern(seed * 1000 + b, MIB) for b in chosen}


class FailAt(fileio.FileOps):
    """Fails the k-th file-changing call with EIO (0: never); counts them all."""

    def __init__(self, fail_at: int = 0) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.failed: str | None = None

    def tick(self, name: str, flags: int = -1) -> None:
        if name == "open" and not flags & (os.O_CREAT | os.O_TRUNC):
            return  # opening to read or to write in place changes nothing yet
        self.calls += 1
        if self.calls == self.fail_at:
            self.failed = name
            raise OSError(errno.EIO, "injected failure")


def _failing(name: str) -> Callable[..., object]:
    real = getattr(fileio.FileOps, name)

    def method(self: FailAt, *args: object) -> object:
        self.tick(name, int(args[1]) if name == "open" else -1)  # type: ignore[call-overload]
        return real(self, *args)

    return method


for _name in (*COUNTED, *BEST_EFFORT):
    setattr(FailAt, _name, _failing(_name))


def assert_recovers(
    path: Path, paths: list[Path], expected: bytes, qemu_img: str | None, raw: Path
) -> None:
    """Opens, reads as before, is consistent; a second compact finishes cleanly."""
    with open_image(path) as image:
        errors = [f for f in check_image(image) if f.severity == "error"]
    assert not errors, errors
    assert ref_read(paths) == expected
    if qemu_img:
        assert_qemu_consistent(qemu_img, path)
    result = run_compact(plan_compact(path))
    assert result.verified in (True, None)
    assert ref_read(paths) == expected
    after = ref_open(path)
    live = sorted(e for e in after.entries if e < ZERO)
    assert live == list(range(len(live))) and after.blocks_allocated == len(live)
    assert after.file_size == after.offset_data + len(live) * MIB
    assert not backup_path(path).exists()
    if qemu_img:
        assert_qemu_clean(qemu_img, path)
        assert_qemu_same_raw(qemu_img, raw, path)


def _every_call(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[Path], Path],
    paths_of: Callable[[Path], list[Path]],
    expected: bytes,
    qemu_img: str | None,
) -> int:
    monkeypatch.setattr(compact, "MOVE_BATCH_BYTES", 2 * MIB)  # several batches
    # Not what these tests are about, and the /proc scans cost time at hundreds of runs.
    monkeypatch.setattr(compact, "busy_reasons", lambda path: ())
    pristine = make(tmp_path / "pristine")
    raw = tmp_path / "expected.raw"
    raw.write_bytes(expected)
    # A clean run tells how many file-changing calls there are.
    work = tmp_path / "work"
    shutil.copytree(pristine.parent, work)
    counter = FailAt()
    with fileio.use(counter):
        result = run_compact(plan_compact(work / pristine.name))
    assert result.moved_blocks >= 3, "the image should need several moves"
    total = counter.calls
    for k in range(1, total + 1):
        shutil.rmtree(work)
        shutil.copytree(pristine.parent, work)
        path = work / pristine.name
        plan = plan_compact(path)
        injector = FailAt(fail_at=k)
        raised = False
        with fileio.use(injector):
            try:
                run_compact(plan)
            except OSError as exc:
                assert exc.errno == errno.EIO
                raised = True
        assert injector.failed is not None, f"call {k} of {total} never came"
        assert raised or injector.failed in BEST_EFFORT, (
            f"the failure of call {k} ({injector.failed}) was swallowed"
        )
        assert_recovers(path, paths_of(path), expected, qemu_img, raw)
    return total


def test_injected_failure_at_every_call_base(
    fast_tmp: Path, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = 20
    layer = many_moves_layer(blocks, 16, 6, seed=5)
    # A crash leftover too: cBlocksAllocated one too high and a torn tail.
    expected = model_read([layer], blocks * MIB, MIB)  # type: ignore[list-item]

    def make(folder: Path) -> Path:
        folder.mkdir()
        return build_image(
            folder / "d.vdi",
            blocks * MIB,
            layer,
            slot_order="shuffle",  # type: ignore[arg-type]
            seed=5,
            tail=b"\x55" * 4096,
        ).path

    total = _every_call(fast_tmp, monkeypatch, make, lambda p: [p], expected, qemu_img)
    print("file-changing calls:", total)
    assert total > 15


def test_injected_failure_at_every_call_differencing(
    fast_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = 16
    rng = random.Random(9)
    base = {b: pattern(b, MIB) for b in range(blocks) if rng.random() < 0.8}
    top = many_moves_layer(blocks, 12, 4, seed=6)
    for b in (1, 2):  # identical to the parent: dropped as FREE
        top[b] = base.get(b, bytes(MIB))
    layers = [base, top]
    expected = model_read(layers, blocks * MIB, MIB)  # type: ignore[arg-type]
    names = ["base.vdi", "top.vdi"]

    def make(folder: Path) -> Path:
        return build_chain(folder, blocks * MIB, layers, names=names, seed=6).leaf  # type: ignore[arg-type]

    def paths_of(p: Path) -> list[Path]:
        return [p.parent / n for n in names]

    _every_call(fast_tmp, monkeypatch, make, paths_of, expected, None)


# -- kill -9 of a real vdictl ---------------------------------------------------------------
def _pristine(fast_tmp: Path) -> tuple[Path, bytes, Path]:
    blocks = 40
    layer = many_moves_layer(blocks, 36, 12, seed=11)
    expected = model_read([layer], blocks * MIB, MIB)  # type: ignore[list-item]
    pristine = build_image(
        fast_tmp / "pristine.vdi",
        blocks * MIB,
        layer,  # type: ignore[arg-type]
        slot_order="shuffle",
        seed=11,
    ).path
    raw = fast_tmp / "expected.raw"
    raw.write_bytes(expected)
    return pristine, expected, raw


@pytest.mark.parametrize("defrag", [False, True], ids=["in-place", "defrag"])
def test_sigkill_mid_compact(fast_tmp: Path, qemu_img: str, defrag: bool) -> None:
    """Kill ``vdictl compact`` at file-changing calls spread over the whole run."""
    pristine, expected, raw = _pristine(fast_tmp)
    extra = ["--defrag"] if defrag else []
    count = fast_tmp / "calls"
    ref = fast_tmp / "ref" / "d.vdi"
    ref.parent.mkdir()
    shutil.copyfile(pristine, ref)
    total = total_calls(["compact", str(ref), *extra], count)
    killed = []
    for n in kill_points(total, 6, seed=1 + defrag):
        folder = fast_tmp / f"k{n}"
        folder.mkdir()
        path = folder / "d.vdi"
        shutil.copyfile(pristine, path)
        killed.append(kill_mid(["compact", str(path), *extra], n, count))
        assert_recovers(path, [path], expected, qemu_img, raw)
        leftovers = [p.name for p in folder.iterdir() if p.name != "d.vdi"]
        assert not leftovers, f"the next compact left {leftovers} (killed at call {n})"
        shutil.rmtree(folder)
    print(f"compact{' --defrag' if defrag else ''}: {total} calls; killed after {killed}")
    assert len(killed) >= 4 and max(killed) >= total // 2, (killed, total)


@pytest.mark.parametrize("what", ["clone", "convert"])
def test_sigkill_mid_clone_and_convert(fast_tmp: Path, qemu_img: str, what: str) -> None:
    """A killed clone leaves no clone or a complete one; a killed convert leaves the image
    readable as before; running the command again succeeds."""
    pristine, expected, raw = _pristine(fast_tmp)
    count = fast_tmp / "calls"

    def args(folder: Path) -> list[str]:
        src = folder / "d.vdi"
        return (
            ["clone", str(src), str(folder / "c.vdi")]
            if what == "clone"
            else ["convert", str(src), "--to", "fixed"]
        )

    ref = fast_tmp / "ref"
    ref.mkdir()
    shutil.copyfile(pristine, ref / "d.vdi")
    total = total_calls(args(ref), count)
    from killrun import run_driver

    points = kill_points(total, 5, seed=3)
    print(f"{what}: {total} calls; killed before calls {points}")
    for n in points:
        folder = fast_tmp / f"k{n}"
        folder.mkdir()
        shutil.copyfile(pristine, folder / "d.vdi")
        kill_mid(args(folder), n, count)
        assert ref_read([folder / "d.vdi"]) == expected
        assert_qemu_consistent(qemu_img, folder / "d.vdi")
        if what == "clone":
            assert (folder / "d.vdi").read_bytes() == pristine.read_bytes()
            if (folder / "c.vdi").exists():  # only ever complete
                assert_qemu_clean(qemu_img, folder / "c.vdi")
                assert_qemu_same_raw(qemu_img, raw, folder / "c.vdi")
                (folder / "c.vdi").unlink()
        code, _, err = run_driver(args(folder), 0, count)  # the user runs it again
        assert code == 0, err
        target = folder / ("c.vdi" if what == "clone" else "d.vdi")
        assert_qemu_clean(qemu_img, target)
        assert_qemu_same_raw(qemu_img, raw, target)
        leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        assert not leftovers, f"left behind after the rerun: {leftovers} (killed at call {n})"
        shutil.rmtree(folder)


@pytest.mark.parametrize("what", ["clone", "convert"])
def test_injected_failure_at_every_call_clone_and_convert(
    fast_tmp: Path, qemu_img: str, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """A failed clone or convert leaves the source reading as before (a clone's source
    byte-identical), the output absent or complete (only an error after the commit leaves
    it), no temporary file; running it again then succeeds."""
    from vdigui.engine.operations import convert as cv
    from vdigui.engine.operations.clone import plan_clone, run_clone
    from vdigui.engine.operations.convert import plan_convert, run_convert

    monkeypatch.setattr(cv, "busy_reasons", lambda path: ())
    blocks = 12
    layer = many_moves_layer(blocks, 10, 3, seed=13)
    expected = model_read([layer], blocks * MIB, MIB)  # type: ignore[list-item]
    folder = fast_tmp / "f"
    folder.mkdir()
    path = build_image(folder / "d.vdi", blocks * MIB, layer, seed=13).path  # type: ignore[arg-type]
    original = path.read_bytes()
    dest = folder / "c.vdi"

    def run() -> object:
        if what == "clone":
            return run_clone(plan_clone(path, dest))
        return run_convert(plan_convert(path, "fixed"))

    counter = FailAt()
    with fileio.use(counter):
        run()
    total = counter.calls
    assert total > 8
    for k in range(1, total + 1):
        path.write_bytes(original)
        dest.unlink(missing_ok=True)
        injector = FailAt(fail_at=k)
        raised = False
        with fileio.use(injector):
            try:
                run()
            except OSError as exc:
                assert exc.errno == errno.EIO
                raised = True
        assert injector.failed is not None, f"call {k} of {total} never came"
        if not raised:  # a failed best-effort call (chmod...), a refused hard link (the
            # commit falls back to a checked rename, for filesystems without links), or the
            # last call, after the commit
            assert injector.failed in (*BEST_EFFORT, "link") or k == total, (k, injector.failed)
        else:
            assert ref_read([path]) == expected
            if what == "clone":
                assert path.read_bytes() == original
                if dest.exists():  # the error came after the commit (the link): complete
                    assert ref_read([dest]) == expected, f"call {k} left a wrong clone"
        leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        assert not leftovers, f"call {k} ({injector.failed}) failed and left {leftovers}"
    raw = fast_tmp / "expected.raw"
    raw.write_bytes(expected)
    path.write_bytes(original)
    dest.unlink(missing_ok=True)
    run()
    assert_qemu_clean(qemu_img, dest if what == "clone" else path)
    assert_qemu_same_raw(qemu_img, raw, dest if what == "clone" else path)
