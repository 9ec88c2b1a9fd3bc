"""Power loss while copying guest files out (``vdictl get``, Extract..., drag-out).

Extraction names a batch of files only after one flush of the filesystem made their contents
durable (docs/crash-safety.md, "Many new files"). At every flush the harness builds crash
states (durable state plus subsets of the unsynced writes, lost renames and links) and
requires: every file that has its final name holds exactly the guest file's bytes (an absent
file is fine, a short or mixed one never is); then the user's next command, the same
extraction with ``--force``, leaves the destination exactly the guest's tree, with no
temporary file behind. Expected bytes come from the host tree ``mke2fs -d`` built the
filesystem from, not from the reader under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from crashsim import CrashState, explore, record, snapshot_tree
from plcheck import finish

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine" / "guestfs" / "files"))

from fsbuild import MiB, RawReader, mkext, need

from vdigui.engine.guestfs.files import extract as ex
from vdigui.engine.guestfs.files import open_namespace


def _tree(root: Path) -> dict[str, bytes]:
    """Folders of small files and two larger ones; no links (the recorder models files)."""
    rng = np.random.default_rng(3)
    files: dict[str, bytes] = {}
    for folder in ("docs", "docs/old", "src"):
        for i in range(4):
            files[f"{folder}/f{i}.dat"] = rng.bytes(int(rng.integers(1, 9000)))
    files["big.bin"] = rng.bytes(300_000)
    files["src/empty"] = b""
    files["tail.bin"] = rng.bytes(70_001)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@pytest.mark.parametrize("batch_files", [3, 4096])
def test_named_files_are_complete_at_every_cut(
    shm_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_files: int
) -> None:
    need("mke2fs")
    expected = _tree(tmp_path / "tree")
    image = mkext(tmp_path / "fs.img", 4 * MiB, tmp_path / "tree", "-t", "ext4", "-b", "1024")
    ns = open_namespace(RawReader(image))
    monkeypatch.setattr(ex, "BATCH_FILES", batch_files)  # several batches on a small tree
    dest = shm_root / "out"

    def extract(force: bool = False) -> None:
        plan = ex.plan_extract([(ns, ns.stat("/"))], dest, force=force)
        ex.run_extract(plan)

    rec, error = record(shm_root, extract)
    assert error is None, error

    def check(state: CrashState) -> str:
        named = {
            rel.removeprefix("out/"): data
            for rel, data in state.files.items()
            if rel.startswith("out/") and not rel.endswith(".vdigui-tmp")
        }
        for rel, data in named.items():
            assert data == expected[rel], f"{rel} holds {len(data)} bytes, not the guest's file"
        extract(force=True)  # the user's next command
        after = snapshot_tree(dest)
        left = [rel for rel in after if rel.endswith(".vdigui-tmp")]
        assert not left, f"temporary files left behind: {left}"
        assert after == expected, sorted(set(after) ^ set(expected))
        return "all named" if len(named) == len(expected) else "some named"

    report = explore(
        f"extract (batches of {batch_files})", shm_root, rec, check, per_barrier=6, max_states=80
    )
    finish(report)
    assert report.outcomes.get("all named") and report.outcomes.get("some named"), report.outcomes
    # One flush per batch and one at the end, never one per file.
    syncs = {e.seq for e in rec.events if e.call == "syncfs" and e.kind == "dirsync" and not e.path}
    assert len(syncs) == -(-len(expected) // batch_files) + 1
    assert not [e for e in rec.events if e.call in ("fsync", "fdatasync")]
