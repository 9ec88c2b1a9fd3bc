"""Independent checks shared by the power-loss tests (no engine reader computes expectations).

``ref_open``/``ref_read`` (tests/engine/operations/opshelpers.py) parse VDI files with
``struct``; the VM-folder tests read every snapshot state with ``vmbuild.read_state``.
"""

from __future__ import annotations

from pathlib import Path

from crashsim import SUMMARY_FILE, Leftover, Report, record_summary
from opshelpers import FREE, ZERO, ref_open, ref_read

#: Marks of temporary files vdigui leaves beside a target while it works.
TEMP_MARKS = (".vdigui-tmp", ".vdigui-backup", "-tmp")


def assert_consistent(path: Path) -> None:
    """The structure a VDI reader relies on: every entry inside the file and below
    cBlocksAllocated, no slot used twice (an inflated cBlocksAllocated is allowed)."""
    img = ref_open(path)
    live = [e for e in img.entries if e not in (FREE, ZERO)]
    assert len(set(live)) == len(live), f"{path.name}: cross-linked slots"
    slot = img.block_size
    for e in live:
        assert e < img.blocks_allocated, (
            f"{path.name}: entry {e} >= cBlocksAllocated {img.blocks_allocated}"
        )
        assert img.offset_data + (e + 1) * slot <= img.file_size, (
            f"{path.name}: slot {e} lies past the end of the file ({img.file_size} bytes)"
        )


def assert_reads(paths: list[Path], expected: bytes, what: str) -> None:
    """The chain ``paths`` (base first) shows exactly ``expected``."""
    got = ref_read(paths)
    if got != expected:
        bs = ref_open(paths[0]).block_size
        bad = [
            b
            for b in range(-(-len(expected) // bs))
            if got[b * bs : (b + 1) * bs] != expected[b * bs : (b + 1) * bs]
        ]
        raise AssertionError(
            f"{what} reads differently in guest block(s) {bad[:8]} (of {len(bad)} differing)"
        )


def leftovers(folder: Path) -> list[str]:
    """vdigui temporary files a finished command left behind."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and any(m in p.name for m in (".vdigui-tmp", ".vdigui-backup"))
    )


def assert_no_leftovers(folder: Path) -> None:
    """docs/crash-safety.md: the next command on the folder removes or resumes every
    temporary file of an interrupted one (checked last: the data checks come first)."""
    found = leftovers(folder)
    if found:
        raise Leftover(f"the next command left {found} in {folder.name}/")


def vdictl(*args: str | Path) -> str:
    """Run the CLI in this process, as the user would next; returns its stdout."""
    import contextlib
    import io

    from vdigui.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert code == 0, (
        f"vdictl {' '.join(map(str, args[:1]))} failed ({code}): "
        f"{' '.join((err.getvalue() + out.getvalue()).split())[:300]}"
    )
    return out.getvalue()


def finish(report: Report) -> None:
    """Write the summary line and fail with the precise descriptions of failing states."""
    record_summary(report)
    assert report.states > 0
    assert not report.failures and not report.leftovers, report.text()


__all__ = [
    "SUMMARY_FILE",
    "TEMP_MARKS",
    "assert_consistent",
    "assert_no_leftovers",
    "assert_reads",
    "finish",
    "leftovers",
    "ref_open",
    "ref_read",
]
