"""A first, minimal window: the library's documents and a drop target that reads a document.

The full desktop application (viewer, conversation, sessions) comes later; this window already
follows the rule it will keep: reading runs in a worker thread and reports by signals.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, QThread, Signal
from PySide6.QtWidgets import (QApplication, QLabel, QListWidget, QMainWindow, QProgressBar, QVBoxLayout,
                               QWidget)

from app.actions import Comma
from engine.errors import CommaError


class ReadWorker(QObject):
    progress = Signal(int, int)
    finished = Signal(dict)
    failed = Signal(str)

    def __init__(self, comma: Comma, path: str):
        super().__init__()
        self.comma, self.path = comma, path

    def run(self) -> None:
        try:
            self.finished.emit(self.comma.ingest(self.path, progress=self.progress.emit))
        except CommaError as exc:
            self.failed.emit(str(exc))


class MainWindow(QMainWindow):
    def __init__(self, comma: Comma):
        super().__init__()
        self.comma = comma
        self.setWindowTitle("Comma")
        self.setAcceptDrops(True)
        self.status = QLabel("Drop a PDF, TXT, MD or DOCX file here to read it.")
        self.bar = QProgressBar()
        self.bar.hide()
        self.documents = QListWidget()
        layout = QVBoxLayout()
        for w in (self.status, self.bar, self.documents):
            layout.addWidget(w)
        central = QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)
        self.resize(720, 480)
        self.refresh()

    def refresh(self) -> None:
        self.documents.clear()
        for d in self.comma.list():
            kept = ", ".join(f"{m['policy_key']}: {m['kept_tokens']} tokens" for m in d["memories"])
            self.documents.addItem(f"{d['title']}  ({d['pages']} pages)  {kept or 'not read'}")

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        for url in event.mimeData().urls():
            self.read(url.toLocalFile())

    def read(self, path: str) -> None:
        self.status.setText(f"Reading {path} …")
        self.bar.show()
        self.thread = QThread()
        self.worker = ReadWorker(self.comma, path)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.progress.connect(lambda done, total: (self.bar.setMaximum(total), self.bar.setValue(done)))
        self.worker.finished.connect(self._read_done)
        self.worker.failed.connect(self._read_failed)
        for signal in (self.worker.finished, self.worker.failed):
            signal.connect(self.thread.quit)
        self.thread.start()

    def _read_done(self, report: dict) -> None:
        self.bar.hide()
        self.status.setText(f"Read {report['title']}: {report['tokens']} tokens, memory of "
                            f"{report['kept_tokens']} tokens.")
        self.refresh()

    def _read_failed(self, message: str) -> None:
        self.bar.hide()
        self.status.setText(f"Could not read it: {message}")


def open_window(path: str | None = None) -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    window = MainWindow(Comma())
    window.show()
    if path:
        window.read(path)
    return app.exec()
