"""The Clone wizard: a standalone copy of any disk state, or an in-place fixed/dynamic convert.

Why both in one wizard: users reach for "clone" to get a disk they can hand to another VM or
tool (a snapshot's state flattened into one file, users.md pain 14), and for "convert" because
VirtualBox only converts by cloning (pain 13). Here the clone is always a fresh standalone base
image; converting instead keeps the image's name and UUID so the VM needs no change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWizardPage,
)

from vdigui.engine import (
    BLOCK_FREE,
    BLOCK_ZERO,
    CancelToken,
    ImageType,
    Progress,
    VdiError,
    human_size,
    open_image,
    open_paths,
    read_header,
)
from vdigui.gui import theme
from vdigui.gui.views.blockmap import served_codes
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards.base import (
    OperationWizard,
    OutcomeKind,
    PreviewPage,
    ResultPage,
    duration_text,
)
from vdigui.gui.wizards.registry import Operation
from vdigui.gui.wizards.targets import TargetKind, chain_of, layer_names, short_name
from vdigui.gui.wizards.widgets import (
    Level,
    StripRow,
    before_after,
    figures,
    heading,
    legend,
    notice,
    state_palette,
)

INTRO = """
<p><b>Clone</b> writes what the guest sees in the selected state &mdash; a snapshot, the
current state, or one image with everything below it &mdash; into a <i>new, standalone</i> disk
image. It has no parent: the snapshot chain is flattened into one file, with its blocks in guest
order and without the blocks that only hold zeros. The source files are only read.</p>

<p>The clone gets a new UUID so VirtualBox can register it beside the original. Keeping the
source's UUID is possible (to replace a disk behind a VM's back), but VirtualBox refuses two
registered disks with one UUID.</p>

<p><b>Dynamic or fixed.</b> A <i>dynamic</i> image stores only the blocks the guest has written
and grows as needed; a <i>fixed</i> image takes the full disk size on the host at once (slightly
faster in some set-ups, never grows).</p>

<p><b>Convert in place</b> changes a base image between dynamic and fixed while keeping its file
name and UUID, so the VM keeps working without any change: the new layout is built beside the
old file, verified, and swapped in atomically.</p>

