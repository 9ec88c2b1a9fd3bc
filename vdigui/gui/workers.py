"""Run slow engine calls on a thread pool and report back to the GUI thread with signals.

The pattern (architecture 2.4): a ``QRunnable`` does the work, a separate ``QObject`` created in
the GUI thread owns the signals, so emitting from the worker thread reaches GUI-thread slots as
queued calls and no widget is ever touched off the GUI thread. Exactly one terminal signal
(succeeded, failed or cancelled) is emitted per job. Progress is throttled here, in the adapter:
the engine may report every block, the GUI repaints at most ~20 times a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from vdigui.engine import CancelToken, OperationCancelled, Progress

#: What a job runs: it gets a progress callback and a cancel token and returns a result.
Job = Callable[[Callable[[Progress], None], CancelToken], Any]

_MIN_INTERVAL = 0.05


class RunnerSignals(QObject):
    """The signals of one job (lives in the GUI thread)."""

    progress = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)
    cancelled = Signal()


class Runner(QRunnable):
    """One job on the pool. Never touches widgets; talks only through :attr:`signals`."""

    def __init__(self, job: Job, name: str) -> None:
        super().__init__()
        # The pool must not delete the C++ object while Python still holds the wrapper.
        self.setAutoDelete(False)
        self.job = job
        self.name = name
        self.token = CancelToken()
        self.signals = RunnerSignals()
        self._last_emit = 0.0
        self._last_percent = -1

    def _progress(self, event: Progress) -> None:
        now = time.monotonic()
        percent = event.done * 100 // event.total if event.total else -1
        final = event.total and event.done >= event.total
        if (
            final
            or now - self._last_emit >= _MIN_INTERVAL
            or (percent != self._last_percent and now - self._last_emit >= 0.01)
        ):
            self._last_emit = now
            self._last_percent = percent
            self.signals.progress.emit(event)

    def run(self) -> None:
        """Qt calls this on a pool thread."""
        try:
            result = self.job(self._progress, self.token)
        except OperationCancelled:
            self.signals.cancelled.emit()
        except Exception as exc:  # reported through failed, never swallowed
            self.signals.failed.emit(exc)
        else:
            if self.token.cancelled:
                self.signals.cancelled.emit()
            else:
                self.signals.succeeded.emit(result)


class WorkerPool(QObject):
    """A private thread pool that keeps every running job alive until it finishes.

    A private pool (rather than the global one) lets the window wait for exactly its own jobs
    on close and lets tests assert that nothing is left running.

    Signals:
        idle: the last running job has delivered its terminal signal and the caller's slots
            for it have run.
    """

    idle = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(2)
        self.pool.setExpiryTimeout(2000)
        self._running: set[Runner] = set()
        self._shut_down = False

    def start(
        self,
        job: Job,
        name: str,
        *,
        succeeded: Callable[[Any], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
        cancelled: Callable[[], None] | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> Runner:
        """Start ``job`` with the caller's slots connected before the pool's bookkeeping.

        Qt calls slots in connection order, so by the time a job leaves :attr:`running` (and
        :attr:`idle` may fire), the caller has already handled its result.

        After :meth:`shutdown` nothing starts any more (a late refresh while the window closes
        must not start a thread nobody waits for); the returned runner never runs.
        """
        runner = Runner(job, name)
        if self._shut_down:
            return runner
        self._running.add(runner)
        signals = runner.signals
        if progress is not None:
            signals.progress.connect(progress)
        if succeeded is not None:
            signals.succeeded.connect(succeeded)
        if failed is not None:
            signals.failed.connect(failed)
        if cancelled is not None:
            signals.cancelled.connect(cancelled)
        signals.succeeded.connect(lambda _value, r=runner: self._finished(r))
        signals.failed.connect(lambda _value, r=runner: self._finished(r))
        signals.cancelled.connect(lambda r=runner: self._finished(r))
        self.pool.start(runner)
        return runner

    def _finished(self, runner: Runner) -> None:
        self._running.discard(runner)
        if not self._running:
            self.idle.emit()

    @property
    def running(self) -> tuple[Runner, ...]:
        """Jobs whose terminal signal has not been handled yet."""
        return tuple(self._running)

    def cancel_all(self) -> None:
        """Ask every job to stop at its next cancellation point."""
        for runner in self._running:
            runner.token.cancel()

    def shutdown(self, timeout_ms: int = 10000) -> bool:
        """Cancel everything and wait for the threads; True when all stopped in time.

        Results still queued for the GUI thread are dropped with the runners. The pool
        accepts no new job afterwards.
        """
        self._shut_down = True
        self.cancel_all()
        done = self.pool.waitForDone(timeout_ms)
        self.pool.clear()
        for runner in list(self._running):
            runner.signals.blockSignals(True)
        self._running.clear()
        return done
