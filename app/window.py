"""The main window: the library on the left, the document in the middle, the conversation on the
right. It joins the panels to the engine's worker lanes (app/workers.py) and to the library;
all model work runs in those workers and comes back by signals, so the window never waits.

Problems a person can act on (a bad file, a mismatched memory, a missing model) come back as
messages: shown in a banner at the top and where they happened (the reading's entry, the
answer), never as a crash. The library only changes when work succeeds.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QByteArray, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app import settings as settings_store
from app import theme
from app.conversation_panel import ConversationPanel
from app.export import session_markdown
from app.jobs import Job
from app.library_panel import LibraryPanel
from app.qt_platform import startup_problem
from app.settings import Settings, SettingsDialog
from app.viewer import Viewer
from app.workers import Engine
from engine.documents import ocr_cache
from engine.documents.document import SUPPORTED_SUFFIXES
from engine.errors import CommaError
from engine.pipeline.options import answering_expected
from storage.library import Library

OPEN_FILTER = "Documents (*.pdf *.txt *.md *.markdown *.docx);;All files (*)"


class Banner(QFrame):
    """A message across the top of the window that stays until dismissed or replaced."""

    def __init__(self):
        super().__init__()
        self.setObjectName("banner")
        self.label = QLabel()
        self.label.setTextFormat(Qt.TextFormat.PlainText)  # messages quote titles and file names
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QPushButton("Dismiss")
        close.clicked.connect(self.hide)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 10, 6)
        row.addWidget(self.label, 1)
        row.addWidget(close)
        self.hide()

    def show_message(self, text: str, error: bool = True) -> None:
        background, colour = theme.banner_colours(self.palette(), error)
        self.setStyleSheet(f"QFrame#banner {{ background: {background}; border-radius: 4px; }} "
                           f"QFrame#banner QLabel {{ color: {colour}; }}")
        self.label.setText(text)
        self.show()

    def text(self) -> str:
        return self.label.text() if self.isVisible() else ""


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings | None = None):
        super().__init__()
        self.setWindowTitle("Comma")
        self.setAcceptDrops(True)
        self.settings = settings or settings_store.load()
        self.library = Library(self.settings.library_folder())
        self.engine = Engine(self.settings)
        self.doc: dict | None = None
        self.reading: Job | None = None  # the reading shown in the progress bar
        self.asking: Job | None = None
        # The file being read that the middle pane shows until its reading ends; a reading shows
        # itself there only if no document was opened since it was queued.
        self.previewing: Job | None = None
        self._before_preview: str | None = None
        self._opened = 0
        self._queued_at: dict[Job, int] = {}

        self.banner = Banner()
        self.library_panel = LibraryPanel()
        self.viewer = Viewer()
        self.conversation = ConversationPanel()
        splitter = QSplitter()
        splitter.addWidget(self.library_panel)
        splitter.addWidget(self.viewer)
        splitter.addWidget(self.conversation)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 5)
        splitter.setStretchFactor(2, 3)
        splitter.setSizes([280, 640, 420])
        self.splitter = splitter
        saved = settings_store.recall("splitter")
        if saved:
            splitter.restoreState(QByteArray.fromBase64(saved.encode()))
        splitter.splitterMoved.connect(lambda *_: self._remember_layout())
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.banner)
        layout.addWidget(splitter, 1)
        self.setCentralWidget(central)
        self._menus()
        self._connect()
        self._keys()
        self.resize(1360, 820)
        self.refresh_library()
        last = settings_store.recall("document")
        if last and last in self.library_panel.doc_ids():
            self.library_panel.select(last)
        elif self.library_panel.doc_ids():
            self.library_panel.select(self.library_panel.doc_ids()[0])
        self.deep_jobs: dict[str, Job] = {}
        if self.library.read_only:
            self.statusBar().showMessage(f"Library: {self.library.folder} (read-only: documents can be read and "
                                         "asked about; nothing new is kept)")
            return
        self.statusBar().showMessage(f"Library: {self.library.folder}")
        # Deep reads that a restart, a crash or a cancel left unfinished go on in the background.
        for doc_id in self.library_panel.doc_ids():
            self.deep_read(doc_id)

    # building --------------------------------------------------------------------------------

    def _action(self, text: str, triggered: Callable[[], object], shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
        action.triggered.connect(lambda: triggered())  # a menu's "checked" argument is not passed on
        return action

    def _menus(self) -> None:
        file = self.menuBar().addMenu("&File")
        self.open_action = self._action("&Open…", self.choose_files, QKeySequence.StandardKey.Open)
        file.addAction(self.open_action)
        self.recent_menu = file.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        file.addSeparator()
        self.export_action = self._action("&Export Conversation…", self.export_session, "Ctrl+E")
        file.addAction(self.export_action)
        file.addAction(self._action("&Settings…", self.edit_settings, QKeySequence.StandardKey.Preferences))
        file.addSeparator()
        file.addAction(self._action("&Quit", self.close, QKeySequence.StandardKey.Quit))
        doc = self.menuBar().addMenu("&Document")
        doc.addAction(self._action("&Summarize", self.summarize))
        doc.addAction(self._action("Summarize &Again", lambda: self.summarize(force=True)))
        doc.addAction(self._action("&Read Again", self._read_open_document_again))
        doc.addAction(self._action("&Find…", self.find_in_document, QKeySequence.StandardKey.Find))
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self._action("&Keys…", self.show_help, QKeySequence.StandardKey.HelpContents))

    def _read_open_document_again(self) -> None:
        if self.doc is not None:
            self.read_again(self.doc["id"])

    def _keys(self) -> None:
        """Shortcuts beyond the menus' (Ctrl+O, Ctrl+F, Ctrl+E, Ctrl+Q), F1 to list them all, and a
        Tab order that goes library → document → conversation."""
        QShortcut(QKeySequence("Ctrl+L"), self, self.conversation.question.setFocus)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.stop_answer)
        lp, viewer, conv = self.library_panel, self.viewer, self.conversation
        chain = [lp.search_edit, lp.list, viewer.page, viewer.find_edit, conv.sessions, conv.question, conv.ask_button]
        for first, second in zip(chain, chain[1:], strict=False):
            self.setTabOrder(first, second)

    def show_help(self) -> None:
        if getattr(self, "help_dialog", None) is None:
            self.help_dialog = QMessageBox(QMessageBox.Icon.Information, "Comma: keys", _help_text(), parent=self)
            self.help_dialog.setTextFormat(Qt.TextFormat.RichText)  # our own text, no document's
            self.help_dialog.setModal(False)
        self.help_dialog.show()

    def find_in_document(self) -> None:
        self.viewer.find_edit.setFocus()
        self.viewer.find_edit.selectAll()

    def _connect(self) -> None:
        lp, conv = self.library_panel, self.conversation
        lp.documentSelected.connect(self.open_document)
        lp.hitChosen.connect(self._open_hit)
        lp.search_edit.textChanged.connect(self.search)
        lp.cancelRequested.connect(lambda job: job.cancel())
        lp.dismissRequested.connect(lp.remove_pending)
        lp.readAgainRequested.connect(self.read_again)
        lp.removeRequested.connect(self.remove_document)
        lp.progress.cancelRequested.connect(self.cancel_reading)
        conv.askRequested.connect(self.ask)
        conv.stopRequested.connect(self.stop_answer)
        conv.sessionChosen.connect(self.choose_session)
        conv.summarizeRequested.connect(self.summarize)
        conv.exportRequested.connect(self.export_session)
        conv.renameRequested.connect(self.rename_session)
        conv.deleteRequested.connect(self.delete_session)
        conv.citationClicked.connect(self.viewer.show_citation)

    def _write(self, change: Callable[[], None]) -> bool:
        """Make a change to the library, or show why it could not be made (read-only, locked)."""
        try:
            change()
        except CommaError as exc:
            self.error(str(exc))
            return False
        return True

    def error(self, message: str) -> None:
        self.banner.show_message(message, error=True)

    # library ---------------------------------------------------------------------------------

    def refresh_library(self, select: str | None = None) -> None:
        self.library_panel.set_documents(self.library.documents(), select)

    def open_document(self, doc_id: str) -> None:
        try:
            doc = self.library.document(doc_id)
        except CommaError as exc:
            self.error(str(exc))
            return
        self.doc = doc
        self._opened += 1
        self.previewing = None
        if not self.library.has_pages(doc_id):
            self._fill_in_pages(doc)
        self._show_pages(doc)
        self.conversation.set_document(doc, self.library.sessions(doc_id), self._summary(doc_id))
        self.choose_session(self.conversation.session_id)
        settings_store.remember("document", doc_id)
        self.setWindowTitle(f"{doc['title']} — Comma")

    def _show_pages(self, doc: dict) -> None:
        try:
            kept_ocr = self.library.ocr_cache_path(doc["sha256"])
        except CommaError:  # a hash library.db should not hold: the pages are shown without OCR lines
            kept_ocr = None
        self.viewer.show_document(doc, self.library.page_texts(doc["id"]), ocr_cache.load(kept_ocr, doc["sha256"]))

    def _fill_in_pages(self, doc: dict) -> None:
        """A document the library kept without its page text (an older library) gets it from its
        file on a worker, and is shown again if it is still open."""
        job = self.engine.fill_in_pages(doc["id"])

        def done(result: dict) -> None:
            if not result["filled"]:
                self.statusBar().showMessage(f"{doc['path']} is gone or changed; showing what the library keeps")
            elif self.doc is not None and self.doc["id"] == doc["id"]:
                self._show_pages(doc)

        job.finished.connect(done)
        job.failed.connect(self.error)
        self.engine.start(job)

    def _summary(self, doc_id: str) -> dict | None:
        for memory in reversed(self.library.memories(doc_id)):
            summary = self.library.summary(memory["id"])
            if summary:
                return summary
        return None

    def choose_session(self, session_id: str | None) -> None:
        self.conversation.show_messages(self.library.messages(session_id) if session_id else [])

    def search(self, query: str) -> None:
        self.library_panel.show_hits(query, self.library.search(query) if query.strip() else [])

    def _open_hit(self, doc_id: str, page: int, query: str) -> None:
        if self.doc is None or self.doc["id"] != doc_id:
            self.library_panel.select(doc_id)
        self.viewer.find_edit.setText(query)
        self.viewer.find_text(query, at_page=page)
        if page not in self.viewer.matches:  # the words are on the page, but not side by side
            self.viewer.view.go_to(page, [])

    def remove_document(self, doc_id: str) -> None:
        doc = self.library.document(doc_id)
        answer = QMessageBox.question(self, "Remove from library",
                                      f"Forget “{doc['title']}”, its memories and its conversations? "
                                      "The file itself stays where it is.")
        if answer == QMessageBox.StandardButton.Yes:
            if not self._write(lambda: self.library.remove_document(doc_id)):
                return
            if self.doc and self.doc["id"] == doc_id:
                self.doc = None
                self.viewer.show_document(None, [])
                self.conversation.set_document(None, [], None)
                self.conversation.show_messages([])
            self.refresh_library()

    # reading ---------------------------------------------------------------------------------

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.read_files(paths)

    def choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open documents", "", OPEN_FILTER)
        self.read_files(paths)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        files = settings_store.recent_files()
        for path in files:
            self.recent_menu.addAction(path).triggered.connect(lambda _=False, p=path: self.read_files([p]))
        if not files:
            self.recent_menu.addAction("(none yet)").setEnabled(False)

    def read_files(self, paths: list[str], force: bool = False,
                   on_job: Callable[[Job], None] | None = None) -> list[Job]:
        """Queue the readings of ``paths`` (a folder: its documents); ``on_job`` may connect to
        each job's signals before it starts."""
        jobs = []
        for path in paths:
            path = str(Path(path).expanduser())
            if Path(path).is_dir():
                inner = sorted(str(p) for p in Path(path).iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES)
                jobs += self.read_files(inner, force, on_job) if inner else []
                if not inner:
                    self.error(f"{path} holds no PDF, TXT, MD or DOCX files.")
                continue
            settings_store.add_recent(path)
            job = self.engine.read(path, force)
            self._queued_at[job] = self._opened
            name = Path(path).name
            self.library_panel.add_pending(job, name)
            job.started.connect(lambda job=job: self._reading_started(job))
            job.described.connect(lambda info, job=job: self._reading_described(job, info))
            job.progress.connect(lambda done, total, job=job: self._reading_progress(job, done, total))
            job.notice.connect(lambda text, job=job: self._reading_notice(job, text))
            job.finished.connect(lambda report, job=job: self._reading_done(job, report))
            job.failed.connect(lambda message, job=job: self._reading_failed(job, message))
            job.cancelled.connect(lambda message, job=job: self._reading_cancelled(job, message))
            job.confirm.connect(lambda question, job=job: job.answer(self.confirm_long_reading(question)))
            if on_job is not None:
                on_job(job)
            jobs.append(self.engine.start(job))
        return jobs

    def confirm_long_reading(self, question: str) -> bool:
        """Whether the person wants a reading that takes long started now."""
        reply = QMessageBox.question(self, "A long reading", question,
                                     QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        return reply == QMessageBox.StandardButton.Yes

    def read_again(self, doc_id: str) -> None:
        doc = self.library.document(doc_id)
        self.read_files([doc["path"]], force=True)

    def cancel_reading(self) -> None:
        if self.reading is not None:
            self.reading.cancel()
            self.library_panel.progress.cancel.setEnabled(False)
            self.library_panel.progress.detail.setText("cancelling at the next chunk…")

    def _reading_started(self, job: Job) -> None:
        self.reading = job
        name = self.library_panel.pending_name(job)
        self.library_panel.progress.start(name)
        self.library_panel.set_pending(job, name, "reading…")

    def _reading_described(self, job: Job, info: dict) -> None:
        self.library_panel.progress.describe(info)
        self.library_panel.set_pending(job, info["title"], f"{info['pages']} pages · loading the model…")
        # Show what is being read, unless a document was opened since it was queued, a question
        # is being answered, or it is the open document read again (its memory still answers).
        if self._queued_at.get(job) == self._opened and self.asking is None and not job.info.get("force"):
            self.previewing = job
            self._before_preview = self.doc["id"] if self.doc else None
            self.doc = None
            self.viewer.show_document(info, info["texts"])
            self.viewer.set_reading(0)
            self.conversation.set_document(None, [], None)
            self.conversation.show_messages([])
            self.library_panel.clear_selection()  # so that a click on the document shown before opens it
            self.setWindowTitle(f"{info['title']} (reading) — Comma")

    def _reading_progress(self, job: Job, done: int, total: int) -> None:
        text = self.library_panel.progress.update_progress(done, total)
        if self.previewing is job:
            pages = self.viewer.view.source.count if self.viewer.view.source else 0
            self.viewer.set_reading(done * pages // max(total, 1))
        self.library_panel.set_pending(job, self.library_panel.pending_name(job),
                                       f"reading {100 * done // max(total, 1)}% · {text}")

    def _reading_notice(self, job: Job, text: str) -> None:
        self.library_panel.set_pending(job, self.library_panel.pending_name(job), text)
        self.statusBar().showMessage(text[:1].upper() + text[1:])

    def _reading_finished(self, job: Job) -> None:
        self._queued_at.pop(job, None)
        if self.reading is job:
            self.reading = None
            self.library_panel.progress.finish()

    def _reading_done(self, job: Job, report: dict) -> None:
        shown = self.previewing is job
        self._reading_finished(job)
        self.library_panel.remove_pending(job)
        select = report["doc_id"] if shown or self.doc is None or self.doc["id"] == report["doc_id"] else None
        self.refresh_library(select)
        if select and (self.doc is None or self.doc["id"] != select):
            self.open_document(select)
        self.deep_read(report["doc_id"])
        reused = " (already read: its memory was reused)" if report["reused"] else ""
        self.statusBar().showMessage(
            f"Read {report['title']}: {report['pages']} pages, {report['tokens']:,} tokens → memory of "
            f"{report['kept_tokens']:,} tokens, {report['memory_bytes'] / 1e6:.1f} MB, in {report['seconds']:.1f} s"
            f"{reused}")

    # the answering model's reading, in the background ------------------------------------------

    def deep_read(self, doc_id: str) -> Job | None:
        """Queue the answering model's reading of a document (a document it has read finishes at once)."""
        if not answering_expected(self.settings.answering, self.settings.model_path) or doc_id in self.deep_jobs:
            return None
        job = self.engine.deep_read(doc_id)
        self.deep_jobs[doc_id] = job
        started: list[tuple[float, int]] = []

        def progress(done: int, total: int) -> None:
            if not started:
                started.append((time.monotonic(), done))
            t0, done0 = started[0]
            elapsed = time.monotonic() - t0
            rate = (done - done0) / elapsed if elapsed > 5 else 0.0
            left = f", about {max(1, round((total - done) / rate / 60))} min" if rate else ""
            self.library_panel.set_deep(doc_id, f"accurate answers: {100 * done // max(total, 1)}%{left}")

        def ended(state: str | None, message: str = "") -> None:
            self.deep_jobs.pop(doc_id, None)
            self.library_panel.set_deep(doc_id, state)
            if message:
                self.statusBar().showMessage(message)

        def finished(report: dict) -> None:
            if report.get("skipped"):
                return ended(None)
            ended(None, "" if report["reused"] else
                  f"Accurate answers are ready for {report['title']}: the answering model read it in "
                  f"{report['seconds'] / 60:.0f} min.")

        job.started.connect(lambda: self.library_panel.set_deep(doc_id, "accurate answers: starting…"))
        job.progress.connect(progress)
        job.notice.connect(lambda text: self.library_panel.set_deep(doc_id, f"accurate answers: {text}"))
        job.finished.connect(finished)
        job.failed.connect(lambda message: ended(f"accurate answers: not read ({message})"))
        job.cancelled.connect(lambda _: ended("accurate answers: stopped; they resume at the next start"))
        self.library_panel.set_deep(doc_id, "accurate answers: waiting to read in the background")
        return self.engine.start(job)

    def _reading_failed(self, job: Job, message: str) -> None:
        self._end_preview(job)
        self._reading_finished(job)
        name = self.library_panel.pending_name(job) or Path(job.info["path"]).name
        self.library_panel.set_pending(job, name, f"could not read: {message}", failed=True)
        self.error(f"Could not read {name}: {message}")

    def _end_preview(self, job: Job) -> None:
        """A reading that was shown ended without a document (it failed, was cancelled or not
        wanted): the document shown before comes back, or the pane empties."""
        if self.previewing is job:
            self.previewing = None
            self.viewer.show_document(None, [])
            self.setWindowTitle("Comma")
            if self._before_preview is not None and self._before_preview in self.library_panel.doc_ids():
                self.library_panel.select(self._before_preview)
                self.open_document(self._before_preview)

    def _reading_cancelled(self, job: Job, message: str) -> None:
        self._end_preview(job)
        self._reading_finished(job)
        name = self.library_panel.pending_name(job)
        self.library_panel.remove_pending(job)
        self.statusBar().showMessage(f"Reading {name}: {message}." if message.startswith("not started")
                                     else f"Reading {name} cancelled; nothing was saved.")

    # asking ----------------------------------------------------------------------------------

    def ask(self, question: str) -> Job | None:
        if self.doc is None or self.conversation.streaming:
            return None
        job = self.engine.ask(self.doc["id"], question, self.conversation.session_id)
        self.asking = job
        self.conversation.begin_answer(question)
        job.text.connect(self.conversation.append_text)
        job.notice.connect(self.conversation.status.setText)
        job.finished.connect(lambda result, job=job: self._answered(job, result))
        job.failed.connect(lambda message, job=job: self._not_answered(job, message))
        job.cancelled.connect(lambda message, job=job: self._not_answered(job, message, stopped=True))
        return self.engine.start(job)

    def stop_answer(self) -> None:
        if self.asking is not None:
            self.asking.cancel()

    def _answered(self, job: Job, result: dict) -> None:
        self.asking = None
        if self.doc is None or self.doc["id"] != result["doc_id"]:
            return  # the person moved on to another document; the answer is saved in its session
        self.conversation.end_answer(result)
        self.conversation.set_sessions(self.library.sessions(result["doc_id"]), result["session_id"] or None)
        if result.get("not_saved"):
            self.statusBar().showMessage(result["not_saved"][:1].upper() + result["not_saved"][1:])

    def _not_answered(self, job: Job, message: str, stopped: bool = False) -> None:
        self.asking = None
        if self.doc is None or self.doc["id"] != job.info["doc_id"]:
            if not stopped:
                self.error(f"The question “{job.info['question']}” got no answer: {message}")
            return
        self.conversation.fail_answer(message)
        if not stopped:  # a stop the person asked for is not an error
            self.error(message)

    def summarize(self, force: bool = False) -> Job | None:
        if self.doc is None:
            return None
        doc = self.doc
        memories = self.library.memories(doc["id"])
        if not force and self._summary(doc["id"]) is None and \
                not any(self.library.notes(m["id"]) for m in memories):
            self.error("This document was read without section notes, which a summary is made from: turn "
                       "them on in File → Settings, then use Document → Read Again.")
            return None
        job = self.engine.summarize(doc["id"], force)
        self.conversation.summarize_button.setEnabled(False)
        self.conversation.status.setText("Summarising the whole document…")
        job.progress.connect(lambda done, total: self.conversation.status.setText(
            f"Summarising: part {done} of {total}…"))
        job.notice.connect(self.conversation.status.setText)

        def done(result: dict) -> None:
            self.conversation.summarize_button.setEnabled(True)
            if self.doc and self.doc["id"] == result["doc_id"]:
                self.conversation.set_summary({"text": result["summary"], "pages": result["pages"]})
                self.conversation.status.setText(f"Summary ready in {result['seconds']:.1f} s.")

        def failed(message: str) -> None:
            self.conversation.summarize_button.setEnabled(True)
            self.conversation.status.setText("")
            self.error(f"No summary: {message}")

        job.finished.connect(done)
        job.failed.connect(failed)
        return self.engine.start(job)

    # sessions and settings -------------------------------------------------------------------

    def export_session(self, path: str | None = None) -> str | None:
        session_id = self.conversation.session_id
        if session_id is None:
            self.error("There is no saved conversation to export yet: ask a question first.")
            return None
        if path is None:
            title = self.library.session(session_id)["title"]
            safe = "".join(c if c.isalnum() or c in " -_" else "_" for c in title).strip()[:60] or "conversation"
            path, _ = QFileDialog.getSaveFileName(self, "Export conversation", f"{safe}.md", "Markdown (*.md)")
            if not path:
                return None
        try:
            Path(path).write_text(session_markdown(self.library, session_id), encoding="utf-8")
        except OSError as exc:
            self.error(f"Could not write {path}: {exc.strerror or exc}")
            return None
        self.statusBar().showMessage(f"Conversation saved to {path}")
        return path

    def rename_session(self, title: str | None = None) -> None:
        session_id = self.conversation.session_id
        if session_id is None or self.doc is None:
            return
        if title is None:
            title, ok = QInputDialog.getText(self, "Rename conversation", "Title:",
                                             text=self.library.session(session_id)["title"])
            if not ok:
                return
        if title.strip():
            if not self._write(lambda: self.library.rename_session(session_id, title)):
                return
            self.conversation.set_sessions(self.library.sessions(self.doc["id"]), session_id)

    def delete_session(self, confirm: bool = True) -> None:
        session_id = self.conversation.session_id
        if session_id is None or self.doc is None or self.conversation.streaming:
            return
        if confirm and QMessageBox.question(
                self, "Delete conversation",
                f"Delete “{self.library.session(session_id)['title']}” and its messages?"
        ) != QMessageBox.StandardButton.Yes:
            return
        if not self._write(lambda: self.library.remove_session(session_id)):
            return
        self.conversation.set_sessions(self.library.sessions(self.doc["id"]), None)
        self.choose_session(None)

    def edit_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            self.apply_settings(dialog.result_settings())

    def apply_settings(self, new: Settings) -> None:
        try:
            library = Library(new.library_folder())
        except (OSError, CommaError) as exc:
            self.error(f"Cannot use the data folder {new.library_folder()}: {exc}")
            return
        settings_store.save(new)
        self.settings = new
        self.engine.configure(new)
        if library.folder != self.library.folder:
            self.library = library
            self.doc = None
            self.viewer.show_document(None, [])
            self.conversation.set_document(None, [], None)
            self.refresh_library()
        self.statusBar().showMessage("Settings saved.")

    # closing ---------------------------------------------------------------------------------

    def _remember_layout(self) -> None:
        settings_store.remember("splitter", bytes(self.splitter.saveState().toBase64().data()).decode())

    def closeEvent(self, event) -> None:
        self._remember_layout()
        self.engine.shutdown()
        super().closeEvent(event)


KEYS = [
    ("Ctrl+O", "open documents to read"),
    ("Ctrl+F", "find in the document; F3 / Shift+F3: next / previous match"),
    ("Ctrl+L", "go to the question box; Enter asks, Shift+Enter starts a new line"),
    ("Esc", "stop the answer (what was said so far is kept)"),
    ("Ctrl+E", "export the conversation as Markdown"),
    ("Ctrl++ / Ctrl+-", "zoom the pages in / out"),
    ("Tab", "from the library to the document to the conversation"),
    ("F1", "this list"),
]


def _help_text() -> str:
    rows = "".join(f"<tr><td><b>{key}</b>&nbsp;&nbsp;</td><td>{what}</td></tr>" for key, what in KEYS)
    return f"<table>{rows}</table>"


def open_window(path: str | None = None, screenshot: str | None = None, ask: str | None = None,
                summarize: bool = False, while_reading: bool = False) -> int:
    """Open the window (reading ``path`` if given). With ``screenshot``, run offscreen, save a
    picture of the window there and exit (status 1 if the work failed): once the reading ends;
    or, with ``while_reading``, once it is a third done; with ``ask`` or ``summarize``, once that
    question is answered or the summary written after the reading."""
    if screenshot:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    # Missing X libraries or no display: one sentence saying what to install, not Qt's abort.
    if problem := startup_problem():
        print(f"error: {problem}", file=sys.stderr)
        return 2
    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(sys.argv)
    app.setApplicationName("Comma")
    theme.follow_system(app)
    try:
        window = MainWindow()
    except CommaError as exc:  # the library cannot be opened: say why, and how to go on
        print(f"error: {exc}", file=sys.stderr)
        if not screenshot:
            QMessageBox.critical(None, "Comma cannot open its library", str(exc))
        return 2
    window.show()
    status = {"code": 0}

    def shoot() -> None:
        QApplication.processEvents()
        if screenshot is None or not window.grab().save(screenshot):
            print(f"error: could not save the screenshot to {screenshot}", file=sys.stderr)
            status["code"] = 2
        window.close()
        app.quit()

    def ended(failed: bool = False) -> None:
        status["code"] = 1 if failed else 0
        QTimer.singleShot(800, shoot)

    def watch_work(job: Job | None) -> None:
        if job is None:
            ended(True)
            return
        job.finished.connect(lambda _: ended())
        job.failed.connect(lambda _: ended(True))
        job.cancelled.connect(lambda _: ended(True))

    def read(_report: dict) -> None:
        # The document opens when its reading ends; the question or summary follows it.
        QApplication.processEvents()
        watch_work(window.ask(ask) if ask else window.summarize())

    def third(done: int, total: int) -> None:
        if status.get("shot") is None and done * 3 >= total:
            status["shot"] = 1
            QTimer.singleShot(300, shoot)

    def watch(job: Job) -> None:
        if while_reading:
            job.progress.connect(third)
            # A memory that is reused reports no progress: the picture is then of the document read.
            job.finished.connect(lambda _: ended() if status.get("shot") is None else None)
        elif ask or summarize:
            job.finished.connect(lambda report: QTimer.singleShot(200, lambda: read(report)))
        else:
            job.finished.connect(lambda _: ended())
        job.failed.connect(lambda _: ended(True))
        job.cancelled.connect(lambda _: ended(True))

    if path:
        window.read_files([path], on_job=watch if screenshot else None)
    elif screenshot:
        QTimer.singleShot(800, shoot)
    code = app.exec()
    return status["code"] if screenshot else code
