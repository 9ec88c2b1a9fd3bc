"""The Resize wizard end to end: limits, the size controls, a real run, cancel, refusals.

Oracles: ``qemu-img info``/``check`` for the resized images, the independent reader of
tests/engine/merge/vmbuild.py (via wizard_kit) for every snapshot state, and the engine's own
plan (``plan_resize`` accepting or refusing a size) for the figures the limits labels show.
Disks with partition tables are made by sfdisk and mkfs.ext4 and converted by qemu-img.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import require_tool

from tests.engine.merge.vmbuild import read_header_fields, read_state
from tests.gui.gui_vmkit import DISK, MIB
from tests.gui.wizard_kit import (  # noqa: F401  (the *_fixture names are fixtures)
    Factory,
    files_state,
    go_to,
    make_wizard_fixture,
    run_to_end,
    vbox_states,
    vm_fixture,
)
from vdigui.engine import OperationRefused, Progress, load_vm_folder
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards.base import OPTIONS, PREVIEW, RESULT, RUN, OutcomeKind
from vdigui.gui.wizards.registry import Operation, operation_availability
from vdigui.gui.wizards.resize import (
    SLIDER_STEPS,
    UNITS,
    ResizeWizard,
    position_for,
    size_text,
)
from vdigui.gui.wizards.targets import resolve_target

GIB = 1 << 30


def virtual_size(qemu_img: str, path: Path) -> int:
    """The disk size qemu-img reads from the image."""
    out = subprocess.run(
        [qemu_img, "info", "--output=json", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return int(json.loads(out)["virtual-size"])


def partitioned_disk(
    folder: Path, qemu_img: str, table: str, size_mib: int = 64, ext4: tuple[int, int] | None = None
) -> Path:
    """A VDI converted by qemu-img from a raw disk with an sfdisk ``table`` (and an ext4)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(size_mib * MIB)
    subprocess.run(
        [require_tool("sfdisk"), "-q", str(raw)],
        input=table,
        text=True,
        check=True,
        capture_output=True,
    )
    if ext4 is not None:
        start, sectors = ext4
        fs = folder / "fs.img"
        subprocess.run(
            [require_tool("mkfs.ext4"), "-q", "-F", str(fs), f"{sectors // 2}k"],
            check=True,
            capture_output=True,
        )
        with open(raw, "r+b") as out:
            out.seek(start * 512)
            out.write(fs.read_bytes())
        fs.unlink()
    vdi = folder / "disk.vdi"
    subprocess.run(
        [qemu_img, "convert", "-O", "vdi", str(raw), str(vdi)], check=True, capture_output=True
    )
    raw.unlink()
    return vdi


def options_ready(qtbot: Any, wizard: ResizeWizard) -> None:
    """Go to the options page and wait for the limits (or the refusal) to arrive."""
    go_to(qtbot, wizard, OPTIONS)
    qtbot.waitUntil(
        lambda: wizard.opts.limits is not None or bool(wizard.opts.error), timeout=15000
    )


def guest_bytes(folder: Path) -> dict[str, bytes]:
    """Every state's guest disk (snapshots and current state), read without the engine."""
    out = {}
    for name, disks in vbox_states(folder).items():
        for i, leaf in enumerate(disks):
            out[f"{name}#{i}"] = read_state(folder, leaf).tobytes()
    return out


def test_opens_on_the_current_state_of_a_vm_with_snapshots(
    make_wizard: Factory, qtbot: Any, vm: Any, qemu_img: str
) -> None:
    wizard = make_wizard(ResizeWizard, vm.folder, None)
    assert wizard.target.kind == "current" and wizard.target.image == vm.diff
    options_ready(qtbot, wizard)
    limits = wizard.opts.limits
    assert limits is not None and wizard.opts.error == ""
    assert limits.current_size == virtual_size(qemu_img, vm.base) == DISK
    assert limits.images == 2  # the base and the snapshot layer grow together
    # Snapshots may hold data past any new end: no shrinking, and the page says why.
    assert not limits.can_shrink and limits.min_size == DISK
    assert wizard.opts.min_value.text() == size_text(DISK)
    assert "snapshots" in wizard.opts.min_why.text()
    assert wizard.opts.chosen_size == DISK and not wizard.opts.isComplete()
    # The engine's answer for the menu agrees.
    enabled, reason = operation_availability(load_vm_folder(vm.folder), None)[Operation.RESIZE]
    assert enabled and "with its snapshots" in reason


