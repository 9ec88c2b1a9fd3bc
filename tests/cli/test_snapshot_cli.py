"""vdictl snapshot list/delete, merge, repair, set-uuid and undo; SIGKILL of a real deletion."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine" / "merge"))
from vmbuild import MIB, VmBuilder, assert_all_states, vbox_states

from vdigui.cli import main
from vdigui.engine.operations import journal as jr

REPO = Path(__file__).resolve().parents[2]


def linear(tmp_path: Path, disk_size: int = 16 * MIB, blocks: int = 6) -> VmBuilder:
    vm = VmBuilder(tmp_path / "vm", disk_size=disk_size)
    vm.scribble(list(range(blocks)))
    vm.take_snapshot("one", saved_state=True)
    vm.scribble(list(range(1, blocks, 2)))
    vm.scribble([0], zero=True)
    vm.take_snapshot("two")
    vm.scribble(list(range(2, blocks, 3)))
    return vm


def test_list_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vm = linear(tmp_path)
    assert main(["snapshot", "list", str(vm.folder)]) == 0
    out = capsys.readouterr().out
    assert "one" in out and "[saved state]" in out and "[current]" in out
    assert main(["snapshot", "list", str(vm.folder), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["snapshots"]] == ["one", "two"]
    assert doc["snapshots"][1]["current"] is True


def test_delete_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vm = linear(tmp_path)
    before = vm.vbox_path().read_bytes()
    assert main(["snapshot", "delete", str(vm.folder), "one", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "backward (chosen)" in out and "forward  (not allowed)" in out
    assert "Files removed" in out and ".sav" in out
    assert vm.vbox_path().read_bytes() == before
    assert main(["snapshot", "delete", str(vm.folder), "one", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["steps"][0]["direction"] == "backward"
    assert {c["direction"] for c in plan["steps"][0]["costs"]} == {"forward", "backward"}


def test_delete_then_undo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vm = linear(tmp_path)
    assert main(["snapshot", "delete", str(vm.folder), vm.snap("one").name]) == 0
    assert "Done: deletion of snapshot 'one'" in capsys.readouterr().out
    assert_all_states(vm, deleted={vm.snap("one").uuid})
    assert main(["undo", str(vm.folder)]) == 0
    assert "Undone" in capsys.readouterr().out
    assert_all_states(vm)
    assert main(["undo", str(vm.folder)]) == 1
    assert "no vdigui operation" in capsys.readouterr().err


def test_refusal_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vm = linear(tmp_path)
    assert main(["snapshot", "delete", str(vm.folder), "one", "--direction", "forward"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vdictl: error: A base image is always merged backward")
    assert "Traceback" not in err


def test_merge_repair_set_uuid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vm = linear(tmp_path)
    leaf = vm.disks[vm.leaves[0]].path
    assert main(["merge", str(leaf), "--into-parent"]) == 1
    assert "registered in" in capsys.readouterr().err
    copy = vm.folder / "copy.vdi"
    copy.write_bytes((vm.folder / "vm.vdi").read_bytes())
    assert main(["repair", str(vm.folder), "--dry-run"]) == 2
    assert "[F1] (will apply)" in capsys.readouterr().out
    assert main(["repair", str(vm.folder), "--yes"]) == 0
    assert main(["repair", str(vm.folder), "--dry-run"]) == 0
    assert main(["set-uuid", str(copy), "12345678-1234-4234-8234-123456789abc"]) == 0
    capsys.readouterr()
    assert main(["info", str(copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["uuid"] == "12345678-1234-4234-8234-123456789abc"


def _run_cli(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "vdigui.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sigkill_during_deletion_then_next_run_recovers(tmp_path: Path) -> None:
    """Kill a real ``vdictl snapshot delete`` at random moments; the next run cleans up."""
    rng = random.Random(7)
    outcomes = set()
    for attempt in range(4):
        vm = linear(tmp_path / f"a{attempt}", disk_size=48 * MIB, blocks=40)
        proc = _run_cli("snapshot", "delete", str(vm.folder), "one")
        deadline = time.monotonic() + 30
        while (
            not jr.journal_path(vm.folder).exists()
            and proc.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.002)  # wait until it has started writing...
        time.sleep(rng.uniform(0.0, 0.6))  # ...then kill at a random moment
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read()  # type: ignore[union-attr]
        result = jr.recover_pending(vm.folder)
        snaps, _, _ = vbox_states(vm.vbox_path())
        gone = vm.snap("one").uuid not in snaps
        outcomes.add(result.action if result else ("finished" if gone else "not started"))
        assert_all_states(vm, deleted={vm.snap("one").uuid} if gone else set())
        assert not jr.journal_path(vm.folder).exists()
    print("kill outcomes:", sorted(outcomes))  # random moments; every one must be consistent


def test_next_command_reports_recovery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vm = linear(tmp_path)
    from vdigui.engine.operations import merge as mg

    plan = mg.plan_snapshot_delete(vm.folder, "two")
    journal = jr.Journal.begin(plan.folder, plan.kind, plan.to_dict(), plan.summary, plan.vbox)
    journal.backup_file(vm.vbox_path())
    vm.vbox_path().write_text("garbage")  # a half-done step
    assert main(["repair", str(vm.folder), "--yes"]) == 0
    err = capsys.readouterr().err
    assert "was found and rolled back" in err
    assert_all_states(vm)


def test_space_in_plan_no_undo_and_discard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vm = linear(tmp_path)
    assert (
        main(["snapshot", "delete", str(vm.folder), "two", "--dry-run", "--no-undo", "--json"]) == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["keep_undo"] is False and plan["space"]["keep_undo"] is False
    assert plan["space"]["frees"] > 0 and plan["space"]["undo_bytes"] == 0
    assert main(["snapshot", "delete", str(vm.folder), "two", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Space:" in out and "of undo data in" in out and "Needs " in out
    assert main(["snapshot", "delete", str(vm.folder), "two"]) == 0
    out = capsys.readouterr().out
    assert "verified)" in out and "vdictl undo" in out and "--discard" in out
    kept = jr.undo_data_usage(vm.folder)
    assert kept > 0
    assert main(["undo", str(vm.folder), "--discard"]) == 0
    out = capsys.readouterr().out
    assert f"({kept:,} bytes) freed" in out
    assert jr.undo_data_usage(vm.folder) == 0
    assert main(["undo", str(vm.folder)]) == 1
    assert "undo data was discarded" in capsys.readouterr().err
    assert main(["snapshot", "delete", str(vm.folder), "one", "--no-undo", "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "not verified" in out and "No undo data was kept" in out
    assert "Keeps no undo data: this operation cannot be undone." in out
    assert jr.undo_data_usage(vm.folder) == 0
    assert_all_states(vm, deleted={vm.snap("one").uuid, vm.snap("two").uuid})
    assert main(["check", str(vm.folder)]) == 0


def test_verify_flag_is_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vm = linear(tmp_path)
    assert main(["snapshot", "delete", str(vm.folder), "one", "--verify"]) != 0
    assert "--verify" in capsys.readouterr().err  # verification is the default now
    assert_all_states(vm)


def test_bare_merge_cli_space_and_no_undo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vdigui.engine import create_image

    folder = tmp_path / "chain"
    folder.mkdir()
    base, child = folder / "base.vdi", folder / "child.vdi"
    create_image(base, 4 * MIB)
    create_image(child, parent=base)
    assert main(["merge", str(child), "--into-parent", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["space"]["keep_undo"] is True and plan["space"]["frees"] == child.stat().st_size
    assert main(["merge", str(child), "--into-parent", "--no-undo"]) == 0
    assert "No undo data was kept" in capsys.readouterr().out
    assert not child.exists() and jr.undo_data_usage(folder) == 0
    assert main(["check", str(base)]) == 0
