"""The shared pieces: commits that never overwrite, backups, in-use detection, locks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from opshelpers import make_base

from vdigui.engine import OperationRefused, VdiError
from vdigui.engine.image import open_image
from vdigui.engine.operations import _common


def test_commit_new_never_overwrites(tmp_path: Path) -> None:
    tmp = tmp_path / ".x.tmp"
    tmp.write_bytes(b"new")
    dest = tmp_path / "x"
    dest.write_bytes(b"old")
    with pytest.raises(VdiError, match="Refusing to overwrite"):
        _common.commit_new(tmp, dest)
    assert dest.read_bytes() == b"old"
    dest.unlink()
    _common.commit_new(tmp, dest)
    assert dest.read_bytes() == b"new" and not tmp.exists()


def test_backup_round_trip_and_damage(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 8)
    with open_image(path) as image:
        backup = _common.write_backup(image)
        head = image.read_raw(0, 512)
        block_map = image.read_map_region()
    assert backup == tmp_path / ".disk.vdi.vdigui-backup"
    info, got_head, got_map = _common.read_backup(backup)
    assert (got_head, got_map) == (head, block_map)
    assert info["offset_blocks"] == 1 << 20
    data = bytearray(backup.read_bytes())
    data[-1] ^= 0xFF
    backup.write_bytes(bytes(data))
    with pytest.raises(VdiError, match="is damaged"):
        _common.read_backup(backup)


def test_processes_holding_tells_readers_from_writers(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 4)
    code = ("import os, sys\n"
            f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
            "print('ready', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        found = _common.processes_holding([path])
        assert (proc.pid, "python", False) in [(p, n[:6], w) for p, n, w in found[path]]
        assert _common.in_use_reasons([path], writers_only=True) == ()
        assert _common.in_use_reasons([path]) != ()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    assert _common.processes_holding([path]) == {}


def test_exclusive_lock_conflicts_with_another_open_file(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 4)
    first = os.open(path, os.O_RDWR)
    second = os.open(path, os.O_RDWR)
    try:
        _common.take_exclusive_lock(first, path)
        assert _common.locked_by_others(path)
        with pytest.raises(OperationRefused, match="is locked by another program"):
            _common.take_exclusive_lock(second, path)
    finally:
        os.close(first)
        os.close(second)
    assert not _common.locked_by_others(path)


def test_hasher_rejects_bad_input_at_once() -> None:
    """Hashing runs inline (XXH3 is faster than a hand-off): a bad block fails right away."""
    hasher = _common.GuestHasher(4096, 1024)
    hasher.add(b"x" * 1024)
    with pytest.raises(TypeError):
        hasher.add(object())  # type: ignore[arg-type]


def test_space_refusal_sentence(tmp_path: Path) -> None:
    assert _common.space_refusal(tmp_path, 10, 20, "x") is None
    assert _common.space_refusal(tmp_path, 3 << 20, 1 << 20, "the copy") == (
        f"Not enough free space in '{tmp_path}' for the copy: 3.0 MiB needed, 1.0 MiB free.")
