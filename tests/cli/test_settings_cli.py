"""``vdictl settings``: the discard advisor, on a VM whose .vbox the test writes by hand.

The expected values come from the test's own .vbox (which controllers, which images) and from
reading the saved file back with ElementTree; qemu-img makes the images (dynamic and fixed).
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from builders import build_trim_vm, folder_state

from vdigui.cli import main

NS = "{http://www.virtualbox.org/}"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trim_vm(tmp_path: Path, qemu_img: str) -> Path:
    return build_trim_vm(tmp_path / "Trim", qemu_img)


def _ns(root: ET.Element) -> str:
    """The document's namespace as ElementTree spells it ("{...}"), whichever one it uses."""
    return root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def _devices(vbox: Path) -> dict[tuple[str, str], dict[str, str]]:
    """(controller, port) -> attributes of the current state's AttachedDevice (ElementTree).

    The current state's controllers sit under <Machine><Hardware> (or, in some 1.17 files,
    directly under <Machine>); snapshots' are inside <Snapshot> and are not looked at.
    """
    root = ET.parse(vbox).getroot()
    ns = _ns(root)
    machine = root.find(f"{ns}Machine")
    assert machine is not None
    out = {}
    holders = [machine, *machine.findall(f"{ns}Hardware")]
    controllers = [
        c
        for h in holders
        for group in h.findall(f"{ns}StorageControllers")
        for c in group.findall(f"{ns}StorageController")
    ]
    for ctl in controllers:
        for dev in ctl.findall(f"{ns}AttachedDevice"):
            out[(ctl.get("name", ""), dev.get("port", ""))] = dict(dev.attrib)
    return out


def _without_flags(data: bytes) -> str:
    """The document in canonical form with every discard/nonrotational attribute dropped."""
    root = ET.fromstring(data)
    for dev in root.iter(f"{_ns(root)}AttachedDevice"):
        dev.attrib.pop("discard", None)
        dev.attrib.pop("nonrotational", None)
    return ET.canonicalize(ET.tostring(root), strip_text=True)


def test_listing_says_which_bus_can_discard(
    trim_vm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "settings", str(trim_vm), "--json")
    assert code == 0
    rows = {(a["controller"], a["port"]): a for a in json.loads(out)["attachments"]}
    assert rows[("SATA", 0)]["discard_supported"] == "yes" and rows[("SATA", 0)]["eligible"]
    assert rows[("SATA", 1)]["eligible"] is False  # fixed-size image never shrinks
    assert "fixed-size" in rows[("SATA", 1)]["advice"]
    assert rows[("IDE", 0)]["discard_supported"] == "no" and not rows[("IDE", 0)]["eligible"]
    assert rows[("SCSI", 0)]["eligible"] and rows[("SCSI", 0)]["nonrotational"] is True
    assert rows[("NVMe", 0)]["discard_supported"] == "unknown"
    code, out, _ = run(capsys, "settings", str(trim_vm))
    assert code == 0
    assert "IDE controller has no TRIM" in out and "--discard on" in out


