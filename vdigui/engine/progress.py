"""Progress reporting and cancellation shared by every long-running engine operation.

Operations take a plain callback and a token rather than being generators, so the CLI, the GUI's
worker threads and tests can all drive them the same way. The engine may report every block; callers
throttle (the GUI forwards at most ~20 updates a second).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from vdigui.engine.errors import OperationCancelled


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress event.

    Attributes:
        phase: what is being done, in words ("copying blocks").
        done: units finished in this phase.
        total: units in this phase (0 when unknown).
        bytes_done: bytes processed so far in this phase (for MB/s displays).
    """

    phase: str
    done: int
    total: int
    bytes_done: int = 0


ProgressFn = Callable[[Progress], None]


def no_progress(_event: Progress) -> None:
    """A progress callback that ignores every event."""


class CancelToken:
    """A thread-safe flag an operation checks at least once per block."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the operation to stop at its next cancellation point."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether cancel() was called."""
        return self._event.is_set()

    def raise_if_cancelled(self, message: str = "Cancelled: nothing was changed.") -> None:
        """Raise OperationCancelled with ``message`` (the state the data is in) if cancelled."""
        if self._event.is_set():
            raise OperationCancelled(message)
