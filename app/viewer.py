"""The document in the middle of the window: pages rendered by pymupdf, scroll, zoom, find, and
the highlighted passage of a cited page.

Every document is shown as pymupdf pages: a PDF as itself, and a text, Markdown or Word file as
its Comma pages (the ~3,000-character pages answers cite) typeset onto A4 pages on demand. So
rendering, finding and highlighting work the same way for all of them. Only the pages in view
are rendered, and a few recent renders are cached, so a 1,000-page PDF opens at once.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path

import pymupdf
from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeySequence, QPainter, QPen, QShortcut
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QScrollArea, QSpinBox, QToolButton, QVBoxLayout, QWidget

from engine.documents.ocr import OcrLine

GAP = 12  # pixels between pages and around them
CACHE_PAGES = 12
A4 = (595.0, 842.0)
TEXT_MARGIN = 56.0

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.;:!?])\s+|\n\s*\n")
_STOP = frozenset("""a an and are as at be by can do does for from has have how i if in is it its may of on or
so that the their there these this to was were what when which who will with you your not no any""".split())


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class PageSource(ABC):
    """Pages to show: their count and size (points), a render, text positions."""

    count = 0

    @abstractmethod
    def page(self, index: int) -> pymupdf.Page: ...

    @abstractmethod
    def size(self, index: int) -> tuple[float, float]: ...

    def text(self, index: int) -> str:
        return self.page(index).get_text()

    def render(self, index: int, zoom: float) -> QImage:
        pix = self.page(index).get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
        return QImage(pix.samples, pix.width, pix.height, pix.stride, QImage.Format.Format_RGB888).copy()

    def find(self, index: int, needle: str) -> list[QRectF]:
        return [QRectF(r.x0, r.y0, r.width, r.height) for r in self.page(index).search_for(needle)]

    def passage(self, index: int, sentence: str) -> list[QRectF]:
        """Rectangles (one per line) of ``sentence``'s words where they occur on the page."""
        wanted = _words(sentence)
        if not wanted:
            return []
        words = self.page(index).get_text("words")
        flat = [(w[:4], w[5], w[6], _words(w[4])) for w in words]
        tokens = [(i, t) for i, (_, _, _, ws) in enumerate(flat) for t in ws]
        head = wanted[: min(3, len(wanted))]
        for k in range(len(tokens) - len(head) + 1):
            if [t for _, t in tokens[k:k + len(head)]] == head:
                chosen = {i for i, _ in tokens[k:k + len(wanted)]}
                lines: dict[tuple[int, int], QRectF] = {}
                for i in sorted(chosen):
                    (x0, y0, x1, y1), block, line, _ = flat[i]
                    rect = QRectF(x0, y0, x1 - x0, y1 - y0)
                    key = (block, line)
                    lines[key] = lines[key].united(rect) if key in lines else rect
                return list(lines.values())
        return []

    def close(self) -> None:  # noqa: B027  (an optional hook: most sources hold nothing open)
        return None


class PdfSource(PageSource):
    """A PDF as itself. Its scanned pages get the lines OCR read laid over them as invisible
    text (in memory only; the file is never written), so find and highlight work there too."""

    def __init__(self, path: str | Path, ocr_lines: dict[int, list[OcrLine]] | None = None):
        self.doc = pymupdf.open(str(path))
        self.count = self.doc.page_count
        self._sizes = [(p.rect.width, p.rect.height) for p in self.doc.pages()]
        self._ocr = dict(ocr_lines or {})  # 1-based page -> lines, until laid over the page

    def page(self, index: int) -> pymupdf.Page:
        page = self.doc[index]
        if lines := self._ocr.pop(index + 1, None):
            _lay_invisible_text(page, lines)
        return page

    def size(self, index: int) -> tuple[float, float]:
        return self._sizes[index]

    def close(self) -> None:
        self.doc.close()


