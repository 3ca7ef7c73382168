"""The right of the window: the conversation about the open document.

Its saved sessions (newest first, or a new one), the document's summary, the questions and
answers with the pages each answer drew on as links, and the question box with Ask / Stop.
The panel only shows and asks; the window runs the model work and feeds the results back.

Answers (and the summary) are the model's Markdown, rendered by Qt's own importer in GitHub's
dialect; questions, snippets and section titles are inserted as plain text, never parsed. Each
turn is a frame of the transcript's document, so a streaming answer re-renders only its own
frame, and at most every RENDER_INTERVAL_MS however fast its pieces arrive.
"""

from __future__ import annotations

import html
import re

from PySide6.QtCore import QEvent, QPoint, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QPalette,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
    QTextFormat,
    QTextFrame,
    QTextFrameFormat,
)
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QStyle,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.pipeline.asking import citation

NEW_SESSION = "New conversation"
# Raw HTML in an answer stays text: the model repeats what documents say, and a document's markup
# must not become the window's.
MARKDOWN = QTextDocument.MarkdownFeature(QTextDocument.MarkdownFeature.MarkdownDialectGitHub.value |
                                         QTextDocument.MarkdownFeature.MarkdownNoHTML.value)
RENDER_INTERVAL_MS = 50  # a streaming answer is re-rendered at most this often, not per token
MESSAGE = QTextFormat.Property.UserProperty  # a turn's frame: the index of its message
ROLE = QTextFormat.Property.UserProperty + 1  # and its role, "user" or "assistant"


def _when(timestamp: str | None) -> str:
    return (timestamp or "")[:16].replace("T", " ")


def _mix(a: QColor, b: QColor, share: float) -> QColor:
    """`share` of b over a: a tint that keeps the palette's contrast, light or dark."""
    pairs = ((a.redF(), b.redF()), (a.greenF(), b.greenF()), (a.blueF(), b.blueF()))
    return QColor.fromRgbF(*(x + (y - x) * share for x, y in pairs))


class QuestionBox(QPlainTextEdit):
    """Enter asks; Shift+Enter starts a new line."""

    submitted = Signal()

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and \
                not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class Transcript(QTextBrowser):
    """A rich text view that loads nothing a rendered answer names (an image's path comes from the
    model, so from the documents) and says when its palette changes, so colours can follow it."""

    paletteChanged = Signal()

    def loadResource(self, type: int, name: QUrl | str) -> object:
        # Qt reads a local file itself when this gives nothing, so a placeholder is given instead
        return self.style().standardPixmap(QStyle.StandardPixmap.SP_FileIcon)

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            self.paletteChanged.emit()


