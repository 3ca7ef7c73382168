"""Work off the window's thread: a :class:`Job` runs on a :class:`Lane` (a worker thread) and
reports by signals.

Qt's worker-object pattern: a Lane is a QObject moved into its own QThread; a Job is submitted
to it by a queued signal, so jobs on one lane run one after another in the order given. A job
reports through its own signals (``progress``, ``text``, ``finished``, ``failed``,
``cancelled``), which Qt delivers on the thread of whoever connected to them (the window's).
Cancelling a job sets a flag that the work polls (between chunks while reading, between tokens
while answering); a job cancelled before it starts never runs.

Readings, answers and summaries run on the lanes of ``app.workers.Engine``; work on model files
(a download, a conversion) runs on a lane of its own (``start_file_job``).
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QMetaMethod, QObject, QThread, Signal, Slot

from engine.errors import Cancelled, CommaError

if TYPE_CHECKING:
    from engine.pipeline.comma import Comma

log = logging.getLogger(__name__)


class Job(QObject):
    """One piece of model work; its signals arrive on the thread of whoever connected to them."""

    started = Signal()
    described = Signal(dict)  # facts known early (a document's title and pages)
    progress = Signal(int, int)  # done, total (tokens while reading, parts while summarising)
    text = Signal(str)  # answer text as it streams
    notice = Signal(str)  # what the job is doing besides its main work (preparing the model)
    confirm = Signal(str)  # a yes/no question the job waits on; reply with ``answer(yes)``
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal(str)

    # ``work(job, comma)``: the lane's Comma, or None on a lane without one (model files).
    def __init__(self, kind: str, work: Callable[[Job, Any], object], **info):
        super().__init__()
        self.kind, self.info, self._work = kind, info, work
        self._stop = threading.Event()
        self._answered = threading.Event()
        self._yes = False
        self.state = "queued"  # queued → running → done | failed | cancelled

    def cancel(self) -> None:
        self._stop.set()

    def is_cancelled(self) -> bool:
        return self._stop.is_set()

    def report_progress(self, done: int, total: int) -> None:
        self.progress.emit(done, total)

    def report_text(self, text: str) -> None:
        self.text.emit(text)

    def report_notice(self, text: str) -> None:
        self.notice.emit(text)

    def confirm_first(self, question: str) -> bool:
        """Ask whoever listens to ``confirm`` and wait for the reply (True when nobody listens);
        a cancel while waiting is a no."""
        if not self.isSignalConnected(QMetaMethod.fromSignal(self.confirm)):
            return True
        self._answered.clear()
        self.confirm.emit(question)
        while not self._answered.wait(0.05):
            if self.is_cancelled():
                return False
        return self._yes

    def answer(self, yes: bool) -> None:
        self._yes = yes
        self._answered.set()

    def report_preparing(self, done: int, total: int) -> None:
        self.notice.emit(f"preparing a faster copy of the model (once): {100 * done // max(total, 1)}%")

    def run(self, comma: Comma | None) -> None:
        if self.is_cancelled():
            self.state = "cancelled"
            self.cancelled.emit("cancelled before it started")
            return
        self.state = "running"
        # The model loads inside the first job that needs it; that job says what loading does.
        if comma is not None:
            comma.notice, comma.preparing = self.report_notice, self.report_preparing
        self.started.emit()
        try:
            result = self._work(self, comma)
        except Cancelled as exc:
            self.state = "cancelled"
            self.cancelled.emit(str(exc))
        except CommaError as exc:
            self.state = "failed"
            self.failed.emit(str(exc))
        except Exception as exc:  # a bug must not take the window down; say what happened
            log.exception("%s job failed", self.kind)
            self.state = "failed"
            self.failed.emit(f"unexpected error ({type(exc).__name__}: {exc}); nothing was saved")
        else:
            self.state = "done"
            self.finished.emit(result)


class Lane(QObject):
    """A worker thread that runs submitted jobs one at a time, in order."""

    _submitted = Signal(object)

    def __init__(self, name: str, make_comma: Callable[[], Comma] | None):
        """``make_comma``: the library and models its jobs work with; None for a lane whose
        jobs need neither (model files: downloads, conversions)."""
        super().__init__()
        self._make_comma = make_comma
        self._comma: Comma | None = None
        self._generation = 0  # bumped when settings change; the lane rebuilds its Comma
        self._built = -1
        self.worker_thread = QThread()  # not ``thread``: QObject.thread() is the thread it lives in
        self.worker_thread.setObjectName(name)
        self.moveToThread(self.worker_thread)
        self._submitted.connect(self._run)
        self.worker_thread.start()

    def submit(self, job: Job) -> Job:
        self._submitted.emit(job)
        return job

    def reconfigure(self) -> None:
        self._generation += 1

    @Slot(object)
    def _run(self, job: Job) -> None:
        if self._make_comma is None:
            job.run(None)
            return
        if self._comma is None or self._built != self._generation:
            self._built = self._generation
            if self._comma is not None:
                self._comma.close_conversation()  # its cache belongs to the old settings' model
            self._comma = None
            try:
                self._comma = self._make_comma()
            except Exception as exc:  # e.g. a data folder that cannot be opened: the job says why
                log.exception("could not prepare the %s lane", self.worker_thread.objectName())
                job.state = "failed"
                job.failed.emit(str(exc) if isinstance(exc, CommaError) else
                                f"could not open the library ({type(exc).__name__}: {exc})")
                return
        job.run(self._comma)

    def stop(self) -> None:
        """Quit after the running job (cancel it first); waits, since a QThread must not be
        destroyed while it runs."""
        self.worker_thread.quit()
        self.worker_thread.wait()
        if self._comma is not None:
            self._comma.close_conversation()  # the thread has ended: nothing else touches it


_files_lane: Lane | None = None
_files_jobs: set[Job] = set()  # kept alive until they end: a dialog may close first


def start_file_job(job: Job) -> Job:
    """Run work on model files (a download, a conversion) on their own lane, created on first use
    and stopped at exit: it needs no library and no model, and waits behind no reading."""
    global _files_lane
    if _files_lane is None:
        _files_lane = Lane("comma-files", None)
        atexit.register(stop_file_jobs)
    _files_jobs.add(job)
    for ended in (job.finished, job.failed, job.cancelled):
        ended.connect(lambda *_, job=job: _files_jobs.discard(job))
    return _files_lane.submit(job)


def stop_file_jobs() -> None:
    """Cancel the file jobs and end their lane (a cancelled download stops at its next chunk;
    a dead connection may hold it until its timeout)."""
    global _files_lane
    for job in list(_files_jobs):
        job.cancel()
    if _files_lane is not None:
        _files_lane.stop()
        _files_lane = None
