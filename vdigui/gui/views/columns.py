"""Column widths that fit the view: content width where there is room, elided text where not.

Why not Qt's resize modes: ``ResizeToContents`` on every column lets one long snapshot name or
file name push the last columns out of sight behind a horizontal scroll bar, and ``Stretch``
ignores the content entirely. The fitter gives each column its content width; when the sum is
wider than the view, it narrows the *elastic* columns, widest first and never below a floor;
their cells then elide with "…" and carry the full text in their tooltips (the models provide
them). Spare room goes to one chosen column so the table still fills the view.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QTreeView

#: Elastic columns never shrink below this (or their header's width, if smaller content).
MIN_ELASTIC = 64


class ColumnFitter(QObject):
    """Keeps a tree's or table's columns fitted to its viewport (see the module docstring).

    The fit is redone after the model changes, rows expand or collapse, and the viewport
    resizes; the user can still drag a column until the next refit.
    """

    def __init__(
        self,
        view: QTreeView | QTableView,
        elastic: Sequence[int | Sequence[int]],
        fill: int | None = None,
        minimum: int = MIN_ELASTIC,
        keep: dict[int, str] | None = None,
    ) -> None:
        """``elastic``: the columns that may shrink, as one group (``(1, 0)``: both shrink
        together, widest first) or as groups (``((1,), (0, 2))``: column 1 first, and 0 and 2
        only once column 1 is at its floor). ``keep`` names, per column, a text that should stay
        whole (the column's floor is its width): the usual value, so only rare longer ones
        elide."""
        super().__init__(view)
        self.view = view
        if all(isinstance(g, int) for g in elastic):
            self.groups = [tuple(int(g) for g in elastic)]  # type: ignore[arg-type]
        else:
            self.groups = [(g,) if isinstance(g, int) else tuple(g) for g in elastic]
        self.fill = fill
        self.minimum = minimum
        self.keep = dict(keep or {})
        self._fitting = False
        header = self.header
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        view.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.fit)
        view.viewport().installEventFilter(self)
        self._watch(view.model())
        if isinstance(view, QTreeView):
            view.expanded.connect(self.schedule)
            view.collapsed.connect(self.schedule)

    @property
    def header(self) -> QHeaderView:
        """The view's horizontal header."""
        view = self.view
        return view.header() if isinstance(view, QTreeView) else view.horizontalHeader()

    def _watch(self, model: QObject | None) -> None:
        if model is None:
            return
        for signal in ("modelReset", "layoutChanged", "rowsInserted", "rowsRemoved", "dataChanged"):
            getattr(model, signal).connect(self.schedule)

    def schedule(self, *_args: object) -> None:
        """Refit once control returns to the event loop (coalesces bursts of changes)."""
        self._timer.start()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Qt override: refit when the viewport changes width."""
        if event.type() == QEvent.Type.Resize and not self._fitting:
            self.schedule()
        return False

    def wanted_widths(self) -> list[int]:
        """Each column's content width (cells and header title); 0 for hidden columns."""
        view, header = self.view, self.header
        out = []
        for column in range(header.count()):
            if header.isSectionHidden(column):
                out.append(0)
                continue
            out.append(max(view.sizeHintForColumn(column), header.sectionSizeHint(column)))
        return out

    def fit(self) -> None:
        """Size the columns now."""
        if self._fitting:
            return
        self._fitting = True
        try:
            header = self.header
            widths = self.wanted_widths()
            if not widths:
                return
            available = self.view.viewport().width()
            excess = sum(widths) - available
            for group in self.groups:
                if excess <= 0:
                    break
                floors = {
                    c: min(
                        widths[c], max(self.minimum, header.sectionSizeHint(c), self._kept_width(c))
                    )
                    for c in group
                }
                before = sum(widths[c] for c in group)
                cap = shrink_cap({c: widths[c] for c in group}, floors, excess)
                for column in group:
                    widths[column] = max(floors[column], min(widths[column], cap))
                excess -= before - sum(widths[c] for c in group)
            slack = available - sum(widths)
            if slack > 0:
                target = self.fill if self.fill is not None else self._last_visible(header)
                widths[target] += slack
            for column, width in enumerate(widths):
                if not header.isSectionHidden(column) and header.sectionSize(column) != width:
                    header.resizeSection(column, width)
        finally:
            self._fitting = False

    def _kept_width(self, column: int) -> int:
        text = self.keep.get(column)
        if not text:
            return 0
        # The delegate's text margins on both sides, with a little room to spare.
        return self.view.fontMetrics().horizontalAdvance(text) + 12

    @staticmethod
    def _last_visible(header: QHeaderView) -> int:
        for visual in range(header.count() - 1, -1, -1):
            logical = header.logicalIndex(visual)
            if not header.isSectionHidden(logical):
                return logical
        return 0


def shrink_cap(widths: dict[int, int], floors: dict[int, int], excess: int) -> int:
    """The width cap that removes ``excess`` pixels from the widest columns first.

    Water-filling: every elastic column wider than the cap is cut to it (never below its
    floor), so one very long name cannot keep its width while the others are cut to nothing.
    Returns 0 when even the floors do not fit (every column then sits at its floor).
    """
    room = sum(widths.values()) - excess
    low, high = 0, max(widths.values(), default=0)
    while low < high:
        cap = (low + high + 1) // 2
        used = sum(max(floors[c], min(w, cap)) for c, w in widths.items())
        if used <= room:
            low = cap
        else:
            high = cap - 1
    return low


def fit_columns(
    view: QTreeView | QTableView,
    elastic: Sequence[int | Sequence[int]],
    fill: int | None = None,
    keep: dict[int, str] | None = None,
) -> ColumnFitter:
    """Install a :class:`ColumnFitter` on ``view`` (kept alive as the view's child)."""
    fitter = ColumnFitter(view, elastic, fill, keep=keep)
    fitter.schedule()
    return fitter
