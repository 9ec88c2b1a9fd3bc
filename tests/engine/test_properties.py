"""Property tests (hypothesis): reads agree with the model, broken input raises only VdiError."""

from __future__ import annotations

import random
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builders import (
    BANNERS,
    V0_2,
    V1_0,
    V1_1,
    build_chain,
    build_image,
    pattern,
    random_layers,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import SAMPLES as SAMPLE_DIR

from vdigui.engine import DiskChain, VdiError, open_chain, open_image
from vdigui.engine.format import parse_header

SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=False, suppress_health_check=[HealthCheck.too_slow]
)


@contextmanager
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vdigui-prop-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@st.composite
def layouts(draw: st.DrawFn) -> dict:
    block_size = 1 << draw(st.integers(9, 16))  # 512 .. 64 KiB
    blocks = draw(st.integers(1, 10))
    cut = draw(st.integers(0, block_size // 512 - 1)) * 512
    return {
        "block_size": block_size,
        "blocks": blocks,
        "disk": blocks * block_size - cut,
        "depth": draw(st.integers(1, 4)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "density": draw(st.floats(0.0, 1.0)),
        "zero_share": draw(st.floats(0.0, 0.5)),
        "placement": draw(st.sampled_from(["vbox", "qemu", "packed"])),
        "extra": draw(st.sampled_from([0, 0, 512, 4096])),
        "header_size": draw(st.sampled_from([0x180, 0x190])),
        "order": draw(st.sampled_from(["shuffle", "sequential", "reverse"])),
        "chunks": draw(st.lists(st.integers(1, 3 * block_size), min_size=1, max_size=8)),
        "start": draw(st.integers(0, blocks * block_size - cut - 1)),
    }


@SETTINGS
@given(layouts())
def test_whole_read_equals_chunked_reads_equals_model(layout: dict) -> None:
    rng = random.Random(layout["seed"])
    bs, disk = layout["block_size"], layout["disk"]
    layers = random_layers(
        rng,
        layout["blocks"],
        bs,
        layout["depth"],
        density=layout["density"],
        zero_share=layout["zero_share"],
    )
    with scratch() as folder:
        ch = build_chain(
            folder,
            disk,
            layers,
            block_size=bs,
            slot_order=layout["order"],
            seed=layout["seed"],
            placement=layout["placement"],
            block_extra=layout["extra"],
            header_size=layout["header_size"],
        )
        with open_chain(ch.leaf) as chain:
            whole = chain.read(0, disk)
            assert whole == ch.expected
            # Concatenated reads of random chunk sizes from a random start, cycling the sizes.
            pos, parts, i = layout["start"], [], 0
            while pos < disk:
                n = min(layout["chunks"][i % len(layout["chunks"])], disk - pos)
                parts.append(chain.read(pos, n))
                pos += n
                i += 1
            assert b"".join(parts) == ch.expected[layout["start"] :]


# -- hostile input ------------------------------------------------------------------------
@SETTINGS
@given(st.binary(min_size=0, max_size=600))
def test_random_bytes_raise_only_vdi_errors(raw: bytes) -> None:
    try:
        parse_header(raw, "random.vdi", len(raw))
    except VdiError:
        pass


@SETTINGS
@given(
    st.binary(min_size=0x1D8 - 0x48, max_size=0x1D8 - 0x48),
    st.sampled_from([V1_1, V1_0, V0_2, 0x00010005]),
)
def test_random_header_after_valid_signature(body: bytes, version: int) -> None:
    raw = b"\0" * 64 + struct.pack("<II", 0xBEDA107F, version) + body
    try:
        parse_header(raw, "random.vdi", 1 << 40)
    except VdiError:
        pass


def _probe(path: Path) -> None:
    """Open and read ``path`` every way a user might; only VdiError may come out."""
    try:
        with open_image(path) as img:
            for b in range(min(img.guest_blocks, 16)):
                img.read_own_block(b)
            with DiskChain([open_image(path)]) as chain:
                chain.read(0, min(chain.disk_size, 64 * 1024))
                chain.read(max(0, chain.disk_size - 4096), min(4096, chain.disk_size))
    except VdiError:
        pass
    try:
        with open_chain(path) as chain:
            chain.read(0, min(chain.disk_size, 64 * 1024))
    except VdiError:
        pass


_SEEDS: dict[str, bytes] = {}


def _seed_files() -> dict[str, bytes]:
    """Small valid images of several shapes (built once), plus the real windoze sample."""
    if _SEEDS:
        return _SEEDS
    with scratch() as d:
        specs = {
            "vbox": {"block_size": 4096, "placement": "vbox"},
            "qemu": {"block_size": 4096, "placement": "qemu", "header_size": 0x180},
            "packed-extra": {"block_size": 1024, "placement": "packed", "block_extra": 512},
            "legacy": {"block_size": 512, "version": V0_2, "banner": BANNERS["sun-xvm"]},
            "fixed": {"block_size": 2048, "placement": "qemu", "fixed": True},
        }
        for name, kw in specs.items():
            bs = int(kw["block_size"])  # type: ignore[call-overload]
            layer: dict = {0: pattern(1, bs), 2: "zero", 3: pattern(3, bs)}
            b = build_image(
                d / f"{name}.vdi",
                5 * bs - 512 if bs > 512 else 5 * bs,
                layer,
                slot_order="reverse",
                **kw,
            )  # type: ignore[arg-type]
            _SEEDS[name] = b.path.read_bytes()
    windoze = SAMPLE_DIR / "windoze_1.3-era_sun-xvm_empty-10G.vdi"
    if windoze.is_file():
        _SEEDS["windoze"] = windoze.read_bytes()
    diff = SAMPLE_DIR / "windows10_1.15-windows_diff-0b77d7b1.vdi.gz"
    if diff.is_file():
        import gzip

        _SEEDS["windows10-diff"] = gzip.decompress(diff.read_bytes())
    return _SEEDS


@SETTINGS
@given(st.data())
def test_mutated_images_raise_only_vdi_errors(data: st.DataObject) -> None:
    seeds = _seed_files()
    name = data.draw(st.sampled_from(sorted(seeds)))
    blob = bytearray(seeds[name])
    h_end = min(len(blob), 0x200)
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, h_end * 8 - 1), st.booleans()), min_size=1, max_size=6)
    )
    for bit, anywhere in flips:
        pos = bit // 8 if not anywhere else data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= 1 << (bit % 8)
    if data.draw(st.booleans()):
        # A whole 32-bit field replaced by an extreme value.
        off = data.draw(st.integers(0x40, h_end - 4).map(lambda x: x & ~3))
        struct.pack_into(
            "<I",
            blob,
            off,
            data.draw(
                st.sampled_from(
                    [0, 1, 0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 512, 0x200000]
                )
            ),
        )
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    with scratch() as d:
        p = d / "mutant.vdi"
        p.write_bytes(bytes(blob))
        _probe(p)