def _lay_invisible_text(page: pymupdf.Page, lines: list[OcrLine]) -> None:
    """Each line's text, invisible, stretched over the box where OCR saw it."""
    for line in lines:
        x0, y0, x1, y1 = line.rect
        size = max(1.0, (y1 - y0) * 0.8)
        width = pymupdf.get_text_length(line.text, fontname="helv", fontsize=size)
        origin = pymupdf.Point(x0, y1 - (y1 - y0) * 0.2)
        stretch = pymupdf.Matrix((x1 - x0) / width if width else 1.0, 1.0)
        page.insert_text(origin, line.text, fontsize=size, fontname="helv", render_mode=3, morph=(origin, stretch))


class TextSource(PageSource):
    """Comma's pages of a text document, each typeset on an A4 page when first shown."""

    def __init__(self, pages: list[str], title: str = ""):
        self.pages = pages
        self.count = len(pages)
        self.title = title
        self._docs: dict[int, pymupdf.Document] = {}

    def page(self, index: int) -> pymupdf.Page:
        if index not in self._docs:
            doc = pymupdf.open()
            page = doc.new_page(width=A4[0], height=A4[1])
            rect = pymupdf.Rect(TEXT_MARGIN, TEXT_MARGIN, A4[0] - TEXT_MARGIN, A4[1] - TEXT_MARGIN)
            page.insert_text((TEXT_MARGIN, TEXT_MARGIN / 2 + 6), f"{self.title[:80]}  ·  page {index + 1}",
                             fontsize=7, color=(0.55, 0.55, 0.55))
            text = self.pages[index]
            for size in (10, 9, 8, 7, 6, 5, 4):
                if page.insert_textbox(rect, text, fontsize=size, fontname="helv") >= 0:
                    break
                doc.close()  # did not fit: start the page again at a smaller size
                doc = pymupdf.open()
                page = doc.new_page(width=A4[0], height=A4[1])
            self._docs[index] = doc
        return self._docs[index][0]

    def size(self, index: int) -> tuple[float, float]:
        return A4

    def text(self, index: int) -> str:
        return self.pages[index]

    def close(self) -> None:
        for doc in self._docs.values():
            doc.close()
        self._docs.clear()


def best_sentence(page_text: str, answer: str) -> str:
    """The sentence of the page that shares the most content words with ``answer``."""
    wanted = {w for w in _words(answer) if w not in _STOP and len(w) > 2}
    best, best_score = "", 0.0
    for sentence in _SENTENCE_END.split(page_text):
        words = _words(sentence)
        if len(words) < 3:
            continue
        score = len(wanted & set(words)) / (len(words) ** 0.5)
        if score > best_score:
            best, best_score = sentence, score
    if not best:  # nothing in common: the page's first sentence
        best = next((s for s in _SENTENCE_END.split(page_text) if len(_words(s)) >= 3), "")
    return " ".join(best.split()[:40])


