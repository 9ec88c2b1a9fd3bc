"""``vdictl report``: one self-contained HTML page (or JSON) about a VM folder or an image.

The report is made to be attached to a help request: the snapshot tree, the chain with the
four UUIDs of every image, the problems, the space account, the snapshot cost map, block-map
and fragmentation pictures, and what vdigui did to the folder. The content comes from
:mod:`vdigui.engine.report`; this module only checks the output path and writes the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vdigui.cli.common import Context
from vdigui.engine.errors import VdiError


def register(sub: Any) -> None:
    """Add ``report`` to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser(
        "report",
        help="write a shareable report of a VM folder or image (HTML or JSON)",
        description="Writes one self-contained HTML file (no network access, no scripts; "
        "pictures inline) with the snapshot tree, the chain table with the four UUIDs of "
        "every image, the problems found, where the space goes, what deleting each snapshot "
        "would free, block-map and fragmentation pictures and the history of vdigui's "
        "operations on the folder. Made to be attached to a help request; --redact hides "
        "your home folder and user name. Reads only; the report file is the one thing "
        "written.",
    )
    p.add_argument(
        "source",
        type=Path,
        metavar="VMFOLDER|IMAGE",
        help="a VM folder (or its .vbox file), or one VDI image",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="the report file to write (with --json, standard output when omitted)",
    )
    p.add_argument(
        "--json", action="store_true", help="write the same content as JSON, for machines"
    )
    p.add_argument(
        "--redact",
        action="store_true",
        help="replace your home folder with ~ and your user name with <user>",
    )
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl report VMFOLDER|IMAGE -o FILE [--json] [--redact] [--force]."""
    from vdigui.engine.report import build_report, refuse_output, report_bytes, write_report

    ctx.cancel_cleanly = True
    if args.output is None:
        if not args.json:
            raise VdiError(
                "Say where to write the report with -o FILE (for example -o "
                "report.html), or pass --json to print it."
            )
        data = build_report(
            args.source, redacted=args.redact, progress=ctx.progress, cancel=ctx.token
        )
        sys.stdout.buffer.write(report_bytes(data, as_json=True))
        sys.stdout.flush()
        return 0
    refuse_output(args.output, overwrite=args.force)
    written = write_report(
        args.source,
        args.output,
        as_json=args.json,
        redacted=args.redact,
        overwrite=args.force,
        progress=ctx.progress,
        cancel=ctx.token,
    )
    print(
        f"Wrote the report of {args.source} to {written}"
        f"{' (home folder and user name redacted)' if args.redact else ''}.",
        file=sys.stderr if args.json else sys.stdout,
    )
    return 0