<p>Nothing appears at the destination until the copy is complete and verified; cancelling
leaves nothing behind.</p>
"""


class CloneOptionsPage(QWizardPage):
    """Clone or convert; dynamic or fixed; keep the UUID; where to write."""

    def __init__(self, wizard: CloneWizard) -> None:
        super().__init__()
        self._wizard = wizard
        self.setTitle("Options")
        self.setSubTitle(f"What to make of {wizard.target.label}.")
        self.mode_clone = QRadioButton("Make a standalone copy (clone)")
        name = short_name(wizard.target.image.name) if wizard.target.image else "this image"
        self.mode_convert = QRadioButton(f"Convert {name} in place (same name and UUID)")
        self.modes = QButtonGroup(self)
        for button in (self.mode_clone, self.mode_convert):
            self.modes.addButton(button)
        self.mode_clone.setChecked(True)
        convertible, why = wizard.convertible()
        self.mode_convert.setEnabled(convertible)
        self.mode_convert.setToolTip(why)
        self.convert_note = QLabel("" if convertible else why)
        self.convert_note.setWordWrap(True)
        self.convert_note.setIndent(24)
        self.convert_note.setVisible(not convertible)

        self.dynamic = QRadioButton("Dynamic: store only what the guest wrote")
        self.fixed = QRadioButton("Fixed: allocate the full disk size now")
        self.types = QButtonGroup(self)
        for button in (self.dynamic, self.fixed):
            self.types.addButton(button)
        self.dynamic.setChecked(True)
        self.keep_uuid = QCheckBox("Keep the source's UUID (never register both at once)")
        self.keep_uuid.setToolTip(
            "The clone replaces the source for VirtualBox; registering "
            "both makes VirtualBox refuse the second one."
        )
        self.fs_aware = QCheckBox(
            "Leave out blocks the guest's filesystems do not use (filesystem-aware; smaller clone)"
        )
        self.fs_aware.setToolTip(
            "Reads the guest's ext2/3/4, NTFS and FAT allocation maps; "
            "unused blocks read as zeros in the clone. Anything not "
            "understood is copied whole."
        )

        self.dest = QLineEdit(str(wizard.default_dest()))
        self.dest.setToolTip("The new image; an existing file is never overwritten")
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(self._browse)
        dest_row = QHBoxLayout()
        dest_row.addWidget(QLabel("Save as:"))
        dest_row.addWidget(self.dest, 1)
        dest_row.addWidget(self.browse)

        mode_box = QGroupBox("Operation")
        mode_layout = QVBoxLayout(mode_box)
        mode_layout.addWidget(self.mode_clone)
        mode_layout.addWidget(self.mode_convert)
        mode_layout.addWidget(self.convert_note)
        type_box = QGroupBox("Result type")
        type_layout = QVBoxLayout(type_box)
        type_layout.addWidget(self.dynamic)
        type_layout.addWidget(self.fixed)
        self.clone_box = QGroupBox("Clone")
        clone_layout = QVBoxLayout(self.clone_box)
        clone_layout.addLayout(dest_row)
        clone_layout.addWidget(self.keep_uuid)
        clone_layout.addWidget(self.fs_aware)

        layout = QVBoxLayout(self)
        layout.addWidget(mode_box)
        layout.addWidget(type_box)
        layout.addWidget(self.clone_box)
        layout.addStretch(1)
        self.registerField("dest", self.dest)
        self.modes.buttonToggled.connect(self._mode_changed)
        self.dest.textChanged.connect(self.completeChanged)
        self._mode_changed()

    @property
    def converting(self) -> bool:
        """Convert in place rather than clone."""
        return self.mode_convert.isChecked()

    def _mode_changed(self, *_args: object) -> None:
        self.clone_box.setEnabled(not self.converting)
        if self.converting:
            # Converting to the type the image already has would be refused: offer the other.
            current = self._wizard.current_type()
            (self.dynamic if current == "fixed" else self.fixed).setChecked(True)
        else:
            self.dynamic.setChecked(True)
        self.completeChanged.emit()

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the clone as", self.dest.text(), "VirtualBox disk images (*.vdi)"
        )
        if path:
            self.dest.setText(path if path.lower().endswith(".vdi") else path + ".vdi")

    def isComplete(self) -> bool:  # Qt override
        """A clone needs a destination."""
        return self.converting or bool(self.dest.text().strip())


#: What the wizard plans and runs: a clone, or (the convert option) an in-place conversion.
ClonePlans = eng.ClonePlan | eng.ConvertPlan
CloneResults = eng.CloneResult | eng.ConvertResult


class CloneWizard(OperationWizard[ClonePlans, CloneResults]):
    """Clone a disk state to a new image, or convert an image in place."""

    operation = Operation.CLONE
    plan_function = staticmethod(eng.plan_clone)
    run_function = staticmethod(eng.run_clone)
    intro = INTRO
    options_page_class = CloneOptionsPage
    subtitle = "Copy {target} into a standalone disk image, or convert it."
    action_text = "Clone now"
    opts: CloneOptionsPage

    def __init__(
        self,
        *args: Any,
        convert_plan_fn: Callable[..., Any] | None = None,
        convert_run_fn: Callable[..., Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.convert_plan_fn = convert_plan_fn or eng.plan_convert
        self.convert_run_fn = convert_run_fn or eng.run_convert
        super().__init__(*args, **kwargs)

    def default_dest(self) -> Path:
        """A free name beside the source: "<stem> clone.vdi", "<stem> clone 2.vdi", ..."""
        image = self.target.image
        if image is None:
            return Path.home() / "clone.vdi"
        folder = self.target.folder or image.parent
        stem = image.stem.strip("{}")
        if self.target.kind is TargetKind.SNAPSHOT and self.target.snapshot_name:
            stem = f"{self.vm.name if self.vm else stem} - {self.target.snapshot_name}"
        elif self.target.kind is TargetKind.CURRENT and self.vm is not None:
            stem = f"{self.vm.name} - current state"
        candidate = folder / f"{stem} clone.vdi"
        n = 2
        while candidate.exists():
            candidate = folder / f"{stem} clone {n}.vdi"
            n += 1
        return candidate

    def current_type(self) -> str:
        """The source image's type label ("dynamic", "fixed", "differencing", ...)."""
        if self.target.image is None:
            return ""
        try:
            return read_header(self.target.image).image_type.label
        except (VdiError, OSError):
            return ""

    def convertible(self) -> tuple[bool, str]:
        """Whether converting in place makes sense for the target, and why not."""
        if self.target.image is None:
            return False, "No image is selected."
        try:
            header = read_header(self.target.image)
        except (VdiError, OSError) as exc:
            return False, str(exc)
        if header.image_type == ImageType.DIFFERENCING:
            return False, (
                "A snapshot's differencing image cannot be converted; clone it "
                "instead for a standalone copy."
            )
        return True, "Rebuild this image as the other type, keeping its name and UUID"

    @property
    def converting(self) -> bool:
        """Whether the options chose convert."""
        return self.opts.converting

    def compute_plan(self) -> ClonePlans:
        """plan_convert or plan_clone with the chosen options."""
        fixed = self.opts.fixed.isChecked()
        if self.converting:
            self.action_text = "Convert now"
            assert self.target.image is not None
            return self.convert_plan_fn(self.target.image, "fixed" if fixed else "dynamic")
        self.action_text = "Clone now"
        paths = chain_of(self.vm, self.target)
        dest = Path(self.opts.dest.text().strip()).expanduser()
        extra = {"fs_aware": True} if self.opts.fs_aware.isChecked() else {}
        return self.plan_fn(
            list(paths), dest, fixed=fixed, keep_uuid=self.opts.keep_uuid.isChecked(), **extra
        )

    def run_call(
        self, plan: ClonePlans, progress: Callable[[Progress], None], token: CancelToken
    ) -> CloneResults:
        """run_convert or run_clone."""
        if isinstance(plan, eng.ConvertPlan):
            return self.convert_run_fn(plan, progress=progress, cancel=token)
        return self.run_fn(plan, progress=progress, cancel=token)

    # -- preview -------------------------------------------------------------------------------
    def fill_preview(self, page: PreviewPage, plan: ClonePlans) -> None:
        """The chain's guest view before, the single image after, figures and risks."""
        if isinstance(plan, eng.ConvertPlan):
            self._fill_convert(page, plan)
            return
        total = sum(s.size for s in plan.stamps)
        kind = "fixed" if plan.fixed else "dynamic"
        if plan.refusals:
            page.add(heading("The clone cannot be made as set up."))
            for text in plan.refusals:
                page.add(notice(text, Level.ERROR))
        else:
            page.add(
                heading(
                    f"A new {kind} image '{plan.dest.name}' of "
                    f"{human_size(plan.output_size)}"
                    + (" at most" if not plan.fixed else "")
                    + f", holding what the guest sees in {self.target.label}."
                )
            )
        with open_paths(plan.chain_paths) as chain:
            entries = chain.entries()
            serving = chain.serving_layers()
        served = served_codes(entries, serving)
        layers = len(plan.chain_paths)
        before_palette = (
            theme.free_colour(),
            theme.free_colour(),
            *(theme.layer_colour(i) for i in range(layers)),
        )
        data = (serving >= 0) & (served != 1)
        after = np.where(data, 2, 0).astype(np.uint8)
        if plan.fixed:
            after[:] = 2
        names = layer_names(self.vm, plan.chain_paths)
        before_rows = [
            StripRow(
                names[i],
                np.where(
                    entries[i] == BLOCK_FREE, 0, np.where(entries[i] == BLOCK_ZERO, 1, 2)
                ).astype(np.uint8),
                state_palette(i),
                1.0,
                human_size(p.stat().st_size),
            )
            for i, p in reversed(list(enumerate(plan.chain_paths)))
        ][:5]
        before_rows.append(StripRow("guest sees", served, before_palette, 1.0, human_size(total)))
        page.add(
            before_after(
                before_rows,
                [
                    StripRow(
                        "clone", after, state_palette(layers), 1.0, human_size(plan.output_size)
                    )
                ],
                (f"Source: {layers} file{'s' if layers != 1 else ''}", "The clone"),
            )
        )
        layer_items = [
            (
                theme.layer_colour(i),
                f"{names[i]} ({short_name(p.name)})"
                if names[i] != short_name(p.name)
                else names[i],
            )
            for i, p in enumerate(plan.chain_paths)
        ][:6]
        page.add(
            legend(
                [
                    *layer_items,
                    (theme.layer_colour(layers), "data in the clone"),
                    (theme.free_colour(), "not stored (zeros)"),
                ]
            )
        )
        rows = [
            ("Source", f"{layers} file{'s' if layers != 1 else ''}, {human_size(total)}"),
            ("Virtual disk size", human_size(plan.disk_size)),
            ("Blocks with data", f"{plan.data_blocks:,} of {plan.guest_blocks:,}"),
            *(
                [("Left out (unused by the guest)", f"{plan.fs_blocks:,} blocks")]
                if getattr(plan, "fs_aware", False)
                else []
            ),
            ("Clone size", human_size(plan.output_size) + ("" if plan.fixed else " at most")),
            (
                "Host space needed",
                f"{human_size(plan.space_needed)} of {human_size(plan.space_free)} free",
            ),
            ("UUID", f"{{{plan.uuid}}}" + (" (the source's)" if plan.keep_uuid else " (new)")),
            ("Destination", str(plan.dest)),
            (
                "Estimated time",
                duration_text(
                    (plan.data_blocks * plan.block_size * 2 + plan.output_size) / eng.ESTIMATED_RATE
                ),
            ),
        ]
        page.add(figures(rows))
        for text in plan.warnings:
            page.add(notice(text, Level.WARNING))

    def _fill_convert(self, page: PreviewPage, plan: eng.ConvertPlan) -> None:
        if plan.refusals:
            page.add(heading(f"'{plan.path.name}' cannot be converted as set up."))
            for text in plan.refusals:
                page.add(notice(text, Level.ERROR))
        else:
            page.add(
                heading(
                    f"'{plan.path.name}' becomes a {plan.to} image: "
                    f"{human_size(plan.size_before)} → {human_size(plan.size_after)}."
                )
            )
        with open_image(plan.path) as image:
            entries = image.block_map[: image.guest_blocks]
            codes = np.where(
                entries == BLOCK_FREE, 0, np.where(entries == BLOCK_ZERO, 1, 2)
            ).astype(np.uint8)
        after = np.full(codes.size, 2, dtype=np.uint8) if plan.to == "fixed" else codes
        # One cell per guest block in both: what the file stores for it (sizes as captions).
        page.add(
            before_after(
                [
                    StripRow(
                        plan.from_type, codes, state_palette(0), 1.0, human_size(plan.size_before)
                    )
                ],
                [StripRow(plan.to, after, state_palette(0), 1.0, human_size(plan.size_after))],
                ("Now", "After converting"),
            )
        )
        page.add(
            legend(
                [
                    (theme.layer_colour(0), "block stored in the file"),
                    (theme.free_colour(), "not stored (reads as zeros)"),
                ]
            )
        )
        rows = [
            ("Type", f"{plan.from_type} → {plan.to}"),
            (
                "File size",
                f"{human_size(plan.size_before)} → {human_size(plan.size_after)}"
                + (" at most" if plan.to == "dynamic" else ""),
            ),
            ("Blocks with data", f"{plan.data_blocks:,}"),
            (
                "Host space needed",
                f"{human_size(plan.space_needed)} of "
                f"{human_size(plan.space_free)} free (old and new file "
                "exist side by side until the swap)",
            ),
            (
                "Estimated time",
                duration_text(
                    (plan.data_blocks * plan.block_size + plan.size_after) / eng.ESTIMATED_RATE
                ),
            ),
        ]
        page.add(figures(rows))
        for text in plan.warnings:
            page.add(notice(text, Level.WARNING))
        page.add(
            notice(
                "The file name, UUID and every other header field stay the same, so "
                "the VM's settings need no change.",
                Level.INFO,
            )
        )

    def undo_sentence(self, plan: ClonePlans, space: Any) -> tuple[str, Level]:
        """A clone is a new file; a convert replaces the image in place."""
        if space is not None and space.undoable and space.keep_undo:
            return super().undo_sentence(plan, space)
        if isinstance(plan, eng.ConvertPlan):
            return (
                "Undo will be impossible: converting replaces the image in place and keeps "
                "no undo data. What the guest sees stays exactly the same (verified).",
                Level.WARNING,
            )
        return (
            "There is nothing to undo afterwards: the clone is a new file, and deleting it "
            "puts everything back as it was.",
            Level.INFO,
        )

    def run_summary(self, plan: ClonePlans) -> str:
        """What runs."""
        if isinstance(plan, eng.ConvertPlan):
            return (
                f"Rebuilding '{plan.path.name}' as a {plan.to} image beside the original, "
                "verifying it, then swapping it in."
            )
        return (
            f"Writing '{plan.dest.name}' from {len(plan.chain_paths)} file"
            f"{'s' if len(plan.chain_paths) != 1 else ''} (read only), then verifying it."
        )

    def cancel_meaning(self) -> str:
        """Nothing appears until the end."""
        return (
            "Cancel stops at the next block; the half-written file is removed and the "
            "source is untouched."
        )

    def describe_result(self, page: ResultPage, result: CloneResults) -> None:
        """Verification and figures."""
        if result.verified and isinstance(result, eng.CloneResult) and result.fs_blocks:
            page.add(
                notice(
                    "Verified: the clone's filesystems read back with the same usage "
                    "and every block the guest uses reads as in the source (the "
                    "blocks left out read as zeros).",
                    Level.OK,
                )
            )
        elif result.verified:
            page.add(
                notice(
                    "Verified: the new file reads back exactly as the source"
                    + (f" (digest {result.hash[:16]}…)." if result.hash else "."),
                    Level.OK,
                )
            )
        else:
            page.add(notice("Not verified (verification was switched off).", Level.WARNING))
        if isinstance(result, eng.ConvertResult):
            page.add(heading(f"'{result.path.name}' is now a {result.to} image."))
            page.add(
                figures(
                    [
                        (
                            "File size",
                            f"{human_size(result.size_before)} → {human_size(result.size_after)}",
                        ),
                        ("Blocks stored", f"{result.stored_blocks:,}"),
                    ]
                )
            )
            return
        page.add(heading(f"Created '{result.dest.name}'."))
        page.add(
            figures(
                [
                    ("File", str(result.dest)),
                    (
                        "Size",
                        f"{human_size(result.file_size)} (the source chain: "
                        f"{human_size(result.source_size)})",
                    ),
                    (
                        "Blocks stored",
                        f"{result.stored_blocks:,} (zeros not stored: {result.zero_blocks:,})",
                    ),
                    ("UUID", f"{{{result.uuid}}}"),
                ]
            )
        )
        page.add(
            notice(
                "The clone is not registered with any VM; attach it in VirtualBox's "
                "storage settings to use it.",
                Level.INFO,
            )
        )

    def changed_path(self) -> Any:
        """The clone (or the converted image)."""
        outcome = self.outcome
        if outcome is not None and outcome.kind is OutcomeKind.SUCCEEDED:
            return getattr(outcome.value, "dest", None) or getattr(outcome.value, "path", None)
        return getattr(self.plan, "dest", None) or self.target.image
