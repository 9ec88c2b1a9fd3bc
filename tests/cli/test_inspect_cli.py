"""vdictl info/map/check/tree/frag/export/create, called through ``vdigui.cli.main``."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import uuid as uuidlib
from pathlib import Path

import pytest
from builders import (
    MIB,
    BuiltChain,
    build_chain,
    build_image,
    folder_state,
    model_read,
    pattern,
    write_vbox,
)

from vdigui.cli import build_parser, main
from vdigui.engine import open_chain

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
INFO_KEYS = {
    "version",
    "header_size",
    "type",
    "disk_size",
    "block_size",
    "block_extra",
    "blocks",
    "blocks_allocated",
    "offset_blocks",
    "offset_data",
    "uuid",
    "modify_uuid",
    "parent_uuid",
    "parent_modify_uuid",
    "file_size",
    "counts",
}


def commands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:  # argparse has no public listing of sub-commands
        if getattr(action, "choices", None) and isinstance(action.choices, dict):
            return set(action.choices)
    return set()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(code: int, err: str, *needles: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vdictl: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture
def chain(tmp_path: Path) -> BuiltChain:
    return build_chain(
        tmp_path / "vm",
        6 * MIB - 512,
        [
            {0: pattern(0, MIB), 1: pattern(1, MIB), 3: pattern(3, MIB)},
            {1: "zero", 2: pattern(2, MIB), 4: pattern(4, MIB)},
        ],
        names=["base.vdi", "leaf.vdi"],
        slot_order="reverse",
    )


# -- info ---------------------------------------------------------------------------------
def test_info_json_keys_and_values(capsys: pytest.CaptureFixture[str], chain: BuiltChain) -> None:
    code, out, err = run(capsys, "info", "--json", str(chain.leaf))
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert set(doc) >= INFO_KEYS
    leaf, base = chain.images[1].header, chain.images[0].header
    assert doc["version"] == "1.1"
    assert doc["header_size"] == 0x190
    assert doc["type"] == "differencing"
    assert doc["disk_size"] == 6 * MIB - 512
    assert (doc["block_size"], doc["block_extra"], doc["blocks"]) == (MIB, 0, 6)
    assert doc["blocks_allocated"] == 2
    assert (doc["offset_blocks"], doc["offset_data"]) == (MIB, 2 * MIB)
    assert doc["uuid"] == str(leaf.uuid_create)
    assert doc["modify_uuid"] == str(leaf.uuid_modify)
    assert doc["parent_uuid"] == str(base.uuid_create)
    assert doc["parent_modify_uuid"] == str(base.uuid_modify)
    for key in ("uuid", "modify_uuid", "parent_uuid", "parent_modify_uuid"):
        assert UUID_RE.match(doc[key]), doc[key]
    assert doc["file_size"] == chain.leaf.stat().st_size
    assert doc["counts"] == {"allocated": 2, "zero": 1, "free": 3}


def test_info_json_base_has_null_parent(
    capsys: pytest.CaptureFixture[str], chain: BuiltChain
) -> None:
    doc = json.loads(run(capsys, "info", "--json", str(chain.paths[0]))[1])
    assert doc["type"] == "dynamic"
    assert doc["parent_uuid"] == "00000000-0000-0000-0000-000000000000"
    assert doc["parent_modify_uuid"] == "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    ("kw", "version", "kind"),
    [
        ({"version": 0x00000002}, "0.2", "dynamic"),
        ({"version": 0x00010000, "header_size": 0x180, "placement": "qemu"}, "1.0", "dynamic"),
        ({"fixed": True, "placement": "qemu"}, "1.1", "fixed"),
        ({"image_type": 3}, "1.1", "undo"),
    ],
)
def test_info_versions_and_types(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kw: dict, version: str, kind: str
) -> None:
    b = build_image(tmp_path / "x.vdi", 3 * MIB, {1: pattern(1, MIB)}, **kw)
    doc = json.loads(run(capsys, "info", "--json", str(b.path))[1])
    assert (doc["version"], doc["type"]) == (version, kind)


def test_info_text(capsys: pytest.CaptureFixture[str], chain: BuiltChain) -> None:
    code, out, _ = run(capsys, "info", str(chain.leaf))
    assert code == 0
    assert "differencing" in out and str(chain.images[1].uuid) in out


@pytest.mark.parametrize("content", [b"", b"garbage" * 100])
def test_info_on_bad_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes
) -> None:
    p = tmp_path / "bad.vdi"
    p.write_bytes(content)
    code, out, err = run(capsys, "info", str(p))
    assert_error(code, err, "bad.vdi")
    assert out == ""


def test_info_header_error_names_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", MIB, flags=0x4)
    code, _, err = run(capsys, "info", "--json", str(b.path))
    assert_error(code, err, "x.vdi", "fFlags", "0x4")


def test_missing_file_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for cmd in ("info", "map", "frag", "check"):
        code, _, err = run(capsys, cmd, str(tmp_path / "nope.vdi"))
        assert_error(code, err, "nope.vdi")


# -- map ----------------------------------------------------------------------------------
def test_map_json(capsys: pytest.CaptureFixture[str], chain: BuiltChain) -> None:
    code, out, _ = run(capsys, "map", "--json", str(chain.leaf))
    assert code == 0
    doc = json.loads(out)
    assert doc["blocks"] == ["free", "zero", 1, "free", 0, "free"]
    base = json.loads(run(capsys, "map", "--json", str(chain.paths[0]))[1])
    assert base["blocks"] == [2, 1, "free", 0, "free", "free"]


def test_map_text_folds_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    layer = {b: pattern(b, 64 * 1024) for b in range(2, 7)}
    layer.update({7: "zero", 8: "zero"})
    b = build_image(tmp_path / "x.vdi", 12 * 64 * 1024, layer, block_size=64 * 1024)
    code, out, _ = run(capsys, "map", str(b.path))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines == [
        "blocks 0-1: free",
        "blocks 2-6: slots 0-4",
        "blocks 7-8: zero",
        "blocks 9-11: free",
    ]


# -- check --------------------------------------------------------------------------------
def test_check_clean(capsys: pytest.CaptureFixture[str], chain: BuiltChain) -> None:
    code, _, err = run(capsys, "check", str(chain.leaf))
    assert (code, err) == (0, "")
    code, out, _ = run(capsys, "check", "--json", str(chain.leaf))
    assert code == 0 and json.loads(out)["clean"] is True


def _poke(path: Path, offset: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack("<I", value))


@pytest.mark.parametrize(
    ("damage", "kind", "needle"),
    [
        ("dup", "duplicate-slot", "share"),
        ("eof", "slot-past-eof", "past the end"),
        ("range", "slot-out-of-range", "beyond"),
        ("count", "allocated-count-low", "cBlocksAllocated"),
        ("tail", "crash-tail", "after the last slot"),
    ],
)
def test_check_finds_problems(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, damage: str, kind: str, needle: str
) -> None:
    b = build_image(
        tmp_path / "hurt.vdi",
        8 * MIB,
        {0: pattern(0, MIB), 1: pattern(1, MIB)},
        tail=b"\x01" * 5000 if damage == "tail" else b"",
    )
    if damage == "dup":
        _poke(b.path, MIB + 4 * 5, 0)
    elif damage == "eof":  # slot 2 is counted in cBlocksAllocated but not in the file
        _poke(b.path, 0x184, 3)
        _poke(b.path, MIB + 4 * 5, 2)
    elif damage == "range":
        _poke(b.path, MIB + 4 * 5, 50)
    elif damage == "count":
        _poke(b.path, 0x184, 1)
    before = folder_state(tmp_path)
    code, out, err = run(capsys, "check", str(b.path))
    assert code == 2, out + err
    lines = out.strip().splitlines()
    assert lines and all("hurt.vdi" in line for line in lines), out
    assert any(needle in line for line in lines), out
    code, out, _ = run(capsys, "check", "--json", str(b.path))
    assert code == 2
    doc = json.loads(out)
    assert doc["clean"] is False
    assert kind in {f["kind"] for f in doc["findings"]}
    assert folder_state(tmp_path) == before


def test_check_broken_chain(capsys: pytest.CaptureFixture[str], chain: BuiltChain) -> None:
    chain.paths[0].unlink()
    code, out, err = run(capsys, "check", str(chain.leaf))
    assert code == 2, out + err
    assert "leaf.vdi" in out


# -- frag ---------------------------------------------------------------------------------
def test_frag_figures(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bs = 64 * 1024
    layer = {b: pattern(b, bs) for b in range(6)}
    b = build_image(tmp_path / "f.vdi", 8 * bs, layer, block_size=bs)
    # Guest order reads slots 0,1,2,5,4,3: three seeks, longest run 3, jumps 2,2,2.
    for block, slot in enumerate([0, 1, 2, 5, 4, 3]):
        _poke(b.path, MIB + 4 * block, slot)
    code, out, _ = run(capsys, "frag", "--json", str(b.path))
    assert code == 0
    doc = json.loads(out)
    layer_doc = doc["layers"][0]
    assert layer_doc["file"].endswith("f.vdi")
    assert (layer_doc["allocated"], layer_doc["discontinuities"], layer_doc["longest_run"]) == (
        6,
        3,
        3,
    )
    assert layer_doc["in_order_share"] == pytest.approx(2 / 5, abs=1e-5)
    assert layer_doc["mean_jump"] == pytest.approx(2.0)
    assert "host_extents" in layer_doc
    assert doc["chain"]["discontinuities"] == 3
    code, out, _ = run(capsys, "frag", str(b.path))
    assert code == 0 and "f.vdi" in out


def test_frag_chain(capsys: pytest.CaptureFixture[str], chain: BuiltChain) -> None:
    code, out, _ = run(capsys, "frag", "--json", str(chain.leaf))
    assert code == 0
    doc = json.loads(out)
    assert [Path(x["file"]).name for x in doc["layers"]] == ["base.vdi", "leaf.vdi"]
    # Reads in guest order: base slot 2, leaf slot 1, base slot 0, leaf slot 0 (block 1 is
    # ZERO in the leaf, block 5 FREE everywhere): every step is a seek.
    c = doc["chain"]
    assert c["allocated"] == 4
    assert (c["discontinuities"], c["longest_run"], c["in_order_share"]) == (3, 1, 0.0)


# -- export -------------------------------------------------------------------------------
def test_export_chain_equals_model_and_is_sparse(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bs = MIB
    layers: list[dict] = [
        {0: pattern(0, bs), 5: pattern(5, bs), 9: bytes(bs)},
        {5: "zero", 30: pattern(30, bs)},
        {2: pattern(2, bs), 63: pattern(63, bs)},
    ]
    ch = build_chain(tmp_path / "vm", 64 * MIB - 512, layers)
    before = folder_state(tmp_path / "vm")
    out = tmp_path / "out.raw"
    code, _, err = run(capsys, "export", str(ch.leaf), str(out))
    assert (code, err) == (0, ""), err
    assert out.read_bytes() == ch.expected
    assert out.stat().st_size == 64 * MIB - 512
    assert out.stat().st_blocks * 512 <= 6 * MIB  # four data blocks, the rest holes
    assert folder_state(tmp_path / "vm") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.raw", "vm"]


@pytest.mark.qemu
def test_export_base_equals_qemu_convert(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, qemu_img: str, qemu_io: str
) -> None:
    p = tmp_path / "q.vdi"
    subprocess.run(
        [qemu_img, "create", "-f", "vdi", str(p), str(16 * MIB - 512)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            qemu_io,
            "-f",
            "vdi",
            "-c",
            "write -P 0x61 1000448 70000",
            "-c",
            "write -P 0x62 15M 4096",
            "-c",
            "write -z 8M 4096",
            str(p),
        ],
        check=True,
        capture_output=True,
    )
    ref = tmp_path / "ref.raw"
    subprocess.run([qemu_img, "convert", "-f", "vdi", "-O", "raw", str(p), str(ref)], check=True)
    out = tmp_path / "out.raw"
    assert run(capsys, "export", str(p), str(out))[0] == 0
    assert out.read_bytes() == ref.read_bytes()
    r = subprocess.run(
        [qemu_img, "compare", "-f", "raw", "-F", "vdi", str(out), str(p)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout


def test_export_refuses_existing_output(
    capsys: pytest.CaptureFixture[str], chain: BuiltChain, tmp_path: Path
) -> None:
    out = tmp_path / "out.raw"
    out.write_bytes(b"keep me")
    code, _, err = run(capsys, "export", str(chain.leaf), str(out))
    assert_error(code, err, "out.raw")
    assert out.read_bytes() == b"keep me"


def test_export_broken_chain_writes_nothing(
    capsys: pytest.CaptureFixture[str], chain: BuiltChain, tmp_path: Path
) -> None:
    chain.paths[0].unlink()
    out = tmp_path / "out.raw"
    code, _, err = run(capsys, "export", str(chain.leaf), str(out))
    assert_error(code, err, "leaf.vdi", str(chain.images[0].uuid))
    assert not out.exists()
    assert not list(tmp_path.glob(".*vdigui-tmp"))


def test_export_slot_past_eof_leaves_no_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    b = build_image(tmp_path / "x.vdi", 4 * MIB, {0: pattern(0, MIB), 1: pattern(1, MIB)})
    _poke(b.path, MIB + 4 * 3, 9)
    out = tmp_path / "out.raw"
    code, _, err = run(capsys, "export", str(b.path), str(out))
    assert_error(code, err, "x.vdi", "damaged", "vdictl repair")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.vdi"]


def test_export_cancel_exits_130_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str],
    chain: BuiltChain,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vdigui.cli import common

    def progress(self: common.Context, event: object) -> None:
        self.token.cancel()  # as the SIGINT handler does during an operation

    monkeypatch.setattr(common.Context, "progress", progress)
    out = tmp_path / "out.raw"
    code, _, err = run(capsys, "export", str(chain.leaf), str(out))
    assert code == 130, err
    assert "Traceback" not in err
    assert not out.exists()
    assert not list(tmp_path.glob(".*vdigui-tmp"))


def test_export_vm_folder_current(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    vm = tmp_path / "Demo"
    (vm / "Snapshots").mkdir(parents=True)
    base = build_image(vm / "Demo.vdi", 4 * MIB, {0: pattern(0, MIB), 1: pattern(1, MIB)})
    diff_uuid = uuidlib.uuid4()
    diff = build_image(
        vm / "Snapshots" / f"{{{diff_uuid}}}.vdi",
        4 * MIB,
        {1: "zero", 3: pattern(3, MIB)},
        parent=base.header,
        uuid_create=diff_uuid,
    )
    write_vbox(
        vm / "Demo.vbox",
        uuidlib.uuid4(),
        "Demo",
        [(base.uuid, "Demo.vdi", [(diff_uuid, f"Snapshots/{{{diff_uuid}}}.vdi")])],
        snapshot=("Before update", uuidlib.uuid4()),
    )
    out = tmp_path / "cur.raw"
    code, _, err = run(capsys, "export", str(vm), "--current", str(out))
    assert code == 0, err
    assert out.read_bytes() == model_read([base.layer, diff.layer], 4 * MIB, MIB)
    snap = tmp_path / "snap.raw"
    code, _, err = run(
        capsys, "export", str(vm / "Demo.vbox"), "--snapshot", "Before update", str(snap)
    )
    assert code == 0, err
    assert snap.read_bytes() == model_read([base.layer], 4 * MIB, MIB)
    code, _, err = run(capsys, "export", str(vm), "--snapshot", "No such", str(tmp_path / "n"))
    assert_error(code, err, "No such")
    assert not (tmp_path / "n").exists()
    code, _, err = run(capsys, "export", str(vm), str(tmp_path / "x.raw"))
    assert_error(code, err, "--current")


# -- create -------------------------------------------------------------------------------
def test_create_dynamic_fixed_diff(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "create", str(tmp_path / "d.vdi"), "--size", "64M")
    assert (code, err) == (0, ""), err
    assert "d.vdi" in out
    d = json.loads(run(capsys, "info", "--json", str(tmp_path / "d.vdi"))[1])
    assert (d["type"], d["disk_size"], d["header_size"]) == ("dynamic", 64 * MIB, 0x190)
    assert (d["offset_blocks"], d["offset_data"]) == (MIB, 2 * MIB)
    assert run(capsys, "create", str(tmp_path / "f.vdi"), "--size", "3M", "--fixed")[0] == 0
    f = json.loads(run(capsys, "info", "--json", str(tmp_path / "f.vdi"))[1])
    assert (f["type"], f["blocks_allocated"]) == ("fixed", 3)
    assert (
        run(capsys, "create", str(tmp_path / "c.vdi"), "--parent", str(tmp_path / "d.vdi"))[0] == 0
    )
    c = json.loads(run(capsys, "info", "--json", str(tmp_path / "c.vdi"))[1])
    assert c["type"] == "differencing"
    assert (c["parent_uuid"], c["parent_modify_uuid"]) == (d["uuid"], d["modify_uuid"])
    assert c["disk_size"] == 64 * MIB
    with open_chain(tmp_path / "c.vdi") as ch:
        assert len(ch.layers) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["--size", "12X"],
        ["--size", "1000"],  # not a multiple of 512
        [],
        ["--size", "0"],
    ],
)
def test_create_bad_arguments(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str]
) -> None:
    code, _, err = run(capsys, "create", str(tmp_path / "n.vdi"), *args)
    assert_error(code, err)
    assert not list(tmp_path.iterdir())


def test_create_refuses_existing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "e.vdi"
    p.write_bytes(b"mine")
    code, _, err = run(capsys, "create", str(p), "--size", "1M")
    assert_error(code, err, "e.vdi")
    assert p.read_bytes() == b"mine"


@pytest.mark.parametrize(
    "args",
    [
        ["info"],
        ["no-such-command"],
        ["info", "a", "b"],
        ["check", "--bogus", "x"],
        ["snapshot"],
        ["convert", "x.vdi", "--to", "qcow2"],
    ],
)
def test_argument_mistakes_exit_1_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    """Status 2 means "problems found" (check, tree); an argument mistake is status 1."""
    code, out, err = run(capsys, *args)
    assert out == ""
    assert_error(code, err)


# -- tree ---------------------------------------------------------------------------------
def _demo_vm(folder: Path) -> tuple[Path, uuidlib.UUID, uuidlib.UUID]:
    vm = folder / "Demo"
    (vm / "Snapshots").mkdir(parents=True)
    base = build_image(vm / "Demo.vdi", 4 * MIB, {0: pattern(0, MIB)})
    du = uuidlib.uuid4()
    build_image(vm / "Snapshots" / f"{{{du}}}.vdi", 4 * MIB, {}, parent=base.header, uuid_create=du)
    write_vbox(
        vm / "Demo.vbox",
        uuidlib.uuid4(),
        "Demo",
        [(base.uuid, "Demo.vdi", [(du, f"Snapshots/{{{du}}}.vdi")])],
    )
    return vm, base.uuid, du


def test_tree_clean(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    vm, base_uuid, diff_uuid = _demo_vm(tmp_path)
    before = folder_state(vm)
    code, out, err = run(capsys, "tree", str(vm))
    assert code == 0, out + err
    assert "Demo.vdi" in out and str(diff_uuid) in out
    code, out, err = run(capsys, "tree", "--json", str(vm / "Demo.vbox"))
    assert code == 0, err
    text = json.dumps(json.loads(out))
    assert str(base_uuid) in text and str(diff_uuid) in text
    assert folder_state(vm) == before


def test_tree_marks_problems(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    vm, _, diff_uuid = _demo_vm(tmp_path)
    build_image(vm / "orphan.vdi", MIB, {})
    (vm / "Snapshots" / f"{{{diff_uuid}}}.vdi").unlink()  # registered but missing
    before = folder_state(vm)
    code, out, err = run(capsys, "tree", str(vm))
    assert code == 2, out + err
    assert "orphan.vdi" in out
    assert str(diff_uuid) in out
    assert "Traceback" not in err
    assert folder_state(vm) == before


def test_tree_not_a_vm_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "tree", str(tmp_path))
    assert_error(code, err)


def test_tree_hostile_vbox(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    vm = tmp_path / "Evil"
    vm.mkdir()
    (vm / "Evil.vbox").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        '<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">'
        '<Machine uuid="{11111111-2222-3333-4444-555555555555}" name="&c;"/></VirtualBox>\n'
    )
    code, _, err = run(capsys, "tree", str(vm))
    assert_error(code, err, "Evil.vbox")


def test_tree_on_real_samples(
    capsys: pytest.CaptureFixture[str], samples: Path, tmp_path: Path
) -> None:
    """Every real machine file loads: exit 0 or 2 (problems such as missing disks), never 1."""
    files = sorted(samples.glob("*.vbox")) + sorted(samples.glob("*machine.xml"))
    assert files
    for src in files:
        vm = tmp_path / src.stem
        vm.mkdir()
        shutil.copyfile(src, vm / (src.stem + (".vbox" if src.suffix == ".vbox" else ".xml")))
        target = vm / (src.stem + ".vbox") if src.suffix == ".vbox" else vm
        code, out, err = run(capsys, "tree", "--json", str(target))
        assert code in (0, 2), (src.name, err)
        assert "Traceback" not in err
        json.loads(out)


# -- the installed console script ---------------------------------------------------------
def test_console_script(tmp_path: Path, chain: BuiltChain) -> None:
    exe = shutil.which("vdictl") or str(Path(sys.executable).with_name("vdictl"))
    if not Path(exe).exists():
        pytest.fail("the vdictl console script is not installed (pip install -e .)")
    r = subprocess.run(
        [exe, "info", "--json", str(chain.leaf)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["type"] == "differencing"
    r = subprocess.run(
        [exe, "info", str(tmp_path / "missing.vdi")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert r.stderr.startswith("vdictl: error: ") and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "vdigui.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "vdictl" in r.stdout


def test_vm_folder_with_two_disks_asks_for_disk(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    vm = tmp_path / "Two"
    vm.mkdir()
    a = build_image(vm / "a.vdi", 2 * MIB, {0: pattern(0, MIB)})
    b = build_image(vm / "b.vdi", 2 * MIB, {1: pattern(1, MIB)})
    write_vbox(
        vm / "Two.vbox", uuidlib.uuid4(), "Two", [(a.uuid, "a.vdi", []), (b.uuid, "b.vdi", [])]
    )
    code, _, err = run(capsys, "export", str(vm), "--current", str(tmp_path / "x.raw"))
    # The message must name the real range (vdigui/cli/common.py once printed "1..{len(leaves)}").
    assert_error(code, err, "--disk", "1..2")
    assert not (tmp_path / "x.raw").exists()
    code, _, err = run(
        capsys, "export", str(vm), "--current", "--disk", "2", str(tmp_path / "x.raw")
    )
    assert code == 0, err
    assert (tmp_path / "x.raw").read_bytes() == model_read([b.layer], 2 * MIB, MIB)


def test_check_real_samples_are_clean(
    capsys: pytest.CaptureFixture[str], samples: Path, tmp_path: Path
) -> None:
    import gzip

    vm = tmp_path / "Windows 10"
    (vm / "Snapshots").mkdir(parents=True)
    base = vm / "Windows 10.vdi"
    diff = vm / "Snapshots" / "{0b77d7b1-a7f9-4bc4-953a-f50c2d3ade39}.vdi"
    for name, dest in [
        ("windows10_1.15-windows_base-dynamic-empty.vdi.gz", base),
        ("windows10_1.15-windows_diff-0b77d7b1.vdi.gz", diff),
    ]:
        with gzip.open(samples / name) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    windoze = tmp_path / "Windoze.vdi"
    shutil.copyfile(samples / "windoze_1.3-era_sun-xvm_empty-10G.vdi", windoze)
    for target in (diff, base, windoze):
        code, out, err = run(capsys, "check", str(target))
        assert (code, err) == (0, ""), out + err
    doc = json.loads(run(capsys, "info", "--json", str(windoze))[1])
    assert (doc["offset_blocks"], doc["offset_data"], doc["blocks"]) == (512, 41472, 10240)
    frag = json.loads(run(capsys, "frag", "--json", str(diff))[1])
    assert frag["chain"]["allocated"] == 0


@pytest.mark.qemu
def test_check_qemu_written_image_is_clean(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, qemu_img: str, qemu_io: str
) -> None:
    p = tmp_path / "q.vdi"
    subprocess.run(
        [qemu_img, "create", "-f", "vdi", str(p), "32M"], check=True, capture_output=True
    )
    subprocess.run(
        [qemu_io, "-f", "vdi", "-c", "write -P 7 20M 4096", "-c", "write -P 8 0 1M", str(p)],
        check=True,
        capture_output=True,
    )
    code, out, err = run(capsys, "check", str(p))
    assert (code, err) == (0, ""), out


def test_real_sigint_during_export_exits_130(tmp_path: Path, chain: BuiltChain) -> None:
    """SIGINT (Ctrl-C) in the middle of an export: exit 130, no output, nothing changed."""
    code = textwrap.dedent("""
        import os, signal, sys
        from vdigui.cli import common, main
        from vdigui.engine import copier
        copier.READ_BYTES = 1  # report after every block, so the second report is mid-copy
        calls = []
        def progress(self, event):
            calls.append(event)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGINT)
        common.Context.progress = progress
        sys.exit(main(["export", sys.argv[1], sys.argv[2]]))
    """)
    before = folder_state(chain.leaf.parent)
    out = tmp_path / "out.raw"
    r = subprocess.run(
        [sys.executable, "-c", code, str(chain.leaf), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("vdictl: ")
    assert not out.exists() and not list(tmp_path.glob(".*vdigui-tmp"))
    assert folder_state(chain.leaf.parent) == before
