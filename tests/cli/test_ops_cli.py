"""vdictl compact / clone / convert through ``vdigui.cli.main`` (and one real Ctrl-C)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest
from builders import MIB, build_image, folder_state, model_read, pattern

from vdigui.cli import main
from vdigui.engine import open_chain
from vdigui.engine.operations.verify import DIGEST_NAME

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def guest(path: Path) -> bytes:
    with open_chain(path) as chain:
        return chain.read(0, chain.disk_size)


def image(folder: Path, name: str = "disk.vdi", blocks: int = 24, **kw: object) -> Path:
    rng = random.Random(7)
    layer: dict[int, object] = {}
    for b in range(blocks):
        r = rng.random()
        if r < 0.3:
            layer[b] = bytes(MIB)
        elif r < 0.8:
            layer[b] = pattern(b, MIB)
    folder.mkdir(parents=True, exist_ok=True)
    return build_image(
        folder / name,
        blocks * MIB,
        layer,
        slot_order="shuffle",  # type: ignore[arg-type]
        **kw,
    ).path


def test_compact_dry_run_then_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = image(tmp_path)
    before = guest(path)
    state = folder_state(tmp_path)
    code, out, err = run(capsys, "compact", str(path), "--dry-run")
    assert code == 0, err
    assert out.startswith(f"Plan: compact {path} (in place)\n")
    assert "All-zero blocks" in out and "-> ZERO" in out and "Slots to move" in out
    assert folder_state(tmp_path) == state
    code, out, err = run(capsys, "compact", str(path))
    assert code == 0, err
    assert out.startswith("Compacted disk.vdi: ") and out.rstrip().endswith("; verified.")
    assert guest(path) == before
    code, out, err = run(capsys, "compact", str(path), "--json")
    assert code == 0, err
    result = json.loads(out)["result"]
    assert result["changed"] is False and result["path"] == str(path)
    code, out, _ = run(capsys, "compact", str(path), "--dry-run")
    assert "already compact: nothing to do" in out


def test_compact_defrag_no_verify(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = image(tmp_path)
    before = guest(path)
    code, out, err = run(capsys, "compact", str(path), "--defrag", "--no-verify")
    assert code == 0, err
    assert out.startswith("Defragmented disk.vdi: ") and "not verified (--no-verify)" in out
    assert guest(path) == before


def test_compact_refusal_is_one_sentence(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fixed = build_image(tmp_path / "f.vdi", 4 * MIB, {0: pattern(0, MIB)}, fixed=True).path
    code, out, err = run(capsys, "compact", str(fixed))
    assert code == 1 and out == ""
    assert err == (
        f"vdictl: error: 'f.vdi' is a fixed-size image; compacting would break its "
        f"preallocated layout. Convert it first with 'vdictl convert {fixed} --to "
        "dynamic', which also drops its all-zero blocks.\n"
    )
    code, out, err = run(capsys, "compact", str(fixed), "--dry-run")
    assert code == 1 and "Refused: 'f.vdi' is a fixed-size image" in out


def test_compact_cancel_exits_130(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vdigui.cli import common

    path = image(tmp_path)
    state = folder_state(tmp_path)

    def progress(self: common.Context, event: object) -> None:
        self.token.cancel()  # what the SIGINT handler does while an operation runs

    monkeypatch.setattr(common.Context, "progress", progress)
    code, _, err = run(capsys, "compact", str(path))
    assert code == 130
    assert err == "vdictl: Cancelled: nothing was changed.\n"
    assert folder_state(tmp_path) == state


def test_clone_image_and_keep_uuid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = image(tmp_path / "src")
    dest = tmp_path / "copy.vdi"
    code, out, err = run(capsys, "clone", str(path), str(dest), "--dry-run")
    assert code == 0 and out.startswith("Plan: clone\n") and not dest.exists()
    code, out, err = run(capsys, "clone", str(path), str(dest))
    assert code == 0, err
    assert out.startswith(f"Cloned to {dest}: dynamic, ")
    assert f"; verified (guest {DIGEST_NAME} " in out
    assert guest(dest) == guest(path)
    code, out, err = run(capsys, "clone", str(path), str(dest))
    assert code == 1 and "already exists" in err
    fixed = tmp_path / "fixed.vdi"
    code, out, err = run(capsys, "clone", str(path), str(fixed), "--fixed", "--keep-uuid", "--json")
    assert code == 0, err
    assert err.startswith("vdictl: warning: The clone keeps the source's UUID")
    result = json.loads(out)["result"]
    assert result["dest"] == str(fixed) and result["verified"] is True
    assert guest(fixed) == guest(path)


def _vm_with_snapshot(folder: Path) -> tuple[Path, bytes, bytes]:
    """A VM folder: snapshot "Before" froze the base; the current state adds a diff."""
    vm = folder / "Demo"
    (vm / "Snapshots").mkdir(parents=True)
    base = build_image(
        vm / "Demo.vdi", 8 * MIB, {0: pattern(0, MIB), 2: pattern(2, MIB), 5: pattern(5, MIB)}
    )
    du = uuidlib.uuid4()
    diff = build_image(
        vm / "Snapshots" / f"{{{du}}}.vdi",
        8 * MIB,
        {2: "zero", 3: pattern(33, MIB)},
        parent=base.header,
        uuid_create=du,
    )

    def hardware(disk: uuidlib.UUID) -> str:
        return (
            '<Hardware><StorageControllers><StorageController name="SATA" type="AHCI" '
            'PortCount="1"><AttachedDevice type="HardDisk" hotpluggable="false" port="0" '
            f'device="0"><Image uuid="{{{disk}}}"/></AttachedDevice></StorageController>'
            "</StorageControllers></Hardware>"
        )

    snap = uuidlib.uuid4()
    (vm / "Demo.vbox").write_text(
        '<?xml version="1.0"?>\n<VirtualBox xmlns="http://www.virtualbox.org/" '
        'version="1.19-linux">\n'
        f'  <Machine uuid="{{{uuidlib.uuid4()}}}" name="Demo" OSType="Linux_64" '
        f'currentSnapshot="{{{snap}}}" snapshotFolder="Snapshots">\n'
        "    <MediaRegistry><HardDisks>"
        f'<HardDisk uuid="{{{base.uuid}}}" location="Demo.vdi" format="VDI" type="Normal">'
        f'<HardDisk uuid="{{{du}}}" location="Snapshots/{{{du}}}.vdi" format="VDI"/>'
        "</HardDisk></HardDisks></MediaRegistry>\n"
        f'    <Snapshot uuid="{{{snap}}}" name="Before" timeStamp="2026-03-02T09:14:05Z">'
        f"{hardware(base.uuid)}</Snapshot>\n"
        f"    {hardware(du)}\n"
        "  </Machine>\n</VirtualBox>\n",
        encoding="utf-8",
    )
    return (
        vm,
        model_read([base.layer], 8 * MIB, MIB),
        model_read([base.layer, diff.layer], 8 * MIB, MIB),
    )


def test_clone_from_vm_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    vm, at_snapshot, current = _vm_with_snapshot(tmp_path)
    state = folder_state(vm)
    code, _, err = run(capsys, "clone", str(vm), str(tmp_path / "snap.vdi"), "--snapshot", "Before")
    assert code == 0, err
    assert guest(tmp_path / "snap.vdi") == at_snapshot
    code, _, err = run(capsys, "clone", str(vm), str(tmp_path / "cur.vdi"), "--current")
    assert code == 0, err
    assert guest(tmp_path / "cur.vdi") == current
    assert folder_state(vm) == state
    code, _out, err = run(capsys, "clone", str(vm), str(tmp_path / "x.vdi"))
    assert code == 1 and "--current" in err


def test_convert_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = image(tmp_path)
    before = guest(path)
    code, out, err = run(capsys, "convert", str(path), "--to", "fixed", "--dry-run")
    assert code == 0 and out.startswith("Plan: convert\n")
    code, out, err = run(capsys, "convert", str(path), "--to", "fixed")
    assert code == 0, err
    assert out.startswith("Converted disk.vdi to fixed: ")
    assert err.startswith("vdictl: warning: The fixed image takes")
    code, out, err = run(capsys, "convert", str(path), "--to", "fixed")
    assert code == 1 and err == "vdictl: error: 'disk.vdi' is already a fixed image.\n"
    code, out, err = run(capsys, "convert", str(path), "--to", "dynamic", "--json")
    assert code == 0, err
    assert json.loads(out)["result"]["to"] == "dynamic"
    assert guest(path) == before


def test_real_ctrl_c_cancels_a_clone_at_the_next_block(tmp_path: Path) -> None:
    """SIGINT to a running ``python -m vdigui.cli clone``: exit 130, no file left behind."""
    # 6 GiB of virtual disk that reads as zeros: hashing it takes seconds, copying nothing.
    src = build_image(tmp_path / "big.vdi", 6 << 30, {0: pattern(0, MIB)}).path
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vdigui.cli", "clone", str(src), str(out_dir / "c.vdi")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not list(out_dir.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the clone finished before it could be interrupted"
    # Freeze it while the signal is queued, so it surely arrives mid-copy (no race with the
    # machine's speed); the hang guard is communicate's timeout, not a timing assertion.
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().endswith(
        "vdictl: Cancelled: nothing was changed and no clone was left behind."
    ), err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []


# -- filesystem-aware: usage, compact --fs-aware, clone --fs-aware, journal recovery ----------
@pytest.fixture(scope="module")
def guest_disk(tmp_path_factory: pytest.TempPathFactory) -> Any:
    sys.path.insert(0, str(REPO / "tests" / "engine" / "operations"))
    from fsaware_disk import build_guest_disk

    return build_guest_disk(tmp_path_factory.mktemp("fsaware"))


def test_usage_text_and_json(capsys: pytest.CaptureFixture[str], guest_disk: Any) -> None:
    code, out, err = run(capsys, "usage", str(guest_disk.vdi))
    assert code == 0, err
    for word in (
        "Guest uses",
        "partly used",
        "Zero blocks alone",
        "FS-aware",
        "ext4",
        "ntfs",
        "fat16",
        "MBR #3",
    ):
        assert word in out, word
    code, out, err = run(capsys, "usage", str(guest_disk.vdi), "--json")
    doc = json.loads(out)
    kinds = [v["kind"] for v in doc["usage"]["volumes"]]
    assert {"ext4", "ntfs", "fat16", "partition-table", "free"} <= set(kinds)
    blocks = doc["usage"]["blocks"]
    assert blocks["unused"] + blocks["partly"] + blocks["full"] == blocks["blocks"] == 96
    assert 60 < doc["forecast"]["fs_unused_blocks"] <= blocks["unused"]
    assert doc["forecast"]["bytes_fs_aware"] > 60 * MIB


def test_compact_fs_aware(
    capsys: pytest.CaptureFixture[str], guest_disk: Any, tmp_path: Path
) -> None:
    path = Path(shutil.copy(guest_disk.vdi, tmp_path / "g.vdi"))
    code, out, err = run(capsys, "compact", str(path), "--fs-aware", "--dry-run")
    assert code == 0, err
    assert "filesystem-aware" in out and "Unused by guest" in out and "-> ZERO" in out
    assert "Kept whole: nothing" in out
    size = path.stat().st_size
    code, out, err = run(capsys, "compact", str(path), "--fs-aware")
    assert code == 0, err
    assert "unused by the guest dropped" in out and "verified" in out
    assert path.stat().st_size < size - 60 * MIB


def test_compact_fs_aware_dry_run_names_kept_volumes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A disk without a filesystem vdigui understands: kept whole, and the preview says why."""
    path = image(tmp_path)
    code, out, err = run(capsys, "compact", str(path), "--fs-aware", "--dry-run")
    assert code == 0, err
    assert "Kept whole:\n  whole disk (unknown" in out


def test_clone_fs_aware(
    capsys: pytest.CaptureFixture[str], guest_disk: Any, tmp_path: Path
) -> None:
    dest = tmp_path / "c.vdi"
    code, out, err = run(capsys, "clone", str(guest_disk.vdi), str(dest), "--fs-aware")
    assert code == 0, err
    assert "unused by the guest left out" in out
    assert dest.stat().st_size < guest_disk.vdi.stat().st_size - 60 * MIB


def test_writing_commands_recover_an_interrupted_operation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from vdigui.engine.operations import journal

    path = image(tmp_path)
    journal.Journal.begin(tmp_path, "merge", {}, "merge of something")
    code, _out, err = run(capsys, "compact", str(path), "--dry-run")
    assert code == 0, err
    assert "An interrupted vdigui operation (merge of something) was found and rolled back" in err
    assert not journal.journal_path(tmp_path).exists()
