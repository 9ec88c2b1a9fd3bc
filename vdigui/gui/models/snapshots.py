"""The snapshot tree as VirtualBox users know it, with the current state marked.

Beside each snapshot, its cost map (:mod:`vdigui.engine.snapshot_cost`): what deleting it
frees, copies and needs, and an estimate of the time. Those figures come from planning every
deletion, which reads every block map of the chain, so :class:`SnapshotCostLoader` works them
out on the window's worker pool after the tree is shown; the cells say "…" meanwhile, and
selecting or opening never waits for them.
"""

from __future__ import annotations

import enum
import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QFont, QIcon

from vdigui.engine import Problem, Severity, SnapshotCost, human_size, snapshot_costs
from vdigui.gui.models.tree import NodeTreeModel
from vdigui.gui.session import Session, SnapNode
from vdigui.gui.theme import badge_icon
from vdigui.gui.workers import WorkerPool

#: Role that returns the SnapNode itself (for views and tests).
NodeRole = Qt.ItemDataRole.UserRole + 1
#: Role that returns a cost column's exact number (bytes or seconds; None when unknown).
CostValueRole = Qt.ItemDataRole.UserRole + 2

#: The cost columns, by header.
FREES, COPIES, NEEDS, TIME = 2, 3, 4, 5
#: What a cost cell shows while the figures are being worked out.
PENDING_TEXT = "…"

#: Header tooltips: what each column means.
COLUMN_TIPS = (
    "The snapshot's name; the current state is in italics under the snapshot it builds on.",
    "When the snapshot was taken.",
    "What deleting the snapshot frees for good: the disk files shrink by this much when no "
    "undo data is kept (Delete Snapshot with undo off, or after discarding the undo data). "
    "While undo data is kept the folder may even grow; the cell's tooltip says by how much.",
    "The data the deletion copies from one disk image into another (the merge).",
    "Free host space the deletion needs while it runs (new blocks, before-images, the "
    "settings backup), with undo data kept.",
    "An estimate of how long the deletion takes: the bytes it copies at a copy rate measured "
    "on this host (or taken from the last vdigui operation on this folder).",
)


class CostState(enum.Enum):
    """Where the cost columns stand."""

    NONE = "none"  # a single image, or nothing opened: no snapshots to cost
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


def seconds_text(value: float) -> str:
    """An estimated duration, short ("< 1 s", "~12 s", "~3 min")."""
    if value < 1:
        return "< 1 s"
    if value < 120:
        return f"~{value:.0f} s"
    return f"~{value / 60:.0f} min"


def problems_html(problems: list[Problem]) -> str:
    """Badge tooltip lines, one sentence each."""
    return "".join(f"<p>&#9888; {html.escape(p.message)}</p>" for p in problems)


def worst_icon(problems: list[Problem]) -> QIcon | None:
    """The badge for a node: error beats warning; None without problems."""
    if not problems:
        return None
    return badge_icon(
        Severity.ERROR if any(p.severity == Severity.ERROR for p in problems) else Severity.WARNING
    )


