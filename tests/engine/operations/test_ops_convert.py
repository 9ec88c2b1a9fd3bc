"""Convert fixed <-> dynamic in place: identity kept, atomic swap, refusals, cancel."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from builders import MIB, build_image, folder_state, pattern
from opshelpers import (
    FREE,
    ZERO,
    FaultyOps,
    Recorder,
    assert_qemu_clean,
    assert_qemu_same,
    files_in,
    holder,
    make_base,
    make_chain,
    nth_write,
    ref_open,
    ref_read,
    release,
    sha,
)

from vdigui.engine import OperationCancelled, OperationRefused, VerificationError, fileio
from vdigui.engine.operations import convert
from vdigui.engine.operations.convert import plan_convert, run_convert
from vdigui.engine.progress import CancelToken


def test_dynamic_to_fixed_and_back_keeps_identity(tmp_path: Path, qemu_img: str) -> None:
    path, expected = make_base(tmp_path, 24, comment=b"keep", lchs=(50, 16, 63, 512))
    before = ref_open(path)
    path.chmod(0o600)
    rec = Recorder()
    plan = plan_convert(path, "fixed")
    assert plan.can_run and plan.size_after == before.offset_data + 24 * MIB
    result = run_convert(plan, progress=rec)
    fixed = ref_open(path)
    assert fixed.image_type == 2 and fixed.entries == list(range(24))
    assert fixed.blocks_allocated == 24 and fixed.file_size == plan.size_after
    assert result.verified and result.hash == sha(expected)
    assert ref_read([path]) == expected
    assert_qemu_clean(qemu_img, path)
    assert_qemu_same(qemu_img, expected, path, tmp_path)
    for img in (fixed,):
        assert (img.uuid, img.modify_uuid, img.comment, img.lchs) == (
            before.uuid,
            before.modify_uuid,
            before.comment,
            before.lchs,
        )
    assert path.stat().st_mode & 0o777 == 0o600
    assert files_in(tmp_path) == {path.name}
    rec.assert_sane()

    result = run_convert(plan_convert(path, "dynamic"))
    dynamic = ref_open(path)
    nonzero = [b for b in range(24) if expected[b * MIB : (b + 1) * MIB] != bytes(MIB)]
    assert dynamic.image_type == 1
    assert [b for b, e in enumerate(dynamic.entries) if e < ZERO] == nonzero
    assert [e for e in dynamic.entries if e < ZERO] == list(range(len(nonzero)))
    assert all(dynamic.entries[b] == FREE for b in range(24) if b not in nonzero)
    assert dynamic.file_size == dynamic.offset_data + len(nonzero) * MIB == result.size_after
    assert (dynamic.uuid, dynamic.modify_uuid) == (before.uuid, before.modify_uuid)
    assert ref_read([path]) == expected
    assert_qemu_clean(qemu_img, path)
    assert_qemu_same(qemu_img, expected, path, tmp_path)


def test_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = make_chain(tmp_path / "vm", 8, depth=2)
    top = chain.leaf
    assert plan_convert(top, "fixed").refusals == (
        f"'{top.name}' is a differencing image: its unallocated blocks show its parent's data, "
        "so it cannot become a fixed image. Clone it with 'vdictl clone --fixed' for a "
        "standalone fixed copy.",
    )
    assert plan_convert(top, "dynamic").refusals == (
        f"'{top.name}' is a differencing image, which is already stored dynamically; use "
        "'vdictl compact' to shrink it.",
    )
    base = chain.images[0].path
    assert plan_convert(base, "dynamic").refusals == ("'base.vdi' is already a dynamic image.",)
    monkeypatch.setattr(convert, "free_space", lambda folder: 3 * MIB)
    assert plan_convert(base, "fixed").refusals == (
        f"Not enough free space in '{base.parent}' for the converted copy of 'base.vdi': "
        "10.0 MiB needed, 3.0 MiB free.",
    )
    with pytest.raises(OperationRefused, match="Not enough free space"):
        run_convert(plan_convert(base, "fixed"))
    with pytest.raises(Exception, match="choose fixed or dynamic"):
        plan_convert(base, "sparse")  # type: ignore[arg-type]


def test_refuses_an_image_in_use(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 8)
    proc = holder(path)
    try:
        plan = plan_convert(path, "fixed")
        assert len(plan.refusals) == 1 and "is open in another program" in plan.refusals[0]
    finally:
        release(proc)


@pytest.mark.parametrize(("phase", "after"), [("converting blocks", 4), ("converting blocks", 16)])
def test_cancel_changes_nothing(tmp_path: Path, phase: str, after: int) -> None:
    path, _ = make_base(tmp_path, 16)
    state = folder_state(tmp_path)
    token = CancelToken()
    with pytest.raises(OperationCancelled, match=r"^Cancelled: nothing was changed\.$"):
        run_convert(
            plan_convert(path, "fixed"), progress=Recorder(token, phase, after), cancel=token
        )
    assert folder_state(tmp_path) == state


def test_failure_and_verification_mismatch_keep_the_original(tmp_path: Path) -> None:
    built = build_image(tmp_path / "f.vdi", 8 * MIB, {1: pattern(3, MIB)}, fixed=True)
    state = folder_state(tmp_path)
    failing = FaultyOps(nth_write(2), fail=OSError(errno.EIO, "Input/output error"))
    with fileio.use(failing), pytest.raises(OSError):
        run_convert(plan_convert(built.path, "dynamic"))
    assert failing.fired and folder_state(tmp_path) == state
    corrupting = FaultyOps(nth_write(1, min_length=MIB))
    with (
        fileio.use(corrupting),
        pytest.raises(VerificationError, match="the original is unchanged"),
    ):
        run_convert(plan_convert(built.path, "dynamic"))
    assert corrupting.fired and folder_state(tmp_path) == state


def test_symlinked_image_is_rebuilt_at_its_target(tmp_path: Path) -> None:
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    path, expected = make_base(real_dir, 8)
    link_dir.mkdir()
    link = link_dir / "disk.vdi"
    link.symlink_to(path)
    run_convert(plan_convert(link, "fixed"))
    assert link.is_symlink() and ref_open(path).image_type == 2
    assert ref_read([link]) == expected
    assert files_in(real_dir) == {"disk.vdi"} and files_in(link_dir) == {"disk.vdi"}


def test_hard_links_are_warned_about(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 4)
    os.link(path, tmp_path / "other.vdi")
    plan = plan_convert(path, "fixed")
    assert plan.warnings[0] == (
        "'disk.vdi' has 1 other hard link(s); only this name will show "
        "the rebuilt file, the others keep the old one."
    )
