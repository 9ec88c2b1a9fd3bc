"""Whether each operation can run on a selection, worked out on a worker and remembered.

Why off the GUI thread: the answer comes from the engine's plans, and planning a compaction
reads the image's whole block map and scans /proc for programs holding the file open, planning
a snapshot deletion reads every map of the chain, and a repair check reads every image of the
folder. On a 2 TiB disk that is far longer than a frame, so a click in a tree must never wait
for it. Until the answer arrives the actions are disabled and say so ("Checking…").

Why a cache per selection: users click back and forth between the same few nodes. A loaded
``VmFolder`` never changes (a reload makes a new one), so an answer stays true for as long as
that folder object is the one shown; :meth:`AvailabilityChecks.clear` drops everything after a
reload or an operation.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

from vdigui.engine import VdiError, VmFolder
from vdigui.gui import messages
from vdigui.gui.wizards.registry import (
    OPERATIONS,
    Availability,
    Operation,
    operation_availability,
    spec,
)
from vdigui.gui.wizards.targets import Target, repair_availability
from vdigui.gui.workers import WorkerPool

#: What an availability answer is cached under: the operation's key, then what it depends on.
CheckKey = tuple[object, ...]

#: The reason every action shows while its answer is being worked out.
CHECKING = "Checking whether this can run…"

#: The operations planned together on one worker (repair is planned apart: it reads every
#: image of the folder).
_TOGETHER = tuple(k for k in OPERATIONS if not spec(k).planned_apart)

#: A job that found its selection already left behind returns this instead of an answer.
_SKIPPED = object()


def checking_reason(kind: Operation | str) -> str:
    """The tooltip of an action whose availability is not known yet."""
    return f"{CHECKING[:-1]} ({spec(kind).title})…"


class AvailabilityChecks(QObject):
    """Answers to "can this operation run here, and if not, why?", computed on a pool.

    Signals:
        answered: a new answer is known (the actions should be refreshed).
    """

    answered = Signal()

    def __init__(self, pool: WorkerPool, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pool = pool
        self._answers: dict[CheckKey, tuple[object, Any]] = {}
        self._pending: set[CheckKey] = set()
        # Who asks for what; read by the jobs on worker threads, so its keys are fixed here
        # (assigning an existing key never resizes the dict a worker may be reading).
        self._wanted: dict[str, CheckKey | None] = dict.fromkeys(
            ("selection", "selection-repair", "context", "context-repair")
        )
        self._epoch = 0

    @property
    def checking(self) -> bool:
        """Whether an answer is still being worked out."""
        return bool(self._pending)

    def clear(self) -> None:
        """Forget every answer (the folder was reloaded or changed by an operation).

        Jobs still running deliver into the old epoch and are dropped.
        """
        self._answers.clear()
        self._pending.clear()
        self._epoch += 1

    def lookup(
        self, vm: VmFolder | None, target: Target, purpose: str = "selection"
    ) -> Availability:
        """Every operation's (enabled, reason); unknown ones say "Checking…" and are started.

        ``purpose`` names who asks ("selection" or "context"): a queued job whose asker has
        moved on to another target by the time it starts skips the planning.
        """
        if purpose not in ("selection", "context"):
            raise ValueError(f"unknown purpose {purpose!r}")
        ops_key = ("ops", id(vm), target)
        where = vm.folder if vm is not None else target.image
        repair_key = ("repair", id(vm), where)
        self._wanted[purpose] = ops_key
        self._wanted[purpose + "-repair"] = repair_key
        result: Availability = {}
        ops = self._known(ops_key, vm)
        if ops is None:
            self._start(ops_key, vm, lambda: operation_availability(vm, target, repair=False))
            result.update({k: (False, checking_reason(k)) for k in _TOGETHER})
        else:
            result.update(ops)
        if where is None:
            result[Operation.REPAIR] = (
                False,
                "Open a VM folder or a disk image to check it for repairs.",
            )
        else:
            repair = self._known(repair_key, vm)
            if repair is None:
                self._start(repair_key, vm, lambda: repair_availability(vm, target))
                result[Operation.REPAIR] = (False, checking_reason(Operation.REPAIR))
            else:
                result[Operation.REPAIR] = repair
        return {k: result[k] for k in OPERATIONS}

    def now(self, vm: VmFolder | None, target: Target) -> Availability:
        """The answer, computed here and now when it is not known (for explicit requests)."""
        ops = self._known(("ops", id(vm), target), vm)
        where = vm.folder if vm is not None else target.image
        repair = self._known(("repair", id(vm), where), vm)
        if ops is None:
            ops = operation_availability(vm, target, repair=False)
            self._answers[("ops", id(vm), target)] = (vm, ops)
        if repair is None:
            repair = (
                repair_availability(vm, target)
                if where is not None
                else (False, "Open a VM folder or a disk image to check it for repairs.")
            )
            self._answers[("repair", id(vm), where)] = (vm, repair)
        return {**ops, Operation.REPAIR: repair}

    # -- internals -------------------------------------------------------------------------
    def _known(self, key: CheckKey, vm: VmFolder | None) -> Any:
        hit = self._answers.get(key)
        # The folder object itself is kept with the answer: an id() can be reused after a
        # reload, the object cannot.
        if hit is None or hit[0] is not vm:
            return None
        return hit[1]

    def _start(self, key: CheckKey, vm: VmFolder | None, compute: Any) -> None:
        if key in self._pending:
            return
        self._pending.add(key)
        epoch = self._epoch

        def job(_progress: object, _token: object) -> Any:
            if key not in tuple(self._wanted.values()):
                return _SKIPPED
            try:
                return compute()
            except (VdiError, OSError, ValueError) as exc:
                reason = messages.sentence(exc)
                if key[0] == "repair":
                    return (False, reason)
                return dict.fromkeys(_TOGETHER, (False, reason))

        def done(answer: Any) -> None:
            if epoch != self._epoch:
                return
            self._pending.discard(key)
            if answer is not _SKIPPED:
                self._answers[key] = (vm, answer)
            self.answered.emit()

        def failed(exc: BaseException) -> None:
            done(
                (False, messages.sentence(exc))
                if key[0] == "repair"
                else {k: (False, messages.sentence(exc)) for k in _TOGETHER}
            )

        self.pool.start(
            job, "availability", succeeded=done, failed=failed, cancelled=lambda: done(_SKIPPED)
        )


__all__ = ["CHECKING", "AvailabilityChecks", "checking_reason"]