class SnapshotTreeModel(NodeTreeModel):
    """Snapshots nested as in the .vbox, "Current State" under the current snapshot."""

    headers = ("Snapshot", "Taken", "Frees", "Copies", "Needs", "Time")

    def __init__(self, roots: list[SnapNode] | None = None, parent: QObject | None = None) -> None:
        super().__init__(roots, parent)
        self._costs: dict[str, SnapshotCost] = {}
        self.cost_state = CostState.NONE
        self.cost_error = ""

    # -- the cost map -------------------------------------------------------------------------
    def set_cost_state(
        self, state: CostState, costs: list[SnapshotCost] | None = None, error: str = ""
    ) -> None:
        """Show the cost columns as pending, filled with ``costs``, failed, or empty."""
        self.cost_state = state
        self._costs = {c.uuid: c for c in costs or []}
        self.cost_error = error
        nodes = self.iter_nodes()
        for node in nodes:
            self.dataChanged.emit(self.index_of(node, FREES), self.index_of(node, TIME))
        self.resort()

    def cost_of(self, node: SnapNode) -> SnapshotCost | None:
        """The cost figures of a snapshot row (None: the current state, or not known yet)."""
        if node.uuid is None:
            return None
        return self._costs.get(str(node.uuid))

    def _cost_value(self, cost: SnapshotCost, column: int) -> float | None:
        return {
            FREES: cost.frees_without_undo,
            COPIES: cost.copies,
            NEEDS: cost.needs,
            TIME: cost.seconds_estimate,
        }.get(column)

    def _cost_text(self, node: SnapNode, column: int) -> str:
        if node.is_current_state or self.cost_state == CostState.NONE:
            return ""
        if self.cost_state == CostState.PENDING:
            return PENDING_TEXT
        cost = self.cost_of(node)
        if cost is None:
            return "?"
        if cost.refused_reason is not None:
            return "refused" if column == FREES else "—"
        value = self._cost_value(cost, column)
        if value is None:
            return "—"
        return seconds_text(value) if column == TIME else human_size(int(value))

    def _cost_tooltip(self, node: SnapNode, column: int) -> str:
        shown = html.escape(self._cost_text(node, column))
        what = html.escape(COLUMN_TIPS[column])
        if node.is_current_state:
            return "The current state is not a snapshot: there is nothing to delete."
        if self.cost_state == CostState.PENDING:
            return f"{shown} Working out what deleting this snapshot would cost…"
        if self.cost_state == CostState.FAILED:
            return f"The costs could not be worked out: {html.escape(self.cost_error)}"
        cost = self.cost_of(node)
        if cost is None:
            return f"{shown} This snapshot was not costed (reload the folder)."
        if cost.refused_reason is not None:
            return f"<p>{shown}: {html.escape(cost.refused_reason)}</p>"
        value = self._cost_value(cost, column)
        lines = [f"<b>{shown}</b>"]
        if column == TIME:
            lines.append(
                f"an estimate at {html.escape(human_size(int(cost.rate)))}/s "
                f"({html.escape(cost.rate_source)})"
            )
        elif value is not None:
            lines.append(f"{int(value):,} bytes")
        if column == FREES and cost.frees_keeping_undo is not None:
            kept = cost.frees_keeping_undo
            change = (
                f"shrinks by {human_size(kept)}" if kept >= 0 else f"grows by {human_size(-kept)}"
            )
            lines.append(
                f"with undo data kept the folder {html.escape(change)} until the "
                "undo data is discarded"
            )
        if column == FREES and cost.only_here is not None:
            lines.append(
                f"{html.escape(human_size(cost.only_here))} of data only this snapshot reads"
            )
        return "<br>".join(lines) + f"<p>{what}</p>"

    def sort_key(self, node: SnapNode, column: int) -> Any:
        """Numbers sort by value; rows without a figure (current state, refused) go last."""
        if column == 0:
            return (0, node.name.lower())
        if column == 1:
            return (0, node.timestamp.timestamp()) if node.timestamp is not None else (1, 0)
        cost = self.cost_of(node)
        value = self._cost_value(cost, column) if cost is not None else None
        return (0, value) if value is not None else (1, 0)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        """Qt override: the column titles, with a tooltip that explains each."""
        if (
            orientation == Qt.Orientation.Horizontal
            and role == Qt.ItemDataRole.ToolTipRole
            and 0 <= section < len(COLUMN_TIPS)
        ):
            return COLUMN_TIPS[section]
        if (
            orientation == Qt.Orientation.Horizontal
            and role == Qt.ItemDataRole.TextAlignmentRole
            and section >= FREES
        ):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return super().headerData(section, orientation, role)

    def node_data(self, node: SnapNode, column: int, role: int) -> Any:
        """Name, date, cost figures, badges, tooltips."""
        if role == NodeRole:
            return node
        if column >= FREES:
            if role == Qt.ItemDataRole.DisplayRole:
                return self._cost_text(node, column)
            if role == Qt.ItemDataRole.ToolTipRole:
                return self._cost_tooltip(node, column)
            if role == Qt.ItemDataRole.TextAlignmentRole:
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if role == CostValueRole:
                cost = self.cost_of(node)
                return None if cost is None else self._cost_value(cost, column)
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                if node.is_current_state and node.modified and node.parent is not None:
                    return f"{node.name} (changed)"
                return node.name
            if node.timestamp is not None:
                return node.timestamp.strftime("%Y-%m-%d %H:%M")
            return ""
        if role == Qt.ItemDataRole.DecorationRole and column == 0:
            return worst_icon(node.problems)
        if role == Qt.ItemDataRole.FontRole and (node.is_current_state or node.is_current_snapshot):
            font = QFont()
            font.setBold(True)
            if node.is_current_state:
                font.setItalic(True)
            return font
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(node)
        if role == Qt.ItemDataRole.AccessibleDescriptionRole:
            return node.description
        return None

    def _tooltip(self, node: SnapNode) -> str:
        parts = [f"<b>{html.escape(node.name)}</b>"]
        if node.timestamp is not None:
            parts.append(f"taken {node.timestamp.strftime('%Y-%m-%d %H:%M:%S %Z').strip()}")
        if node.is_current_snapshot:
            parts.append("the current state is based on this snapshot")
        if node.online:
            parts.append("includes a saved machine state")
        text = "<br>".join(parts)
        if node.description:
            text += f"<p>{html.escape(node.description)}</p>"
        return text + problems_html(node.problems)


class SnapshotCostLoader(QObject):
    """Works out the cost map of the opened VM on the worker pool and fills the model.

    Each :meth:`load` starts one job; an answer that arrives after a newer :meth:`load`
    (another folder was opened, or the same one reloaded after an operation) is dropped.
    """

    def __init__(
        self, pool: WorkerPool, model: SnapshotTreeModel, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.pool = pool
        self.model = model
        self._generation = 0

    def load(self, session: Session | None) -> None:
        """Cost the snapshots of ``session`` (nothing for a single image)."""
        self._generation += 1
        generation = self._generation
        vm = session.vm if session is not None else None
        if vm is None or not session or not session.snapshot_roots:
            self.model.set_cost_state(CostState.NONE)
            return
        folder = Path(vm.folder)
        self.model.set_cost_state(CostState.PENDING)
        self.pool.start(
            lambda _progress, _token: snapshot_costs(folder),
            "snapshot costs",
            succeeded=lambda costs: self._done(generation, costs),
            failed=lambda exc: self._failed(generation, exc),
        )

    def _done(self, generation: int, costs: list[SnapshotCost]) -> None:
        if generation == self._generation:
            self.model.set_cost_state(CostState.READY, costs)

    def _failed(self, generation: int, exc: BaseException) -> None:
        if generation == self._generation:
            self.model.set_cost_state(CostState.FAILED, error=str(exc))
