"""Severities and repair evidence are enums; the JSON output keeps the plain words."""

from __future__ import annotations

import json
from pathlib import Path

from builders import MIB, RawImage, build_image, pattern, write_raw

from vdigui.engine import Severity, Strength, create_image
from vdigui.engine.check import check_image
from vdigui.engine.image import open_image
from vdigui.engine.operations.repair import plan_repair


def test_check_findings_carry_the_enum(tmp_path: Path) -> None:
    built = build_image(tmp_path / "bad.vdi", 8 * MIB, {0: pattern(0, MIB), 1: pattern(1, MIB)})
    entries = list(built.entries)
    entries[5] = 9  # past the end of the file
    write_raw(built.path, RawImage(built.header, entries, built.raw.slots))
    with open_image(built.path) as image:
        findings = check_image(image)
    past = [f for f in findings if f.kind == "slot-past-eof"]
    assert past and past[0].severity is Severity.ERROR
    assert json.dumps({"severity": past[0].severity}) == '{"severity": "error"}'
    assert [s.value for s in Severity] == ["error", "warning"]


def test_repair_evidence_carries_the_enum(tmp_path: Path) -> None:
    path = tmp_path / "d.vdi"
    create_image(path, 4 * MIB)
    with path.open("ab") as fh:
        fh.write(b"\xaa" * MIB)  # a crash tail: a slot no map entry points at
    (fix,) = plan_repair(path).fixes
    assert fix.strength is Strength.CERTAIN
    assert json.loads(json.dumps({"strength": fix.strength})) == {"strength": "certain"}


def test_merge_steps_and_directions_are_enums(tmp_path: Path) -> None:
    """A bare merge's plan names its action and direction with enums; the JSON plan (what the
    journal stores for recovery) keeps the plain words and reads back into the enums."""
    from vdigui.engine import MergeDirection, StepAction
    from vdigui.engine.operations.merge import MergePlan, plan_merge

    base = build_image(tmp_path / "base.vdi", 4 * MIB, {0: pattern(0, MIB)})
    child = build_image(tmp_path / "child.vdi", 4 * MIB, {1: pattern(1, MIB)}, parent=base.header)
    plan = plan_merge(child.path, mode="into-parent")
    (step,) = plan.steps
    assert step.action is StepAction.MERGE and step.direction is MergeDirection.BACKWARD
    assert {c.direction for c in step.costs} == {MergeDirection.BACKWARD, MergeDirection.FORWARD}
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["steps"][0]["action"] == "merge" and data["steps"][0]["direction"] == "backward"
    again = MergePlan.from_dict(data)
    assert again.steps[0].action is StepAction.MERGE
    assert again.steps[0].direction is MergeDirection.BACKWARD
