"""The Compact wizard: give back the space of blocks the guest no longer needs.

Why it explains so much first: "compact does not shrink" is the most common complaint about
dynamic disks (users.md pain 1). The intro says why a disk grows and why zeroing free space in
the guest first is what lets compaction reclaim it; the preview says what *this* disk will give
back and why not more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QCheckBox, QLabel, QVBoxLayout, QWidget, QWizardPage

from vdigui.engine import (
    BLOCK_FREE,
    BLOCK_ZERO,
    CancelToken,
    Progress,
    human_size,
    open_image,
)
from vdigui.gui import theme
from vdigui.gui.views.blockmap import layer_codes
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards.base import OperationWizard, PreviewPage, ResultPage, duration_text
from vdigui.gui.wizards.registry import Operation
from vdigui.gui.wizards.targets import TargetKind
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
<p><b>Why dynamic disks grow.</b> A dynamic VDI starts almost empty and takes a new block
(normally 1&nbsp;MiB) from the host the first time the guest writes anywhere in it. When the
guest later deletes files, its filesystem only marks the space as free: the old bytes stay in
the blocks, so VirtualBox cannot tell them from data and the file never shrinks by itself.</p>

<p><b>Why zero the free space in the guest first.</b> Compaction gives back blocks that hold
<i>only zeros</i>. Filling the guest's free space with zeros turns deleted-but-stale blocks into
such blocks. Inside the VM, before shutting it down:</p>
<ul>
<li>Linux: <code>zerofree</code> on an unmounted (or read-only) ext2/3/4 filesystem, or
<code>fstrim</code> when discard is enabled;</li>
<li>Windows: <code>sdelete -z C:</code> (Sysinternals).</li>
</ul>
<p>Zero-filling temporarily grows the image to the size of the data plus the free space, so
check that the host has room. vdigui can also skip this step: its <i>filesystem-aware</i>
option reads the guest's ext2/3/4, NTFS or FAT allocation maps itself and drops the blocks
they do not use.</p>

<p><b>What compaction does.</b> It marks all-zero blocks as "zero" (they still read as zeros
and, in a snapshot's image, still hide the older data below), drops blocks identical to what
the parent image already shows, moves the remaining blocks down to fill the holes, and cuts the
file. The UUIDs and the guest-visible content do not change, so the VM and its snapshots keep
working; vdigui proves it by hashing the guest disk before and after.</p>

<p><b>Before you start:</b> shut the VM down (a saved state is fine). vdigui refuses to touch
an image another program has open.</p>
"""


def volumes_table(usage: Any) -> QWidget:
    """What the filesystem-aware analysis found on the guest disk, one line per volume."""
    rows = []
    for volume in usage.volumes:
        if volume.kind == "partition-table":
            continue
        name = f"{volume.partition} {volume.kind}" + (f" '{volume.label}'" if volume.label else "")
        if volume.kept_whole or volume.free is None:
            why = " ".join(volume.notes) or "Not understood."
            rows.append((name, f"{human_size(volume.size)}, kept whole. {why}"))
        else:
            rows.append(
                (
                    name,
                    f"{human_size(volume.size)}: {human_size(volume.used or 0)} "
                    f"used, {human_size(volume.free)} free",
                )
            )
    box = QWidget()
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(heading("What the guest disk holds (filesystem-aware)"))
    layout.addWidget(figures(rows or [("Volumes", "none found")]))
    for note in usage.notes:
        layout.addWidget(notice(note, Level.INFO))
    return box


#: Codes of the file-slot strip.
SLOT_HOLE, SLOT_DATA, SLOT_ZERO, SLOT_PARENT = 0, 1, 2, 3


