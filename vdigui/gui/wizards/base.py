"""The shape every operation wizard shares: intro, options, preview, run, result.

Why one base class: the four wizards differ in their words, options and previews, but must
behave identically where safety is concerned. The preview is built from the engine's plan
(never a guess) and is the QWizard commit page: its button (the operation's verb) starts the
run and there is no way back. The run page runs the operation on a worker thread
(architecture 2.4: the engine function is injected so tests pass fakes), Cancel stops at the
next block and says the state the engine reports, closing while it runs asks, cancels and waits,
and every ending -- success, cancel or failure -- reaches the result page and asks the window to
reload the folder from disk.

Why declarative: a wizard states what it is (its :class:`Operation`, plan and run functions,
intro, options page) as class attributes and overrides only what really differs (the preview
and the result); the base class is generic over the plan and result types, so each wizard's
hooks are typed with the engine's own plan and result classes.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from PySide6.QtCore import QEventLoop, Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QApplication,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from vdigui.engine import (
    CancelToken,
    OperationCancelled,
    Progress,
    VdiError,
    VmFolder,
    human_size,
    load_vm_folder,
    recover_pending,
)
from vdigui.gui import messages
from vdigui.gui.wizards.registry import Operation, spec
from vdigui.gui.wizards.targets import Target, resolve_target
from vdigui.gui.wizards.widgets import Level, figures, heading, notice, rule
from vdigui.gui.workers import Runner, WorkerPool

INTRO, OPTIONS, PREVIEW, RUN, RESULT = range(5)
PAGE_NAMES = {"intro": INTRO, "options": OPTIONS, "preview": PREVIEW, "run": RUN, "result": RESULT}

#: Asked before closing a wizard whose operation runs: (parent, question) -> True to stop it.
Confirm = Callable[[QWidget, str], bool]


def ask_yes_no(parent: QWidget, question: str) -> bool:
    """The default :data:`Confirm`: a Yes/No box, No being the default."""
    answer = QMessageBox.question(
        parent,
        "Operation running",
        question,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


#: Module-level so tests (and the main window's close guard) can swap it.
confirm: Confirm = ask_yes_no


PlanT = TypeVar("PlanT")
ResultT = TypeVar("ResultT")


class OutcomeKind(StrEnum):
    """How an operation ended."""

    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def level(self) -> Level:
        """How the ending is shown: ok, warning (cancelled) or error."""
        return {
            OutcomeKind.SUCCEEDED: Level.OK,
            OutcomeKind.CANCELLED: Level.WARNING,
            OutcomeKind.FAILED: Level.ERROR,
        }[self]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an operation ended.

    Attributes:
        kind: succeeded, cancelled or failed.
        value: the engine's result (succeeded), the exception (failed), or None.
        message: the state in words (the engine's OperationCancelled sentence on cancel).
    """

    kind: OutcomeKind
    value: Any
    message: str


def rate_text(bytes_per_second: float) -> str:
    """'12.3 MB/s' (decimal megabytes, as copy dialogs show them)."""
    return f"{bytes_per_second / 1e6:.1f} MB/s"


