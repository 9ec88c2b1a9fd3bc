"""qemu-img and qemu-io as independent oracles for base images (reference 9.3).

qemu cannot open differencing images; those are covered by test_chain.py with the builder.
In CI a missing qemu fails these tests (tests/conftest.py), it never skips them.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from builders import BANNERS, MIB, build_image, model_read, pattern

from vdigui.engine import DiskChain, create_image, open_chain, open_image

pytestmark = pytest.mark.qemu

KIB = 1024


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def qemu_raw(qemu_img: str, image: Path) -> bytes:
    out = image.with_suffix(".qemu.raw")
    r = run(qemu_img, "convert", "-f", "vdi", "-O", "raw", str(image), str(out))
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    out.unlink()
    return data


def engine_raw(image: Path) -> bytes:
    with open_chain(image) as chain:
        return chain.read(0, chain.disk_size)


def qemu_write(qemu_io: str, image: Path, writes: list[tuple[int, int, int]]) -> None:
    """Pattern writes (offset, length, byte) in one qemu-io run; byte -1 means ``write -z``."""
    cmds: list[str] = []
    for off, n, byte in writes:
        cmds += ["-c", f"write -z {off} {n}" if byte < 0 else f"write -P {byte} {off} {n}"]
    r = run(qemu_io, "-f", "vdi", *cmds, str(image))
    assert r.returncode == 0 and "error" not in r.stdout.lower(), r.stdout + r.stderr


def assert_map_agrees(qemu_img: str, image: Path) -> None:
    """Every data range qemu reports sits at the file offset the engine's map gives."""
    r = run(qemu_img, "map", "-f", "vdi", "--output=json", str(image))
    assert r.returncode == 0, r.stderr
    ranges = json.loads(r.stdout)
    with open_image(image) as img:
        h = img.header
        seen_data = set()
        for rng in ranges:
            first = rng["start"] // h.block_size
            last = (rng["start"] + rng["length"] - 1) // h.block_size
            for b in range(first, last + 1):
                entry = img.entry(b)
                if rng["data"]:
                    seen_data.add(b)
                    # qemu's offset is the file offset of the range's first byte.
                    within = max(rng["start"], b * h.block_size) - rng["start"]
                    assert entry < 0xFFFFFFFE, (b, rng)
                    pos = max(rng["start"], b * h.block_size)
                    assert (
                        h.slot_offset(entry) + pos - b * h.block_size == rng["offset"] + within
                    ), (b, rng)
                else:
                    assert entry >= 0xFFFFFFFE, (b, rng)
        allocated = {b for b in range(img.guest_blocks) if img.entry(b) < 0xFFFFFFFE}
        assert allocated == seen_data


@pytest.mark.parametrize("size", ["64M", str(16 * MIB - 512), str(3 * MIB + 4096)])
def test_qemu_written_dynamic_images_read_like_qemu(
    tmp_path: Path, qemu_img: str, qemu_io: str, size: str
) -> None:
    p = tmp_path / "d.vdi"
    assert run(qemu_img, "create", "-f", "vdi", str(p), size).returncode == 0
    disk = 64 * MIB if size == "64M" else int(size)
    rng = random.Random(disk)
    writes = [
        (5 * MIB if disk > 6 * MIB else MIB, MIB, 0xCD),
        (0, 512, 0x11),
        (3149824 % (disk - 4096), 4096, 0xAB),
        (disk - 512, 512, 0x5A),
    ]
    for _ in range(12):  # scattered, unaligned, block-crossing
        n = rng.choice([512, 1024, 4096, 65536, MIB + 512])
        off = rng.randrange(0, (disk - n) // 512) * 512
        writes.append((off, n, rng.randrange(1, 256)))
    writes.append((2 * MIB, 8192, -1))  # write -z allocates a real zero block
    qemu_write(qemu_io, p, writes)
    assert engine_raw(p) == qemu_raw(qemu_img, p)
    assert_map_agrees(qemu_img, p)


def test_qemu_fixed_image_reads_like_qemu(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    p = tmp_path / "f.vdi"
    assert run(qemu_img, "create", "-f", "vdi", "-o", "static=on", str(p), "8M").returncode == 0
    qemu_write(qemu_io, p, [(100 * 512, 6000, 0x42), (7 * MIB + 512, 1024, 9)])
    with open_image(p) as img:
        assert img.header.image_type.label == "fixed"
        assert img.block_map.tolist() == list(range(8))
    assert engine_raw(p) == qemu_raw(qemu_img, p)
    assert_map_agrees(qemu_img, p)


def test_qemu_slot_order_matches_the_reference(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    # Reference 10.3: slots are allocated in write order, partial blocks zero-padded.
    p = tmp_path / "o.vdi"
    run(qemu_img, "create", "-f", "vdi", str(p), "64M")
    qemu_write(qemu_io, p, [(5 * MIB, MIB, 0xCD), (0, 512, 0x11), (3149824, 4096, 0xAB)])
    with open_image(p) as img:
        assert [img.entry(b) for b in (0, 3, 5)] == [1, 2, 0]
        assert img.header.blocks_allocated == 3
        assert (img.header.offset_blocks, img.header.offset_data) == (0x200, 0x400)
    assert_map_agrees(qemu_img, p)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"placement": "qemu", "header_size": 0x180, "banner": BANNERS["qemu"]},
        {"placement": "vbox", "header_size": 0x190},
        {"placement": "qemu", "header_size": 0x190, "lchs": (1023, 16, 63, 512)},
    ],
)
def test_builder_images_read_the_same_in_qemu_and_engine(
    tmp_path: Path, qemu_img: str, kwargs: dict
) -> None:
    """Checks the test builder itself against qemu, then the engine against both."""
    layer: dict = {0: pattern(0, MIB), 2: "zero", 3: pattern(3, MIB), 6: pattern(6, MIB)}
    b = build_image(
        tmp_path / "b.vdi", 8 * MIB - 512, layer, slot_order="shuffle", seed=4, **kwargs
    )
    expected = model_read([b.layer], 8 * MIB - 512, MIB)
    assert qemu_raw(qemu_img, b.path) == expected
    assert engine_raw(b.path) == expected
    assert run(qemu_img, "check", "-f", "vdi", str(b.path)).returncode == 0
    assert_map_agrees(qemu_img, b.path)


