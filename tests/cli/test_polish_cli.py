"""First-hour polish of vdictl: same SOURCE forms everywhere, one message per error, help for
every option, readable JSON, honest usage figures, old VMs, and the leftover cleaner."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import uuid as uuidlib
from pathlib import Path

import pytest
from builders import MIB, build_image, pattern, write_vbox
from support import require_tool

from vdigui.cli import build_parser, main
from vdigui.engine.operations.preflight import locked_temp


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str) -> str:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vdictl: error: ")
    return lines[0]


# -- SOURCE forms -------------------------------------------------------------------------------
@pytest.fixture
def vm(tmp_path: Path) -> Path:
    """A VM with one snapshot 'Before': base (blocks 0) <- diff (block 1)."""
    folder = tmp_path / "Demo"
    (folder / "Snapshots").mkdir(parents=True)
    base = build_image(folder / "Demo.vdi", 4 * MIB, {0: pattern(0, MIB)})
    du = uuidlib.uuid4()
    build_image(
        folder / "Snapshots" / f"{{{du}}}.vdi",
        4 * MIB,
        {1: pattern(1, MIB)},
        parent=base.header,
        uuid_create=du,
    )
    write_vbox(
        folder / "Demo.vbox",
        uuidlib.uuid4(),
        "Demo",
        [(base.uuid, "Demo.vdi", [(du, f"Snapshots/{{{du}}}.vdi")])],
        snapshot=("Before", uuidlib.uuid4()),
    )
    return folder


INSPECTORS = ["info", "map", "frag", "check", "usage", "export"]


def _args(command: str, source: str, tmp_path: Path, *which: str) -> list[str]:
    extra = (
        [str(tmp_path / f"out-{len(list(tmp_path.iterdir()))}.raw")] if command == "export" else []
    )
    return [command, source, *extra, *which]


@pytest.mark.parametrize("command", INSPECTORS)
def test_every_inspector_takes_a_vm_with_current_snapshot_or_disk(
    capsys: pytest.CaptureFixture[str], vm: Path, tmp_path: Path, command: str
) -> None:
    for source in (str(vm), str(vm / "Demo.vbox")):
        for which in (["--current"], ["--snapshot", "Before"], ["--disk", "1"]):
            code, out, err = run(capsys, *_args(command, source, tmp_path, *which))
            assert code == 0, (source, which, err)
            assert out.strip(), (source, which)
    code, out, _ = run(capsys, "info", "--json", str(vm), "--snapshot", "Before")
    assert json.loads(out)["file"].endswith("Demo.vdi")
    code, out, _ = run(capsys, "info", "--json", str(vm / "Demo.vbox"), "--current")
    assert json.loads(out)["type"] == "differencing"


@pytest.mark.parametrize("command", [c for c in INSPECTORS if c != "check"])
def test_a_vbox_is_never_called_a_vm_folder(
    capsys: pytest.CaptureFixture[str], vm: Path, tmp_path: Path, command: str
) -> None:
    code, _, err = run(capsys, *_args(command, str(vm / "Demo.vbox"), tmp_path))
    line = one_error(code, err)
    assert "VM folder" not in line and "settings file" in line and "--current" in line
    code, _, err = run(capsys, *_args(command, str(vm), tmp_path))
    assert "is a VM folder" in one_error(code, err)


def test_snapshot_options_on_an_image_are_refused_plainly(
    capsys: pytest.CaptureFixture[str], vm: Path
) -> None:
    code, _, err = run(capsys, "info", str(vm / "Demo.vdi"), "--current")
    assert "is an image" in one_error(code, err)


# -- check: one message, status 1 when nothing could be checked --------------------------------
def _vmdk(tmp_path: Path) -> Path:
    qemu_img = require_tool("qemu-img")
    path = tmp_path / "disk.vmdk"
    subprocess.run(
        [qemu_img, "create", "-q", "-f", "vmdk", str(path), "4M"], check=True, timeout=60
    )
    return path


@pytest.mark.parametrize("kind", ["vmdk", "text", "truncated", "missing"])
def test_check_on_a_file_that_is_not_a_vdi(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    if kind == "vmdk":
        path = _vmdk(tmp_path)
        words = "it is a VMDK sparse disk"
    elif kind == "text":
        path = tmp_path / "notes.vdi"
        path.write_text("not a disk\n" * 100)
        words = "it is a text file"
    elif kind == "truncated":
        path = build_image(tmp_path / "cut.vdi", 4 * MIB, {0: pattern(0, MIB)}).path
        os.truncate(path, 300)
        words = "truncated"
    else:
        path = tmp_path / "gone.vdi"
        words = "does not exist"
    code, out, err = run(capsys, "check", str(path))
    line = one_error(code, err)
    assert out == ""
    assert words in line, line
    assert line.count(path.name) == 1 or kind == "vmdk", line  # the advice names it again


def test_check_damaged_image_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = build_image(tmp_path / "d.vdi", 4 * MIB, {0: pattern(0, MIB)}, poke={1: 5}).path
    code, out, err = run(capsys, "check", str(path))
    assert (code, err) == (2, "")
    assert "past the end" in out


# -- help, JSON, tree ---------------------------------------------------------------------------
def _walk(parser: argparse.ArgumentParser, name: str) -> list[str]:
    missing: list[str] = []
    for action in parser._actions:  # argparse has no public listing
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for command, sub in action.choices.items():
                if not helps.get(command):
                    missing.append(f"{name} {command}")
                missing += _walk(sub, f"{name} {command}")
        elif not action.help:
            missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_subcommand_and_option_has_a_help_line() -> None:
    assert _walk(build_parser(), "vdictl") == []


def test_json_keeps_non_ascii_names_as_text(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = build_image(tmp_path / "Диск données.vdi", MIB, {}, comment="系统盘".encode()).path
    code, out, _ = run(capsys, "info", "--json", str(path))
    assert code == 0
    assert "Диск données.vdi" in out and "系统盘" in out and "\\u" not in out


def test_tree_without_snapshots_shows_only_the_state(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "Plain"
    folder.mkdir()
    base = build_image(folder / "Plain.vdi", MIB, {})
    write_vbox(folder / "Plain.vbox", uuidlib.uuid4(), "Plain", [(base.uuid, "Plain.vdi", [])])
    code, out, err = run(capsys, "tree", str(folder))
    assert code == 0, err
    assert "(none)" not in out and "Snapshots:" not in out
    assert "Current State (no snapshots): Plain.vdi" in out


def test_pre_17_vm_beside_its_disk(
    capsys: pytest.CaptureFixture[str], samples: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "Windoze"
    folder.mkdir()
    shutil.copyfile(samples / "windoze_1.3-linux_machine.xml", folder / "Windoze.xml")
    shutil.copyfile(samples / "windoze_1.3-era_sun-xvm_empty-10G.vdi", folder / "Windoze.vdi")
    code, out, err = run(capsys, "tree", str(folder))
    assert code == 0, out + err
    assert "Current State (no snapshots): Windoze.vdi" in out
    assert "orphan" not in out and "no disks" not in out
    code, out, err = run(capsys, "check", str(folder))
    assert code == 0, out + err
    code, out, err = run(capsys, "info", str(folder), "--current")
    assert code == 0 and "Windoze.vdi" in out


# -- usage ----------------------------------------------------------------------------------
def test_usage_of_a_blank_disk_is_unknown(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = build_image(tmp_path / "blank.vdi", 30 * MIB, {}).path
    code, out, err = run(capsys, "usage", str(path))
    assert code == 0, err
    (line,) = [x for x in out.splitlines() if "Guest uses" in x]
    assert "unknown" in line and "%" not in line
    code, out, _ = run(capsys, "usage", str(path), "--json")
    assert json.loads(out)["guest_uses"] is None


def test_usage_counts_zero_blocks_only_when_asked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    layer = {0: pattern(0, MIB), 1: bytes(MIB), 2: bytes(MIB)}
    path = build_image(tmp_path / "z.vdi", 4 * MIB, layer).path
    code, out, _ = run(capsys, "usage", str(path), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["zeros_scanned"] is False and doc["forecast"]["zero_blocks"] is None
    code, out, _ = run(capsys, "usage", str(path), "--json", "--scan-zeros")
    doc = json.loads(out)
    assert doc["zeros_scanned"] is True and doc["forecast"]["zero_blocks"] == 2
    code, out, _ = run(capsys, "usage", str(path))
    assert "not counted (--scan-zeros" in out


# -- clean ------------------------------------------------------------------------------------
def test_clean_removes_leftovers_but_never_one_in_use(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    build_image(tmp_path / "disk.vdi", MIB, {})
    old = tmp_path / ".disk.vdi.vdigui-tmp-0badf00d"
    old.write_bytes(b"partial")
    busy = tmp_path / ".disk.vdi.vdigui-tmp-feedbeef"
    with locked_temp(busy):
        code, out, _ = run(capsys, "clean", str(tmp_path), "--dry-run")
        assert code == 0 and str(old) in out and str(busy) not in out
        assert old.exists()
        code, out, _ = run(capsys, "check", str(tmp_path / "disk.vdi"))
        assert code == 2 and "running now" in out and "vdictl clean" in out
        code, out, _ = run(capsys, "clean", str(tmp_path / "disk.vdi"))
        assert code == 0 and f"Removed {old}" in out
        assert not old.exists() and busy.exists()
        busy.unlink()


@pytest.mark.parametrize("command", ["merge", "create", "compact", "convert"])
def test_the_next_writing_command_sweeps_leftovers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    base = build_image(tmp_path / "base.vdi", 4 * MIB, {0: pattern(0, MIB), 1: bytes(MIB)})
    child = build_image(tmp_path / "child.vdi", 4 * MIB, {2: pattern(2, MIB)}, parent=base.header)
    leftover = tmp_path / ".base.vdi.vdigui-tmp-5eed5eed"
    leftover.write_bytes(b"\x00" * 3000)
    args = {
        "merge": ["merge", str(child.path), "--into-parent"],
        "create": ["create", str(tmp_path / "new.vdi"), "--size", "1M"],
        "compact": ["compact", str(base.path)],
        "convert": ["convert", str(base.path), "--to", "fixed"],
    }[command]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert not leftover.exists()
