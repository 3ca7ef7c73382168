"""The window's model work: readings, answers, summaries and the answering model's reading in
the background, each a :class:`~app.jobs.Job` on a lane (``app.jobs``).

There are three lanes: one for reading, one for asking and summarising, so a question can be
answered while a long document is being read, and one for the answering model's reading in the
background, at a lower priority and paused while a question is answered. They share one set of
loaded models (``engine.pipeline.models.LoadedModels``: llama.cpp serves several contexts from
one set of weights); each lane opens its own connection to the library, since a SQLite
connection belongs to the thread that made it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from PySide6.QtCore import QObject

from app.jobs import Job, Lane
from app.settings import Settings
from engine.errors import Cancelled, stop_reading_if
from engine.pipeline.comma import Comma
from engine.pipeline.models import LoadedModels
from storage.library import Library, models_folder

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
        self.shared = LoadedModels()
        self.jobs: list[Job] = []
        self.reading = Lane("comma-reading", self._make_comma)
        self.asking = Lane("comma-asking", self._make_comma)
        # The answering model's deep reads, one document after another, in the background.
        self.deep = Lane("comma-deep", self._make_comma)
        self._answering = threading.Event()  # set while a question is answered: deep reads wait

    def _make_comma(self) -> Comma:
        s = self.settings
        return Comma(library=Library(s.library_folder()), model_path=s.model_path or None,
                     backend=s.backend, answering=s.answering, limits=s.limits(), models=self.shared)

    def configure(self, settings: Settings) -> None:
        """New settings: each lane rebuilds its Comma before its next job. A model the new
        settings replace is closed once every lane has let go of it, which each does in order,
        after the job it is running."""
        self.settings = settings
        lanes = (self.reading, self.asking, self.deep)
        left = {"lanes": len(lanes)}
        counting = threading.Lock()  # each lane reports from its own thread

        def let_go(*_) -> None:
            with counting:
                left["lanes"] -= 1
                done = left["lanes"] == 0
            if done:
                self.shared.settle(settings.answering, settings.backend, settings.model_path or None,
                                   models_folder(settings.library_folder()))

        for lane in lanes:
            lane.reconfigure()
            job = Job("settings", lambda job, comma: None)
            job.finished.connect(let_go)
            job.failed.connect(let_go)
            job.cancelled.connect(let_go)
            lane.submit(job)

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
        self.shared.close()  # every lane has ended: nothing uses the models now

    def fill_in_pages(self, doc_id: str) -> Job:
        """The page text of a document the library kept without it, from its file (a whole PDF
        may be read: never on the window's thread)."""
        return Job("pages", lambda job, comma: {"doc_id": doc_id, "filled": comma.ensure_pages(doc_id)},
                   doc_id=doc_id)