def _write_randomly(image: Path, disk: int, seed: int) -> bytes:
    rng = random.Random(seed)
    expected = bytearray(disk)
    with DiskChain([open_image(image, writable=True)]) as chain:
        for i in range(25):
            n = rng.choice([1, 511, 4096, 70000, MIB + 3, 2 * MIB])
            n = min(n, disk)
            off = rng.randrange(0, disk - n + 1)
            data = bytes(n) if i % 5 == 0 else rng.randbytes(n)
            chain.write(off, data)
            expected[off : off + n] = data
        chain.write(disk - 3, b"end")
        expected[disk - 3 :] = b"end"
    return bytes(expected)


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed"])
@pytest.mark.parametrize("disk", [24 * MIB, 16 * MIB - 512])
def test_vdigui_images_pass_qemu_check_and_compare(
    tmp_path: Path, qemu_img: str, fixed: bool, disk: int
) -> None:
    p = tmp_path / "v.vdi"
    create_image(p, disk, fixed=fixed)
    r = run(qemu_img, "check", "-f", "vdi", str(p))
    assert r.returncode == 0, r.stdout + r.stderr
    expected = _write_randomly(p, disk, seed=disk + fixed)
    raw = tmp_path / "expected.raw"
    raw.write_bytes(expected)
    r = run(qemu_img, "check", "-f", "vdi", "--output=json", str(p))
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout).get("corruptions", 0) == 0
    r = run(qemu_img, "compare", "-f", "vdi", "-F", "raw", str(p), str(raw))
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(run(qemu_img, "info", "-f", "vdi", "--output=json", str(p)).stdout)
    assert info["virtual-size"] == disk
    assert_map_agrees(qemu_img, p)


def test_qemu_writes_into_vdigui_image(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """A vdigui-created image is one qemu accepts and extends; the engine reads qemu's result."""
    p = tmp_path / "v.vdi"
    create_image(p, 32 * MIB)
    with DiskChain([open_image(p, writable=True)]) as chain:
        chain.write(MIB + 17, b"vdigui")
    qemu_write(qemu_io, p, [(9 * MIB, 4096, 0x33), (MIB, 512, 0x44)])
    assert engine_raw(p) == qemu_raw(qemu_img, p)
    assert_map_agrees(qemu_img, p)


def test_vdigui_writes_into_qemu_image(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """The engine extends a qemu-laid-out (0x180 header, 512-aligned) image; qemu agrees."""
    p = tmp_path / "q.vdi"
    run(qemu_img, "create", "-f", "vdi", str(p), str(20 * MIB - 512))
    qemu_write(qemu_io, p, [(7 * MIB + 3 * 512, 9000, 0x71), (0, 4096, 0x72)])
    before = bytearray(qemu_raw(qemu_img, p))
    expected = bytearray(before)
    with DiskChain([open_image(p, writable=True)]) as chain:
        for off, data in [
            (MIB - 10, b"\x05" * 20),
            (7 * MIB, b"\x06" * 100),
            (19 * MIB, bytes(4096)),
            (12 * MIB, bytes(MIB)),
            (20 * MIB - 512 - 5, b"tail!"),
        ]:
            chain.write(off, data)
            expected[off : off + len(data)] = data
    with open_image(p) as img:
        assert img.header.header_size == 0x180  # never upgraded in place
        assert img.header.blocks_allocated == 4  # 0, 7 from qemu; 1 and 19 from vdigui
    assert run(qemu_img, "check", "-f", "vdi", str(p)).returncode == 0
    raw = tmp_path / "expected.raw"
    raw.write_bytes(bytes(expected))
    r = run(qemu_img, "compare", "-f", "vdi", "-F", "raw", str(p), str(raw))
    assert r.returncode == 0, r.stdout
    assert engine_raw(p) == bytes(expected)
    assert_map_agrees(qemu_img, p)