@SETTINGS
@given(st.data())
def test_mutated_chain_leaf_raises_only_vdi_errors(data: st.DataObject) -> None:
    with scratch() as d:
        ch = build_chain(
            d,
            6 * 4096,
            [{0: pattern(0, 4096), 1: pattern(1, 4096)}, {1: "zero", 2: pattern(2, 4096)}],
            block_size=4096,
            placement="qemu",
            names=["base.vdi", "leaf.vdi"],
        )
        blob = bytearray(ch.leaf.read_bytes())
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0x40, 0x200 + 4 * 6 - 1))
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        ch.leaf.write_bytes(bytes(blob))
        _probe(ch.leaf)


@st.composite
def write_plans(draw: st.DrawFn) -> dict:
    layout = draw(layouts())
    disk = layout["disk"]
    writes = []
    for _ in range(draw(st.integers(1, 12))):
        off = draw(st.integers(0, disk - 1))
        n = draw(st.integers(1, min(disk - off, 3 * layout["block_size"])))
        kind = draw(st.sampled_from(["data", "zero", "zero-blocks"]))
        if kind == "zero-blocks":  # whole aligned blocks of zeros (the gh-850 case)
            bs = layout["block_size"]
            off = off // bs * bs
            n = min(disk - off, bs * draw(st.integers(1, 2)))
        writes.append((off, n, kind, draw(st.integers(0, 255))))
    layout["writes"] = writes
    return layout


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(write_plans())
def test_writes_through_chain_match_model(plan: dict) -> None:
    rng = random.Random(plan["seed"])
    bs, disk = plan["block_size"], plan["disk"]
    layers = random_layers(
        rng,
        plan["blocks"],
        bs,
        plan["depth"],
        density=plan["density"],
        zero_share=plan["zero_share"],
    )
    with scratch() as folder:
        ch = build_chain(
            folder,
            disk,
            layers,
            block_size=bs,
            slot_order=plan["order"],
            seed=plan["seed"],
            placement=plan["placement"],
            block_extra=plan["extra"],
            header_size=plan["header_size"],
        )
        parents = [p.read_bytes() for p in ch.paths[:-1]]
        want = bytearray(ch.expected)
        with open_chain(ch.leaf, writable=True) as chain:
            for off, n, kind, byte in plan["writes"]:
                data = bytes(n) if kind != "data" else bytes([byte | 1]) * n
                chain.write(off, data, durable=False)
                want[off : off + n] = data
            assert chain.read(0, disk) == bytes(want)
        with open_chain(ch.leaf) as chain:  # reopened from the files
            assert chain.read(0, disk) == bytes(want)
            top = chain.top
            h = top.header
            live = top.block_map[top.block_map < 0xFFFFFFFE]
            assert sorted(live.tolist()) == list(range(h.blocks_allocated))
            assert top.file_size >= h.offset_data + h.blocks_allocated * h.slot_size
        assert [p.read_bytes() for p in ch.paths[:-1]] == parents
