"""From files to VDI blocks and back (vdigui.engine.guestfs.files.holdings).

Expected values: the file's filesystem blocks from ``debugfs blocks``, the file list from The
Sleuth Kit's ``fls -r``, the layer that holds each 1 MiB block from what the VM builder wrote
(diffvm.py), and slots from the image's block map read with tests/engine/merge/vmbuild.py's own
header reader.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffvm import EXT_BLOCK, DiffVm, build
from fsbuild import MiB, debugfs_blocks, fls_paths, need
from vmbuild import read_header_fields

from vdigui.cli.common import resolve_source
from vdigui.engine.chain import DiskChain, open_paths
from vdigui.engine.guestfs.files import list_volumes, open_namespace
from vdigui.engine.guestfs.files.holdings import file_blocks, layer_holdings
from vdigui.engine.usage_report import GuestReader


@pytest.fixture(scope="module")
def dvm(tmp_path_factory: pytest.TempPathFactory) -> DiffVm:
    return build(tmp_path_factory.mktemp("holdings"))


def _chain(dvm: DiffVm, state: str) -> DiskChain:
    if state == "current":
        return open_paths(resolve_source(dvm.folder, None, True))
    return open_paths(resolve_source(dvm.folder, state, False))


def _map(path: Path) -> np.ndarray:
    f = read_header_fields(path)
    raw = path.read_bytes()
    return np.frombuffer(
        raw,
        dtype="<u4",
        count=f["blocks"],  # type: ignore[call-overload]
        offset=f["off_blocks"],
    )  # type: ignore[arg-type]


def _layer_of(dvm: DiffVm, block: int) -> int:
    if block in dvm.written[("S2", "current")]:
        return 2
    if block in dvm.written[("S1", "S2")]:
        return 1
    return 0


def test_file_blocks_layers_extents_and_slot_runs(dvm: DiffVm) -> None:
    base = dvm.starts[0] * 512
    fs_blocks = debugfs_blocks(dvm.exts["current"], "/big.bin")
    expected_blocks = list(dict.fromkeys((base + b * EXT_BLOCK) // MiB for b in fs_blocks))
    runs = 1 + sum(1 for x, y in itertools.pairwise(fs_blocks) if y != x + 1)
    with _chain(dvm, "current") as chain:
        ns = open_namespace(GuestReader(chain), "p1")
        fb = file_blocks(chain, ns.extents("/big.bin"))
        paths = [layer.path for layer in chain.layers]
    assert fb.blocks.tolist() == expected_blocks
    assert fb.layers.tolist() == [_layer_of(dvm, b) for b in expected_blocks]
    assert fb.extents == runs
    assert 2 in fb.by_layer() and 0 in fb.by_layer()  # changed in place in the current layer
    maps = [_map(p) for p in paths]
    slots = [int(maps[lay][b]) for b, lay in zip(expected_blocks, fb.layers.tolist(), strict=True)]
    assert fb.slots.tolist() == slots
    expected_runs = 1 + sum(
        1
        for i in range(1, len(slots))
        if fb.layers[i] != fb.layers[i - 1] or slots[i] != slots[i - 1] + 1
    )
    assert fb.slot_runs == expected_runs


def test_layer_holdings_are_the_files_in_the_layers_blocks(dvm: DiffVm) -> None:
    need("fls")
    mask = dvm.written[("S1", "S2")]
    base = dvm.starts[0] * 512
    files = [p for p, (kind, _ino) in fls_paths(dvm.exts["S2"]).items() if kind == "r/r"]
    expected: dict[str, int] = {}
    for path in files:
        size = (
            (dvm.tree / path.lstrip("/")).stat().st_size
            if (dvm.tree / path.lstrip("/")).exists()
            else None
        )
        blocks = debugfs_blocks(dvm.exts["S2"], path)
        if size is None or path in ("/etc/hostname",):
            size = (
                len(b"guest-two, renamed and longer\n")
                if path in ("/etc/hostname", "/new.txt")
                else 256 * 40
            )
        # File offset of each listed block: in order, except sparse.img's two data blocks,
        # which make_tree wrote at 5 MiB and 9 MiB.
        offsets = (
            [5 * MiB, 9 * MiB]
            if path == "/sparse.img"
            else [i * EXT_BLOCK for i in range(len(blocks))]
        )
        held = sum(
            min(EXT_BLOCK, size - off)
            for off, b in zip(offsets, blocks, strict=True)
            if (base + b * EXT_BLOCK) // MiB in mask
        )
        if held:
            expected[path] = held
    with _chain(dvm, "S2") as chain:
        reader = GuestReader(chain)
        spaces = [open_namespace(reader, v) for v in list_volumes(reader) if v.readable]
        result = layer_holdings(chain, 1, spaces)
        partial = layer_holdings(chain, 1, spaces, max_files=5)
    got = {h.path: h.layer_bytes for h in result.files if h.volume == "p1"}
    assert got == expected and got
    assert result.complete and result.layer_bytes == len(mask) * MiB
    shares = [h.layer_bytes for h in result.files]
    assert shares == sorted(shares, reverse=True)
    assert result.unclaimed == result.layer_bytes - sum(shares)
    assert "/README.TXT" in {h.path for h in result.files if h.volume == "p2"}
    assert not partial.complete and partial.examined == 5
