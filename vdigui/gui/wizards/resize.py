"""The Resize wizard: make a disk bigger (or smaller), with its snapshots and its last partition.

Why a wizard and not a size box: "how do I make my VDI bigger?" is the most asked disk question
(issue 15), and the usual answer fails in three places: VirtualBox refuses fixed images and
shrinking, it leaves the partition as it was, and snapshots get in the way. The options page
therefore shows what the engine will accept before anything is chosen: the exact smallest
size (or why shrinking is impossible), the largest size and what limits it, and whether the
last partition can be grown (or why not), with the partition bar before and after. The
filesystem itself grows inside the guest; the result page gives the exact commands.

Why the limits and the plan are read on a worker: both read the guest's partition table and
filesystems through the whole snapshot chain, which is far longer than a frame on a big disk.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QScrollArea,
    QSlider,
    QVBoxLayout,
    QWidget,
    QWizardPage,
)

from vdigui.engine import CancelToken, Progress, UsageMap, VdiError, Volume, human_size
from vdigui.gui import messages
from vdigui.gui.views.partitionbar import KIND_COLOURS, USED_FILL, PartitionBar
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards.base import (
    PREVIEW,
    OperationWizard,
    PreviewPage,
    ResultPage,
    duration_text,
)
from vdigui.gui.wizards.registry import Operation
from vdigui.gui.wizards.targets import resize_source
from vdigui.gui.wizards.widgets import Level, figures, heading, legend, notice, rule

GIB = 1 << 30
MIB = 1 << 20
SECTOR = 512
#: The units the size field offers.
UNITS = {"MiB": MIB, "GiB": GIB, "TiB": 1 << 40}
#: Slider positions between the minimum and the maximum (a logarithmic scale: a disk of a few
#: GiB and the 4 PiB limit both stay reachable, as in VirtualBox's own size editor).
SLIDER_STEPS = 1000
#: What the engine's sentences call the option, and what the page calls it.
_FLAG = "--grow-partition"
_OPTION = '"Grow the last partition"'

INTRO = """
<p><b>What resizing does.</b> The virtual disk the guest sees gets a new size. Growing adds
empty space at the end of the disk; the guest's data stays exactly where it is. vdigui changes
the image's header and block map (moving the first data blocks out of the way when the longer
map needs their room, as VirtualBox does) and, for a fixed image, allocates the new space at
once.</p>

