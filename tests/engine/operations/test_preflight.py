"""The checks every writing command runs first, and the leftover sweep (operations/preflight)."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from builders import FREE, MIB, build_image, folder_state, pattern

from vdigui.engine.errors import OperationRefused
from vdigui.engine.operations import preflight
from vdigui.engine.operations.preflight import (
    check_writable_inputs,
    list_leftovers,
    locked_temp,
    sweep_leftovers,
)

ROOT = os.geteuid() == 0


def _healthy(folder: Path, name: str = "disk.vdi") -> Path:
    return build_image(folder / name, 4 * MIB, {0: pattern(1, MIB), 2: pattern(2, MIB)}).path


def test_healthy_image_passes(tmp_path: Path) -> None:
    path = _healthy(tmp_path)
    check_writable_inputs([path], folder=tmp_path, needed=MIB)


def test_holes_between_slots_are_not_damage(tmp_path: Path) -> None:
    # Slot 0 unused (an old vdigui merge left a hole): untidy, not damaged.
    built = build_image(
        tmp_path / "d.vdi", 4 * MIB, {0: pattern(1, MIB), 1: pattern(2, MIB)}, poke={0: FREE}
    )
    assert built.entries[0] == FREE
    check_writable_inputs([built.path], folder=tmp_path)


@pytest.mark.parametrize("kind", ["fifo", "folder", "loop", "missing", "dangling"])
def test_non_regular_inputs_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.vdi"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "loop":
        (tmp_path / "y.vdi").symlink_to(path)
        path.symlink_to(tmp_path / "y.vdi")
    elif kind == "dangling":
        path.symlink_to(tmp_path / "gone.vdi")
    with pytest.raises(OperationRefused) as info:
        check_writable_inputs([path], folder=tmp_path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.skipif(not ROOT, reason="mknod needs root (CI runs the tests as root)")
def test_device_node_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.vdi"
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    with pytest.raises(OperationRefused, match="character device"):
        check_writable_inputs([path], folder=tmp_path)


def test_read_only_file_refused_even_for_root(tmp_path: Path) -> None:
    path = _healthy(tmp_path)
    path.chmod(0o444)
    if ROOT:
        # Root may write any mode; the immutable flag is what stops root, and the real open
        # (not os.access) is what notices it.
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip("this filesystem has no immutable flag")
    try:
        with pytest.raises(OperationRefused, match=r"You may not write to|read-only"):
            check_writable_inputs([path], folder=tmp_path)
    finally:
        if ROOT:
            subprocess.run(["chattr", "-i", str(path)], check=False)


@pytest.mark.parametrize("kind", ["past-eof", "duplicate", "out-of-range"])
def test_damaged_map_refused_naming_repair(tmp_path: Path, kind: str) -> None:
    layer = {0: pattern(1, MIB), 1: pattern(2, MIB)}
    poke = {"past-eof": {2: 9}, "duplicate": {2: 0}, "out-of-range": {2: 0x00FF0000}}[kind]
    built = build_image(tmp_path / "d.vdi", 4 * MIB, layer, poke=poke)
    with pytest.raises(OperationRefused, match="vdictl repair"):
        check_writable_inputs([built.path], folder=tmp_path)
    check_writable_inputs([built.path], folder=tmp_path, check_maps=False)  # repair's call


def test_not_enough_space_refused(tmp_path: Path) -> None:
    path = _healthy(tmp_path)
    with pytest.raises(OperationRefused, match="Not enough free space"):
        check_writable_inputs([path], folder=tmp_path, needed=1 << 62)


def test_refusal_writes_nothing(tmp_path: Path) -> None:
    built = build_image(tmp_path / "d.vdi", 4 * MIB, {0: pattern(1, MIB)}, poke={1: 7})
    before = folder_state(tmp_path)
    with pytest.raises(OperationRefused):
        check_writable_inputs([built.path], folder=tmp_path, needed=MIB)
    assert folder_state(tmp_path) == before


def test_sweep_removes_leftover_but_not_backup(tmp_path: Path) -> None:
    _healthy(tmp_path)
    leftover = tmp_path / ".disk.vdi.vdigui-tmp-0a1b2c3d"
    leftover.write_bytes(b"x" * 4096)
    plain = tmp_path / ".disk.vdi.vdigui-tmp"
    plain.write_bytes(b"y")
    backup = tmp_path / ".disk.vdi.vdigui-backup"
    backup.write_bytes(b"undo information")
    assert [item.size for item in list_leftovers(tmp_path)] == [1, 4096]
    removed = sweep_leftovers(tmp_path)
    assert sorted(removed) == sorted([leftover, plain])
    assert not leftover.exists() and not plain.exists() and backup.exists()
    assert (tmp_path / "disk.vdi").exists()


def test_sweep_spares_temp_locked_in_this_process(tmp_path: Path) -> None:
    tmp = tmp_path / ".disk.vdi.vdigui-tmp-00ff00ff"
    with locked_temp(tmp) as fd:
        os.write(fd, b"in progress")
        assert sweep_leftovers(tmp_path) == []
        assert tmp.exists()
        tmp.unlink()


def test_sweep_spares_temp_of_another_running_process(tmp_path: Path) -> None:
    tmp = tmp_path / ".disk.vdi.vdigui-tmp-12345678"
    tmp.write_bytes(b"being written")
    # Another process holds the writer's lock and waits for us to finish.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(tmp),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert sweep_leftovers(tmp_path) == []
        assert tmp.exists()
        assert preflight.find_leftovers(tmp_path, removable_only=True) == []
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    assert sweep_leftovers(tmp_path) == [tmp]


def test_sweep_leaves_fifo_named_like_leftover(tmp_path: Path) -> None:
    fifo = tmp_path / ".disk.vdi.vdigui-tmp-abcd"
    os.mkfifo(fifo)
    assert sweep_leftovers(tmp_path) == []
    assert fifo.exists()


def test_lock_temp_is_exclusive(tmp_path: Path) -> None:
    tmp = tmp_path / ".a.vdi.vdigui-tmp-01"
    with locked_temp(tmp):
        fd = os.open(tmp, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_sweep_spares_temp_another_process_has_open_without_lock(tmp_path: Path) -> None:
    """Writers that do not take the lock yet are still safe: open files are never removed."""
    tmp = tmp_path / ".disk.vdi.vdigui-tmp-abcdef01"
    tmp.write_bytes(b"being written")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); print('open', flush=True); "
            "sys.stdin.read()",
            str(tmp),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert sweep_leftovers(tmp_path) == []
        assert tmp.exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    assert sweep_leftovers(tmp_path) == [tmp]
