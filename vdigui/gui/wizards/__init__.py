"""Wizards for the operations that change disks: compact, clone/convert, delete snapshot, repair.

Integration API (the main window and ``app.py`` use only these names):

- :func:`install_operation_actions` adds the Operations menu, toolbar actions with shortcuts
  and tooltips, context-menu actions, the busy lock and the close guard to a main window.
- :data:`REGISTRY` lists the operations (:class:`Operation` keys: title, menu entry, wizard,
  availability); :meth:`OperationActions.open_wizard` opens one by key.
- :func:`operation_availability` says which operations can run on a selection and why not (the
  reasons are the engine's refusal sentences). It plans (reads block maps, looks for programs
  holding the files), so the window asks it on a worker (``checks.AvailabilityChecks``).
- Edit > Undo, Edit > Discard Undo Data and the Overview's undo-data box (``undo``) are
  installed with the operations.
- :func:`render_wizard_screenshot` renders one page of one wizard offscreen (``--wizard``).
"""

from __future__ import annotations

from vdigui.gui.wizards.actions import OperationActions, install_operation_actions, selection_of
from vdigui.gui.wizards.base import OperationWizard, Outcome
from vdigui.gui.wizards.clone import CloneWizard
from vdigui.gui.wizards.compact import CompactWizard
from vdigui.gui.wizards.delete_snapshot import DeleteSnapshotWizard
from vdigui.gui.wizards.registry import (
    OPERATIONS,
    REGISTRY,
    Operation,
    OperationSpec,
    operation_availability,
)
from vdigui.gui.wizards.repair import RepairWizard
from vdigui.gui.wizards.screenshot import render_wizard_screenshot, wizard_class
from vdigui.gui.wizards.targets import Target, resolve_target

__all__ = [
    "OPERATIONS",
    "REGISTRY",
    "CloneWizard",
    "CompactWizard",
    "DeleteSnapshotWizard",
    "Operation",
    "OperationActions",
    "OperationSpec",
    "OperationWizard",
    "Outcome",
    "RepairWizard",
    "Target",
    "install_operation_actions",
    "operation_availability",
    "render_wizard_screenshot",
    "resolve_target",
    "selection_of",
    "wizard_class",
]
