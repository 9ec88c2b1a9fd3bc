"""Crash safety of in-place compaction: injected I/O failures at every write, and SIGKILL.

After any interruption the image must open, read exactly as before (independent reader; qemu
for bases), have no cross-linked or out-of-range entries (qemu-img check may only report the
inflated cBlocksAllocated VirtualBox's own compaction also leaves), and a second compact must
finish the job cleanly.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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

from vdigui.engine.check import check_image
from vdigui.engine.image import open_image
from vdigui.engine.operations import _common, compact
from vdigui.engine.operations.compact import plan_compact, run_compact

REPO = Path(__file__).resolve().parents[3]


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


class Injector:
    """Counts os.pwrite/os.fsync calls and fails the k-th one with EIO."""

    def __init__(self, fail_at: int = 0) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.real_pwrite = os.pwrite
        self.real_fsync = os.fsync

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(errno.EIO, "injected failure")

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        self._tick()
        return self.real_pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        self._tick()
        self.real_fsync(fd)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(os, "pwrite", self.pwrite)  # the module every writer uses
        monkeypatch.setattr(os, "fsync", self.fsync)


def assert_recovers(path: Path, paths: list[Path], expected: bytes, qemu_img: str | None,
                    raw: Path) -> None:
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
    assert not _common.backup_path(path).exists()
    if qemu_img:
        assert_qemu_clean(qemu_img, path)
        assert_qemu_same_raw(qemu_img, raw, path)


def _every_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], Path],
                 paths_of: Callable[[Path], list[Path]], expected: bytes,
                 qemu_img: str | None) -> int:
    monkeypatch.setattr(compact, "MOVE_BATCH_BYTES", 2 * MIB)  # several batches
    # Not what these tests are about, and the /proc scans cost time at hundreds of runs.
    monkeypatch.setattr(compact, "busy_reasons", lambda path: ())
    pristine = make(tmp_path / "pristine")
    raw = tmp_path / "expected.raw"
    raw.write_bytes(expected)
    # A clean run tells how many writes and flushes there are.
    work = tmp_path / "work"
    shutil.copytree(pristine.parent, work)
    counter = Injector()
    with monkeypatch.context() as m:
        counter.install(m)
        result = run_compact(plan_compact(work / pristine.name))
    assert result.moved_blocks >= 3, "the image should need several moves"
    total = counter.calls
    for k in range(1, total + 1):
        shutil.rmtree(work)
        shutil.copytree(pristine.parent, work)
        path = work / pristine.name
        plan = plan_compact(path)
        injector = Injector(fail_at=k)
        with monkeypatch.context() as m:
            injector.install(m)
            try:
                run_compact(plan)
            except OSError as exc:
                assert exc.errno == errno.EIO
        assert_recovers(path, paths_of(path), expected, qemu_img, raw)
    return total


def test_injected_failure_at_every_write_base(fast_tmp: Path, qemu_img: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = 20
    layer = many_moves_layer(blocks, 16, 6, seed=5)
    # A crash leftover too: cBlocksAllocated one too high and a torn tail.
    expected = model_read([layer], blocks * MIB, MIB)  # type: ignore[list-item]

    def make(folder: Path) -> Path:
        folder.mkdir()
        return build_image(folder / "d.vdi", blocks * MIB, layer, slot_order="shuffle",  # type: ignore[arg-type]
                           seed=5, tail=b"\x55" * 4096).path

    total = _every_write(fast_tmp, monkeypatch, make, lambda p: [p], expected, qemu_img)
    print("writes and flushes:", total)
    assert total > 15


def test_injected_failure_at_every_write_differencing(fast_tmp: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
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

    _every_write(fast_tmp, monkeypatch, make, paths_of, expected, None)


def test_sigkill_at_random_moments(fast_tmp: Path, qemu_img: str) -> None:
    """Kill a real ``python -m vdigui.cli compact`` at random moments of its writing phase."""
    blocks = 64
    layer = many_moves_layer(blocks, 60, 20, seed=11)
    expected = model_read([layer], blocks * MIB, MIB)  # type: ignore[list-item]
    pristine = build_image(fast_tmp / "pristine.vdi", blocks * MIB, layer,  # type: ignore[arg-type]
                           slot_order="shuffle", seed=11).path
    raw = fast_tmp / "expected.raw"
    raw.write_bytes(expected)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(path: Path) -> tuple[subprocess.Popen[bytes], float]:
        proc = subprocess.Popen([sys.executable, "-m", "vdigui.cli", "compact", str(path)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        backup = _common.backup_path(path)
        t0 = time.monotonic()
        while not backup.exists() and proc.poll() is None:
            time.sleep(0.0005)
        return proc, time.monotonic() - t0

    # A reference run: how long the writing phase lasts after the backup appears.
    ref = fast_tmp / "ref.vdi"
    shutil.copyfile(pristine, ref)
    proc, _ = start(ref)
    seen = time.monotonic()
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    window = max(0.005, time.monotonic() - seen)
    rng = random.Random(1234)
    killed_mid = attempts = 0
    while killed_mid < 4 and attempts < 16:
        attempts += 1
        path = fast_tmp / f"k{attempts}.vdi"
        shutil.copyfile(pristine, path)
        proc, _ = start(path)
        time.sleep(0.0 if attempts == 1 else rng.uniform(0, window))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid += 1
        else:
            window /= 2  # this machine is faster now: aim earlier
        proc.wait(timeout=60)
        if proc.stderr:
            proc.stderr.close()
        assert_recovers(path, [path], expected, qemu_img, raw)
        path.unlink()
    assert killed_mid >= 3
