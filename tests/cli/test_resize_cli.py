"""``vdictl resize``: plans, runs, refusals (one line, exit 1, nothing written), JSON, undo.

Images come from qemu-img; sizes and tables are checked with qemu-img info and sfdisk.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from builders import folder_state
from support import require_tool

from vdigui.cli import main
from vdigui.engine.operations import merge as mg

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _no_proc_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mg, "running_hint", lambda folder: None)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def qemu_disk(folder: Path, qemu_img: str, size: str, table: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "d.raw"
    subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(raw), size], check=True)
    if table:
        subprocess.run(
            [require_tool("sfdisk"), "-q", str(raw)],
            input=table,
            text=True,
            check=True,
            capture_output=True,
        )
    vdi = folder / "d.vdi"
    subprocess.run([qemu_img, "convert", "-O", "vdi", str(raw), str(vdi)], check=True)
    raw.unlink()
    return vdi


def virtual_size(qemu_img: str, vdi: Path) -> int:
    info = subprocess.run(
        [qemu_img, "info", "--output=json", str(vdi)], capture_output=True, text=True, check=True
    ).stdout
    return int(json.loads(info)["virtual-size"])


def test_dry_run_prints_the_plan_and_writes_nothing(
    tmp_path: Path, qemu_img: str, capsys: pytest.CaptureFixture[str]
) -> None:
    vdi = qemu_disk(tmp_path, qemu_img, "8M")
    before = folder_state(tmp_path)
    code, out, err = run(capsys, "resize", vdi, "--size", "1G", "--dry-run")
    assert code == 0, err
    assert "Grow the disk" in out and "data area moves" in out and "Space:" in out
    assert folder_state(tmp_path) == before
    code, out, _ = run(capsys, "resize", vdi, "--size", "+8M", "--dry-run", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["new_size"] == 16 * MIB and plan["old_size"] == 8 * MIB
    assert plan["images"][0]["path"] == str(vdi)


def test_grow_by_and_undo(
    tmp_path: Path, qemu_img: str, capsys: pytest.CaptureFixture[str]
) -> None:
    vdi = qemu_disk(tmp_path, qemu_img, "8M")
    original = hashlib.sha256(vdi.read_bytes()).hexdigest()
    code, out, err = run(capsys, "resize", vdi, "--size", "+24M")
    assert code == 0, err
    assert "Done, verified." in out
    assert virtual_size(qemu_img, vdi) == 32 * MIB
    assert subprocess.run([qemu_img, "check", str(vdi)], capture_output=True).returncode == 0
    code, out, err = run(capsys, "undo", tmp_path)
    assert code == 0, err
    assert hashlib.sha256(vdi.read_bytes()).hexdigest() == original


def test_grow_partition_json(
    tmp_path: Path, qemu_img: str, capsys: pytest.CaptureFixture[str]
) -> None:
    vdi = qemu_disk(tmp_path, qemu_img, "16M", "label: dos\nstart=2048, size=20480, type=83\n")
    code, out, err = run(
        capsys, "resize", vdi, "--size", "32M", "--grow-partition", "--json", "--no-undo"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["done"] and result["verified"] and not result["undoable"]
    assert result["partition_table"]["grown_partition"] == "MBR #1"
    raw = tmp_path / "out.raw"
    subprocess.run([qemu_img, "convert", "-O", "raw", str(vdi), str(raw)], check=True)
    dump = json.loads(
        subprocess.run(
            [require_tool("sfdisk"), "-J", str(raw)], capture_output=True, text=True, check=True
        ).stdout
    )
    part = dump["partitiontable"]["partitions"][0]
    assert part["start"] + part["size"] == 32 * MIB // 512


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--size", "4M"), "no partition table"),
        (("--size", "lots"), "is not a size"),
        (("--size", "8M", "--disk", "2"), "--disk chooses a disk of a VM"),
        (("--size", "64M", "--grow-partition"), "no partition table vdigui recognises"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(
    tmp_path: Path,
    qemu_img: str,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    vdi = qemu_disk(tmp_path, qemu_img, "8M")
    before = folder_state(tmp_path)
    code, out, err = run(capsys, "resize", vdi, *args)
    assert code == 1
    assert message in err and err.startswith("vdictl: error: ") and err.count("\n") == 1
    assert "Traceback" not in err and out == ""
    assert folder_state(tmp_path) == before


def test_shrink_refusal_names_the_minimum(
    tmp_path: Path, qemu_img: str, capsys: pytest.CaptureFixture[str]
) -> None:
    vdi = qemu_disk(tmp_path, qemu_img, "32M", "label: dos\nstart=2048, size=20480, type=83\n")
    before = folder_state(tmp_path)
    code, _out, err = run(capsys, "resize", vdi, "--size", "8M")
    assert code == 1
    assert f"the smallest size is {(2048 + 20480) * 512:,} bytes" in err
    assert folder_state(tmp_path) == before
    code, _out, err = run(capsys, "resize", vdi, "--size", str((2048 + 20480) * 512))
    assert code == 0, err
    assert virtual_size(qemu_img, vdi) == (2048 + 20480) * 512


def test_help_describes_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["resize", "--help"])
    out = capsys.readouterr().out
    for option in (
        "--size",
        "--grow-partition",
        "--dry-run",
        "--no-verify",
        "--no-undo",
        "--json",
        "--disk",
    ):
        assert option in out
