"""``vdictl report``: one self-contained HTML page whose figures are the CLI's own figures.

The VM folder is built by the VM builder (tests/engine/merge/vmbuild.py): three snapshots
with a branch, a saved state, a snapshot named ``<script>alert(1)</script>``, and one real
snapshot deletion (so the folder holds undo data and an operation record). The page is read
with :mod:`html.parser` and its figures compared with what ``vdictl space --json`` and
``vdictl snapshot list --cost --json`` print, run as separate processes. A headless Chromium
opens the page with every network request routed nowhere and a net log, and must report no
console error and no request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from support import require_tool

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "engine" / "merge"))

from vmbuild import MIB, VmBuilder  # noqa: E402

HOSTILE = "<script>alert(1)</script>"
HOSTILE_XML = "&lt;script&gt;alert(1)&lt;/script&gt;"


def vdictl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run vdictl as a separate process (what a user or script runs)."""
    return subprocess.run(
        [sys.executable, "-m", "vdigui.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )


def build_vm(folder: Path) -> VmBuilder:
    """Snapshots A (saved state, hostile name) -> B -> C, a branch D under A, one deletion."""
    vm = VmBuilder(folder, disk_size=16 * MIB)
    vm.scribble([0, 1, 2, 3, 8])
    a = vm.take_snapshot("HOSTILE", saved_state=True)
    vm.scribble([1, 2, 9])
    vm.take_snapshot("B")
    vm.scribble([2, 10])
    vm.take_snapshot("C")
    vm.scribble([3])
    vm.restore(a)
    vm.scribble([4, 5])
    vm.take_snapshot("D")
    vm.scribble([6])
    vbox = vm.vbox_path()
    vbox.write_text(vbox.read_text().replace('name="HOSTILE"', f'name="{HOSTILE_XML}"'))
    done = vdictl("snapshot", "delete", str(folder), "B")
    assert done.returncode == 0, done.stderr
    return vm


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> VmBuilder:
    return build_vm(tmp_path_factory.mktemp("report") / "vm")


@pytest.fixture(scope="module")
def report(vm: VmBuilder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "report.html"
    r = vdictl("report", str(vm.folder), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "Wrote the report" in r.stdout
    return out


class Page(HTMLParser):
    """Every start tag with its attributes, and the text, of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


class Tables(HTMLParser):
    """Rows of the tables with an id: table id -> list of (row attributes, cells' attributes)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[tuple[dict[str, str], list[dict[str, str]]]]] = {}
        self._table: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._depth += 1
            if "id" in a:
                self._table = a["id"]
                self.tables[a["id"]] = []
        elif self._table and tag == "tr":
            self.tables[self._table].append((a, []))
        elif self._table and tag == "td" and self.tables[self._table]:
            self.tables[self._table][-1][1].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._depth -= 1
            if self._depth == 0:
                self._table = None


def bytes_of(cells: list[dict[str, str]]) -> int:
    """The exact byte figure of a row (the one cell carrying ``data-bytes``)."""
    (value,) = [int(c["data-bytes"]) for c in cells if "data-bytes" in c]
    return value


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def tables(path: Path) -> dict[str, list[tuple[dict[str, str], list[dict[str, str]]]]]:
    t = Tables()
    t.feed(path.read_text(encoding="utf-8"))
    return t.tables


def test_space_figures_equal_vdictl_space(vm: VmBuilder, report: Path) -> None:
    r = vdictl("space", str(vm.folder), "--json")
    assert r.returncode == 0, r.stderr
    space = json.loads(r.stdout)
    t = tables(report)
    total = {
        row["data-category"]: bytes_of(cells)
        for row, cells in t["space-total"]
        if "data-category" in row
    }
    assert total == space["total"]
    files = {}
    for row, cells in t["space-files"]:
        if "data-path" not in row:
            continue
        files[row["data-path"]] = (
            {c["data-category"]: int(c["data-bytes"]) for c in cells if "data-category" in c},
            {c["data-field"]: int(c["data-bytes"]) for c in cells if "data-field" in c},
        )
    assert set(files) == {f["path"] for f in space["files"]}
    for f in space["files"]:
        categories, fields = files[f["path"]]
        assert categories == f["categories"]
        assert fields == {"size": f["size"], "allocated": f["allocated"]}
    # The folder really holds what the report must account for: undo data, a saved state.
    assert space["total"]["undo_data"] > 0 and space["total"]["virtualbox_other"] > 0


def test_cost_figures_equal_snapshot_list_cost(vm: VmBuilder, report: Path) -> None:
    r = vdictl("snapshot", "list", str(vm.folder), "--cost", "--json")
    assert r.returncode == 0, r.stderr
    costs = json.loads(r.stdout)
    assert sorted(c["name"] for c in costs) == sorted([HOSTILE, "C", "D"])
    rows = {
        row["data-uuid"]: (
            row["data-name"],
            {c["data-field"]: c for c in cells if "data-field" in c},
        )
        for row, cells in tables(report)["snapshot-costs"]
        if "data-uuid" in row
    }
    assert set(rows) == {c["uuid"] for c in costs}
    for c in costs:
        name, cells = rows[c["uuid"]]
        assert name == c["name"]
        for key in ("only_here", "frees", "frees_without_undo", "copies", "needs"):
            shown = cells[key].get("data-bytes")
            assert (None if shown is None else int(shown)) == c[key], key
    assert any(c["frees_without_undo"] for c in costs)


def test_chain_table_has_the_four_uuids(vm: VmBuilder, report: Path) -> None:
    rows = {row["data-path"] for row, _ in tables(report)["chain-table"] if "data-path" in row}
    on_disk = {str(p.resolve()) for p in vm.folder.rglob("*.vdi") if ".vdigui" not in p.parts}
    assert rows == on_disk
    text = report.read_text(encoding="utf-8")
    for path in on_disk:
        raw = Path(path).read_bytes()[:512]
        # uuidCreate, uuidModify, uuidLinkage, uuidParentModify at 0x188.. in a v1.1 header.
        for off in (0x188, 0x198, 0x1A8, 0x1B8):
            value = raw[off : off + 16]
            if value == bytes(16):
                continue
            import uuid as uuidlib

            assert str(uuidlib.UUID(bytes_le=value)) in text


def test_history_lists_the_deletion(vm: VmBuilder, report: Path) -> None:
    record = json.loads((vm.folder / ".vdigui" / "last-operation.json").read_text())
    page = parse(report)
    text = " ".join(page.text)
    assert record["summary"] in text
    history = tables(report)["history-table"]
    assert any(int(c.get("data-bytes", 0)) > 0 for _, cells in history for c in cells)


def test_self_contained_and_no_network_reference(report: Path) -> None:
    page = parse(report)
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert "img" not in tags and "object" not in tags and "embed" not in tags
    for tag, attrs in page.tags:
        for key in ("src", "href", "xlink:href", "action", "srcset", "poster"):
            value = attrs.get(key, "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, key, value)
            assert not value or value.startswith("data:"), (tag, key, value)
    csp = [
        a
        for t, a in page.tags
        if t == "meta" and a.get("http-equiv", "").lower() == "content-security-policy"
    ]
    assert csp and "default-src 'none'" in csp[0]["content"]
    styles = report.read_text(encoding="utf-8")
    assert "@import" not in styles and "url(" not in styles
    assert sum(1 for t, _ in page.tags if t == "svg") >= 3


def test_hostile_names_are_escaped(report: Path) -> None:
    raw = report.read_text(encoding="utf-8")
    assert HOSTILE not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    page = parse(report)
    assert HOSTILE in "".join(page.text)  # shown as text, never as a tag
    assert all(t != "script" for t, _ in page.tags)


def test_json_is_the_same_content(vm: VmBuilder, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    r = vdictl("report", str(vm.folder), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    space = json.loads(vdictl("space", str(vm.folder), "--json").stdout)
    assert doc["space"] == space
    assert doc["kind"] == "vm" and doc["snapshots"][0]["name"] == HOSTILE
    printed = vdictl("report", str(vm.folder), "--json")
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["chain"] == doc["chain"]


def test_redact_hides_home_and_user(tmp_path: Path) -> None:
    home = tmp_path / "home" / "vdiguser"
    vm = build_vm(home / "VirtualBox VMs" / "vdiguser-box")
    env = {**os.environ, "HOME": str(home), "USER": "vdiguser", "LOGNAME": "vdiguser"}
    plain = tmp_path / "plain.html"
    assert vdictl("report", str(vm.folder), "-o", str(plain), env=env).returncode == 0
    assert str(home) in plain.read_text(encoding="utf-8")  # the test means something
    for extra in ([], ["--json"]):
        out = tmp_path / f"redacted{len(extra)}"
        r = vdictl("report", str(vm.folder), "-o", str(out), "--redact", *extra, env=env)
        assert r.returncode == 0, r.stderr
        text = out.read_text(encoding="utf-8")
        assert str(home) not in text and "vdiguser" not in text
        assert "~/VirtualBox VMs/" in text
        assert "&lt;user&gt;-box" in text or "<user>-box" in text


def test_refuses_to_overwrite_without_force(vm: VmBuilder, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    out.write_text("keep me")
    r = vdictl("report", str(vm.folder), "-o", str(out))
    assert r.returncode == 1
    assert r.stderr.startswith("vdictl: error: ") and "--force" in r.stderr
    assert "Traceback" not in r.stderr
    assert out.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    r = vdictl("report", str(vm.folder), "-o", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    for args in (
        ["report", str(tmp_path / "missing"), "-o", str(out)],
        ["report", str(tmp_path), "-o", str(tmp_path / "no" / "r.html")],
        ["report", str(tmp_path)],
    ):
        r = vdictl(*args)
        assert r.returncode == 1, args
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("vdictl: error: "), r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_image_source(tmp_path: Path) -> None:
    vm = VmBuilder(tmp_path / "vm", disk_size=8 * MIB)
    vm.scribble([0, 5])
    vm.take_snapshot("S")
    vm.scribble([1])
    leaf = vm.disks[vm.leaves[0]].path
    out = tmp_path / "leaf.html"
    r = vdictl("report", str(leaf), "-o", str(out))
    assert r.returncode == 0, r.stderr
    rows = [row["data-path"] for row, _ in tables(out)["chain-table"] if "data-path" in row]
    assert rows == [str(p.resolve()) for p in vm.chain_paths(vm.leaves[0])]
    space = json.loads(vdictl("space", str(leaf), "--json").stdout)
    total = {
        row["data-category"]: bytes_of(cells)
        for row, cells in tables(out)["space-total"]
        if "data-category" in row
    }
    assert total == space["total"]


# -- a real browser ------------------------------------------------------------------------------
def chromium_flags(profile: Path, netlog: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-component-update",
        "--disable-default-apps",
        "--no-default-browser-check",
        "--metrics-recording-only",
        "--enable-logging=stderr",
        "--v=0",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        f"--log-net-log={netlog}",
        "--net-log-capture-mode=Everything",
    ]


def page_requests(netlog: Path) -> list[str]:
    """URLs of the requests a page made, from a Chromium net log.

    Chromium itself fetches things in the background (time, updates, spelling dictionaries);
    those start with the initiator "not an origin". A request a page makes carries the page's
    origin ("null" for a file:// page), which is what is kept here.
    """
    doc: dict[str, Any] = json.loads(netlog.read_text(encoding="utf-8"))
    start_job = doc["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in doc.get("events", []):
        params = event.get("params") or {}
        if (
            event.get("type") == start_job
            and "url" in params
            and params.get("initiator") != "not an origin"
        ):
            urls.append(str(params["url"]))
    return urls


def open_in_chromium(page: Path, work: Path) -> tuple[str, list[str], list[str]]:
    """(the DOM, console lines, page requests) of ``page`` opened in headless Chromium."""
    chromium = require_tool("chromium")
    work.mkdir()
    netlog = work / "net.json"
    r = subprocess.run(
        [chromium, *chromium_flags(work / "profile", netlog), "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    return r.stdout, console, page_requests(netlog)


def test_opens_in_chromium_without_errors_or_requests(report: Path, tmp_path: Path) -> None:
    # The check itself must see what it looks for: a page with a failing script and a remote
    # image shows both.
    control = tmp_path / "control.html"
    control.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>c</title>'
        '</head><body><img src="http://example.invalid/x.png">'
        "<script>missing_function();</script></body></html>"
    )
    _, console, requests = open_in_chromium(control, tmp_path / "control")
    assert any("missing_function" in line for line in console), console
    assert requests == ["http://example.invalid/x.png"]

    dom, console, requests = open_in_chromium(report, tmp_path / "report")
    assert "Where the space goes" in dom and "snapshot-costs" in dom
    assert console == []
    assert requests == []
