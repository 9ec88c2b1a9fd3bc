"""Every vdictl command on hostile input, as a real subprocess: no hang, one line, no change.

The cases are what users' folders really hold when things go wrong: a FIFO, a device node, a
folder or a symbolic-link loop where an image should be, a read-only file, a folder the user
may not write, a full filesystem, a truncated file, flipped block-map bits, map entries past
the end of the file and differencing images that name each other as parent.

For each (case, command): the process ends on its own (``timeout=60`` is the hang guard, not a
timing assertion); it either succeeds, or exits non-zero with one plain line on stderr and
leaves every file in the folder exactly as it was (names, sizes, sha256, mtimes). Some pairs
must fail (a FIFO is never a disk; a damaged map is never compacted), listed in MUST_FAIL.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from builders import FREE, MIB, build_image, pattern
from support import IN_CI

REPO = Path(__file__).resolve().parents[2]
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534

#: Cases that need root to set up (mknod, tmpfs, running as another user).
ROOT_CASES = {"device", "read-only", "no-write", "full-disk"}

CASES = [
    "fifo",
    "device",
    "folder",
    "link-loop",
    "read-only",
    "no-write",
    "full-disk",
    "truncated",
    "flipped-bits",
    "past-eof",
    "cyclic",
]

#: name -> argument template ({T} the image, {F} the folder).
COMMANDS: dict[str, list[str]] = {
    "info": ["info", "{T}"],
    "map": ["map", "{T}"],
    "check": ["check", "{T}"],
    "tree": ["tree", "{F}"],
    "frag": ["frag", "{T}"],
    "usage": ["usage", "{T}"],
    "export": ["export", "{T}", "{F}/out.raw"],
    "create": ["create", "{F}/new.vdi", "--size", "4M"],
    "compact": ["compact", "{T}"],
    "compact-defrag": ["compact", "--defrag", "{T}"],
    "compact-fs-aware": ["compact", "--fs-aware", "{T}"],
    "clone": ["clone", "{T}", "{F}/copy.vdi"],
    "convert": ["convert", "{T}", "--to", "fixed"],
    "snapshot-list": ["snapshot", "list", "{F}"],
    "snapshot-delete": ["snapshot", "delete", "{F}", "snap"],
    "merge": ["merge", "{T}"],
    "repair": ["repair", "{T}", "--yes"],
    "set-uuid": ["set-uuid", "{T}"],
    "undo": ["undo", "{F}"],
    "clean": ["clean", "{F}"],
    "space": ["space", "{T}"],
    "report": ["report", "{T}", "-o", "{F}/report.html"],
    "settings": ["settings", "{F}", "--discard", "on"],
    "resize": ["resize", "{T}", "--size", "+4M"],
    "ls": ["ls", "{T}"],
    "find": ["find", "{T}", "*"],
    "snapshot-cost": ["snapshot", "list", "{F}", "--cost"],
}

READERS = {"info", "map", "check", "frag", "usage", "export"}
IN_PLACE = {"compact", "compact-defrag", "compact-fs-aware", "convert", "set-uuid", "resize"}
NOT_A_FILE = {"fifo", "device", "folder", "link-loop"}
DAMAGED = {"truncated", "flipped-bits", "past-eof"}


def must_fail(case: str, command: str) -> bool:
    """Pairs that may never succeed."""
    if case in NOT_A_FILE:
        return command not in ("create", "clean")
    if case in DAMAGED:
        return command in READERS | IN_PLACE | {"clone"}
    if case == "cyclic":
        return command in {
            "check",
            "frag",
            "usage",
            "export",
            "compact",
            "compact-defrag",
            "compact-fs-aware",
            "clone",
            "merge",
        }
    if case == "no-write":
        return command in IN_PLACE | {"create", "clone", "export", "clean"}
    if case == "read-only":
        return command in IN_PLACE
    if case == "full-disk":
        return command in {"create", "clone", "export", "convert", "compact", "compact-defrag"}
    return False


@dataclass
class Case:
    """A folder with something hostile in it; ``user`` runs vdictl (None: this user)."""

    folder: Path
    target: Path
    user: int | None = None


# -- building the cases ---------------------------------------------------------------------
def _healthy(path: Path) -> Path:
    """4 blocks stored (slots 0-3: blocks 0, 2, 3, 5); block 3 all zero (compactable)."""
    layer = {0: pattern(1, MIB), 2: pattern(2, MIB), 3: bytes(MIB), 5: pattern(3, MIB)}
    return build_image(path, 8 * MIB, layer).path


def _poke_entry(path: Path, block: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(MIB + 4 * block)
        f.write(value.to_bytes(4, "little"))


def _require_root(case: str) -> None:
    if not ROOT:
        if IN_CI:
            pytest.fail(f"the {case!r} case needs root, which CI has")
        pytest.skip(f"the {case!r} case needs root (mknod, tmpfs, another user)")


@contextlib.contextmanager
def _shared_folder() -> Iterator[Path]:
    """A folder the unprivileged user can reach (tmp_path's parents are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="vdigui-hostile-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _tmpfs(size: str) -> Iterator[Path]:
    with _shared_folder() as mount:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            message = f"cannot mount a tmpfs for the full-disk case: {done.stderr.strip()}"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        try:
            yield mount
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False, timeout=60)