class PageCanvas(QWidget):
    """Paints the pages in view, one under another, with highlights."""

    def __init__(self, view: PageView):
        super().__init__()
        self.view = view
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

    def paintEvent(self, event) -> None:
        view = self.view
        painter = QPainter(self)
        painter.fillRect(event.rect(), QColor("#5b5f66"))
        source = view.source
        if source is None:
            painter.setPen(QColor("#e8e8e8"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, view.placeholder)
            return
        top, bottom = event.rect().top(), event.rect().bottom()
        for index in range(source.count):
            rect = view.page_rect(index)
            if rect.bottom() < top:
                continue
            if rect.top() > bottom:
                break
            painter.drawImage(rect.topLeft(), view.image(index))
            marks = view.marks.get(index, [])
            if marks:
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(QColor(255, 214, 0, 110))
                z = view.zoom
                for r in marks:
                    painter.drawRect(QRectF(rect.left() + r.left() * z - 1, rect.top() + r.top() * z - 1,
                                            r.width() * z + 2, r.height() * z + 2))
            if index == view.cited_page:
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.setPen(QPen(QColor("#f0a500"), 3))
                painter.drawRect(rect.adjusted(-2, -2, 2, 2))
            if view.read_upto is not None and index >= view.read_upto:
                # Pages the reading has not reached yet: veiled, so how far it has got shows.
                painter.fillRect(rect, QColor(91, 95, 102, 120))
                if index == view.read_upto:
                    painter.setPen(QColor("#ffffff"))
                    painter.drawText(rect.adjusted(0, 12, 0, 0), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop,
                                     "not read yet")


class PageView(QScrollArea):
    pageChanged = Signal(int)  # 1-based page at the middle of the view

    def __init__(self):
        super().__init__()
        self.source: PageSource | None = None
        self.zoom = 1.0
        self.fit_width = True
        self.placeholder = "Drop a PDF, TXT, MD or DOCX file here, or use File → Open."
        self.marks: dict[int, list[QRectF]] = {}
        self.cited_page: int | None = None  # 0-based
        self.read_upto: int | None = None  # while a reading goes on: how many pages it has read
        self._tops: list[int] = []
        self._cache: OrderedDict[tuple[int, float], QImage] = OrderedDict()
        self.canvas = PageCanvas(self)
        self.setWidget(self.canvas)
        self.setWidgetResizable(False)
        self.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.verticalScrollBar().valueChanged.connect(lambda _: self.pageChanged.emit(self.current_page()))
        self._layout()

    def set_source(self, source: PageSource | None) -> None:
        if self.source is not None:
            self.source.close()
        self.source = source
        self.marks, self.cited_page, self.read_upto = {}, None, None
        self._cache.clear()
        self._layout()
        self.verticalScrollBar().setValue(0)
        self.pageChanged.emit(self.current_page())

    def set_zoom(self, zoom: float, fit_width: bool = False) -> None:
        page = self.current_page()
        self.fit_width = fit_width
        self.zoom = min(max(zoom, 0.2), 5.0)
        self._cache.clear()
        self._layout()
        self.go_to(page)

    def _fit_zoom(self) -> float:
        if self.source is None or not self.source.count:
            return 1.0
        widest = max(self.source.size(i)[0] for i in range(min(self.source.count, 50)))
        return max(0.2, (self.viewport().width() - 2 * GAP) / widest)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.fit_width and self.source is not None:
            zoom = self._fit_zoom()
            if abs(zoom - self.zoom) > 0.01:
                page = self.current_page()
                self.zoom = zoom
                self._cache.clear()
                self._layout()
                self.go_to(page)
        self._layout()

    def _layout(self) -> None:
        if self.source is None or not self.source.count:
            self._tops = []
            self.canvas.resize(self.viewport().size())
            self.canvas.update()
            return
        if self.fit_width:
            self.zoom = self._fit_zoom()
        y, tops, width = GAP, [], 0
        for i in range(self.source.count):
            w, h = self.source.size(i)
            tops.append(y)
            y += int(h * self.zoom) + GAP
            width = max(width, int(w * self.zoom))
        self._tops = tops
        self.canvas.resize(QSize(max(width + 2 * GAP, self.viewport().width()), y))
        self.canvas.update()

    def page_rect(self, index: int) -> QRectF:
        assert self.source is not None  # pages are laid out only for a document shown
        w, h = self.source.size(index)
        left = (self.canvas.width() - w * self.zoom) / 2
        return QRectF(left, self._tops[index], int(w * self.zoom), int(h * self.zoom))

    def image(self, index: int) -> QImage:
        key = (index, round(self.zoom, 3))
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            assert self.source is not None
            self._cache[key] = self.source.render(index, self.zoom)
            while len(self._cache) > CACHE_PAGES:
                self._cache.popitem(last=False)
        return self._cache[key]

    def current_page(self) -> int:
        if not self._tops:
            return 0
        middle = self.verticalScrollBar().value() + self.viewport().height() // 2
        index = 0
        for i, top in enumerate(self._tops):
            if top > middle:
                break
            index = i
        return index + 1

    def go_to(self, page: int, marks: list[QRectF] | None = None) -> None:
        """Scroll to ``page`` (1-based); with marks, to the first of them, and show them."""
        if self.source is None or not self.source.count:
            return
        index = min(max(page, 1), self.source.count) - 1
        if marks is not None:
            self.marks = {index: marks} if marks else {}
        y = self._tops[index] - GAP
        if marks:
            first = min(r.top() for r in marks)
            y = max(self._tops[index] + int(first * self.zoom) - self.viewport().height() // 3, y)
            if index + 1 < len(self._tops):
                # A passage low on its page: the view's middle stays on that page, so the page
                # box names the page cited, and the passage is still in view below the middle.
                y = min(y, self._tops[index + 1] - self.viewport().height() // 2 - 1)
        self.verticalScrollBar().setValue(y)
        self.canvas.update()
        self.pageChanged.emit(self.current_page())


class Viewer(QWidget):
    """Toolbar (page, zoom, find) over the page view."""

    def __init__(self):
        super().__init__()
        self.view = PageView()
        self.texts: list[str] = []
        self._matches: list[int] = []
        self._match = -1
        self._term = ""

        self.page = QSpinBox()
        self.page.setRange(0, 0)
        self.page.setPrefix("Page ")
        self.page.setKeyboardTracking(False)
        self.page.valueChanged.connect(self._page_chosen)
        self.pages_label = QLabel("of 0")
        self.view.pageChanged.connect(self._page_changed)

        def button(text, tip, slot):
            b = QToolButton()
            b.setText(text)
            b.setToolTip(tip)
            b.clicked.connect(slot)
            return b

        self.find_edit = QLineEdit()
        self.find_edit.setPlaceholderText("Find in document")
        self.find_edit.setClearButtonEnabled(True)
        self.find_edit.returnPressed.connect(lambda: self.find_text(self.find_edit.text()))
        self.find_label = QLabel("")
        self.reading_label = QLabel("")
        self.controls = [
            self.page,
            button("−", "Zoom out (Ctrl+-)", lambda: self.view.set_zoom(self.view.zoom / 1.2)),
            button("+", "Zoom in (Ctrl++)", lambda: self.view.set_zoom(self.view.zoom * 1.2)),
            button("Fit", "Fit the width", lambda: self.view.set_zoom(1.0, fit_width=True)),
            self.find_edit,
            button("▲", "Previous match (Shift+F3)", lambda: self.next_match(-1)),
            button("▼", "Next match (F3)", lambda: self.next_match(1)),
        ]
        page, zoom_out, zoom_in, fit, find, previous, following = self.controls
        bar = QHBoxLayout()
        bar.setContentsMargins(6, 4, 6, 4)
        bar.addWidget(page)
        bar.addWidget(self.pages_label)
        bar.addSpacing(12)
        for b in (zoom_out, zoom_in, fit):
            bar.addWidget(b)
        bar.addWidget(self.reading_label)
        bar.addStretch(1)
        bar.addWidget(find, 2)
        bar.addWidget(previous)
        bar.addWidget(following)
        bar.addWidget(self.find_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)
        QShortcut(QKeySequence.StandardKey.ZoomIn, self, lambda: self.view.set_zoom(self.view.zoom * 1.2))
        QShortcut(QKeySequence.StandardKey.ZoomOut, self, lambda: self.view.set_zoom(self.view.zoom / 1.2))
        QShortcut(QKeySequence.StandardKey.FindNext, self, lambda: self.next_match(1))
        QShortcut(QKeySequence.StandardKey.FindPrevious, self, lambda: self.next_match(-1))
        self._enable(False)

    def _enable(self, has_pages: bool) -> None:
        """Page, zoom and find act on pages: without a document they are off, not "Page 0 of 0"."""
        for control in self.controls:
            control.setEnabled(has_pages)
        self.pages_label.setVisible(has_pages)
        # Shown instead of the value at the range's minimum: "Page –", not "Page 0", when empty.
        self.page.setSpecialValueText("" if has_pages else "Page –")

    def show_document(self, doc: dict | None, texts: list[str],
                      ocr_lines: dict[int, list[OcrLine]] | None = None) -> None:
        """Show a library document: its PDF when the file is there (with the lines OCR read on
        its scanned pages), else its page text."""
        self.texts = texts
        self._matches, self._match, self._term = [], -1, ""
        self.find_label.setText("")
        source: PageSource | None = None
        if doc is not None:
            path = Path(doc["path"])
            if doc["kind"] == "pdf" and path.is_file():
                try:
                    source = PdfSource(path, ocr_lines)
                except Exception:  # moved or damaged since reading: show the text instead
                    source = None
            if source is None and texts:
                source = TextSource(texts, doc["title"])
            if source is None:
                self.view.placeholder = f"{doc['title']}: the file is gone and the library has no page text."
        self.view.set_source(source)
        self.reading_label.setText("")
        count = source.count if source else 0
        self.page.setRange(1 if count else 0, count)
        self.pages_label.setText(f"of {count}")
        self._enable(count > 0)

    def set_reading(self, pages_read: int | None) -> None:
        """Mark how far a reading of the shown document has got (None: it is not being read)."""
        self.view.read_upto = pages_read
        count = self.view.source.count if self.view.source else 0
        self.reading_label.setText("" if pages_read is None else f"read to p. {min(pages_read, count)} of {count}")
        self.view.canvas.update()

    def _page_chosen(self, page: int) -> None:
        if page != self.view.current_page():
            self.view.go_to(page)

    def _page_changed(self, page: int) -> None:
        self.page.blockSignals(True)
        self.page.setValue(page)
        self.page.blockSignals(False)

    def page_text(self, page: int) -> str:
        if 1 <= page <= len(self.texts):
            return self.texts[page - 1]
        source = self.view.source
        return source.text(page - 1) if source and 1 <= page <= source.count else ""

    def show_citation(self, page: int, answer: str) -> None:
        """Jump to a cited page and highlight the passage closest to the answer."""
        source = self.view.source
        if source is None:
            return
        index = min(max(page, 1), source.count) - 1
        sentence = best_sentence(self.page_text(index + 1), answer)
        marks = source.passage(index, sentence) if sentence else []
        self.view.cited_page = index
        self.view.go_to(index + 1, marks)

    def find_text(self, term: str, at_page: int | None = None) -> int:
        """Pages holding ``term`` (case-insensitive); shows the first at or after ``at_page``
        (default: the current page)."""
        term = " ".join(term.split())
        self._term = term
        source = self.view.source
        if not term or source is None:
            self._matches = []
            self.find_label.setText("")
            self.view.marks = {}
            self.view.canvas.update()
            return 0
        needle = term.casefold()
        self._matches = [p for p in range(1, source.count + 1)
                         if needle in " ".join(self.page_text(p).split()).casefold()]
        if not self._matches:
            self.find_label.setText("not found")
            return 0
        current = at_page or self.view.current_page()
        self._match = next((i for i, p in enumerate(self._matches) if p >= current), 0)
        self._show_match()
        return len(self._matches)

    @property
    def matches(self) -> list[int]:
        """The pages the last find found, in order."""
        return list(self._matches)

    def next_match(self, step: int) -> None:
        if not self._matches:
            return
        self._match = (self._match + step) % len(self._matches)
        self._show_match()

    def _show_match(self) -> None:
        page = self._matches[self._match]
        source = self.view.source
        self.view.go_to(page, source.find(page - 1, self._term) if source is not None else None)
        self.find_label.setText(f"page {page} · {self._match + 1} of {len(self._matches)} pages")