def test_slider_and_field_stay_in_step(make_wizard: Factory, qtbot: Any, vm: Any) -> None:
    wizard = make_wizard(ResizeWizard, vm.folder, None)
    options_ready(qtbot, wizard)
    opts = wizard.opts
    limits = opts.limits
    assert limits is not None
    opts.slider.setValue(SLIDER_STEPS // 3)
    chosen = opts.chosen_size
    assert limits.min_size < chosen < limits.max_size and chosen % 512 == 0
    assert opts.unit.currentText() == "MiB"  # a 4 MiB disk starts in MiB
    assert abs(opts.size_field.value() - chosen / MIB) < 0.001
    assert opts.exact.text() == f"= {chosen:,} bytes"
    opts.unit.setCurrentText("GiB")
    assert opts.chosen_size == chosen and abs(opts.size_field.value() - chosen / GIB) < 0.001
    opts.size_field.setValue(1.5)
    assert opts.chosen_size == 3 * GIB // 2
    assert opts.slider.value() == position_for(3 * GIB // 2, limits.min_size, limits.max_size)
    assert opts.isComplete() and "Grows the disk by" in opts.change.text()
    opts.slider.setValue(0)
    assert opts.chosen_size == limits.min_size
    opts.slider.setValue(SLIDER_STEPS)
    assert opts.chosen_size == limits.max_size
    assert abs(opts.size_field.value() - limits.max_size / UNITS["GiB"]) < 0.001
    opts.unit.setCurrentText("TiB")  # the same size, in another unit
    assert opts.chosen_size == limits.max_size
    assert abs(opts.size_field.value() - limits.max_size / (1 << 40)) < 0.001


def test_limits_labels_are_the_engine_plans_figures(
    make_wizard: Factory, qtbot: Any, tmp_path: Path, qemu_img: str
) -> None:
    vdi = partitioned_disk(
        tmp_path / "img",
        qemu_img,
        "label: dos\nstart=2048, size=40960, type=83\n",
        64,
        (2048, 40960),
    )
    wizard = make_wizard(ResizeWizard, None, vdi)
    options_ready(qtbot, wizard)
    limits = wizard.opts.limits
    assert limits is not None and limits.can_shrink
    low, high = limits.min_size, limits.max_size
    assert wizard.opts.min_value.text() == size_text(low)
    assert wizard.opts.max_value.text() == size_text(high)
    # The minimum is the plan's: it plans at that size (and says so), one sector less refuses
    # with that exact figure.
    assert eng.plan_resize(vdi, low).min_size == low
    with pytest.raises(OperationRefused, match=re.escape(f"{low:,} bytes")):
        eng.plan_resize(vdi, low - 512)
    # The maximum is the largest whole MiB the plan accepts. It follows the host's free space,
    # which other processes change between two calls (4 KiB moves it by about 512 MiB): the
    # plan agrees with the maximum unless the maximum itself has moved across it meanwhile.
    try:
        assert eng.plan_resize(vdi, high).new_size == high
    except OperationRefused:
        assert eng.resize_limits(vdi).max_size < high  # the free space shrank meanwhile
    try:
        eng.plan_resize(vdi, high + MIB)
    except OperationRefused:
        pass
    else:
        assert eng.resize_limits(vdi).max_size >= high + MIB
    assert "partition" in wizard.opts.min_why.text()
    # Shrinking and growing the last partition do not go together: the box says why.
    assert wizard.opts.grow.isEnabled()
    wizard.opts.set_size(low)
    assert not wizard.opts.grow.isEnabled()
    assert "shrinking" in wizard.opts.grow_why.text()


def test_a_real_run_grows_the_disk_and_every_snapshot_reads_as_before(
    make_wizard: Factory, qtbot: Any, vm: Any, qemu_img: str
) -> None:
    before = guest_bytes(vm.folder)
    assert set(before) == {"First#0", "Current State#0"}
    new_size = 64 * MIB
    wizard = make_wizard(ResizeWizard, vm.folder, None)
    options_ready(qtbot, wizard)
    wizard.opts.unit.setCurrentText("MiB")
    wizard.opts.size_field.setValue(64)
    assert wizard.opts.chosen_size == new_size
    go_to(qtbot, wizard, PREVIEW)
    qtbot.waitUntil(lambda: wizard.preview_runner is None, timeout=15000)
    assert wizard.plan is not None and wizard.plan.new_size == new_size
    assert {c.path for c in wizard.plan.images} == {vm.base, vm.diff}
    run_to_end(qtbot, wizard)
    assert wizard.outcome is not None and wizard.outcome.kind is OutcomeKind.SUCCEEDED, (
        wizard.outcome.message if wizard.outcome else ""
    )
    # qemu reads base images only; the snapshot layer's header by the independent parser.
    assert virtual_size(qemu_img, vm.base) == new_size
    check = subprocess.run([qemu_img, "check", str(vm.base)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert read_header_fields(vm.diff)["disk_size"] == new_size
    after = guest_bytes(vm.folder)
    for name, old in before.items():
        new = after[name]
        assert len(new) == new_size
        assert new[:DISK] == old, f"{name} reads differently"
        assert new[DISK:].count(0) == new_size - DISK, f"{name}: the new space is not zero"
    texts = [w.text() for w in wizard.result_page.content.findChildren(type(wizard.opts.exact))]
    assert any("inside the guest" in t for t in texts)
    assert any("Verified" in t for t in texts)


def test_cancel_leaves_every_file_unchanged(make_wizard: Factory, qtbot: Any, vm: Any) -> None:
    before = files_state(vm.folder)
    seen: list[str] = []

    def run_after_cancel(
        plan: Any, *, progress: Callable[[Progress], None], cancel: Any, **kwargs: Any
    ) -> Any:
        """The real run, started once Cancel was pressed (it must roll back)."""
        progress(Progress("saving before-images", 0, 1))
        deadline = time.monotonic() + 20  # a ceiling only: the test cancels at once
        while not cancel.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append("ran")
        return eng.run_resize(plan, progress=progress, cancel=cancel, **kwargs)

    wizard = make_wizard(ResizeWizard, vm.folder, None, run_fn=run_after_cancel)
    options_ready(qtbot, wizard)
    wizard.opts.set_size(32 * MIB)
    go_to(qtbot, wizard, RUN)
    qtbot.waitUntil(lambda: wizard.run_page.phase.text().startswith("Saving"), timeout=10000)
    wizard.reject()  # the Cancel button while it runs
    qtbot.waitUntil(lambda: wizard.outcome is not None, timeout=20000)
    assert seen == ["ran"]
    assert wizard.outcome.kind is OutcomeKind.CANCELLED
    assert files_state(vm.folder) == before
    qtbot.waitUntil(lambda: wizard.currentId() == RESULT, timeout=10000)


def test_refusals_show_their_reason(
    make_wizard: Factory, qtbot: Any, vm: Any, tmp_path: Path, qemu_img: str
) -> None:
    folder = load_vm_folder(vm.folder)
    # A snapshot is not resized on its own.
    snapshot = resolve_target(folder, "First")
    enabled, reason = operation_availability(folder, snapshot)[Operation.RESIZE]
    assert not enabled and "current state" in reason
    # A last partition that is swap: the option is offered disabled, with the reason.
    swap = partitioned_disk(
        tmp_path / "swap",
        qemu_img,
        "label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=8192, type=82\n",
        16,
    )
    wizard = make_wizard(ResizeWizard, None, swap)
    options_ready(qtbot, wizard)
    assert not wizard.opts.grow.isEnabled()
    assert "swap" in wizard.opts.grow_why.text()
    assert "--grow-partition" not in wizard.opts.grow_why.text()
    # ... and the guest steps say what gives the system the space, not "grow the swap".
    steps = eng.plan_resize(swap, 32 * MIB).guest_steps
    assert not any("growpart" in s for s in steps) and any("swap" in s for s in steps)
    # A saved state remembers the old size: the wizard refuses with the engine's sentence.
    sav = vm.folder / "Snapshots" / "state.sav"
    sav.write_bytes(b"saved")
    vbox = vm.vbox.read_text(encoding="utf-8")
    vm.vbox.write_text(
        vbox.replace('OSType="Linux_64"', 'OSType="Linux_64" stateFile="Snapshots/state.sav"'),
        encoding="utf-8",
    )
    saved = make_wizard(ResizeWizard, vm.folder, None)
    options_ready(qtbot, saved)
    assert saved.opts.limits is None and "saved state" in saved.opts.error
    assert "saved state" in saved.opts.problem.text() and not saved.opts.isComplete()
    enabled, reason = operation_availability(load_vm_folder(vm.folder), None)[Operation.RESIZE]
    assert not enabled and "saved state" in reason
    # A differencing image alone: refused before anything is offered.
    alone = make_wizard(ResizeWizard, None, vm.diff)
    options_ready(qtbot, alone)
    assert "differencing" in alone.opts.error
