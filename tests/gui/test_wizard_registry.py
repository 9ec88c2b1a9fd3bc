"""The operations are one registry, the wizards declare themselves, and the states are enums.

What would break without it: a fifth operation (or a renamed one) added to one table but not
the others (menu, toolbar, availability, ``--wizard``), a wizard whose kind string drifted
from its menu key, screenshot-only code paths inside the production wizards.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any

import pytest

from tests.gui.gui_vmkit import make_vm, open_and_wait
from vdigui.gui.wizards import (
    OPERATIONS,
    REGISTRY,
    CloneWizard,
    CompactWizard,
    DeleteSnapshotWizard,
    Operation,
    RepairWizard,
    install_operation_actions,
)
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards.base import OperationWizard, OutcomeKind
from vdigui.gui.wizards.registry import spec
from vdigui.gui.wizards.resize import ResizeWizard
from vdigui.gui.wizards.screenshot import simulated, wizard_class
from vdigui.gui.wizards.widgets import ERROR_COLOUR, Level, notice

WIZARDS = (CompactWizard, CloneWizard, DeleteSnapshotWizard, RepairWizard, ResizeWizard)


def test_every_operation_is_one_entry_with_its_own_wizard() -> None:
    assert OPERATIONS == (
        Operation.COMPACT,
        Operation.CLONE,
        Operation.DELETE_SNAPSHOT,
        Operation.REPAIR,
        Operation.RESIZE,
    )
    assert [spec(key).wizard_class() for key in OPERATIONS] == list(WIZARDS)
    for key, entry in REGISTRY.items():
        assert entry.key is key and entry.wizard_class().operation is key
        assert spec(str(key)) is entry  # the old string keys keep working
        assert wizard_class(str(key)) is entry.wizard_class()
    assert len({e.shortcut for e in REGISTRY.values()}) == len(REGISTRY)
    with pytest.raises(ValueError, match="unknown operation 'defrag' \\(choose compact, clone"):
        spec("defrag")


def test_wizards_declare_instead_of_overriding() -> None:
    expected = {
        CompactWizard: (eng.CompactPlan, eng.CompactResult),
        RepairWizard: (eng.RepairPlan, eng.RepairResult),
    }
    for cls in WIZARDS:
        own = vars(cls)
        for gone in (
            "kind",
            "default_plan_fn",
            "default_run_fn",
            "intro_subtitle",
            "intro_html",
            "make_options_page",
            "simulated_progress",
            "simulated_result",
        ):
            assert gone not in own, f"{cls.__name__}.{gone}"
        for declared in (
            "operation",
            "plan_function",
            "run_function",
            "intro",
            "subtitle",
            "options_page_class",
            "action_text",
        ):
            assert declared in own, f"{cls.__name__} does not declare {declared}"
        (base,) = cls.__orig_bases__  # type: ignore[attr-defined]
        assert typing.get_origin(base) is OperationWizard
        if cls in expected:
            assert typing.get_args(base) == expected[cls]
    assert "simulate" not in inspect.signature(OperationWizard.__init__).parameters


def test_only_the_screenshot_mode_simulates() -> None:
    for cls in WIZARDS:
        fake = simulated(cls)
        assert issubclass(fake, cls) and fake is not cls
        assert "start_operation" in vars(fake) and "start_operation" not in vars(cls)


def test_levels_and_outcomes_are_enums(qapp: object) -> None:
    assert ERROR_COLOUR in notice("Broken.", Level.ERROR).text()
    assert "color" not in notice("Just so you know.", Level.INFO).text()
    assert [k.level for k in OutcomeKind] == [Level.OK, Level.WARNING, Level.ERROR]
    assert OutcomeKind("cancelled") is OutcomeKind.CANCELLED


def test_menu_comes_from_the_registry_and_opens_by_either_key(
    window: Any, qtbot: Any, tmp_path: Path
) -> None:
    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    actions = install_operation_actions(
        window,
        lambda: window.session.vm if window.session else None,
        lambda: window.session.find_disk("disk.vdi"),
        window.reload,
    )
    assert list(actions.actions) == list(OPERATIONS)
    for key, action in actions.actions.items():
        assert action.text() == REGISTRY[key].menu_text
        assert action.shortcut().toString() == REGISTRY[key].shortcut
    assert [a.text() for a in actions.menu.actions()] == [e.menu_text for e in REGISTRY.values()]
    for key in ("clone", Operation.CLONE):  # the string the Space view passes, or the enum
        wizard = actions.open_wizard(key)
        assert isinstance(wizard, CloneWizard)
        assert wizard.windowTitle().startswith("Clone or Convert — ")
        wizard.close()
