"""vdictl snapshot list --cost / --order: the table, the JSON shape, the order, the errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine" / "merge"))
from vmbuild import MIB, VmBuilder

from vdigui.cli import main
from vdigui.engine.operations import merge as mg


def three(tmp_path: Path) -> VmBuilder:
    vm = VmBuilder(tmp_path / "vm", seed=11)
    vm.scribble(list(range(8)))
    vm.take_snapshot("base install", saved_state=True)
    vm.scribble([0, 1, 2])
    vm.take_snapshot("two")
    vm.scribble(list(range(3, 9)))
    vm.take_snapshot("three")
    vm.scribble([9])
    return vm


def cost_json(vm: VmBuilder, capsys: pytest.CaptureFixture[str], *extra: str) -> object:
    capsys.readouterr()
    assert main(["snapshot", "list", str(vm.folder), "--cost", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_is_a_list_of_objects_with_the_plan_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vm = three(tmp_path)
    doc = cost_json(vm, capsys, "--rate", "100")
    assert isinstance(doc, list) and [d["name"] for d in doc] == ["base install", "two", "three"]
    for item in doc:
        for key in (
            "name",
            "uuid",
            "frees",
            "copies",
            "needs",
            "only_here",
            "frees_keeping_undo",
            "frees_without_undo",
            "seconds_estimate",
            "refused_reason",
        ):
            assert key in item, key
        assert item["uuid"] == str(vm.snap(item["name"]).uuid)
        kept = mg.plan_snapshot_delete(vm.folder, item["name"])
        bare = mg.plan_snapshot_delete(vm.folder, item["name"], keep_undo=False)
        assert item["frees"] == item["frees_keeping_undo"] == kept.space.net_frees
        assert item["frees_without_undo"] == bare.space.frees
        assert item["needs"] == kept.space.peak_extra
        assert item["copies"] == sum(s.costs[0].bytes for s in kept.steps if s.costs)
        assert item["seconds_estimate"] == round(item["copies"] / (100 * MIB), 1)
        assert item["refused_reason"] is None
    no_undo = cost_json(vm, capsys, "--no-undo", "--rate", "100")
    assert [d["frees"] for d in no_undo] == [d["frees_without_undo"] for d in doc]  # type: ignore[index]


def test_refused_snapshot_has_a_reason_and_no_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vm = three(tmp_path)
    vm.restore(vm.snap("two"))  # 'two' is current and has a child: VirtualBox refuses
    doc = cost_json(vm, capsys)
    two = next(d for d in doc if d["name"] == "two")  # type: ignore[attr-defined]
    assert "current snapshot and has a child" in two["refused_reason"]
    assert two["frees"] is None and two["copies"] is None and two["needs"] is None
    assert main(["snapshot", "list", str(vm.folder), "--cost"]) == 0
    out = capsys.readouterr().out
    assert "refused" in out and "current snapshot and has a child" in out


def test_table_columns_are_aligned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vm = three(tmp_path)
    assert main(["snapshot", "list", str(vm.folder), "--cost", "--rate", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[: lines.index("")]
    assert table[0].split()[:4] == ["Snapshot", "Only", "here", "Frees"]
    assert len(table) == 4
    assert len({len(line) for line in table}) == 1, table  # right-aligned to the same edge
    for heading in ("Only here", "Frees (no undo)", "Frees (undo kept)", "Copies", "Needs"):
        end = table[0].index(heading) + len(heading)
        for row in table[1:]:
            assert row[end - 1] != " " and (end == len(row) or row[end] == " "), (heading, row)
    assert "MiB" in table[1] and "  two" in table[2]
    assert any("estimates at 50.0 MiB/s" in line for line in lines)


def test_order_picks_the_cheapest_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vm = three(tmp_path)
    capsys.readouterr()
    assert main(["snapshot", "list", str(vm.folder), "--order", "two", "three", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(doc["order"]) == ["three", "two"] and doc["exhaustive"] is True
    assert doc["cost"] == doc["copies"] + doc["peak"]
    assert [s["name"] for s in doc["steps"]] == doc["order"]
    assert main(["snapshot", "list", str(vm.folder), "--order", "two", "three"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Cheapest order (every order tried)")
    assert f"1. {doc['order'][0]}:" in out
    assert main(["snapshot", "list", str(vm.folder), "--cost", "--order", "two", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert set(both) == {"snapshots", "order"} and both["order"]["order"] == ["two"]


@pytest.mark.parametrize(
    "args", [["--order", "nope"], ["--cost", "--rate", "0"], ["--cost", "--json"]]
)
def test_errors_are_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    vm = three(tmp_path)
    target = vm.folder if args[-1] != "--json" else tmp_path / "missing"
    capsys.readouterr()
    assert main(["snapshot", "list", str(target), *args]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.startswith("vdictl: error: ") and captured.err.count("\n") == 1


def test_every_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["snapshot", "list", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, words in (
        ("--cost", "frees, copies and needs"),
        ("--order", "cheapest order"),
        ("--no-undo", "--no-undo"),
        ("--rate", "copy rate"),
        ("--json", "machine-readable"),
    ):
        assert option in text and words in text, option