class CompactOptionsPage(QWizardPage):
    """Defragment or not (and, when the engine offers it, filesystem-aware compaction)."""

    def __init__(self, wizard: CompactWizard) -> None:
        super().__init__()
        self.setTitle("Options")
        target = wizard.target
        what = target.image.name if target.image is not None else target.label
        if target.kind is TargetKind.SNAPSHOT:
            what += f" (the image snapshot '{target.snapshot_name}' froze)"
        elif target.kind is TargetKind.CURRENT:
            what += " (the image the current state writes to)"
        self.setSubTitle(f"How to compact {what}.")
        self.defrag = QCheckBox("Also put the blocks in guest order (defragment)")
        self.defrag.setToolTip(
            "Rewrites the image into a new file beside it, in the order the "
            "guest reads it, then swaps it in with the same UUIDs. Needs "
            "free space for a full copy of the data."
        )
        why = QLabel(
            "Compaction in place fills holes by moving the highest blocks down, which "
            "leaves the blocks in a mixed order. Defragmenting rewrites the whole image "
            "in guest order instead: sequential reads get faster, it takes longer and "
            "needs room for a copy of the data while it runs."
        )
        why.setWordWrap(True)
        self.verify = QCheckBox("Verify: hash the guest disk before and after (recommended)")
        self.verify.setChecked(True)
        self.verify.setToolTip("Reads the whole disk once more; a mismatch keeps the original.")
        layout = QVBoxLayout(self)
        layout.addWidget(self.defrag)
        layout.addWidget(why)
        layout.addSpacing(8)
        layout.addWidget(self.verify)
        self.fs_aware = QCheckBox(
            "Filesystem-aware: also drop blocks the guest's "
            "filesystems do not use (no zero-filling needed)"
        )
        self.fs_aware.setToolTip(
            "Reads the ext2/3/4, NTFS and FAT allocation maps (and "
            "LVM, swap) of the guest disk; anything not understood is "
            "kept whole."
        )
        self.discard_swap = QCheckBox(
            "Also drop the contents of swap partitions (never for a guest that hibernated to swap)"
        )
        self.discard_swap.setEnabled(False)
        self.fs_aware.toggled.connect(self.discard_swap.setEnabled)
        fs_note = QLabel(
            "Instead of zero-filling inside the guest, vdigui reads which "
            "blocks the guest's filesystems use and drops the others, even "
            "when they still hold old data. Dropped blocks then read as "
            "zeros; the guest never reads them, and verification checks that "
            "every block it does use reads as before."
        )
        fs_note.setWordWrap(True)
        layout.addSpacing(8)
        layout.addWidget(self.fs_aware)
        layout.addWidget(self.discard_swap)
        layout.addWidget(fs_note)
        layout.addStretch(1)


