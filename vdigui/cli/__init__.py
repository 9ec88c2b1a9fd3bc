"""``vdictl``: the engine on the command line, for scripting.

Every command lives in a module of this package that registers its sub-parsers; this module
only assembles them and turns errors into one line and an exit code:

- 0 success, 2 "problems found" (check), 1 could not do it (argument mistakes included),
  130 interrupted (nothing changed beyond what the operation reports as a consistent state).
- Errors print ``vdictl: error: <one sentence>`` to stderr, never a traceback; so do argument
  mistakes (argparse's own usage dump and status 2 would collide with "problems found").
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

# numpy's OpenBLAS starts a worker thread per core at import, which spins for a while: about
# 55 ms of CPU per run (a third of numpy's import), taken from the copy threads on a two-core
# machine. The engine does no linear algebra, so one thread is all it uses. Set before the
# first import of numpy (vdigui.cli.common imports the engine).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from vdigui import __version__
from vdigui.cli.common import Context
from vdigui.engine.errors import OperationCancelled, VdiError
from vdigui.engine.progress import CancelToken

#: Sub-command -> the module of this package that registers and runs it. Only the module of the
#: command being run is imported, so ``vdictl info`` does not load every operation first.
COMMANDS = {
    "info": "inspect_cmds",
    "map": "inspect_cmds",
    "check": "inspect_cmds",
    "tree": "inspect_cmds",
    "frag": "inspect_cmds",
    "export": "inspect_cmds",
    "create": "inspect_cmds",
    "compact": "ops_cmds",
    "clone": "ops_cmds",
    "convert": "ops_cmds",
    "usage": "ops_cmds",
    "clean": "ops_cmds",
    "snapshot": "snapshot_cmds",
    "merge": "snapshot_cmds",
    "repair": "snapshot_cmds",
    "set-uuid": "snapshot_cmds",
    "undo": "snapshot_cmds",
    "space": "space_cmds",
    "ls": "files_cmds",
    "cat": "files_cmds",
    "get": "files_cmds",
    "find": "files_cmds",
    "where": "files_cmds",
    "diff": "diff_cmds",
    "report": "report_cmds",
    "settings": "settings_cmds",
    "resize": "resize_cmds",
}


class ArgumentError(Exception):
    """An argument mistake, raised instead of argparse's exit(2) and printed as one line."""


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line and exit status 1 (2 means "problems found")."""

    def error(self, message: str) -> NoReturn:
        """Raise instead of printing the usage and exiting with status 2."""
        hint = f"; see '{self.prog} --help'"
        raise ArgumentError(f"{message[:1].upper()}{message[1:]}{hint}.")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every sub-command, or only the module that provides ``command``."""
    parser = Parser(
        prog="vdictl",
        description="Inspect, check, export and change VirtualBox VDI images and VM folders "
        "without VirtualBox.",
    )
    parser.add_argument("--version", action="version", version=f"vdictl {__version__}")
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        required=True,
        help="what to do (vdictl COMMAND --help for its options)",
    )
    wanted = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for name in wanted:
        importlib.import_module(f"vdigui.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run vdictl; returns the exit status (also used as the console-script entry point).

    Called without ``argv`` (the ``vdictl`` script, ``python -m vdigui.cli``) it ends the
    process itself once the command is done (:func:`_exit_now`); with ``argv`` (tests,
    callers in process) it returns the status.
    """
    if argv is None:
        _exit_now(_run(sys.argv[1:]))
    return _run(argv)


def _exit_now(status: int) -> NoReturn:
    """Flush stdout and stderr and end the process without the interpreter's teardown.

    Tearing down the interpreter (every module, array and buffer freed one by one) took
    about 30 ms of every run, after the work was done. Nothing is lost by skipping it: every
    file the command wrote is closed and flushed by then (the operations fsync before they
    return), helper threads are daemons that have finished, and vdigui registers no atexit
    handlers.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: what was printed is gone anyway
            status = status or 1
    os._exit(status)


def _run(argv: Sequence[str]) -> int:
    arguments = list(argv)
    command = next((a for a in arguments if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(arguments)
    except ArgumentError as exc:
        print(f"vdictl: error: {exc}", file=sys.stderr)
        return 1
    token = CancelToken()
    ctx = Context(token=token, json=bool(getattr(args, "json", False)))
    previous = _install_sigint(ctx)
    try:
        return int(args.func(args, ctx) or 0)
    except OperationCancelled as exc:
        print(f"vdictl: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("vdictl: interrupted; nothing was changed.", file=sys.stderr)
        return 130
    except VdiError as exc:
        print(f"vdictl: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except OSError as exc:
        name = f" '{exc.filename}'" if exc.filename else ""
        print(f"vdictl: error: cannot access{name}: {exc.strerror or exc}.", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        # pathlib's resolve() reports a symbolic-link loop this way (Python < 3.13).
        text = str(exc)
        if text.startswith("Symlink loop from "):
            print(
                f"vdictl: error: {text.removeprefix('Symlink loop from ').strip(chr(39))} is "
                "a symbolic link that loops back on itself.",
                file=sys.stderr,
            )
        else:
            print(
                f"vdictl: error: internal error (RuntimeError: {text}); please report this "
                "with the command you ran.",
                file=sys.stderr,
            )
        return 1
    except Exception as exc:  # a bug: still one line, never a traceback
        print(
            f"vdictl: error: internal error ({type(exc).__name__}: {exc}); please report "
            "this with the command you ran.",
            file=sys.stderr,
        )
        return 1
    finally:
        _restore_sigint(previous)


def _install_sigint(ctx: Context) -> object:
    """Ctrl-C cancels a running operation at its next block; elsewhere it interrupts at once."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        already = ctx.token.cancelled
        ctx.token.cancel()
        if already or not ctx.cancel_cleanly:
            raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (tests calling main() from a worker)
        return None


def _restore_sigint(previous: object) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)  # type: ignore[arg-type]