def duration_text(seconds: float) -> str:
    """'about 5 s', 'about 3 min', 'about 1 h 20 min'."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 3600:
        return f"about {seconds / 60:.0f} min"
    hours, rest = divmod(int(seconds), 3600)
    return f"about {hours} h {rest // 60} min"


def empty(layout: QVBoxLayout) -> None:
    """Remove (and delete) every widget of ``layout``: a page rebuilt from a new plan."""
    while layout.count():
        item = layout.takeAt(0)
        widget = item.widget() if item is not None else None
        if widget is not None:
            widget.hide()
            widget.setParent(None)
            widget.deleteLater()


class TextPage(QWizardPage):
    """The intro: rich text in plain words, scrollable when long."""

    def __init__(self, title: str, subtitle: str, body_html: str) -> None:
        super().__init__()
        self.setTitle(title)
        self.setSubTitle(subtitle)
        self.body = QLabel(body_html)
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setWordWrap(True)
        self.body.setOpenExternalLinks(False)
        self.body.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.addWidget(self.body)
        layout.addStretch(1)


class PreviewPage(QWizardPage):
    """The plan in words and pictures; Next (the operation's verb) only when it can run."""

    def __init__(self, wizard: OperationWizard) -> None:
        super().__init__()
        self._wizard = wizard
        self.setTitle("Preview")
        self.setSubTitle(
            "What will change, computed from the disk itself. Nothing has been written yet."
        )
        # The commit page: its button starts the operation and there is no way back after it.
        self.setCommitPage(True)
        self.scroller = QScrollArea()
        self.scroller.setWidgetResizable(True)
        self.scroller.setFrameShape(QScrollArea.Shape.NoFrame)
        self.content = QWidget()
        self.content_layout = QVBoxLayout(self.content)
        self.content_layout.setContentsMargins(0, 0, 6, 0)
        self.scroller.setWidget(self.content)
        self.scan_label = QLabel()
        self.scan_bar = QProgressBar()
        self.scan_bar.setMaximumHeight(16)
        for w in (self.scan_label, self.scan_bar):
            w.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroller, 1)
        layout.addWidget(self.scan_label)
        layout.addWidget(self.scan_bar)

    def initializePage(self) -> None:  # Qt override
        """Plan with the chosen options and show it."""
        self._wizard.make_plan()
        self.setButtonText(QWizard.WizardButton.CommitButton, self._wizard.action_text)
        self.setButtonText(QWizard.WizardButton.NextButton, self._wizard.action_text)

    def cleanupPage(self) -> None:  # Qt override
        """Back to the options: stop the background read (the options may change)."""
        self._wizard.stop_preview_job()
        super().cleanupPage()

    def clear(self) -> None:
        """Remove the previous plan's widgets."""
        empty(self.content_layout)

    def add(self, widget: QWidget) -> None:
        """Append a section."""
        self.content_layout.addWidget(widget)

    def finish(self) -> None:
        """Push the sections to the top."""
        self.content_layout.addStretch(1)
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # Qt override
        """Only a plan without refusals can run."""
        return self._wizard.can_run()

    def validatePage(self) -> bool:  # Qt override
        """Stop a background scan before the operation starts (it would read the same file)."""
        self._wizard.stop_preview_job()
        return self._wizard.can_run()


class RunPage(QWizardPage):
    """The commit page: progress, speed, time left; complete when the job has ended."""

    def __init__(self, wizard: OperationWizard) -> None:
        super().__init__()
        self._wizard = wizard
        self.setTitle("Running")
        self.setSubTitle(
            "The operation runs in the background; the main window stays usable "
            "for looking at the disks."
        )
        self.setButtonText(QWizard.WizardButton.NextButton, "Show the result")
        self.phase = QLabel("Starting…")
        self.phase.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 0)
        self.speed = QLabel("")
        self.remaining = QLabel("")
        self.state = QLabel("")
        self.state.setWordWrap(True)
        self.state.setTextFormat(Qt.TextFormat.RichText)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.meaning = QLabel("")
        self.meaning.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addSpacing(8)
        layout.addWidget(self.phase)
        layout.addWidget(self.bar)
        layout.addWidget(self.speed)
        layout.addWidget(self.remaining)
        layout.addSpacing(12)
        layout.addWidget(self.meaning)
        layout.addWidget(self.state)
        layout.addStretch(1)
        self._phase_name = ""
        self._phase_start = 0.0
        self.ended = False

    def initializePage(self) -> None:  # Qt override
        """Start the operation."""
        self.ended = False
        self.summary.setText(self._wizard.run_summary(self._wizard.plan))
        self.meaning.setText(self._wizard.cancel_meaning())
        self._wizard.start_operation()

    def isComplete(self) -> bool:  # Qt override
        """Complete only once a terminal signal arrived."""
        return self.ended

    def show_progress(self, event: Progress, elapsed: float | None = None) -> None:
        """One (throttled) progress event: phase, bar, MB/s and time left in this step."""
        now = time.monotonic()
        if event.phase != self._phase_name:
            self._phase_name = event.phase
            self._phase_start = now
        elapsed = now - self._phase_start if elapsed is None else elapsed
        self.phase.setText(event.phase[:1].upper() + event.phase[1:] + "…")
        if event.total:
            self.bar.setRange(0, event.total)
            self.bar.setValue(min(event.done, event.total))
            self.bar.setFormat(f"%p%  ({event.done:,} of {event.total:,})")
        else:
            self.bar.setRange(0, 0)
        # Steps that move no data (repairs, renames) have no speed worth showing.
        self.speed.setVisible(bool(event.bytes_done))
        if elapsed > 0.2 and event.bytes_done:
            self.speed.setText(
                f"Speed: {rate_text(event.bytes_done / elapsed)} "
                f"({human_size(event.bytes_done)} so far in this step)"
            )
        if elapsed > 0.2 and event.total and event.done:
            left = elapsed * (event.total - event.done) / event.done
            self.remaining.setText(f"Time remaining in this step: {duration_text(left)}")

    def show_end(self, text: str, level: Level) -> None:
        """Say how it ended and let the wizard move on."""
        colour = level.colour or ""
        self.state.setText(f'<span style="color:{colour}"><b>{html.escape(text)}</b></span>')
        if level is Level.OK and self.bar.maximum() == 0:
            self.bar.setRange(0, 1)
            self.bar.setValue(1)
        self.ended = True
        self.completeChanged.emit()


