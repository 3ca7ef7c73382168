"""Model work off the window's thread: jobs run on lanes (worker threads) and report by signals.

Qt's worker-object pattern: a :class:`Lane` is a QObject moved into its own QThread; the window
submits a :class:`Job` to it by a queued signal, so jobs on one lane run one after another in
the order given (several dropped files queue up). There are two lanes, one for reading and one
for asking and summarising, so a question can be answered while a long document is being read;
both share one loaded model (llama.cpp serves several contexts from one set of weights).

A job reports through its own signals (``progress``, ``text``, ``finished``, ``failed``,
``cancelled``), which Qt delivers to the window on the window's thread. Cancelling a job sets a
flag that the engine polls between chunks (reading) or tokens (answering); a job cancelled
before it starts never runs. Each lane opens its own connection to the library, since a SQLite
connection belongs to the thread that made it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PySide6.QtCore import QMetaMethod, QObject, QThread, Signal, Slot

from app.actions import Comma
from app.settings import Settings
from engine.errors import Cancelled, CommaError, stop_reading_if
from storage.library import Library

log = logging.getLogger(__name__)


# A deep read polls between chunks; at ~40 tokens/s a 128-token chunk lets a question in within
# about 3 s of asking, where the reader's 512 would keep it waiting 13 s.
DEEP_CHUNK = 128
# Deep reads yield the CPU to the window and to reading and asking (Linux nice values are per thread).
DEEP_NICE = 10


def lower_this_thread_priority() -> None:
    """Run the calling thread, and the compute threads it starts, at a lower CPU priority."""
    if hasattr(os, "setpriority") and sys.platform.startswith("linux"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), DEEP_NICE))
        except OSError:
            pass  # not allowed here: the read still runs, at normal priority


class SharedModel:
    """One model for every lane, loaded on first use (in whichever worker needs it first)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._model = None
        self._key = None
        self._answerer: tuple | None = None
        self._answerer_key = None

    def get(self, backend: str, path, models_folder, progress=None, notice=None) -> object:
        key = (backend, str(path or ""), str(models_folder))
        with self._lock:
            if self._model is None or self._key != key:
                from engine.backends import load_model

                self._model = None  # free the old weights before loading new ones
                self._model = load_model(backend, path or None, models_folder=models_folder,
                                         progress=progress, notice=notice)
                self._key = key
            return self._model

    def answerer(self, answering: str, backend: str, path, models_folder, progress=None, notice=None) -> tuple:
        """The answering model (or None and why), loaded once for every lane like the reading one."""
        key = (answering, backend, str(path or ""), str(models_folder))
        with self._lock:
            if self._answerer is None or self._answerer_key != key:
                from engine.backends import load_answering_model

                self._answerer = None
                self._answerer = load_answering_model(answering, backend, path or None, models_folder,
                                                      progress, notice)
                self._answerer_key = key
            return self._answerer

    @property
    def loaded(self) -> bool:
        return self._model is not None


@dataclass
class SharedComma(Comma):
    """Comma's actions, with the model taken from the shared holder instead of loaded per lane."""

    shared: SharedModel = field(default_factory=SharedModel)

    @property
    def model(self):
        return self.shared.get(self.backend, self.model_path, self.library.models_folder, self.preparing,
                               self.notice)

    def _load_answerer(self) -> tuple:
        return self.shared.answerer(self.answering, self.backend, self.model_path, self.library.models_folder,
                                    self.preparing, self.notice)


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

    def __init__(self, kind: str, work: Callable[[Job, Comma], object], **info):
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

    def run(self, comma: Comma) -> None:
        if self.is_cancelled():
            self.state = "cancelled"
            self.cancelled.emit("cancelled before it started")
            return
        self.state = "running"
        # The model loads inside the first job that needs it; that job says what loading does.
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

    def __init__(self, name: str, make_comma: Callable[[], Comma]):
        super().__init__()
        self._make_comma = make_comma
        self._comma: Comma | None = None
        self._generation = 0  # bumped when settings change; the lane rebuilds its Comma
        self._built = -1
        self.thread = QThread()
        self.thread.setObjectName(name)
        self.moveToThread(self.thread)
        self._submitted.connect(self._run)
        self.thread.start()

    def submit(self, job: Job) -> Job:
        self._submitted.emit(job)
        return job

    def reconfigure(self) -> None:
        self._generation += 1

    @Slot(object)
    def _run(self, job: Job) -> None:
        if self._comma is None or self._built != self._generation:
            self._built = self._generation
            if self._comma is not None:
                self._comma.close_conversation()  # its cache belongs to the old settings' model
            self._comma = None
            try:
                self._comma = self._make_comma()
            except Exception as exc:  # e.g. a data folder that cannot be opened: the job says why
                log.exception("could not prepare the %s lane", self.thread.objectName())
                job.state = "failed"
                job.failed.emit(str(exc) if isinstance(exc, CommaError) else
                                f"could not open the library ({type(exc).__name__}: {exc})")
                return
        job.run(self._comma)

    def stop(self) -> None:
        """Quit after the running job (cancel it first); waits, since a QThread must not be
        destroyed while it runs."""
        self.thread.quit()
        self.thread.wait()
        if self._comma is not None:
            self._comma.close_conversation()  # the thread has ended: nothing else touches it


