"""Helpers for the operation tests: images with known content, an independent reader, oracles.

The reader here parses headers with ``struct`` at the reference's absolute offsets and walks
the chain itself, so a bug in the engine's reader cannot confirm a bug in an operation.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash
from builders import MIB, BuiltChain, Content, build_chain, build_image, model_read, pattern

from vdigui.engine import fileio
from vdigui.engine.progress import CancelToken, Progress

FREE = 0xFFFFFFFF
ZERO = 0xFFFFFFFE


@dataclass
class RefImage:
    """What the independent reader sees in one file."""

    image_type: int
    disk_size: int
    block_size: int
    blocks: int
    blocks_allocated: int
    offset_blocks: int
    offset_data: int
    uuid: uuidlib.UUID
    modify_uuid: uuidlib.UUID
    parent_uuid: uuidlib.UUID
    parent_modify_uuid: uuidlib.UUID
    comment: bytes
    lchs: tuple[int, ...]
    entries: list[int]
    file_size: int


def ref_open(path: Path) -> RefImage:
    """Parse a v1.1 VDI header and map with struct (reference 1.3)."""
    with open(path, "rb") as f:
        raw = f.read(0x200)
        (header_size, image_type, _flags) = struct.unpack_from("<III", raw, 0x48)
        off_blocks, off_data = struct.unpack_from("<II", raw, 0x154)
        disk_size, block_size, extra, blocks, allocated = struct.unpack_from("<QIIII", raw, 0x170)
        f.seek(off_blocks)
        entries = list(struct.unpack(f"<{blocks}I", f.read(4 * blocks)))
        file_size = f.seek(0, 2)
    assert extra == 0
    u = [uuidlib.UUID(bytes_le=raw[o : o + 16]) for o in (0x188, 0x198, 0x1A8, 0x1B8)]
    lchs = struct.unpack_from("<IIII", raw, 0x1C8) if header_size >= 0x190 else ()
    return RefImage(
        image_type,
        disk_size,
        block_size,
        blocks,
        allocated,
        off_blocks,
        off_data,
        u[0],
        u[1],
        u[2],
        u[3],
        raw[0x54:0x154].rstrip(b"\0"),
        lchs,
        entries,
        file_size,
    )


def ref_read(paths: Sequence[Path]) -> bytes:
    """Guest content of a chain (base first) read by this module's own parser."""
    images = [(ref_open(p), memoryview(p.read_bytes())) for p in paths]
    base = images[0][0]
    bs, size = base.block_size, base.disk_size
    out = bytearray(size)
    for b in range(-(-size // bs)):
        for img, raw in reversed(images):
            e = img.entries[b]
            if e == FREE:
                continue
            if e != ZERO:
                start = img.offset_data + e * bs
                n = min(bs, size - b * bs)
                out[b * bs : b * bs + n] = raw[start : start + n]
            break
    return bytes(out)


def sha(data: bytes, block_size: int = 1 << 20) -> str:
    """The guest digest, computed here from its definition: XXH3-128 over per-block XXH3-128."""
    outer = xxhash.xxh3_128()
    for start in range(0, len(data), block_size):
        outer.update(xxhash.xxh3_128(data[start : start + block_size]).digest())
    return outer.hexdigest()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def qemu_check(qemu_img: str, path: Path) -> subprocess.CompletedProcess[str]:
    return run(qemu_img, "check", "-f", "vdi", str(path))


def assert_qemu_clean(qemu_img: str, path: Path) -> None:
    r = qemu_check(qemu_img, path)
    assert r.returncode == 0, r.stdout + r.stderr


def assert_qemu_consistent(qemu_img: str, path: Path) -> None:
    """Clean, or only an inflated cBlocksAllocated (an interrupted compaction's leftover).

    VirtualBox's own compaction leaves that state when interrupted; it is safe for VirtualBox
    and qemu (both allocate at cBlocksAllocated) and qemu's check counts it as a mismatch.
    """
    r = qemu_check(qemu_img, path)
    if r.returncode == 0:
        return
    text = r.stdout + r.stderr
    errors = [line for line in text.splitlines() if line.startswith("ERROR")]
    assert errors and all("allocated blocks mismatch" in line for line in errors), text
    img = ref_open(path)
    live = [e for e in img.entries if e < ZERO]
    assert len(set(live)) == len(live), "cross-linked slots"
    assert not live or max(live) < img.blocks_allocated, text


def assert_qemu_same_raw(qemu_img: str, raw: Path, path: Path) -> None:
    r = run(qemu_img, "compare", "-f", "raw", "-F", "vdi", str(raw), str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def assert_qemu_same(qemu_img: str, expected: bytes, path: Path, tmp: Path) -> None:
    raw = tmp / f"expected-{uuidlib.uuid4().hex}.raw"
    raw.write_bytes(expected)
    try:
        r = run(qemu_img, "compare", "-f", "raw", "-F", "vdi", str(raw), str(path))
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        raw.unlink()


def scattered_layer(
    rng: random.Random,
    blocks: int,
    *,
    data: float = 0.7,
    zero_data: float = 0.25,
    zero_marker: float = 0.05,
    block_size: int = MIB,
) -> dict[int, Content]:
    """Blocks of data, allocated all-zero blocks (what compact drops), ZERO markers, FREE."""
    layer: dict[int, Content] = {}
    for b in range(blocks):
        r = rng.random()
        if r < data:
            if rng.random() < zero_data:
                layer[b] = bytes(block_size)
            else:
                layer[b] = pattern(rng.randrange(1 << 30), block_size)
        elif r < data + zero_marker:
            layer[b] = "zero"
    return layer


def make_base(
    folder: Path, mib: int, seed: int = 1, name: str = "disk.vdi", **kwargs: object
) -> tuple[Path, bytes]:
    """A shuffled base image with zero blocks scattered: (path, expected guest bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    layer = scattered_layer(random.Random(seed), mib)
    built = build_image(folder / name, mib * MIB, layer, slot_order="shuffle", seed=seed, **kwargs)  # type: ignore[arg-type]
    return built.path, model_read([built.layer], mib * MIB, MIB)


def make_chain(folder: Path, mib: int, depth: int = 3, seed: int = 2) -> BuiltChain:
    """A chain whose top has zero blocks, parent-identical blocks, ZERO and FREE entries."""
    rng = random.Random(seed)
    layers = [scattered_layer(rng, mib) for _ in range(depth)]
    # Make some top blocks byte-identical to what the parents show (compact drops them).
    below = model_read(layers[:-1], mib * MIB, MIB)
    for b in rng.sample(range(mib), mib // 6):
        layers[-1][b] = below[b * MIB : (b + 1) * MIB]
    return build_chain(folder, mib * MIB, layers, slot_order="shuffle", seed=seed)


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def copy_image(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


class Recorder:
    """Collects progress events and can cancel after N of one phase."""

    def __init__(self, token: CancelToken | None = None, phase: str = "", after: int = 0):
        self.events: list[Progress] = []
        self.token, self.phase, self.after = token, phase, after

    def __call__(self, ev: Progress) -> None:
        self.events.append(ev)
        if self.token is not None and ev.phase == self.phase and ev.done >= self.after:
            self.token.cancel()

    def assert_sane(self) -> None:
        by_phase: dict[str, list[Progress]] = {}
        for ev in self.events:
            by_phase.setdefault(ev.phase, []).append(ev)
        for evs in by_phase.values():
            done = [e.done for e in evs]
            assert done == sorted(done) and len(set(done)) == len(done)
            assert len({e.total for e in evs}) == 1
            assert evs[-1].done == evs[-1].total
            assert [e.bytes_done for e in evs] == sorted(e.bytes_done for e in evs)


def holder(path: Path, lock: bool = False) -> subprocess.Popen[str]:
    code = f"import fcntl, os, struct, sys, time\nfd = os.open({str(path)!r}, os.O_RDWR)\n"
    if lock:
        code += (
            "fcntl.fcntl(fd, fcntl.F_OFD_SETLK, "
            "struct.pack('hhqqi4x', fcntl.F_RDLCK, 0, 0, 0, 0))\n"
        )
    code += "print('ready', flush=True)\nsys.stdin.read()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


class FaultyOps(fileio.FileOps):
    """The real file operations, except that one chosen write is damaged or fails.

    ``select(offset, length)`` sees every ``pwrite``/``pwritev`` (and ``copy_range``) in
    order; the first time it returns True, that write has its first byte flipped before it
    reaches the file (``fail`` is None) or raises ``fail`` instead. The bytes really written
    are then wrong, which is what verification must notice.
    """

    def __init__(self, select: Callable[[int, int], bool], fail: OSError | None = None) -> None:
        self.select, self.fail, self.fired = select, fail, False

    def _hit(self, offset: int, length: int) -> bool:
        if self.fired or not self.select(offset, length):
            return False
        self.fired = True
        if self.fail is not None:
            raise self.fail
        return True

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        if self._hit(offset, len(data)):
            raw = bytearray(data)
            raw[0] ^= 1
            data = bytes(raw)
        return super().pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        if self._hit(offset, sum(len(b) for b in buffers)):
            first = bytearray(buffers[0])
            first[0] ^= 1
            buffers = [bytes(first), *buffers[1:]]
        return super().pwritev(fd, buffers, offset)

    def copy_range(
        self, src_fd: int, dst_fd: int, length: int, src_offset: int, dst_offset: int
    ) -> int:
        flip = self._hit(dst_offset, length)
        done = super().copy_range(src_fd, dst_fd, length, src_offset, dst_offset)
        if flip and done > 0:
            original = os.pread(src_fd, 1, src_offset)
            super().pwrite(dst_fd, bytes([original[0] ^ 1]), dst_offset)
        return done


def nth_write(
    n: int, *, offset: int | None = None, min_length: int = 0
) -> Callable[[int, int], bool]:
    """A FaultyOps selector: the ``n``-th write (1-based) at ``offset`` / of >= ``min_length``."""
    seen = [0]

    def select(at: int, length: int) -> bool:
        if (offset is not None and at != offset) or length < min_length:
            return False
        seen[0] += 1
        return seen[0] == n

    return select
