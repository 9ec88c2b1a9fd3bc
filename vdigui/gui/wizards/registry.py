"""The one table of operations: key, title, menu entry, wizard and availability.

Why one table: the menu, the toolbar, the context menus, the availability checks, the busy
lock's sentences and the screenshot mode (``--wizard KIND``) all list the same operations.
Kept in parallel tables they drifted (a title in one, a shortcut in another, the wizard class
in a third); here each operation is one :class:`OperationSpec`, and adding one is one entry.

Qt-free on purpose (the icon is a ``QStyle.StandardPixmap`` member name, the wizard a dotted
path loaded on first use): the wizards import this module, so it cannot import them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, cast

from vdigui.engine import VdiError, VmFolder
from vdigui.gui.wizards import targets as tg
from vdigui.gui.wizards.targets import Target, TargetKind

if TYPE_CHECKING:
    from vdigui.gui.wizards.base import OperationWizard


class Operation(StrEnum):
    """The operations that change disks. The values are what ``--wizard`` takes.

    A ``StrEnum``, so callers that still pass the plain strings ("compact", ...) keep working.
    """

    COMPACT = "compact"
    CLONE = "clone"
    DELETE_SNAPSHOT = "delete-snapshot"
    REPAIR = "repair"
    RESIZE = "resize"


#: (enabled, reason): the reason is the tooltip, a disabled operation's is the refusal.
Answer = tuple[bool, str]
#: Each operation's answer for one selection.
Availability = dict[Operation, Answer]


@dataclass(frozen=True, slots=True)
class OperationSpec:
    """One operation.

    Attributes:
        key: the operation.
        title: its name in window titles and messages ("Clone or Convert").
        menu_text: the menu entry, with its mnemonic.
        shortcut: the key sequence of the menu and toolbar action.
        icon: the ``QStyle.StandardPixmap`` member shown beside it.
        wizard: ``"module:Class"`` of its wizard (loaded on first use).
        availability: (vm, target) -> whether it can run there and why (not).
        planned_apart: its availability plans a whole folder (slow): the window asks it on a
            worker of its own, not with the others.
    """

    key: Operation
    title: str
    menu_text: str
    shortcut: str
    icon: str
    wizard: str
    availability: Callable[[VmFolder | None, Target], Answer]
    planned_apart: bool = False

    def wizard_class(self) -> type[OperationWizard]:
        """The wizard class (imported now: the wizard modules import this one)."""
        module, name = self.wizard.split(":")
        return cast("type[OperationWizard]", getattr(importlib.import_module(module), name))


_W = "vdigui.gui.wizards."
REGISTRY: dict[Operation, OperationSpec] = {
    spec.key: spec
    for spec in (
        OperationSpec(
            Operation.COMPACT,
            "Compact",
            "&Compact…",
            "Ctrl+Shift+C",
            "SP_ArrowDown",
            _W + "compact:CompactWizard",
            tg.compact_availability,
        ),
        OperationSpec(
            Operation.CLONE,
            "Clone or Convert",
            "C&lone / Convert…",
            "Ctrl+Shift+N",
            "SP_FileDialogNewFolder",
            _W + "clone:CloneWizard",
            tg.clone_availability,
        ),
        OperationSpec(
            Operation.DELETE_SNAPSHOT,
            "Delete Snapshot",
            "&Delete Snapshot…",
            "Ctrl+Shift+Del",
            "SP_TrashIcon",
            _W + "delete_snapshot:DeleteSnapshotWizard",
            tg.delete_snapshot_availability,
        ),
        OperationSpec(
            Operation.REPAIR,
            "Repair Chain",
            "&Repair Chain…",
            "Ctrl+Shift+R",
            "SP_DialogApplyButton",
            _W + "repair:RepairWizard",
            tg.repair_availability,
            planned_apart=True,
        ),
        OperationSpec(
            Operation.RESIZE,
            "Resize Disk",
            "Re&size…",
            "Ctrl+Shift+S",
            "SP_TitleBarMaxButton",
            _W + "resize:ResizeWizard",
            tg.resize_availability,
        ),
    )
}

#: The operations, in menu order.
OPERATIONS: tuple[Operation, ...] = tuple(REGISTRY)


def spec(key: Operation | str) -> OperationSpec:
    """The operation ``key`` (an :class:`Operation` or its string value).

    Raises:
        ValueError: no operation has that key (the message lists them).
    """
    try:
        return REGISTRY[Operation(key)]
    except ValueError:
        raise ValueError(f"unknown operation '{key}' (choose {', '.join(OPERATIONS)})") from None


def operation_availability(
    vm: VmFolder | None, target: object, *, repair: bool = True
) -> Availability:
    """For each operation: (enabled, reason) where reason is the tooltip.

    It runs only the engine's plans, which read headers and block maps (never the data) and
    look for programs holding the files open: too slow for the GUI thread on big disks, so the
    window calls it on a worker (``checks.AvailabilityChecks``). A disabled operation's reason
    is the engine's own refusal sentence. With ``repair=False`` the operations planned apart
    (repair: it checks every image) are left out.
    """
    try:
        resolved = tg.resolve_target(vm, target)
    except VdiError as exc:
        return dict.fromkeys(OPERATIONS, (False, tg.first_sentence(str(exc))))
    return {
        key: s.availability(vm, resolved)
        for key, s in REGISTRY.items()
        if repair or not s.planned_apart
    }


def first_suitable(vm: VmFolder | None, image: Path | None, kind: Operation | str) -> Target:
    """The target ``--wizard KIND`` uses when no ``--target`` is given.

    The current state first, then every snapshot, then every image: the first one the
    operation can run on (or the current state when none can, so the wizard can say why).
    """
    key = spec(kind).key
    candidates = tg.candidates(vm, image)
    if not candidates:
        return tg.NONE
    for candidate in candidates:
        if key is Operation.DELETE_SNAPSHOT and candidate.kind is not TargetKind.SNAPSHOT:
            continue
        enabled, _ = operation_availability(vm, candidate)[key]
        if enabled:
            return candidate
    return candidates[0]


__all__ = [
    "OPERATIONS",
    "REGISTRY",
    "Answer",
    "Availability",
    "Operation",
    "OperationSpec",
    "first_suitable",
    "operation_availability",
    "spec",
]