def _about_minutes(minutes: float) -> str:
    if minutes < 90:
        return f"{max(1, round(minutes / 5) * 5 if minutes > 20 else round(minutes))} minutes"
    return f"{minutes / 60:.1f} hours"


class Engine(QObject):
    """The window's gateway to model work: ``read``, ``ask`` and ``summarize`` build jobs,
    ``start`` puts one on its lane (reading, or asking and summarising)."""

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings
        self.shared = SharedModel()
        self.jobs: list[Job] = []
        self.reading = Lane("comma-reading", self._make_comma)
        self.asking = Lane("comma-asking", self._make_comma)
        # The answering model's deep reads, one document after another, in the background.
        self.deep = Lane("comma-deep", self._make_comma)
        self._answering = threading.Event()  # set while a question is answered: deep reads wait

    def _make_comma(self) -> Comma:
        s = self.settings
        return SharedComma(library=Library(s.library_folder()), model_path=s.model_path or None,
                           backend=s.backend, answering=s.answering, limits=s.limits(), shared=self.shared)

    def configure(self, settings: Settings) -> None:
        self.settings = settings
        for lane in (self.reading, self.asking, self.deep):
            lane.reconfigure()

    def start(self, job: Job) -> Job:
        """Queue a job on its lane. Connect to its signals first: a job may start, and even
        finish, before the next line of the caller runs."""
        self.jobs = [j for j in self.jobs if j.state in ("queued", "running")] + [job]
        lane = {"read": self.reading, "deep": self.deep}.get(job.kind, self.asking)
        return lane.submit(job)

    def read(self, path: str, force: bool = False) -> Job:
        s = self.settings

        def work(job: Job, comma: Comma) -> dict:
            # Reading the file first reports a bad one at once, before any model is loaded.
            document = comma.read_file(
                path, progress=lambda done, total: job.report_notice(
                    f"reading the text of scanned pages (OCR): {done} of {total} done"),
                cancelled=job.is_cancelled)
            # The page text goes along so that the window can show the document while it is read.
            job.described.emit({"title": document.title, "pages": document.pages, "path": str(document.path),
                                "kind": document.kind,
                                "texts": [document.page_text(p) for p in range(1, document.pages + 1)]})
            stop_reading_if(job.is_cancelled)
            if s.ask_above_minutes and (force or not comma.has_reading(document, s.policy, s.cache or None)):
                minutes = comma.reading_estimate(document) / 60
                if minutes > s.ask_above_minutes and not job.confirm_first(
                        f"Reading “{document.title}” ({document.pages:,} pages) will take about "
                        f"{_about_minutes(minutes)} on this computer. You can cancel it at any time. Read it now?"):
                    raise Cancelled("not started: a long reading, and you chose to wait; nothing was saved")
            # The answering model's read follows on its own lane (Engine.deep_read), in the background.
            return comma.ingest(document, s.policy, s.cache or None, force=force, notes=s.notes,
                                progress=job.report_progress, cancelled=job.is_cancelled, deep=False,
                                meaning_progress=lambda done, total: job.report_notice(
                                    f"finding what each page is about: {done} of {total} passages"))

        return Job("read", work, path=path, force=force)

    def deep_read(self, doc_id: str) -> Job:
        """The answering model's reading of a document, in the background: at a lower CPU
        priority, in short chunks, pausing while a question is answered. A document it has read
        already finishes at once (``reused``); without an answering model the job says why."""
        s = self.settings

        def work(job: Job, comma: Comma) -> dict:
            lower_this_thread_priority()
            if comma.answerer is None:
                return {"doc_id": doc_id, "skipped": comma.answerer_reason}

            def paused_or_cancelled() -> bool:
                if self._answering.is_set():
                    job.report_notice("paused while a question is answered")
                while self._answering.is_set() and not job.is_cancelled():
                    time.sleep(0.05)
                return job.is_cancelled()

            return comma.deep_read(doc_id, s.policy, s.cache or None, progress=job.report_progress,
                                   cancelled=paused_or_cancelled, chunk=DEEP_CHUNK)

        return Job("deep", work, doc_id=doc_id)

    def ask(self, doc_id: str, question: str, session_id: str | None) -> Job:
        sampling = self.settings.sampling()

        def work(job: Job, comma: Comma) -> dict:
            self._answering.set()
            try:
                result = comma.ask(doc_id, question, session_id, on_text=job.report_text,
                                   should_stop=job.is_cancelled, live=True, on_status=job.report_notice,
                                   sampling=sampling)
            finally:
                self._answering.clear()
            if result.not_saved is None:
                comma.library.set_last_answer_seconds(result.session_id, result.seconds)
            return {**result.__dict__, "stopped": job.is_cancelled(), "doc_id": doc_id, "question": question}

        return Job("ask", work, doc_id=doc_id, question=question, session_id=session_id)

    def summarize(self, doc_id: str, force: bool = False) -> Job:
        def work(job: Job, comma: Comma) -> dict:
            return {**comma.summarize(doc_id, force, progress=job.report_progress), "doc_id": doc_id}

        return Job("summarize", work, doc_id=doc_id)

    def shutdown(self) -> None:
        for job in self.jobs:
            job.cancel()
        for lane in (self.reading, self.asking, self.deep):
            lane.stop()