def test_discard_on_edits_only_eligible_current_attachments_and_undo_restores(
    trim_vm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vbox = trim_vm / "Trim.vbox"
    original = vbox.read_bytes()
    code, out, err = run(capsys, "settings", str(trim_vm), "--discard", "on")
    assert code == 0, err
    assert "fstrim" in out and "Optimize" in out
    devices = _devices(vbox)
    for key in (("SATA", "0"), ("SCSI", "0")):
        assert devices[key].get("discard") == "true"
        assert devices[key].get("nonrotational") == "true"
    for key in (("SATA", "1"), ("IDE", "0"), ("NVMe", "0")):
        assert "discard" not in devices[key] and "nonrotational" not in devices[key]
    # VirtualBox's attribute order: nonrotational, discard, then type.
    text = vbox.read_text(encoding="utf-8")
    assert '<AttachedDevice nonrotational="true" discard="true" type="HardDisk"' in text
    # The snapshot's frozen settings are history: untouched.
    snap = ET.parse(vbox).getroot().find(f"{NS}Machine/{NS}Snapshot")
    assert snap is not None
    assert all("discard" not in d.attrib for d in snap.iter(f"{NS}AttachedDevice"))
    # Nothing else changed: without the two flags, the documents are the same XML.
    assert _without_flags(vbox.read_bytes()) == _without_flags(original)
    assert (trim_vm / "Trim.vbox-prev").read_bytes() == original
    # A second run has nothing to do.
    code, out, _ = run(capsys, "settings", str(trim_vm), "--discard", "on")
    assert code == 0 and "Nothing to change" in out
    code, _, err = run(capsys, "undo", str(trim_vm))
    assert code == 0, err
    assert hashlib.sha256(vbox.read_bytes()).digest() == hashlib.sha256(original).digest()


def test_discard_off_keeps_the_solid_state_flag(
    trim_vm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vbox = trim_vm / "Trim.vbox"
    assert run(capsys, "settings", str(trim_vm), "--discard", "on")[0] == 0
    code, _, err = run(capsys, "settings", str(trim_vm), "--discard", "off")
    assert code == 0, err
    devices = _devices(vbox)
    assert "discard" not in devices[("SATA", "0")]
    assert devices[("SATA", "0")].get("nonrotational") == "true"


def test_dry_run_and_refusals_write_nothing(
    trim_vm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = folder_state(trim_vm)
    code, out, _ = run(capsys, "settings", str(trim_vm), "--discard", "on", "--dry-run", "--json")
    assert code == 0
    plan = json.loads(out)
    assert {(c["controller"], c["port"]) for c in plan["changes"]} == {("SATA", 0), ("SCSI", 0)}
    assert folder_state(trim_vm) == before
    # A saved state: VirtualBox refuses storage changes, and so does vdigui.
    vbox = trim_vm / "Trim.vbox"
    vbox.write_text(
        vbox.read_text(encoding="utf-8").replace(
            'snapshotFolder="Snapshots"', 'snapshotFolder="Snapshots" stateFile="now.sav"'
        ),
        encoding="utf-8",
    )
    (trim_vm / "now.sav").write_bytes(b"saved")
    before = folder_state(trim_vm)
    code, _, err = run(capsys, "settings", str(trim_vm), "--discard", "on")
    assert code == 1
    assert "saved state" in err and len(err.strip().splitlines()) == 1
    assert folder_state(trim_vm) == before


def test_real_vbox_files_round_trip(
    samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every real .vbox: on, then off; only the intended attributes change (read with
    ElementTree, not with vdigui), and a refused change leaves the file as it was."""
    tried = changed = 0
    for sample in sorted(samples.glob("*.vbox")):
        folder = tmp_path / sample.stem
        folder.mkdir()
        vbox = folder / sample.name
        vbox.write_bytes(sample.read_bytes())
        original = vbox.read_bytes()
        root = ET.fromstring(original)
        saved = root.find(f"{_ns(root)}Machine")
        assert saved is not None
        code, out, err = run(capsys, "settings", str(vbox), "--discard", "on", "--json")
        tried += 1
        if saved.get("stateFile"):
            assert code == 1 and "saved state" in err, sample.name
            assert vbox.read_bytes() == original
            continue
        assert code == 0, f"{sample.name}: {err}"
        report = json.loads(out)
        wanted = {(c["controller"], str(c["port"])) for c in report["changes"]}
        if not wanted:
            assert vbox.read_bytes() == original
            continue
        changed += 1
        assert _without_flags(vbox.read_bytes()) == _without_flags(original), sample.name
        flags = _devices(vbox)
        for key, attrs in flags.items():
            if key in wanted:
                assert attrs.get("discard") == "true" and attrs.get("nonrotational") == "true"
        code, _, err = run(capsys, "settings", str(vbox), "--discard", "off")
        assert code == 0, err
        assert all("discard" not in a for a in _devices(vbox).values()), sample.name
        assert _without_flags(vbox.read_bytes()) == _without_flags(original), sample.name
    assert tried >= 10 and changed >= 3, (tried, changed)
