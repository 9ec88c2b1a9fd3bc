"""``vdictl diff VMFOLDER A B [--json]`` on a VM whose states differ in recorded ways.

The VM comes from tests/engine/guestfs/files/diffvm.py: its later states were made with
debugfs and mtools, and the expected changes are that module's own record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "engine" / "guestfs" / "files"))

from diffvm import DiffVm, build  # noqa: E402

from vdigui.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def dvm(tmp_path_factory: pytest.TempPathFactory) -> DiffVm:
    return build(tmp_path_factory.mktemp("diffcli"))


def vdictl(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_shape_and_content(capsys: pytest.CaptureFixture[str], dvm: DiffVm) -> None:
    code, out, err = vdictl(capsys, "diff", dvm.folder, "S1", "current", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"a", "b", "changes", "summary", "notes", "stats"}
    assert doc["a"]["state"] == "S1" and doc["b"]["state"] == "current"
    assert len(doc["b"]["images"]) == 3 and len(doc["a"]["images"]) == 1
    keys = {
        "volume",
        "path",
        "change",
        "kind",
        "size_a",
        "size_b",
        "delta",
        "mtime_a",
        "mtime_b",
        "content_changed",
        "decided",
    }
    assert all(set(c) == keys for c in doc["changes"])
    got = {(c["volume"], c["path"]): (c["change"], c["content_changed"]) for c in doc["changes"]}
    assert got == dvm.expected("S1", "current")
    s = doc["summary"]
    assert s["added"] == sum(v[0] == "added" for v in got.values())
    assert s["removed"] == sum(v[0] == "removed" for v in got.values())
    assert s["delta"] == sum(c["delta"] for c in doc["changes"])
    assert doc["stats"]["changed_blocks"] == len(dvm.changed_blocks("S1", "current"))
    host = next(c for c in doc["changes"] if c["path"] == "/etc/hostname")
    assert host["delta"] == host["size_b"] - host["size_a"] > 0


def test_text_output_marks_each_change(capsys: pytest.CaptureFixture[str], dvm: DiffVm) -> None:
    code, out, err = vdictl(capsys, "diff", dvm.folder, "S1", "S2")
    assert code == 0, err
    lines = out.splitlines()
    assert "A  p1:/new.txt  (+30 bytes)" in lines
    assert "D  p1:/hard1  (-13 bytes)" in lines
    assert "A  p1:/newdir/" in lines
    assert any(
        line.startswith("M  p1:/etc/hostname  10 bytes -> 30 bytes (+20 bytes)") for line in lines
    )
    assert any(line.startswith("m  p1:/Ünïcødé ñame.txt") for line in lines)
    assert lines[-1].startswith("3 added, 2 removed, 4 changed")


def test_same_state_and_mistakes(capsys: pytest.CaptureFixture[str], dvm: DiffVm) -> None:
    code, out, _ = vdictl(capsys, "diff", dvm.folder, "S2", "S2")
    assert code == 0 and "No guest files differ" in out
    code, _, err = vdictl(capsys, "diff", dvm.folder, "S1", "nope")
    assert code == 1 and err.count("\n") == 1 and "nope" in err and "Traceback" not in err
    code, _, err = vdictl(capsys, "diff", dvm.raws["S1"], "S1", "current")
    assert code == 1 and "not a VM folder" in err
    code, _, err = vdictl(capsys, "diff", dvm.folder, "S1", "S2", "--volume", "p9")
    assert code == 1 and "p9" in err and err.count("\n") == 1