class ConversationPanel(QWidget):
    askRequested = Signal(str)
    stopRequested = Signal()
    sessionChosen = Signal(object)  # a session id, or None for a new conversation
    summarizeRequested = Signal()
    exportRequested = Signal()
    renameRequested = Signal()
    deleteRequested = Signal()
    citationClicked = Signal(int, str)  # page, the answer that cited it

    def __init__(self):
        super().__init__()
        self.title = QLabel("<b>No document open</b>")
        self.title.setWordWrap(True)
        self.sessions = QComboBox()
        self.sessions.setToolTip("Saved conversations about this document, the most recent first")
        self.sessions.activated.connect(self._session_activated)
        self.summarize_button = QPushButton("Summarize")
        self.summarize_button.setToolTip("A summary of the whole document, from the notes taken while reading")
        self.summarize_button.clicked.connect(self.summarizeRequested)
        self.export_button = QToolButton()
        self.export_button.setText("Export…")
        self.export_button.setToolTip("Save this conversation as Markdown (the arrow: rename or delete it)")
        self.export_button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        self.export_button.clicked.connect(self.exportRequested)
        menu = QMenu(self.export_button)
        menu.addAction("Export as Markdown…", lambda: self.exportRequested.emit())
        menu.addAction("Rename…", lambda: self.renameRequested.emit())
        menu.addAction("Delete…", lambda: self.deleteRequested.emit())
        self.export_button.setMenu(menu)
        self.summary = Transcript()
        self.summary.setOpenLinks(False)
        self.summary.anchorClicked.connect(self._anchor)
        self.summary.setMaximumHeight(150)
        self.summary.hide()
        self.transcript = Transcript()
        self.transcript.setOpenLinks(False)
        self.transcript.anchorClicked.connect(self._anchor)
        self.transcript.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.transcript.customContextMenuRequested.connect(self._context_menu)
        self.question = QuestionBox()
        self.question.setPlaceholderText("Ask about the document (Enter to ask, Shift+Enter for a new line)")
        self.question.setMaximumHeight(72)
        self.question.submitted.connect(self._ask)
        self.ask_button = QPushButton("Ask")
        self.ask_button.setDefault(True)
        self.ask_button.clicked.connect(self._ask)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stopRequested)
        self.stop_button.hide()
        self.status = QLabel("")
        self.status.setTextFormat(Qt.TextFormat.PlainText)  # it quotes reasons that name files
        self.status.setWordWrap(True)

        top = QHBoxLayout()
        top.addWidget(self.sessions, 1)
        top.addWidget(self.summarize_button)
        top.addWidget(self.export_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.question, 1)
        buttons = QVBoxLayout()
        buttons.addWidget(self.ask_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        bottom.addLayout(buttons)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.title)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addWidget(self.transcript, 1)
        layout.addWidget(self.status)
        layout.addLayout(bottom)

        self.session_id: str | None = None
        self.messages: list[dict] = []
        self._turns: list[QTextFrame] = []  # the transcript's frame of each message
        self._streaming = False
        self._summary: dict | None = None
        # Pieces arrive per token; the streaming answer is rendered when this fires, once per
        # interval however many pieces came in it.
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render_streaming)
        self.set_document(None, [], None)
        # connected last: the colours are the palette's, so a new palette (dark mode) redraws them
        self.transcript.paletteChanged.connect(self._render)
        self.summary.paletteChanged.connect(lambda: self.set_summary(self._summary))

    # what is shown ----------------------------------------------------------------------------

    def set_document(self, doc: dict | None, sessions: list[dict], summary: dict | None) -> None:
        if self._streaming:  # an answer about the previous document goes on into its session
            self._stop_streaming()
            self._idle()
        self.doc = doc
        self.title.setText(f"<b>{html.escape(doc['title'])}</b>" if doc else "<b>No document open</b>")
        for w in (self.sessions, self.summarize_button, self.question, self.ask_button):
            w.setEnabled(doc is not None and not self._streaming)
        self.set_sessions(sessions, sessions[0]["id"] if sessions else None)
        self.set_summary(summary)
        self.status.setText("")

    def set_sessions(self, sessions: list[dict], current: str | None) -> None:
        self.sessions.blockSignals(True)
        self.sessions.clear()
        self.sessions.addItem(NEW_SESSION, None)
        for s in sessions:
            turns = s.get("messages", 0) // 2
            self.sessions.addItem(f"{s['title']}  ·  {_when(s.get('updated') or s['created'])}  ·  "
                                  f"{turns} question{'s' * (turns != 1)}", s["id"])
        index = self.sessions.findData(current) if current else 0
        self.sessions.setCurrentIndex(max(index, 0))
        self.sessions.blockSignals(False)
        self.session_id = current if index > 0 else None
        self.export_button.setEnabled(self.session_id is not None)

    def _session_activated(self, index: int) -> None:
        self.session_id = self.sessions.itemData(index)
        self.export_button.setEnabled(self.session_id is not None)
        self.sessionChosen.emit(self.session_id)

    def set_summary(self, summary: dict | None) -> None:
        self._summary = summary
        self.summary.clear()
        if not summary:
            self.summary.hide()
            return
        cursor = QTextCursor(self.summary.document())
        cursor.insertText("Summary", self._format(bold=True))
        cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
        self._insert_markdown(cursor, summary["text"])
        self._insert_pages(cursor, summary["pages"], -1)
        self.summary.show()

    def show_messages(self, messages: list[dict]) -> None:
        self.messages = list(messages)
        self._render()

    @staticmethod
    def _page_links(pages: list[int], message_index: int) -> str:
        """One link per page; a run of more than three pages is one link to its first page."""
        if not pages:
            return ""
        runs: list[list[int]] = []
        for p in sorted(set(pages)):
            if runs and p == runs[-1][-1] + 1:
                runs[-1].append(p)
            else:
                runs.append([p])
        links = []
        for run in runs:
            shown = [run] if len(run) > 3 else [[p] for p in run]
            for part in shown:
                label = f"pp.&nbsp;{part[0]}–{part[-1]}" if len(part) > 1 else f"p.&nbsp;{part[0]}"
                links.append(f'<a href="cite:{message_index}:{part[0]}">{label}</a>')
        return " ".join(links)

    # the transcript's document ----------------------------------------------------------------

    def _format(self, *, bold: bool = False, italic: bool = False, muted: bool = False,
                href: str | None = None) -> QTextCharFormat:
        fmt = QTextCharFormat()
        if bold:
            fmt.setFontWeight(QFont.Weight.Bold)
        fmt.setFontItalic(italic)
        palette = self.transcript.palette()
        if muted:
            fmt.setForeground(palette.color(QPalette.ColorRole.PlaceholderText))
        if href:
            fmt.setAnchor(True)
            fmt.setAnchorHref(href)
            fmt.setForeground(palette.color(QPalette.ColorRole.Link))
            fmt.setFontUnderline(True)
        return fmt

    def _turn_format(self, index: int) -> QTextFrameFormat:
        """A question is indented and tinted with the highlight colour; an answer is framed on the
        alternate base. Both are the palette's, so they read in light and dark themes alike."""
        palette = self.transcript.palette()
        base = palette.color(QPalette.ColorRole.Base)
        role = self.messages[index]["role"]
        fmt = QTextFrameFormat()
        fmt.setProperty(MESSAGE, index)
        fmt.setProperty(ROLE, role)
        fmt.setPadding(8)
        fmt.setTopMargin(4)
        fmt.setBottomMargin(4)
        if role == "user":
            fmt.setLeftMargin(40)
            fmt.setBackground(_mix(base, palette.color(QPalette.ColorRole.Highlight), 0.18))
        else:
            fmt.setBackground(palette.color(QPalette.ColorRole.AlternateBase))
            fmt.setBorder(1)
            fmt.setBorderStyle(QTextFrameFormat.BorderStyle.BorderStyle_Solid)
            fmt.setBorderBrush(_mix(base, palette.color(QPalette.ColorRole.Text), 0.25))
        return fmt

    def _render(self) -> None:
        """The whole transcript afresh (another session, a new palette); then its end is shown."""
        self.transcript.clear()
        self._turns = []
        if not self.messages:
            hint = "Ask anything about the document; answers cite the pages they draw on." if self.doc else \
                "Open a document to ask about it."
            QTextCursor(self.transcript.document()).insertText(hint, self._format(muted=True))
        for i in range(len(self.messages)):
            self._add_turn(i)
        self._scroll(to_end=True)

    def _add_turn(self, index: int) -> None:
        cursor = self.transcript.document().rootFrame().lastCursorPosition()
        self._turns.append(cursor.insertFrame(self._turn_format(index)))
        self._fill_turn(index)

    def _fill_turn(self, index: int) -> None:
        """Write a message into its frame, replacing what the frame held."""
        frame, m = self._turns[index], self.messages[index]
        cursor = frame.firstCursorPosition()
        cursor.setPosition(frame.lastPosition(), QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        cursor.setBlockFormat(QTextBlockFormat())
        if m["role"] == "user":
            cursor.insertText("You", self._format(bold=True))
            cursor.insertText(f"  {_when(m.get('created'))}".rstrip(), self._format(muted=True))
            cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
            cursor.insertText(m["content"], QTextCharFormat())  # as typed: never Markdown, never HTML
            return
        live = self._streaming and index == len(self.messages) - 1
        took = f"{m['seconds']:.1f} s" if m.get("seconds") else ""
        cursor.insertText("Comma", self._format(bold=True))
        cursor.insertText(f"  {' · '.join(filter(None, (_when(m.get('created')), took)))}".rstrip(),
                          self._format(muted=True))
        if not live:
            cursor.insertText("  ", QTextCharFormat())
            copy = self._format(href=f"copy:{index}")
            copy.setToolTip("Copy this answer as Markdown")
            cursor.insertText("Copy", copy)
        cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
        if m["content"]:
            self._insert_markdown(cursor, m["content"])
        else:
            cursor.insertText("…" if live else "(no answer)", self._format(italic=True, muted=True))
        if m.get("sources"):
            self._insert_sources(cursor, m["sources"], index)
        else:
            self._insert_pages(cursor, m.get("pages") or [], index)

    @staticmethod
    def _insert_markdown(cursor: QTextCursor, text: str) -> None:
        """Render Markdown at the cursor, at the start of an empty block after a heading line."""
        start = cursor.position()
        cursor.insertMarkdown(text, MARKDOWN)
        # Qt puts a list or a table that opens the text after the empty block it was inserted
        # into, which would show as a blank line under the heading: that block goes.
        gap = QTextCursor(cursor.document())
        gap.setPosition(start)
        if gap.block().length() == 1 and gap.block() != cursor.block():
            gap.setPosition(start - 1, QTextCursor.MoveMode.KeepAnchor)
            gap.removeSelectedText()

    def _insert_pages(self, cursor: QTextCursor, pages: list[int], index: int) -> None:
        if pages:
            cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
            cursor.insertText("Pages: ", self._format(muted=True))
            cursor.insertHtml(self._page_links(pages, index))  # numbers only: nothing from the document

    def _insert_sources(self, cursor: QTextCursor, sources: list[dict], index: int) -> None:
        """The passages an answer was given, most relevant first: page link and opening words,
        both the document's text and so inserted as plain text."""
        cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
        cursor.insertText("Sources:", self._format(muted=True))
        for s in sources:
            cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
            cursor.insertText(citation(s["page"], s.get("section")).replace(" ", "\u00a0"),
                              self._format(href=f"cite:{index}:{s['page']}"))
            cursor.insertText(f" “{s['text']}”", self._format(muted=True))

    def _at_end(self) -> bool:
        bar = self.transcript.verticalScrollBar()
        return bar.value() >= bar.maximum() - 4  # a few pixels short of the end is still the end

    def _scroll(self, to_end: bool, keep: int = 0) -> None:
        """Show the end, or stay where the person had scrolled to."""
        self.transcript.document().documentLayout().documentSize()  # lays the new text out, so the range is right
        bar = self.transcript.verticalScrollBar()
        bar.setValue(bar.maximum() if to_end else keep)

    def _render_answer(self) -> None:
        """Re-render the answer being given (the last turn), following the end only if the person
        was there: someone who scrolled up to read is not pulled down."""
        follow, keep = self._at_end(), self.transcript.verticalScrollBar().value()
        self._fill_turn(len(self.messages) - 1)
        self._scroll(follow, keep)

    def _render_streaming(self) -> None:
        if self._streaming:
            self._render_answer()

    # asking -----------------------------------------------------------------------------------

    def _ask(self) -> None:
        question = self.question.toPlainText().strip()
        if question and self.doc is not None and not self._streaming:
            self.askRequested.emit(question)

    def begin_answer(self, question: str) -> None:
        self._streaming = True
        self.question.clear()
        self.messages.append({"role": "user", "content": question})
        self.messages.append({"role": "assistant", "content": "", "pages": []})
        if not self._turns:
            self.transcript.clear()  # the hint of an empty conversation
        self._add_turn(len(self.messages) - 2)
        self._add_turn(len(self.messages) - 1)
        self._scroll(to_end=True)  # the question just asked is shown, wherever the person was
        self.ask_button.hide()
        self.stop_button.show()
        for w in (self.sessions, self.summarize_button, self.question):
            w.setEnabled(False)
        self.status.setText("Thinking…")

    def append_text(self, piece: str) -> None:
        if not self._streaming:
            return
        self.messages[-1]["content"] += piece
        if not self._render_timer.isActive():  # not restarted per piece: a steady stream still shows
            self._render_timer.start()
        self.status.setText("Answering…")

    def answer_text(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""

    def end_answer(self, result: dict) -> None:
        self._stop_streaming()
        self.messages[-1].update(content=result["answer"], pages=result["pages"], seconds=result["seconds"],
                                 sources=result.get("sources") or [])
        self._render_answer()
        self._idle()
        stopped = " (stopped)" if result.get("stopped") else ""
        alone = f" Answered from the memory alone: {result['recall_reason']}" if result.get("recall_reason") else ""
        small = f" Answered by the small model: {result['model_reason']}" if result.get("model_reason") else ""
        spot = result.get("read_on_the_spot") or []
        read = (f" The answering model read p. {', '.join(map(str, spot))} for it; answers get faster once it has "
                "read the whole document in the background.") if spot else ""
        self.status.setText(f"First words in {result['ttft_s']:.1f} s, answer in {result['seconds']:.1f} s"
                            f"{stopped}.{alone}{small}{read}")

    def fail_answer(self, message: str) -> None:
        self._stop_streaming()
        if self.messages and self.messages[-1]["role"] == "assistant":
            question = self.messages[-2]["content"]
            del self.messages[-2:]
            self.question.setPlainText(question)  # nothing was saved: the question can be asked again
        self._render()
        self._idle()
        self.status.setText(f"No answer: {message}")

    def _stop_streaming(self) -> None:
        self._streaming = False
        self._render_timer.stop()  # what is pending is rendered by the caller, or belongs to nothing shown

    def _idle(self) -> None:
        self.stop_button.hide()
        self.ask_button.show()
        for w in (self.sessions, self.summarize_button, self.question, self.ask_button):
            w.setEnabled(self.doc is not None)
        self.question.setFocus()

    @property
    def streaming(self) -> bool:
        return self._streaming

    # copying ----------------------------------------------------------------------------------

    def copy_answer(self, index: int) -> None:
        """The answer's Markdown, as the model wrote it, onto the clipboard."""
        if 0 <= index < len(self.messages) and self.messages[index]["role"] == "assistant":
            QApplication.clipboard().setText(self.messages[index]["content"])

    def answer_at(self, pos: QPoint) -> int | None:
        """The index of the finished answer at a point of the transcript's viewport, if any."""
        frame = self.transcript.cursorForPosition(pos).currentFrame()
        while frame is not None and not frame.frameFormat().hasProperty(MESSAGE):
            frame = frame.parentFrame()  # out of a table in the answer
        if frame is None or frame.frameFormat().property(ROLE) != "assistant":
            return None
        index = frame.frameFormat().intProperty(MESSAGE)
        return None if self._streaming and index == len(self.messages) - 1 else index

    def context_menu(self, pos: QPoint) -> QMenu:
        """The transcript's usual menu, led by Copy answer when the point is on an answer."""
        scrolled = QPoint(self.transcript.horizontalScrollBar().value(), self.transcript.verticalScrollBar().value())
        menu = self.transcript.createStandardContextMenu(pos + scrolled)  # it takes the document's coordinates
        index = self.answer_at(pos)
        if index is not None:
            copy = menu.addAction("Copy answer as Markdown", lambda: self.copy_answer(index))
            menu.insertAction(menu.actions()[0], copy)
            menu.insertSeparator(menu.actions()[1])
        return menu

    def _context_menu(self, pos: QPoint) -> None:
        # a scroll area's custom menu request carries viewport coordinates
        self.context_menu(pos).exec(self.transcript.viewport().mapToGlobal(pos))

    # links ------------------------------------------------------------------------------------

    def citation_links(self) -> list[str]:
        """Every page link in the transcript, in order (what a click would open)."""
        html_text = self.transcript.toHtml()
        return [href for part in html_text.split('href="')[1:] if (href := part.split('"', 1)[0]).startswith("cite:")]

    def open_link(self, href: str) -> None:
        self._anchor(QUrl(href))

    def _anchor(self, url: QUrl) -> None:
        # A rendered answer may hold links of the model's own, so an href is matched, not trusted.
        text = url.toString()
        if copy := re.fullmatch(r"copy:(\d+)", text):
            self.copy_answer(int(copy[1]))
            return
        cite = re.fullmatch(r"cite:(-?\d+):(\d+)", text)
        if not cite:
            return
        index, page = int(cite[1]), int(cite[2])
        answer = (self._summary or {}).get("text", "") if index < 0 else self.messages[index]["content"] if \
            index < len(self.messages) else ""
        self.citationClicked.emit(page, answer)
