"""In-use detection: other processes holding a disk open, fcntl locks, the VM-folder hint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from opshelpers import make_base

from vdigui.engine import OperationRefused, vmfolder
from vdigui.engine.operations import inuse


def test_processes_holding_tells_readers_from_writers(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 4)
    code = (
        "import os, sys\n"
        f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
        "print('ready', flush=True)\nsys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        found = inuse.processes_holding([path])
        assert (proc.pid, "python", False) in [(p, n[:6], w) for p, n, w in found[path]]
        assert inuse.in_use_reasons([path], writers_only=True) == ()
        assert inuse.in_use_reasons([path]) != ()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    assert inuse.processes_holding([path]) == {}


def test_exclusive_lock_conflicts_with_another_open_file(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 4)
    first = os.open(path, os.O_RDWR)
    second = os.open(path, os.O_RDWR)
    try:
        inuse.take_exclusive_lock(first, path)
        assert inuse.locked_by_others(path)
        with pytest.raises(OperationRefused, match="is locked by another program"):
            inuse.take_exclusive_lock(second, path)
    finally:
        os.close(first)
        os.close(second)
    assert not inuse.locked_by_others(path)


def test_busy_reasons_ask_the_vm_folder_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = make_base(tmp_path, 4)
    assert inuse.busy_reasons(path) == ()
    monkeypatch.setattr(vmfolder, "find_running_vm_hint", lambda p: f"'{p.name}' runs.")
    assert inuse.busy_reasons(path) == ("'disk.vdi' runs.",)
