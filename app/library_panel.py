"""The left of the window: the library's documents with their status, readings in progress or
queued or failed, full-text search over every page read, and the reading progress bar."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app import theme

DOC_ROLE = Qt.ItemDataRole.UserRole
PENDING_ROLE = Qt.ItemDataRole.UserRole + 1
HIT_ROLE = Qt.ItemDataRole.UserRole + 2


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class ElidedLabel(QLabel):
    """One line of plain text cut with "…" to the width it is given, the whole in its tooltip: a
    long title or progress line must not widen the pane the person sized (it asks for no width)."""

    def __init__(self):
        super().__init__()
        self.setTextFormat(Qt.TextFormat.PlainText)  # titles and file names come from documents
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self._full = ""

    def setText(self, text: str) -> None:  # keeps the whole text too
        self._full = text
        self.setToolTip(text)
        self._elide()

    def text(self) -> str:  # what was set, not the cut line shown
        return self._full

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        super().setText(self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, max(self.width(), 20)))


class ReadingProgress(QWidget):
    """A bar with pages, tokens, tokens/s and ETA for the reading in progress, and Cancel."""

    cancelRequested = Signal()

    def __init__(self):
        super().__init__()
        self.title = ElidedLabel()
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.detail = ElidedLabel()
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(self.cancelRequested)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.addWidget(self.title)
        layout.addLayout(row)
        layout.addWidget(self.detail)
        self.hide()

    def start(self, name: str) -> None:
        self.pages = 0
        self._t0: float | None = None
        self._done0 = 0
        self.title.setText(f"Reading {name}")
        self.bar.setRange(0, 0)  # busy until the first chunk reports
        self.detail.setText("opening the file and loading the model…")
        self.cancel.setEnabled(True)
        self.show()

    def describe(self, info: dict) -> None:
        self.pages = info.get("pages", 0)
        self.title.setText(f"Reading {info.get('title', '')}")

    def update_progress(self, done: int, total: int) -> str:
        now = time.monotonic()
        if self._t0 is None:
            self._t0, self._done0 = now, done
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(done)
        elapsed = now - self._t0
        rate = (done - self._done0) / elapsed if elapsed > 0.5 else 0.0
        parts = []
        if self.pages:
            parts.append(f"page ~{max(1, round(done / max(total, 1) * self.pages))} of {self.pages}")
        parts.append(f"{done:,} / {total:,} tokens")
        if rate:
            parts.append(f"{rate:,.0f} tokens/s")
            parts.append(f"ETA {_duration((total - done) / rate)}")
        text = " · ".join(parts)
        self.detail.setText(text)
        self.bar.setFormat(f"{100 * done // max(total, 1)}%")
        return text

    def finish(self) -> None:
        self.hide()


class LibraryPanel(QWidget):
    documentSelected = Signal(str)
    hitChosen = Signal(str, int, str)  # doc_id, page, query
    cancelRequested = Signal(object)  # the pending key (a job)
    dismissRequested = Signal(object)
    readAgainRequested = Signal(str)
    removeRequested = Signal(str)

    def __init__(self):
        super().__init__()
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search all documents")
        self.search_edit.setClearButtonEnabled(True)
        self.hits = QListWidget()
        self.hits.setWordWrap(True)
        self.hits.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.hits.hide()
        self.hits.itemActivated.connect(self._hit_activated)
        self.hits.itemClicked.connect(self._hit_activated)
        self.list = QListWidget()
        self.list.setWordWrap(True)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setAlternatingRowColors(True)
        self.list.currentItemChanged.connect(self._current_changed)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._menu)
        self.progress = ReadingProgress()
        heading = QLabel("<b>Library</b>")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(heading)
        layout.addWidget(self.search_edit)
        layout.addWidget(self.hits, 1)
        layout.addWidget(self.list, 3)
        layout.addWidget(self.progress)
        self._pending: dict[object, QListWidgetItem] = {}
        self._deep: dict[str, str] = {}  # doc id → how far the answering model's background read is

    # documents -----------------------------------------------------------------------------

    def set_documents(self, docs: list[dict], select: str | None = None) -> None:
        current = select or self.current_doc()
        self.list.blockSignals(True)
        for row in reversed(range(self.list.count())):
            if self.list.item(row).data(PENDING_ROLE) is None:
                self.list.takeItem(row)
        chosen = None
        for d in reversed(docs):  # newest first, after the pending readings
            memories = d.get("memories", [])
            if memories:
                m = memories[-1]
                state = f"ready · {m['kept_tokens']:,} of {m['document_tokens']:,} tokens kept"
            else:
                state = "not read with this library's models"
            item = QListWidgetItem()
            item.setData(DOC_ROLE, d["id"])
            item.setData(Qt.ItemDataRole.UserRole + 4, f"{d['title']}\n{d['pages']} page{'s' * (d['pages'] != 1)} · {state}")
            self._label(item)
            # Memories of every model that read the document stay; the tooltip names them, so a
            # document read with another model than the one chosen now is not a mystery.
            models = sorted({m["model_name"] for m in memories})
            item.setToolTip(d["path"] + (f"\nread by: {', '.join(models)}" if models else ""))
            self.list.addItem(item)
            if d["id"] == current:
                chosen = item
        if chosen is not None:
            self.list.setCurrentItem(chosen)
        self.list.blockSignals(False)
        if select and chosen is not None:
            self.documentSelected.emit(select)

    def _label(self, item: QListWidgetItem) -> None:
        deep = self._deep.get(item.data(DOC_ROLE))
        item.setText(item.data(Qt.ItemDataRole.UserRole + 4) + (f"\n{deep}" if deep else ""))

    def set_deep(self, doc_id: str, state: str | None) -> None:
        """Show (or, with None, clear) how far the answering model's reading of a document is."""
        if state is None:
            self._deep.pop(doc_id, None)
        else:
            self._deep[doc_id] = state
        for row in range(self.list.count()):
            if self.list.item(row).data(DOC_ROLE) == doc_id:
                self._label(self.list.item(row))

    def deep_state(self, doc_id: str) -> str | None:
        return self._deep.get(doc_id)

    def current_doc(self) -> str | None:
        item = self.list.currentItem()
        return item.data(DOC_ROLE) if item is not None else None

    def clear_selection(self) -> None:
        """No document chosen (another thing is shown); a click on any then opens it."""
        self.list.blockSignals(True)
        self.list.setCurrentRow(-1)
        self.list.blockSignals(False)

    def select(self, doc_id: str) -> bool:
        for row in range(self.list.count()):
            if self.list.item(row).data(DOC_ROLE) == doc_id:
                self.list.setCurrentRow(row)
                return True
        return False

    def _current_changed(self, item, _previous) -> None:
        if item is not None and item.data(DOC_ROLE):
            self.documentSelected.emit(item.data(DOC_ROLE))

    def doc_ids(self) -> list[str]:
        return [self.list.item(r).data(DOC_ROLE) for r in range(self.list.count()) if self.list.item(r).data(DOC_ROLE)]

    # readings in progress ----------------------------------------------------------------------

    def add_pending(self, key: object, name: str) -> None:
        item = QListWidgetItem()
        item.setData(PENDING_ROLE, key)
        self._pending[key] = item
        self.list.insertItem(len(self._pending) - 1, item)
        self.set_pending(key, name, "queued")

    def set_pending(self, key: object, name: str, state: str, failed: bool = False) -> None:
        item = self._pending.get(key)
        if item is None:
            return
        item.setText(f"{name}\n{state}")
        item.setData(Qt.ItemDataRole.UserRole + 3, name)
        item.setForeground(theme.status_colour(self.palette(), failed))
        item.setToolTip(state)

    def pending_name(self, key: object) -> str:
        item = self._pending.get(key)
        return item.data(Qt.ItemDataRole.UserRole + 3) if item is not None else ""

    def remove_pending(self, key: object) -> None:
        item = self._pending.pop(key, None)
        if item is not None:
            self.list.takeItem(self.list.row(item))

    def pending_texts(self) -> list[str]:
        return [item.text() for item in self._pending.values()]

    def _menu(self, point) -> None:
        item = self.list.itemAt(point)
        if item is None:
            return
        menu = QMenu(self)
        key, doc_id = item.data(PENDING_ROLE), item.data(DOC_ROLE)
        if key is not None:
            failed = getattr(key, "state", "") == "failed"
            action = QAction("Dismiss" if failed else "Cancel reading", menu)
            signal = self.dismissRequested if failed else self.cancelRequested
            action.triggered.connect(lambda: signal.emit(key))
            menu.addAction(action)
        elif doc_id:
            again = QAction("Read again", menu)
            again.triggered.connect(lambda: self.readAgainRequested.emit(doc_id))
            remove = QAction("Remove from library…", menu)
            remove.triggered.connect(lambda: self.removeRequested.emit(doc_id))
            menu.addActions([again, remove])
        menu.popup(self.list.viewport().mapToGlobal(point))

    # search --------------------------------------------------------------------------------

    def show_hits(self, query: str, hits: list[dict]) -> None:
        self.hits.clear()
        if not query.strip():
            self.hits.hide()
            return
        if not hits:
            self.hits.addItem(QListWidgetItem(f"No page holds “{query}”."))
        for h in hits:
            item = QListWidgetItem(f"p. {h['page']} · {h['title']}\n{' '.join(h['snippet'].split())}")
            item.setToolTip(h["title"])
            item.setData(HIT_ROLE, (h["doc_id"], h["page"], query))
            self.hits.addItem(item)
        self.hits.show()

    def _hit_activated(self, item) -> None:
        hit = item.data(HIT_ROLE)
        if hit:
            self.hitChosen.emit(*hit)