<p><b>Snapshots.</b> When the VM has snapshots, every image of the disk (the base and each
snapshot's layer) grows together: VirtualBox reads a snapshot's unchanged blocks from the image
below it and refuses a disk whose images have different sizes. Every snapshot keeps its
content; restoring one gives it the bigger disk with the new space empty.</p>

<p><b>Partitions and filesystems.</b> A bigger disk is not yet a bigger filesystem. vdigui can
also grow the <i>last partition</i> into the new space (and, for GPT, moves the backup table to
the new end). The filesystem inside the partition is then grown <i>inside the guest</i>
(for example <code>resize2fs</code>, <code>xfs_growfs</code>, or Windows' "Extend Volume"):
the last page gives the exact steps for the filesystem found.</p>

<p><b>Shrinking</b> is possible only down to the end of the last partition, and only when the
guest uses nothing past the new end; the next page shows the exact smallest size.</p>

<p><b>Before you start:</b> shut the VM down (a saved state remembers the old size, so it must
be discarded first). Everything is journalled: an interruption rolls back, and Edit &gt; Undo
restores the old disk afterwards.</p>
"""


def option_words(text: str) -> str:
    """An engine sentence about ``--grow-partition`` in the page's words (no command flags)."""
    text = text.replace(f"; run without {_FLAG}.", ".")
    text = text.replace(
        f"Run without {_FLAG}, then in the guest move", "Instead, in the guest, move"
    )
    text = text.replace(
        f" — or rerun vdictl resize with {_FLAG}", f" — or go back and tick {_OPTION}"
    )
    return text.replace(_FLAG, _OPTION)


def size_text(size: int) -> str:
    """'20.0 GiB (21,474,836,480 bytes)'."""
    return f"{human_size(size)} ({size:,} bytes)"


# -- sizes on the slider ---------------------------------------------------------------------
def position_for(size: int, low: int, high: int) -> int:
    """The slider position of ``size`` on the logarithmic scale from ``low`` to ``high``."""
    if high <= low:
        return 0
    size = min(max(size, low), high)
    share = math.log(size / low) / math.log(high / low)
    return round(share * SLIDER_STEPS)


def size_for(position: int, low: int, high: int) -> int:
    """The size at slider ``position``: the exact ends at either end, whole MiB between."""
    if position <= 0 or high <= low:
        return low
    if position >= SLIDER_STEPS:
        return high
    raw = low * (high / low) ** (position / SLIDER_STEPS)
    step = GIB if raw >= 16 * GIB else MIB
    return min(max(round(raw / step) * step, low), high)


# -- the partition bar, before and after -----------------------------------------------------
def _whole_disk(size: int, why: str) -> UsageMap:
    """A bar of one box for a disk whose content vdigui could not read."""
    volume = Volume("unknown", "", 0, size, None, None, True, (why,), "whole disk")
    return UsageMap(MIB, np.zeros(0, dtype=np.uint32), (volume,), ())


def _is_volume_of(volume: Volume, partition: str | None) -> bool:
    return partition is not None and (
        volume.partition == partition or volume.partition.startswith(partition + " ")
    )


def usage_after(
    usage: UsageMap | None, old: int, new: int, grown: str | None, grown_end: int
) -> UsageMap:
    """The volumes as they will be after a resize from ``old`` to ``new`` bytes.

    ``grown`` names the partition that grows to ``grown_end`` (None: no partition grows); it
    takes over the free space after it. A backup partition table at the very end (GPT) moves
    to the new end, as the engine moves it; volumes past a smaller end are cut, and new space
    that no partition takes is shown as free.
    """
    if usage is None:
        usage = _whole_disk(old, "The guest's content could not be read.")
    tail = [
        v
        for v in usage.volumes
        if v.kind == "partition-table" and v.start > 0 and v.start + v.size >= old
    ]
    limit = new - sum(v.size for v in tail)
    kept: list[Volume] = []
    for v in sorted((v for v in usage.volumes if v not in tail), key=lambda v: v.start):
        if grown is not None and _is_volume_of(v, grown) and grown_end > v.start:
            extra = grown_end - (v.start + v.size)
            v = dataclasses.replace(
                v, size=grown_end - v.start, free=None if v.free is None else v.free + max(0, extra)
            )
        if v.start >= limit:
            continue
        if v.start + v.size > limit:
            v = dataclasses.replace(v, size=limit - v.start)
        if v.kind == "free" and kept:
            covered = max(k.start + k.size for k in kept)
            if covered >= v.start + v.size:
                continue  # taken by the grown partition
            if covered > v.start:
                v = dataclasses.replace(v, start=covered, size=v.start + v.size - covered)
        kept.append(v)
    end = max((v.start + v.size for v in kept), default=0)
    if limit > end:
        last = kept[-1] if kept else None
        if last is not None and last.kind == "free" and last.start + last.size == end:
            kept[-1] = dataclasses.replace(last, size=limit - last.start)
        else:
            kept.append(
                Volume(
                    "free",
                    "",
                    end,
                    limit - end,
                    None,
                    None,
                    False,
                    ("New space, not yet in any partition.",),
                    "unpartitioned",
                )
            )
    kept += [dataclasses.replace(v, start=new - (old - v.start)) for v in tail]
    return UsageMap(usage.block_size, usage.used_bytes, tuple(kept), usage.notes)


class SizedBar(PartitionBar):
    """A partition bar drawn to a shared scale, so a bigger disk is a longer bar."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        self.scale = 1
        self.to_x = self._x

    def _x(self, block: float) -> float:
        bs = self.usage.block_size if self.usage is not None else MIB
        return block * bs / max(1, self.scale) * max(1, self.width() - 1)

    def show_disk(self, usage: UsageMap, scale: int) -> None:
        """Draw ``usage`` with the full width meaning ``scale`` bytes."""
        self.scale = scale
        self.set_usage(usage)


class BarsBox(QGroupBox):
    """The partition bar now and after, to one scale, with a caption each."""

    def __init__(self, title: str = "Partitions") -> None:
        super().__init__(title)
        self.before = SizedBar()
        self.after = SizedBar()
        self.before_caption = QLabel()
        self.after_caption = QLabel()
        grid = QGridLayout(self)
        grid.setContentsMargins(6, 4, 6, 6)
        grid.addWidget(QLabel("Now:"), 0, 0)
        grid.addWidget(self.before, 0, 1)
        grid.addWidget(self.before_caption, 0, 2)
        grid.addWidget(QLabel("After:"), 1, 0)
        grid.addWidget(self.after, 1, 1)
        grid.addWidget(self.after_caption, 1, 2)
        grid.setColumnStretch(1, 1)
        self.key = legend(
            [
                (KIND_COLOURS["free"], "outline: space in no partition"),
                (USED_FILL, "used by the guest's files (hatched: not read)"),
            ]
        )
        grid.addWidget(self.key, 2, 0, 1, 3)

    def show_resize(
        self, usage: UsageMap | None, old: int, new: int, grown: str | None, grown_end: int
    ) -> None:
        """Both bars for a resize from ``old`` to ``new`` bytes."""
        scale = max(old, new)
        before = (
            usage
            if usage is not None
            else _whole_disk(old, "The guest's content could not be read.")
        )
        self.before.show_disk(before, scale)
        self.after.show_disk(usage_after(usage, old, new, grown, grown_end), scale)
        self.before_caption.setText(human_size(old))
        self.after_caption.setText(human_size(new))


def _guessed_grown_end(limits: eng.ResizeLimits, new: int) -> int:
    """Where the grown last partition would end (the plan has the exact figure)."""
    if limits.last_partition and limits.last_partition.startswith("GPT"):
        return new - 33 * SECTOR  # the backup array (32 sectors) and header stay after it
    return min(new, 0xFFFFFFFF * SECTOR)


# -- the options page ------------------------------------------------------------------------
class ResizeOptionsPage(QWizardPage):
    """The size (slider and field kept in step), its limits and why, and partition growth."""

    def __init__(self, wizard: ResizeWizard) -> None:
        super().__init__()
        self._wizard = wizard
        self.setTitle("New size")
        image = wizard.target.image.name if wizard.target.image is not None else ""
        self.setSubTitle(
            f"How big the disk of {wizard.target.label}"
            + (f" ({image})" if image and image not in wizard.target.label else "")
            + " should be."
        )
        self.limits: eng.ResizeLimits | None = None
        self.error = ""
        self.loading = False
        self.chosen_size = 0
        self._syncing = False

        self.status = QLabel("Reading the partition table and the guest's filesystems (read-only)…")
        self.status.setWordWrap(True)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumHeight(14)
        self.problem = QLabel()
        self.problem.setWordWrap(True)
        self.problem.setTextFormat(Qt.TextFormat.RichText)
        self.problem.setVisible(False)

        self.bars = BarsBox()
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setToolTip(
            "Drag to choose the new size (a logarithmic scale from the minimum to the maximum)"
        )
        self.size_field = QDoubleSpinBox()
        self.size_field.setDecimals(3)
        self.size_field.setKeyboardTracking(False)
        self.size_field.setMinimumWidth(150)
        self.size_field.setToolTip("The new size in the unit beside it")
        self.unit = QComboBox()
        self.unit.addItems(list(UNITS))
        self.unit.setCurrentText("GiB")
        self.unit.setToolTip("1 MiB = 1,048,576 bytes; 1 GiB = 1,024 MiB; 1 TiB = 1,024 GiB")
        self.exact = QLabel()
        self.exact.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        size_row = QHBoxLayout()
        size_row.addWidget(QLabel("New size:"))
        size_row.addWidget(self.slider, 1)
        size_row.addWidget(self.size_field)
        size_row.addWidget(self.unit)
        self.change = QLabel()
        self.change.setWordWrap(True)

        self.current_value = QLabel()
        self.min_value = QLabel()
        self.min_why = QLabel()
        self.max_value = QLabel()
        self.max_why = QLabel()
        limits_box = QGroupBox("Limits")
        grid = QGridLayout(limits_box)
        grid.setHorizontalSpacing(12)
        for row, (name, value, why) in enumerate(
            (
                ("Current size:", self.current_value, None),
                ("Minimum:", self.min_value, self.min_why),
                ("Maximum:", self.max_value, self.max_why),
            )
        ):
            key = QLabel(name)
            key.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)
            grid.addWidget(key, row * 2, 0)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(value, row * 2, 1)
            if why is not None:
                why.setWordWrap(True)
                grid.addWidget(why, row * 2 + 1, 1)
        grid.setColumnStretch(1, 1)

        self.grow = QCheckBox("Grow the last partition to fill the new space")
        self.grow.setToolTip(
            "Also rewrites the partition table so the last partition ends at "
            "the new end of the disk (the filesystem in it grows in the guest)"
        )
        self.grow_why = QLabel()
        self.grow_why.setWordWrap(True)
        self.grow_why.setIndent(24)

        inside = QWidget()
        inner = QVBoxLayout(inside)
        inner.setContentsMargins(0, 0, 6, 0)
        inner.addWidget(self.bars)
        inner.addLayout(size_row)
        inner.addWidget(self.exact)
        inner.addWidget(self.change)
        inner.addWidget(limits_box)
        inner.addWidget(self.grow)
        inner.addWidget(self.grow_why)
        inner.addStretch(1)
        # Scrolls in a small window instead of squeezing the wrapped explanations.
        self.content = QScrollArea()
        self.content.setWidgetResizable(True)
        self.content.setFrameShape(QScrollArea.Shape.NoFrame)
        self.content.setWidget(inside)
        self.content.setVisible(False)

        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.busy)
        layout.addWidget(self.problem)
        layout.addWidget(self.content, 1)
        layout.addStretch(0)

        self.slider.valueChanged.connect(self._slider_moved)
        self.size_field.valueChanged.connect(self._field_changed)
        self.unit.currentTextChanged.connect(self._unit_changed)
        self.grow.toggled.connect(self._refresh)

    # -- loading the limits ----------------------------------------------------------------
    def initializePage(self) -> None:  # Qt override
        """Read the limits once (on a worker); going back to this page keeps the choice."""
        if self.limits is None and not self.loading and not self.error:
            self._wizard.load_limits()

    def show_loading(self) -> None:
        """The limits are being read."""
        self.loading = True
        self.status.setVisible(True)
        self.busy.setVisible(True)

    def show_error(self, text: str) -> None:
        """The disk cannot be resized: say why (the engine's sentence) and offer nothing."""
        self.loading = False
        self.error = text
        self.status.setVisible(False)
        self.busy.setVisible(False)
        self.problem.setText(notice(text, Level.ERROR).text())
        self.problem.setVisible(True)
        self.content.setVisible(False)
        self.completeChanged.emit()

    def show_limits(self, limits: eng.ResizeLimits) -> None:
        """Set the slider and field to the limits, starting at the current size."""
        self.loading = False
        self.limits = limits
        self.status.setVisible(False)
        self.busy.setVisible(False)
        self.content.setVisible(True)
        low, high = limits.min_size, limits.max_size
        self.current_value.setText(
            size_text(limits.current_size)
            + (
                f", {limits.images} images (the base and its snapshot layers) grow together"
                if limits.images > 1
                else ""
            )
        )
        self.min_value.setText(size_text(low))
        self.min_why.setText(limits.min_why)
        self.max_value.setText(size_text(high))
        self.max_why.setText(limits.max_why)
        self._syncing = True
        self.unit.setCurrentText("GiB" if limits.current_size >= GIB else "MiB")
        self._syncing = False
        self.set_size(limits.current_size)

    # -- the size, kept in step ------------------------------------------------------------
    def set_size(self, size: int) -> None:
        """Choose ``size`` bytes (clamped to the limits, whole sectors); both controls follow."""
        limits = self.limits
        if limits is None:
            return
        size = min(max(size - size % SECTOR, limits.min_size), limits.max_size)
        self.chosen_size = size
        self._syncing = True
        try:
            self.slider.setValue(position_for(size, limits.min_size, limits.max_size))
            factor = UNITS[self.unit.currentText()]
            self.size_field.setRange(limits.min_size / factor, limits.max_size / factor)
            self.size_field.setValue(size / factor)
        finally:
            self._syncing = False
        self._refresh()

    def _slider_moved(self, position: int) -> None:
        if self._syncing or self.limits is None:
            return
        self.set_size(size_for(position, self.limits.min_size, self.limits.max_size))

    def _field_changed(self, value: float) -> None:
        if self._syncing or self.limits is None:
            return
        limits = self.limits
        size = round(value * UNITS[self.unit.currentText()] / SECTOR) * SECTOR
        # The field shows three decimals: at either end it means the exact limit.
        if value <= self.size_field.minimum():
            size = limits.min_size
        elif value >= self.size_field.maximum():
            size = limits.max_size
        self.set_size(size)

    def _unit_changed(self, _unit: str) -> None:
        """Show the same size in the new unit."""
        if not self._syncing:
            self.set_size(self.chosen_size)

    def _refresh(self, *_args: object) -> None:
        limits = self.limits
        if limits is None:
            return
        old, new = limits.current_size, self.chosen_size
        self.exact.setText(f"= {new:,} bytes")
        if new > old:
            self.change.setText(f"Grows the disk by {human_size(new - old)}.")
        elif new < old:
            self.change.setText(f"Shrinks the disk by {human_size(old - new)}.")
        else:
            self.change.setText(
                "The same size as now"
                + (
                    ": only the last partition grows."
                    if self.grow.isChecked()
                    else ": choose another size."
                )
            )
        refusal = limits.grow_partition_refusal
        if refusal is None and new < old:
            refusal = (
                "Growing the last partition needs new space, so it cannot be combined "
                "with shrinking."
            )
        self.grow.setEnabled(refusal is None)
        if refusal is not None and self.grow.isChecked():
            self.grow.setChecked(False)  # toggled -> _refresh again, with the box clear
            return
        if refusal is not None:
            self.grow_why.setText(option_words(refusal))
        elif limits.last_partition:
            self.grow_why.setText(
                f"The last partition is {limits.last_partition}; the "
                "filesystem in it is then grown inside the guest."
            )
        else:
            self.grow_why.setText("")
        self.grow_why.setVisible(bool(self.grow_why.text()))
        grown = limits.last_partition if self.grow.isChecked() else None
        self.bars.show_resize(limits.usage, old, new, grown, _guessed_grown_end(limits, new))
        self.completeChanged.emit()

    @property
    def grow_partition(self) -> bool:
        """Whether the last partition grows too."""
        return self.grow.isEnabled() and self.grow.isChecked()

    def isComplete(self) -> bool:  # Qt override
        """Limits known, and something would change."""
        limits = self.limits
        if limits is None:
            return False
        return self.chosen_size != limits.current_size or self.grow_partition


# -- the wizard ------------------------------------------------------------------------------
class ResizeWizard(OperationWizard[eng.ResizePlan, eng.ResizeResult]):
    """Grow or shrink a disk (every image of it), optionally its last partition."""

    operation = Operation.RESIZE
    plan_function = staticmethod(eng.plan_resize)
    run_function = staticmethod(eng.run_resize)
    intro = INTRO
    options_page_class = ResizeOptionsPage
    subtitle = "Give the disk of {where} a new size: {image}."
    action_text = "Resize now"
    opts: ResizeOptionsPage

    def __init__(
        self, *args: Any, limits_fn: Callable[..., eng.ResizeLimits] | None = None, **kwargs: Any
    ) -> None:
        self.limits_fn = limits_fn or eng.resize_limits
        self.limits_runner: Any = None
        super().__init__(*args, **kwargs)

    # -- what is resized -------------------------------------------------------------------
    def source(self) -> tuple[Path, str | None]:
        """(source, disk) for the engine: the VM folder and disk number, or the image."""
        return resize_source(self.vm, self.target)

    def load_limits(self) -> None:
        """Read the limits on a worker; the options page shows them when they arrive."""
        page = self.opts
        try:
            source, disk = self.source()
        except VdiError as exc:
            page.show_error(messages.sentence(exc))
            return
        page.show_loading()
        limits_fn = self.limits_fn

        def job(_progress: Callable[[Progress], None], _token: CancelToken) -> Any:
            return limits_fn(source, disk=disk)

        self.start_read(
            job,
            "resize-limits",
            page.show_limits,
            lambda exc: page.show_error(messages.sentence(exc)),
        )

    def start_read(
        self,
        job: Callable[..., Any],
        name: str,
        succeeded: Callable[[Any], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        """Run a read-only job on the pool (the screenshot mode runs it at once)."""

        def done(value: Any) -> None:
            self.limits_runner = None
            succeeded(value)

        def broke(exc: BaseException) -> None:
            self.limits_runner = None
            failed(exc)

        def ended() -> None:
            self.limits_runner = None

        self.limits_runner = self.pool.start(
            job, name, succeeded=done, failed=broke, cancelled=ended
        )

    def stop_and_wait(self, timeout_ms: int = 60000) -> bool:
        """Also wait for the limits read (it is read-only and short)."""
        if self.limits_runner is not None:
            self.limits_runner.token.cancel()
            self._wait(lambda: self.limits_runner is None, timeout_ms)
        return super().stop_and_wait(timeout_ms)

    # -- planning (on a worker) ------------------------------------------------------------
    def compute_plan(self) -> eng.ResizePlan:
        """plan_resize with the chosen size and option."""
        source, disk = self.source()
        return self.plan_fn(
            source, self.opts.chosen_size, grow_partition=self.opts.grow_partition, disk=disk
        )

    def make_plan(self) -> None:
        """Plan on a worker: it reads the partition table and the guest's filesystems."""
        self.stop_preview_job()
        self.plan, self.plan_error = None, None
        page = self.preview_page
        page.clear()
        page.finish()

        # The choice is read here, on the GUI thread; the worker only plans.
        try:
            source, disk = self.source()
        except VdiError as exc:
            self._preview_failed(exc)
            return
        size, grow, plan_fn = self.opts.chosen_size, self.opts.grow_partition, self.plan_fn

        def job(_progress: Callable[[Progress], None], _token: CancelToken) -> Any:
            return plan_fn(source, size, grow_partition=grow, disk=disk)

        self._start_preview_job(job)
        page.scan_label.setText(
            "Planning the resize: reading the images, the partition table "
            "and the guest's filesystems (read-only)…"
        )

    def _preview_failed(self, exc: BaseException) -> None:
        """A refused plan: its sentence, as an error (nothing can run)."""
        self._preview_ended()
        if self.currentId() not in (PREVIEW, -1):
            return
        self.plan, self.plan_error = None, exc
        page = self.preview_page
        page.clear()
        page.add(heading("The disk cannot be resized as chosen."))
        page.add(notice(option_words(messages.sentence(exc)), Level.ERROR))
        page.finish()

    def run_call(
        self, plan: eng.ResizePlan, progress: Callable[[Progress], None], token: CancelToken
    ) -> eng.ResizeResult:
        """run_resize(plan), verified, keeping undo data."""
        return self.run_fn(plan, verify=True, keep_undo=True, progress=progress, cancel=token)

    def refusals(self, plan: eng.ResizePlan) -> tuple[str, ...]:
        """A plan that changes nothing has nothing to run."""
        if plan.nothing_to_do:
            return ("The disk already has this size and nothing else changes.",)
        return ()

    # -- preview ---------------------------------------------------------------------------
    def block_size(self) -> int:
        """The disk's block size (from the limits read for the options page)."""
        limits = self.opts.limits
        return limits.block_size if limits is not None else MIB

    def moved_bytes(self, plan: eng.ResizePlan) -> int:
        """Data copied inside the images (slots moved out of the way of the longer map)."""
        return sum(c.moved_slots for c in plan.images) * self.block_size()

    def estimate(self, plan: eng.ResizePlan) -> float:
        """Seconds, roughly: moved data read and written, undo data written, new fixed space.

        The engine gives no time; this uses the rate every wizard's estimate uses.
        """
        allocated = sum(c.new_slots for c in plan.images) * self.block_size()
        return (2 * self.moved_bytes(plan) + plan.space.undo_bytes + allocated) / eng.ESTIMATED_RATE

    def fill_preview(self, page: PreviewPage, plan: eng.ResizePlan) -> None:
        """Headline, partition bars, figures, the images that change, notes."""
        old, new = plan.old_size, plan.new_size
        verb = "Grow" if new > old else "Shrink" if new < old else "Keep"
        if plan.nothing_to_do:
            page.add(heading("The disk already has this size: nothing would change."))
            return
        page.add(
            heading(
                f"{verb} the disk from {human_size(old)} to {human_size(new)}"
                + (
                    ", and grow its last partition."
                    if plan.table is not None and plan.table.grown is not None
                    else "."
                )
            )
        )
        limits = self.opts.limits
        bars = BarsBox("Partitions now and after")
        table = plan.table
        grown = table.grown.name if table is not None and table.grown is not None else None
        bars.show_resize(
            limits.usage if limits is not None else None,
            old,
            new,
            grown,
            table.grown_end if table is not None else 0,
        )
        page.add(bars)
        moved = self.moved_bytes(plan)
        rows = [
            (
                "Files written",
                f"{len(plan.images)}: " + ", ".join(c.path.name for c in plan.images),
            ),
            (
                "Data moved",
                human_size(moved) + " (the first blocks, out of the way of the longer block map)"
                if moved
                else "none",
            ),
            (
                "Partition table",
                "unchanged"
                if table is None
                else f"{table.scheme.upper()}: {len(table.writes)} sector(s) rewritten",
            ),
            ("Estimated time", duration_text(self.estimate(plan))),
        ]
        page.add(figures(rows))
        page.add(rule())
        page.add(heading("The plan"))
        detail = QLabel("\n".join(self.plan_lines(plan)))
        detail.setWordWrap(True)
        detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        page.add(detail)
        if plan.guest_steps:
            page.add(rule())
            page.add(heading("Afterwards, inside the guest"))
            page.add(steps_label(plan.guest_steps))

    @staticmethod
    def plan_lines(plan: eng.ResizePlan) -> list[str]:
        """``plan.lines()`` without the parts the page shows elsewhere (guest steps, space)."""
        out = []
        for line in plan.lines():
            if line.startswith(("Then, inside the guest:", "Space:")):
                break
            out.append(line)
        return out

    def undo_sentence(self, plan: eng.ResizePlan, space: Any) -> tuple[str, Level]:
        """Resizing keeps undo data (the old headers, maps and overwritten bytes)."""
        text, level = super().undo_sentence(plan, space)
        if level is Level.OK:
            text += " The VM must not have run since: its writes would be lost by the undo."
        return text, level

    def run_summary(self, plan: eng.ResizePlan) -> str:
        """What runs."""
        count = len(plan.images)
        return (
            f"Resizing {count} image{'s' if count != 1 else ''} from "
            f"{human_size(plan.old_size)} to {human_size(plan.new_size)}: saving the undo "
            "data, moving blocks where needed, writing the maps and headers"
            + (", rewriting the partition table" if plan.table is not None else "")
            + ", then verifying."
        )

    def cancel_meaning(self) -> str:
        """Nothing half-done stays."""
        return (
            "Cancel stops at the next block and rolls everything back: every image is "
            "left byte for byte as it was."
        )

    # -- result ----------------------------------------------------------------------------
    def describe_result(self, page: ResultPage, result: eng.ResizeResult) -> None:
        """Verification, the new size, and what to do in the guest."""
        plan = result.plan
        if result.verified:
            parts = ["headers", "block maps"]
            if any(c.moved_slots for c in plan.images):
                parts.append("moved blocks")
            if plan.table is not None:
                parts.append("partition table")
            page.add(
                notice(
                    f"Verified: the {', '.join(parts[:-1])} and {parts[-1]} read back as planned.",
                    Level.OK,
                )
            )
        else:
            page.add(notice("Not verified (verification was switched off).", Level.WARNING))
        page.add(
            heading(
                f"The disk is now {human_size(plan.new_size)} (was {human_size(plan.old_size)})."
            )
        )
        page.add(
            figures(
                [
                    ("New size", size_text(plan.new_size)),
                    ("Images resized", ", ".join(c.path.name for c in plan.images)),
                    (
                        "Undo",
                        f"Edit > Undo restores the old disk (undo data in {result.backup_dir})"
                        if result.undoable
                        else "no undo data was kept",
                    ),
                ]
            )
        )
        for text in result.notes:
            page.add(notice(text, Level.INFO))
        if result.guest_steps:
            page.add(rule())
            page.add(heading("Now, inside the guest"))
            page.add(steps_label(result.guest_steps))
        elif plan.new_size < plan.old_size:
            page.add(
                notice(
                    "Nothing to do in the guest: the partitions already ended before "
                    "the new end of the disk.",
                    Level.INFO,
                )
            )

    def changed_path(self) -> Any:
        """The current state's image."""
        return self.target.image


def steps_label(steps: tuple[str, ...] | list[str]) -> QLabel:
    """Numbered guest-side steps, selectable so they can be copied."""
    label = QLabel("\n".join(f"{i}. {option_words(s)}" for i, s in enumerate(steps, start=1)))
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


__all__ = ["ResizeOptionsPage", "ResizeWizard", "position_for", "size_for", "usage_after"]