def _fill(folder: Path) -> None:
    """Write a filler file until the filesystem is full."""
    chunk = b"\xa5" * 65536
    with open(folder / "filler.bin", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(chunk)
    with open(folder / "filler.bin", "ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\xa5")


@pytest.fixture
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    kind: str = request.param
    if kind in ROOT_CASES:
        _require_root(kind)
    folder = tmp_path / "case"
    folder.mkdir()
    target = folder / "x.vdi"
    if kind == "fifo":
        os.mkfifo(target)
        yield Case(folder, target)
    elif kind == "device":
        os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
        yield Case(folder, target)
    elif kind == "folder":
        target.mkdir()
        yield Case(folder, target)
    elif kind == "link-loop":
        (folder / "y.vdi").symlink_to("x.vdi")
        target.symlink_to("y.vdi")
        yield Case(folder, target)
    elif kind in ("read-only", "no-write"):
        with _shared_folder() as base:
            folder = base / "case"
            folder.mkdir()
            target = _healthy(folder / "x.vdi")
            if kind == "read-only":  # the user's own folder, but a read-only file
                os.chown(folder, NOBODY, NOBODY)
                os.chown(target, NOBODY, NOBODY)
                target.chmod(0o444)
            else:  # someone else's folder and file, readable by all
                folder.chmod(0o755)
                target.chmod(0o644)
            yield Case(folder, target, NOBODY)
    elif kind == "full-disk":
        with _tmpfs("12M") as mount:
            folder = mount / "case"
            folder.mkdir()
            target = _healthy(folder / "x.vdi")
            _fill(folder)
            yield Case(folder, target)
    elif kind == "truncated":
        _healthy(target)
        os.truncate(target, 2 * MIB + 3 * MIB + 1000)  # cut inside the fourth slot
        yield Case(folder, target)
    elif kind == "flipped-bits":
        _healthy(target)
        _poke_entry(target, 5, 3 ^ 0b10)  # block 5's slot 3 -> 1: cross-linked with block 2
        yield Case(folder, target)
    elif kind == "past-eof":
        _healthy(target)
        _poke_entry(target, 6, 7)  # a FREE entry now names slot 7; the file holds 4
        yield Case(folder, target)
    elif kind == "cyclic":
        ua, ub = uuidlib.uuid4(), uuidlib.uuid4()
        a = build_image(
            folder / "x.vdi",
            4 * MIB,
            {0: pattern(5, MIB)},
            image_type=4,
            uuid_create=ua,
            uuid_linkage=ub,
            uuid_parent_modify=uuidlib.uuid4(),
        )
        b = build_image(
            folder / "y.vdi",
            4 * MIB,
            {1: pattern(6, MIB)},
            image_type=4,
            uuid_create=ub,
            uuid_linkage=ua,
            uuid_parent_modify=uuidlib.uuid4(),
        )
        assert a.header.uuid_linkage == b.header.uuid_create
        yield Case(folder, a.path)
    else:  # pragma: no cover
        raise AssertionError(kind)


# -- running and comparing ------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, tuple[str, int, int, str]]:
    """(kind, size, mtime, sha256) of every entry under ``folder``; nothing special is opened."""
    state: dict[str, tuple[str, int, int, str]] = {}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            p = Path(root) / name
            st = p.lstat()
            digest = ""
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            kind = stat.filemode(st.st_mode)[0]
            mtime = st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0
            state[str(p.relative_to(folder))] = (kind, st.st_size, mtime, digest)
    return state


def vdictl(case: Case, args: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [a.replace("{T}", str(case.target)).replace("{F}", str(case.folder)) for a in args]
    prefix: list[str] = []
    if case.user is not None:
        prefix = ["setpriv", f"--reuid={case.user}", f"--regid={case.user}", "--clear-groups"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(case.folder)}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "vdigui.cli", *argv],
        cwd=case.folder,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", CASES, indirect=True)
def test_command_on_hostile_input(case: Case, command: str, request: pytest.FixtureRequest) -> None:
    kind = request.node.callspec.params["case"]
    before = snapshot(case.folder)
    done = vdictl(case, COMMANDS[command])
    where = (
        f"{kind}/{command}: rc={done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, where
    if must_fail(kind, command):
        assert done.returncode != 0, where
    if done.returncode == 0:
        return
    if command in ("check", "tree") and done.returncode == 2:
        assert done.stdout.strip(), where  # the problems found are listed
    else:
        assert done.returncode == 1, where
        lines = done.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("vdictl: error: "), where
        assert sum(line.startswith("vdictl: error:") for line in lines) == 1, where
        assert len(lines[-1]) < 1000, where
    assert snapshot(case.folder) == before, where


# -- the promises the issue names, one by one -----------------------------------------------
def _run(case: Case, *args: str) -> subprocess.CompletedProcess[str]:
    return vdictl(case, list(args))


@pytest.mark.parametrize("case", ["read-only", "no-write"], indirect=True)
def test_set_uuid_without_write_permission_creates_no_backup_or_journal(case: Case) -> None:
    done = _run(case, "set-uuid", "{T}")
    assert done.returncode == 1, done.stderr
    assert not (case.folder / ".vdigui").exists()
    assert not list(case.folder.rglob("journal.json"))


@pytest.mark.parametrize("case", ["flipped-bits", "past-eof"], indirect=True)
def test_compact_refuses_a_damaged_map_and_names_repair(case: Case) -> None:
    before = snapshot(case.folder)
    for args in (["compact", "{T}"], ["compact", "--defrag", "{T}"]):
        done = _run(case, *args)
        assert done.returncode == 1
        assert "vdictl repair" in done.stderr and "damaged" in done.stderr, done.stderr
    assert snapshot(case.folder) == before


@pytest.mark.parametrize("case", ["truncated"], indirect=True)
@pytest.mark.parametrize("command", ["info", "map", "frag"])
def test_inspecting_a_truncated_file_exits_non_zero(case: Case, command: str) -> None:
    done = _run(case, command, "{T}")
    assert done.returncode == 1, done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("vdictl: error: ")
    assert "x.vdi" in done.stderr and "damaged" in done.stderr


def test_holes_between_slots_are_cleaned_not_refused(tmp_path: Path) -> None:
    """Slots left unused by older merges are untidy, not damaged: compaction closes them."""
    path = _healthy(tmp_path / "h.vdi")
    _poke_entry(path, 2, FREE)  # slot 1 now unreferenced: a hole
    done = subprocess.run(
        [sys.executable, "-m", "vdigui.cli", "compact", str(path)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert path.stat().st_size == MIB * 2 + 2 * MIB  # blocks 0 and 5 kept; zero block dropped


def test_interrupted_defrag_leftover_is_reported_then_swept(tmp_path: Path) -> None:
    path = _healthy(tmp_path / "disk.vdi")
    leftover = tmp_path / ".disk.vdi.vdigui-tmp-1a2b3c4d"
    leftover.write_bytes(b"\x00" * 5000)  # what a killed rebuild leaves: a partial image
    size = leftover.stat().st_size
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def vdictl_here(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vdigui.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = vdictl_here("check", str(path))
    assert done.returncode == 2
    (line,) = [x for x in done.stdout.splitlines() if ".vdigui-tmp-" in x]
    assert str(leftover) in line and f"{size} bytes" in line and "vdictl clean" in line
    assert leftover.exists()  # check never changes anything
    done = vdictl_here("compact", str(path))
    assert done.returncode == 0, done.stderr
    assert not leftover.exists()
    done = vdictl_here("check", str(path))
    assert done.returncode == 0, done.stdout