class CompactWizard(OperationWizard[eng.CompactPlan, eng.CompactResult]):
    """Compact one image in place (optionally defragmenting it)."""

    operation = Operation.COMPACT
    plan_function = staticmethod(eng.plan_compact)
    run_function = staticmethod(eng.run_compact)
    intro = INTRO
    options_page_class = CompactOptionsPage
    subtitle = "Give back the space of unused blocks in {image}."
    action_text = "Compact now"
    opts: CompactOptionsPage

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"defrag": self.opts.defrag.isChecked()}
        if self.opts.fs_aware.isChecked():
            kwargs["fs_aware"] = True
            if self.opts.discard_swap.isChecked():
                kwargs["discard_swap"] = True
        return kwargs

    def compute_plan(self) -> eng.CompactPlan:
        """The fast plan (maps only); the scan follows in the background."""
        if self.target.image is None:
            raise ValueError(f"{self.target.label.capitalize()} has no disk image to compact.")
        return self.plan_fn(self.target.image, **self._kwargs())

    def refusals(self, plan: eng.CompactPlan) -> tuple[str, ...]:
        """The plan's refusals; an image that is already compact has nothing to run."""
        if plan.refusals:
            return tuple(plan.refusals)
        if plan.nothing_to_do:
            return (f"{plan.path.name} is already compact.",)
        return ()

    def preview_job(self, plan: eng.CompactPlan) -> Callable[..., Any] | None:
        """Read the allocated blocks to know exactly which are all zero."""
        if plan.refusals or plan.scanned:
            return None
        path, kwargs = plan.path, self._kwargs()
        extras = self.extras = {}

        def job(progress: Callable[[Progress], None], token: CancelToken) -> Any:
            scanned = self.plan_fn(path, scan=True, progress=progress, cancel=token, **kwargs)
            if scanned.usage is not None and scanned.forecast is not None:
                extras["forecast"] = (scanned.usage, scanned.forecast)
            return scanned

        return job

    extras: dict[str, Any]

    def run_call(
        self, plan: eng.CompactPlan, progress: Callable[[Progress], None], token: CancelToken
    ) -> eng.CompactResult:
        """run_compact(plan, verify=...)."""
        return self.run_fn(
            plan, progress=progress, cancel=token, verify=self.opts.verify.isChecked()
        )

    # -- preview -------------------------------------------------------------------------------
    def _maps(self, plan: eng.CompactPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Guest-block codes and file-slot codes, before and after (from the image's map)."""
        with open_image(plan.path) as image:
            entries = image.block_map[: plan.guest_blocks].copy()
        zero_mask = np.zeros(entries.size, dtype=bool)
        parent_mask = np.zeros(entries.size, dtype=bool)
        if plan.zero_blocks is not None:
            zero_mask[plan.zero_blocks] = True
        if plan.parent_blocks is not None:
            parent_mask[plan.parent_blocks] = True
        fs_blocks = getattr(plan, "fs_blocks", None)
        if fs_blocks is not None:
            zero_mask[fs_blocks] = True  # dropped like zeros (they become ZERO entries)
        guest_before = layer_codes(entries[None, :], [zero_mask])[0]
        after_entries = entries.copy()
        after_entries[zero_mask] = BLOCK_ZERO
        after_entries[parent_mask] = BLOCK_FREE
        bad = np.concatenate([plan.out_of_range, plan.cross_linked]).astype(np.int64)
        after_entries[bad] = BLOCK_FREE
        guest_after = layer_codes(after_entries[None, :])[0]
        slots = np.full(max(plan.slots_in_file, 1), SLOT_HOLE, dtype=np.uint8)
        live = np.flatnonzero(entries < 0xFFFFFFF0)
        live = live[entries[live] < plan.slots_in_file]
        slots[entries[live].astype(np.int64)] = SLOT_DATA
        slots[entries[live[zero_mask[live]]].astype(np.int64)] = SLOT_ZERO
        slots[entries[live[parent_mask[live]]].astype(np.int64)] = SLOT_PARENT
        kept = int(np.count_nonzero(after_entries < 0xFFFFFFF0))
        slots_after = np.full(max(kept, 1), SLOT_DATA if kept else SLOT_HOLE, dtype=np.uint8)
        return guest_before, guest_after, slots, slots_after

    def fill_preview(self, page: PreviewPage, plan: eng.CompactPlan) -> None:
        """Headline, before/after maps, figures, refusals and warnings."""
        name = plan.path.name
        saved = plan.bytes_reclaimed
        if plan.refusals:
            page.add(heading(f"{name} cannot be compacted now."))
            for text in plan.refusals:
                page.add(notice(text, Level.ERROR))
        elif plan.nothing_to_do:
            page.add(heading(f"{name} is already compact: nothing would change."))
            for text in self.nothing_to_do_advice(plan):
                page.add(notice(text, Level.INFO))
        elif plan.scanned:
            page.add(
                heading(
                    f"Compacting {name} gives back {human_size(saved)}: "
                    f"{human_size(plan.file_size)} → {human_size(plan.size_after)}."
                )
            )
        else:
            page.add(
                heading(
                    f"Compacting {name} gives back at least {human_size(saved)}; the "
                    "all-zero blocks are being counted."
                )
            )
        guest_before, guest_after, slots, slots_after = self._maps(plan)
        palette = state_palette(0)
        slot_palette = (
            theme.free_colour(),
            theme.layer_colour(0),
            QColor(theme.ALL_ZERO_COLOUR),
            QColor(theme.ZERO_COLOUR),
        )
        fraction = plan.size_after / plan.file_size if plan.file_size else 1.0
        page.add(
            before_after(
                [
                    StripRow("guest blocks", guest_before, palette),
                    StripRow("file", slots, slot_palette, 1.0, human_size(plan.file_size)),
                ],
                [
                    StripRow("guest blocks", guest_after, palette),
                    StripRow(
                        "file", slots_after, slot_palette, fraction, human_size(plan.size_after)
                    ),
                ],
                ("Now", "After compaction"),
            )
        )
        dropped = (
            "all-zero or unused by the guest (dropped)"
            if plan.fs_aware
            else "all-zero block (dropped)"
        )
        page.add(
            legend(
                [
                    (theme.layer_colour(0), "data"),
                    (theme.ALL_ZERO_COLOUR, dropped),
                    (theme.ZERO_COLOUR, "zero entry / same as parent"),
                    (theme.free_colour(), "unallocated or hole in the file"),
                ]
            )
        )
        zero = "counting…" if plan.zero_blocks is None else f"{plan.zero_blocks.size:,}"
        rows = [
            (
                "Blocks stored now",
                f"{plan.allocated:,} of {plan.guest_blocks:,} ({human_size(plan.block_size)} each)",
            ),
            ("All-zero blocks to drop", zero),
        ]
        if plan.differencing:
            same = "counting…" if plan.parent_blocks is None else f"{plan.parent_blocks.size:,}"
            rows.append(("Blocks identical to the parent", same))
        if plan.fs_aware:
            fs_blocks = getattr(plan, "fs_blocks", None)
            rows.append(
                (
                    "Blocks the guest does not use",
                    "counting…" if fs_blocks is None else f"{fs_blocks.size:,}",
                )
            )
        rows += [
            ("Blocks to move" if not plan.defrag else "Blocks to rewrite", f"{plan.moves:,}"),
            (
                "File size",
                f"{human_size(plan.file_size)} → {human_size(plan.size_after)}"
                + ("" if plan.scanned else " (at most)"),
            ),
            ("Space given back", human_size(saved) + ("" if plan.scanned else " (at least)")),
            (
                "Host space needed",
                f"{human_size(plan.space_needed)} of {human_size(plan.space_free)} free",
            ),
            ("Estimated time", duration_text(self._estimate(plan))),
        ]
        bad = plan.out_of_range.size + plan.cross_linked.size
        if bad:
            rows.append(("Bad map entries repaired", f"{bad:,}"))
        page.add(figures(rows, columns=2))
        for text in plan.warnings:
            page.add(notice(text, Level.WARNING))
        if plan.differencing and not plan.refusals:
            page.add(
                notice(
                    "This is a snapshot's differencing image: blocks identical to the "
                    "parent become unallocated (the parent shows the same bytes) and "
                    "all-zero blocks become zero entries, which keep hiding the "
                    "parent's older data.",
                    Level.INFO,
                )
            )
        forecast = getattr(self, "extras", {}).get("forecast")
        if forecast is not None and plan.scanned and not plan.refusals:
            self._explain(page, plan, forecast)
        usage = getattr(plan, "usage", None)
        if usage is not None and not plan.refusals:
            page.add(volumes_table(usage))
        if not plan.refusals:
            page.add(
                notice(
                    "UUIDs and the guest's view stay the same, so the VM and every "
                    "snapshot keep working. The header and block map are backed up "
                    "beside the image until the compaction has been verified.",
                    Level.INFO,
                )
            )

    @staticmethod
    def nothing_to_do_advice(plan: eng.CompactPlan) -> list[str]:
        """What could still make the image smaller, following the scan's forecast.

        Zero-filling inside the guest only helps when blocks hold stale data the guest does
        not use; when filesystem-aware compaction already drops those (or the forecast shows
        the guest's files fill every block), that advice would be wrong.
        """
        numbers = getattr(plan, "forecast", None)
        usage = getattr(plan, "usage", None)
        understood = usage is not None and any(
            v.kind not in ("partition-table", "free") and not v.kept_whole for v in usage.volumes
        )
        if numbers is None or not understood:
            if plan.fs_aware:
                kinds = sorted({v.kind for v in usage.volumes if v.kept_whole}) if usage else []
                what = f" ({', '.join(kinds)})" if kinds else ""
                return [
                    f"vdigui could not read the guest's filesystems{what}, so only all-zero "
                    "blocks can be given back: zero the free space inside the guest first "
                    "(see the first page) if you expected it to shrink."
                ]
            return [
                "If you expected it to shrink, zero the free space inside the guest first "
                '(see the first page), or go back and tick "Filesystem-aware": only '
                "all-zero blocks, or blocks the guest does not use, can be given back."
            ]
        out: list[str] = []
        if numbers.fs_unused_blocks and not plan.fs_aware:
            unused = numbers.fs_unused_blocks * numbers.block_size
            out.append(
                f"{human_size(unused)} sit in {numbers.fs_unused_blocks:,} blocks the "
                "guest's filesystems do not use but that still hold old data. Go back "
                'and tick "Filesystem-aware" (or zero the free space inside the '
                "guest) to give them back."
            )
        else:
            out.append(
                "Every stored block holds data the guest's files still use, so there is "
                "nothing to give back; zeroing the free space inside the guest would "
                "not change that."
            )
        if numbers.partly_used_blocks:
            out.append(
                f"{numbers.partly_used_blocks:,} blocks are only partly used "
                f"({human_size(numbers.partly_used_free_bytes)} free inside them); a "
                "block is kept while any byte of it is in use, so defragmenting inside "
                "the guest could free some of them."
            )
        return out

    @staticmethod
    def _explain(page: PreviewPage, plan: eng.CompactPlan, forecast: Any) -> None:
        """ "Why not more?": what the guest's filesystems say about the remaining blocks."""
        usage, numbers = forecast
        unused = numbers.fs_unused_blocks * numbers.block_size
        understood = [
            v
            for v in usage.volumes
            if v.kind not in ("partition-table", "free") and not v.kept_whole
        ]
        if unused and not plan.fs_aware:
            page.add(
                notice(
                    f"{human_size(unused)} more sit in {numbers.fs_unused_blocks:,} "
                    "blocks the guest's filesystem does not use but that still hold "
                    'old data. Go back and tick "Filesystem-aware" (or zero the '
                    "free space inside the guest) to give them back too.",
                    Level.INFO,
                )
            )
        if numbers.partly_used_blocks:
            page.add(
                notice(
                    f"{numbers.partly_used_blocks:,} blocks are only partly used by "
                    f"the guest ({human_size(numbers.partly_used_free_bytes)} free "
                    "inside them); a block is kept while any byte of it is in use, so "
                    "defragmenting inside the guest could free some of them.",
                    Level.INFO,
                )
            )
        kept = [v for v in usage.volumes if v.kept_whole]
        if kept and not understood and not plan.fs_aware:  # fs-aware lists the volumes
            kinds = ", ".join(sorted({v.kind for v in kept}))
            page.add(
                notice(
                    f"vdigui could not read the guest's filesystems ({kinds}), so it "
                    "cannot say how much of the stored data the guest still uses; only "
                    "all-zero blocks are given back.",
                    Level.INFO,
                )
            )

    @staticmethod
    def _estimate(plan: eng.CompactPlan) -> float:
        """Read everything stored (scan + verify), plus copy the moved blocks."""
        stored = plan.allocated * plan.block_size
        moved = plan.moves * plan.block_size
        return (2 * stored + 2 * moved) / eng.ESTIMATED_RATE

    def undo_sentence(self, plan: eng.CompactPlan, space: Any) -> tuple[str, Level]:
        """Compaction changes the image in place; its undo is the verification beforehand."""
        if space is not None and space.undoable and space.keep_undo:
            return super().undo_sentence(plan, space)
        return (
            "Undo will be impossible: compaction changes the image in place and keeps no "
            "undo data. What the guest sees stays exactly the same"
            + (" (verified)." if self.opts.verify.isChecked() else "."),
            Level.WARNING,
        )

    def run_summary(self, plan: eng.CompactPlan) -> str:
        """What runs."""
        how = "Defragmenting" if plan.defrag else "Compacting"
        return (
            f"{how} '{plan.path.name}': reading its blocks, dropping the all-zero ones, "
            "moving the rest down, verifying, then cutting the file."
        )

    def cancel_meaning(self) -> str:
        """Compaction is consistent at every block."""
        return (
            "Cancel stops at the next block. The image stays consistent at every moment: "
            "a cancelled compaction leaves it unchanged or partly compacted, never broken."
        )

    # -- result --------------------------------------------------------------------------------
    def describe_result(self, page: ResultPage, result: eng.CompactResult) -> None:
        """Verification, then before/after figures."""
        if not result.changed:
            page.add(
                notice(f"{result.path.name} was already compact; nothing was written.", Level.OK)
            )
        elif result.verified and result.fs_blocks:
            page.add(
                notice(
                    "Verified: the guest's filesystems read back with the same usage, "
                    "and every block they use reads exactly as before (the dropped "
                    "unused blocks now read as zeros).",
                    Level.OK,
                )
            )
        elif result.verified:
            digest = f" (digest {result.hash[:16]}…)." if result.hash else "."
            page.add(
                notice(
                    "Verified: the guest sees exactly the same disk as before" + digest, Level.OK
                )
            )
        else:
            page.add(notice("Not verified (verification was switched off).", Level.WARNING))
        how = "Defragmented" if result.defragmented else "Compacted"
        page.add(
            heading(f"{how} {result.path.name}: gave back {human_size(result.bytes_reclaimed)}.")
        )
        rows = [
            ("File size", f"{human_size(result.size_before)} → {human_size(result.size_after)}"),
            ("Space given back", human_size(result.bytes_reclaimed)),
            (
                "Blocks stored",
                f"{result.blocks_allocated_before:,} → {result.blocks_allocated_after:,}",
            ),
            ("All-zero blocks dropped", f"{result.zero_blocks:,}"),
            *(
                [("Blocks unused by the guest dropped", f"{result.fs_blocks:,}")]
                if getattr(result, "fs_blocks", 0)
                else []
            ),
            ("Blocks same as the parent dropped", f"{result.parent_blocks:,}"),
            (
                "Blocks " + ("rewritten" if result.defragmented else "moved"),
                f"{result.moved_blocks:,}",
            ),
        ]
        if result.sanitised_blocks:
            rows.append(("Bad map entries cleared", f"{result.sanitised_blocks:,}"))
        page.add(figures(rows))

    def changed_path(self) -> Any:
        """The compacted image."""
        return self.plan.path if self.plan is not None else self.target.image
