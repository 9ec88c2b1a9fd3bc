"""How ``vdictl`` starts and ends as a process (the console script, ``python -m vdigui.cli``).

Each test runs a real interpreter: what is checked (the environment numpy finds when it is
imported, how the process ends) only exists in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from builders import MIB, build_image, pattern

REPO = Path(__file__).resolve().parents[2]


def _python(
    code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_numpy_is_imported_with_one_blas_thread() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = _python(
        "import os, vdigui.cli, numpy; print(os.environ.get('OPENBLAS_NUM_THREADS'))", env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_an_explicit_blas_thread_count_is_kept() -> None:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="3")
    done = _python("import os, vdigui.cli; print(os.environ['OPENBLAS_NUM_THREADS'])", env=env)
    assert done.stdout.strip() == "3"


def test_the_script_entry_ends_the_process_with_its_output_and_status(tmp_path: Path) -> None:
    blocks = {b: pattern(b, MIB) for b in range(0, 48, 3)}
    path = build_image(tmp_path / "disk.vdi", 48 * MIB, blocks).path
    # main() without argv is the console script: it ends the process itself, so the line
    # after it never runs; everything printed must still arrive, and the status must be right.
    code = "import sys; from vdigui.cli import main; main(); print('returned')"
    listed = _python(code, "map", str(path))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "returned" not in lines
    assert len([line for line in lines if line.startswith("block ")]) == len(blocks)
    missing = _python(code, "info", str(tmp_path / "absent.vdi"))
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.startswith("vdictl: error: ")
    assert "absent.vdi" in missing.stderr