class ResultPage(QWizardPage):
    """How it ended: the verification, before/after figures, and "Show the changed chain"."""

    def __init__(self, wizard: OperationWizard) -> None:
        super().__init__()
        self._wizard = wizard
        self.setTitle("Result")
        self.content = QWidget()
        self.content_layout = QVBoxLayout(self.content)
        self.content_layout.setContentsMargins(0, 0, 0, 0)
        self.show_button = QPushButton("Show the changed chain")
        self.show_button.setToolTip(
            "Select the changed image in the main window (the folder has been reloaded from disk)"
        )
        self.show_button.clicked.connect(self._wizard.request_show_chain)
        layout = QVBoxLayout(self)
        layout.addWidget(self.content)
        layout.addSpacing(8)
        layout.addWidget(self.show_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addStretch(1)
        self.setFinalPage(True)

    def initializePage(self) -> None:  # Qt override
        """Render the outcome."""
        empty(self.content_layout)
        self._wizard.fill_result(self)

    def add(self, widget: QWidget) -> None:
        """Append a section."""
        self.content_layout.addWidget(widget)


class OperationWizard(QWizard, Generic[PlanT, ResultT]):
    """Base of the four wizards, generic over the engine's plan and result types.

    A wizard declares (class attributes):

    - ``operation``: which :class:`Operation` it runs (its title comes from the registry);
    - ``plan_function`` and ``run_function``: the engine's functions (the constructor's
      ``plan_fn`` / ``run_fn`` replace them, which is how tests pass fakes);
    - ``intro`` (page 1, HTML) and ``subtitle`` (a line under it; ``{target}``, ``{image}``
      and ``{where}`` are filled in from the target);
    - ``options_page_class``: page 2's class, built with the wizard (``self.opts``);
    - ``action_text``: the commit button's verb;

    and overrides :meth:`compute_plan`, :meth:`fill_preview` and :meth:`describe_result`
    (plus whatever else it really does differently).

    Signals:
        changed: an operation ended (in any way) and may have written: reload the folder.
            Carries the :class:`Target`.
        show_chain_requested: the user wants to see the changed image (a Path).
        running_changed: an operation started (True) or ended (False).
    """

    operation: ClassVar[Operation]
    plan_function: ClassVar[Callable[..., Any]]
    run_function: ClassVar[Callable[..., Any]]
    intro: ClassVar[str]
    subtitle: ClassVar[str] = ""
    options_page_class: ClassVar[type[QWizardPage]]
    action_text = "Run"
    outcome: Outcome | None
    plan: PlanT | None
    #: How an interrupted earlier operation is recovered (tests inject; None: the engine's).
    recover_fn: Callable[[Path], Any] | None = None
    changed = Signal(object)
    show_chain_requested = Signal(object)
    running_changed = Signal(bool)

    def __init__(
        self,
        vm: VmFolder | None,
        target: object,
        *,
        pool: WorkerPool | None = None,
        plan_fn: Callable[..., PlanT] | None = None,
        run_fn: Callable[..., ResultT] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.vm = vm
        self.target: Target = resolve_target(vm, target)
        self.pool = pool if pool is not None else WorkerPool(self)
        cls = type(self)
        self.plan_fn: Callable[..., PlanT] = plan_fn or cls.plan_function
        self.run_fn: Callable[..., ResultT] = run_fn or cls.run_function
        self.plan: PlanT | None = None
        self.plan_error: BaseException | None = None
        self.outcome: Outcome | None = None
        self.runner: Runner | None = None
        self.preview_runner: Runner | None = None
        self.started_at = 0.0
        self.setWindowTitle(f"{self.title} — {self.target.label}")
        self.setWizardStyle(QWizard.WizardStyle.ClassicStyle)
        self.setOption(QWizard.WizardOption.NoBackButtonOnLastPage, True)
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage, True)
        self.setOption(QWizard.WizardOption.NoCancelButtonOnLastPage, True)
        self.setMinimumSize(760, 560)
        self.intro_page = TextPage(self.title, self.subtitle.format(**self._words()), self.intro)
        self.opts: QWizardPage = cls.options_page_class(self)
        self.preview_page = PreviewPage(self)
        self.run_page = RunPage(self)
        self.result_page = ResultPage(self)
        for page_id, page in (
            (INTRO, self.intro_page),
            (OPTIONS, self.opts),
            (PREVIEW, self.preview_page),
            (RUN, self.run_page),
            (RESULT, self.result_page),
        ):
            self.setPage(page_id, page)
        self.setStartId(INTRO)
        self.currentIdChanged.connect(self._layout_buttons)

    def _layout_buttons(self, page_id: int) -> None:
        """No Back (and no Next) once the operation has started: it cannot be undone here."""
        button = QWizard.WizardButton
        if page_id == RUN:
            layout = [button.Stretch, button.CancelButton]
        elif page_id == RESULT:
            layout = [button.Stretch, button.FinishButton]
        else:
            layout = [
                button.Stretch,
                button.BackButton,
                button.NextButton,
                button.CommitButton,
                button.FinishButton,
                button.CancelButton,
            ]
        self.setButtonLayout(layout)

    @property
    def title(self) -> str:
        """The operation's title ("Clone or Convert"), from the registry."""
        return spec(self.operation).title

    def _words(self) -> dict[str, str]:
        """What ``subtitle`` may name: the target, its image, the VM or the target."""
        target = self.target
        return {
            "target": target.label,
            "image": target.image.name if target.image else "the selected image",
            "where": f"VM '{self.vm.name}'" if self.vm is not None else target.label,
        }

    # -- for subclasses ------------------------------------------------------------------------
    def compute_plan(self) -> PlanT:
        """Call the plan function with the chosen options (fast, synchronous)."""
        raise NotImplementedError

    def refusals(self, plan: PlanT) -> tuple[str, ...]:
        """Why the plan cannot run (empty: it can)."""
        return tuple(getattr(plan, "refusals", ()) or ())

    def fill_preview(self, page: PreviewPage, plan: PlanT) -> None:
        """Page 3 from the plan."""
        raise NotImplementedError

    def preview_job(self, plan: PlanT) -> Callable[..., PlanT] | None:
        """A slow read-only refinement of the plan to run behind the preview (or None)."""
        del plan
        return None

    def run_call(
        self, plan: PlanT, progress: Callable[[Progress], None], token: CancelToken
    ) -> ResultT:
        """Call the run function (subclasses add their keywords)."""
        return self.run_fn(plan, progress=progress, cancel=token)

    def run_summary(self, plan: PlanT) -> str:
        """One sentence on the run page: what is being done."""
        del plan
        return f"{self.title}: {self.target.label}."

    def cancel_meaning(self) -> str:
        """What Cancel leaves behind, in words, before the user presses it."""
        return "Cancel stops at the next block and says what state the disk is in."

    def recover_first(
        self, folder: Path | None, recover: Callable[[Path], Any] | None = None
    ) -> None:
        """Finish or roll back an interrupted earlier operation, as every vdictl command does.

        Runs on the worker before a journaled operation. When something was recovered the
        folder changed under the plan, so this operation stops there and says what happened;
        running the wizard again plans on the recovered folder.
        """
        if folder is None:
            return
        recovered = (recover or recover_pending)(folder)
        if recovered is not None:
            raise VdiError(
                f"{recovered.message()} The folder changed, so nothing else was "
                "done; open the wizard again to plan on the recovered folder."
            )

    def describe_result(self, page: ResultPage, result: ResultT) -> None:
        """Page 5 for a finished operation."""
        raise NotImplementedError

    def changed_path(self) -> Any:
        """What "Show the changed chain" selects."""
        return self.target.image

    # -- planning ------------------------------------------------------------------------------
    def make_plan(self) -> None:
        """Plan now and fill the preview (refusals raised by the planner are shown too)."""
        self.stop_preview_job()
        self.plan, self.plan_error = None, None
        page = self.preview_page
        page.clear()
        try:
            self.plan = self.compute_plan()
        except (VdiError, OSError, ValueError) as exc:
            self.plan_error = exc
            page.add(notice(messages.sentence(exc), Level.ERROR))
            page.finish()
            return
        self.fill_preview(page, self.plan)
        self.fill_space(page, self.plan)
        page.finish()
        job = self.preview_job(self.plan)
        if job is not None:
            self._start_preview_job(job)

    def can_run(self) -> bool:
        """A plan exists and nothing refuses it."""
        return self.plan is not None and not self.refusals(self.plan)

    def _start_preview_job(self, job: Callable[..., Any]) -> None:
        page = self.preview_page
        page.scan_label.setText(
            "Reading the allocated blocks for exact figures (read-only; "
            "you may go on without waiting)…"
        )
        page.scan_label.setVisible(True)
        page.scan_bar.setRange(0, 0)
        page.scan_bar.setVisible(True)
        # Slots are connected before the job starts (a fast job's signals are never lost).
        self.preview_runner = self.pool.start(
            job,
            f"{self.operation}-preview",
            progress=self._preview_progress,
            succeeded=self._preview_done,
            failed=self._preview_failed,
            cancelled=self._preview_ended,
        )

    def _preview_progress(self, event: Progress) -> None:
        bar = self.preview_page.scan_bar
        if event.total:
            bar.setRange(0, event.total)
            bar.setValue(event.done)

    def _preview_ended(self) -> None:
        self.preview_runner = None
        self.preview_page.scan_label.setVisible(False)
        self.preview_page.scan_bar.setVisible(False)

    def _preview_done(self, plan: PlanT) -> None:
        self._preview_ended()
        if self.currentId() not in (PREVIEW, -1):
            return
        self.show_refined(plan)

    def show_refined(self, plan: PlanT) -> None:
        """Show the plan the background read refined (the preview is rebuilt)."""
        self.plan = plan
        page = self.preview_page
        page.clear()
        self.fill_preview(page, plan)
        self.fill_space(page, plan)
        page.finish()

    def fill_space(self, page: PreviewPage, plan: Any) -> None:
        """The plan's space figures (frees, undo data and where, peak, end sizes) and undo.

        Every writing operation's plan states them the same way as ``vdictl --dry-run``
        (``plan.space.lines()``), so the preview and the command line never disagree.
        """
        space = self.plan_space(plan)
        if self.refusals(plan):
            return
        if space is None:
            text, level = self.undo_sentence(plan, None)
            if text:
                page.add(notice(text, level))
            return
        page.add(rule())
        page.add(heading("Disk space"))
        # "Cannot be undone" is said once, plainly, below.
        for line in space.total_lines("Edit > Discard Undo Data", say_not_undoable=False):
            page.add(notice(line, Level.INFO))
        files = space.file_lines()
        if files:
            page.add(figures([("End size of each file", "\n".join(files))]))
        text, level = self.undo_sentence(plan, space)
        if text:
            page.add(notice(text, level))

    def plan_space(self, plan: Any) -> Any:
        """The plan's :class:`SpacePlan` (None when the plan carries none)."""
        return getattr(plan, "space", None)

    def undo_sentence(self, plan: PlanT, space: Any) -> tuple[str, Level]:
        """Whether the operation can be undone afterwards, in one plain sentence and a level.

        ``space`` is the plan's SpacePlan, or None when the plan states none (then only a
        wizard that knows the answer without it says anything).
        """
        del plan
        if space is None:
            return "", Level.INFO
        if not space.undoable or not space.keep_undo:
            return ("Undo will be impossible: this operation keeps no undo data.", Level.WARNING)
        return (
            "Edit > Undo (or 'vdictl undo') can put everything back afterwards, until "
            "another operation runs or the undo data is discarded.",
            Level.OK,
        )

    def _preview_failed(self, exc: BaseException) -> None:
        self._preview_ended()
        self.preview_page.add(
            notice(
                "The exact figures could not be computed: " + messages.sentence(exc), Level.WARNING
            )
        )

    def stop_preview_job(self) -> None:
        """Cancel the preview's background read and wait for it (it is read-only)."""
        runner = self.preview_runner
        if runner is None:
            return
        runner.token.cancel()
        self._wait(lambda: self.preview_runner is None)

    # -- running -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the operation has started and not yet ended."""
        return self.runner is not None and self.outcome is None

    def start_operation(self) -> None:
        """Run the plan on the worker pool."""
        if self.runner is not None:
            return
        plan = self.plan
        assert plan is not None  # the run page follows a plan that can run
        seen: dict[str, Any] = {}

        def job(progress: Callable[[Progress], None], token: CancelToken) -> Any:
            try:
                result = self.run_call(plan, progress, token)
            except OperationCancelled as exc:
                seen["cancel_message"] = str(exc)
                raise
            seen["result"] = result
            return result

        self.started_at = time.monotonic()
        self.outcome = None
        self._seen = seen

        self.runner = self.pool.start(
            job,
            str(self.operation),
            progress=self.run_page.show_progress,
            succeeded=lambda result: self._ended(OutcomeKind.SUCCEEDED, result),
            failed=lambda exc: self._ended(OutcomeKind.FAILED, exc),
            cancelled=lambda: self._ended(OutcomeKind.CANCELLED, None),
        )
        self.button(QWizard.WizardButton.CancelButton).setText("Cancel")
        self.running_changed.emit(True)

    def cancel_operation(self) -> None:
        """Ask the engine to stop at its next block (the Cancel button while running)."""
        if self.runner is None or self.outcome is not None:
            return
        self.runner.token.cancel()
        self.run_page.state.setText(
            "Cancelling: the operation stops at the next block and "
            "then says what state the disk is in…"
        )
        self.button(QWizard.WizardButton.CancelButton).setEnabled(False)

    def _ended(self, kind: OutcomeKind, value: Any) -> None:
        seen = getattr(self, "_seen", {})
        if kind is OutcomeKind.CANCELLED and "result" in seen:
            # The job finished before it saw the token: the operation is complete.
            kind, value = OutcomeKind.SUCCEEDED, seen["result"]
        message = ""
        if kind is OutcomeKind.CANCELLED:
            message = seen.get("cancel_message") or "Cancelled: nothing was changed."
        elif kind is OutcomeKind.FAILED:
            message = messages.sentence(value)
        self.outcome = Outcome(kind, value, message)
        cancel = self.button(QWizard.WizardButton.CancelButton)
        cancel.setEnabled(True)
        self.run_page.show_end(
            "Finished." if kind is OutcomeKind.SUCCEEDED else message, kind.level
        )
        self.running_changed.emit(False)
        self.changed.emit(self.target)
        if kind is OutcomeKind.FAILED:
            messages.report(self, f"{self.title} failed", value)
        if self.currentId() == RUN:
            self.next()

    def fill_result(self, page: ResultPage) -> None:
        """Page 5: the outcome, then the subclass's figures for a success."""
        outcome = self.outcome
        if outcome is None:
            page.add(notice("The operation has not run.", Level.INFO))
            page.show_button.setVisible(False)
            return
        if outcome.kind is OutcomeKind.SUCCEEDED:
            page.setSubTitle("The operation finished.")
            self.describe_result(page, outcome.value)
            self.describe_check(page)
        elif outcome.kind is OutcomeKind.CANCELLED:
            page.setSubTitle("The operation was cancelled.")
            page.add(notice(outcome.message, Level.WARNING))
        else:
            page.setSubTitle("The operation failed.")
            page.add(notice(outcome.message, Level.ERROR))
            page.add(
                notice(
                    'The full technical details were shown in the error dialog ("Copy details").',
                    Level.INFO,
                )
            )

    def describe_check(self, page: ResultPage) -> None:
        """After a change to a VM: load the folder again and compare its problem count."""
        if self.vm is None or self.operation not in (Operation.DELETE_SNAPSHOT, Operation.REPAIR):
            return
        before = len(self.vm.problems)
        try:
            after = load_vm_folder(self.vm.folder)
        except VdiError as exc:
            page.add(
                notice(
                    "Checked afterwards: the VM folder can no longer be read: "
                    + messages.sentence(exc),
                    Level.ERROR,
                )
            )
            return
        count = len(after.problems)
        level = Level.OK if count <= before else Level.WARNING
        page.add(
            notice(
                f"Checked afterwards: the VM folder loads, with {count} problem"
                f"{'s' if count != 1 else ''} (before: {before}).",
                level,
            )
        )

    def request_show_chain(self) -> None:
        """Ask the main window to select the changed image."""
        self.show_chain_requested.emit(self.changed_path())

    # -- closing -------------------------------------------------------------------------------
    def _wait(self, done: Callable[[], bool], timeout_ms: int = 60000) -> bool:
        """Process events until ``done()`` (terminal signals are queued to this thread)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while not done() and time.monotonic() < deadline:
            self.pool.pool.waitForDone(20)
            QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        return done()

    def stop_and_wait(self, timeout_ms: int = 60000) -> bool:
        """Cancel whatever runs and wait until its terminal signal arrived."""
        self.stop_preview_job()
        if self.running:
            self.cancel_operation()
            return self._wait(lambda: self.outcome is not None, timeout_ms)
        return True

    def reject(self) -> None:
        """Cancel button / Esc: cancel a running operation (and stay), else close."""
        if self.running:
            self.cancel_operation()
            return
        self.stop_preview_job()
        super().reject()

    def closeEvent(self, event: QCloseEvent) -> None:  # Qt override
        """Closing while the operation runs: ask, cancel, wait, then close."""
        if self.running:
            if not confirm(
                self,
                f"{self.title} is still running. Cancel it (it stops at the next block) and close?",
            ):
                event.ignore()
                return
            if not self.stop_and_wait():
                messages.reporter(
                    self,
                    "Still running",
                    "The operation did not stop within a minute; the files it "
                    f"writes ({self.target.image}) may be in use until it "
                    "ends.",
                    "",
                )
                event.ignore()
                return
        self.stop_preview_job()
        super().closeEvent(event)

    def done(self, result: int) -> None:
        """Never close while the worker still runs (the Finish button cannot, but be sure)."""
        if self.running:
            return
        super().done(result)
