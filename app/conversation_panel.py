"""The right of the window: the conversation about the open document.

Its saved sessions (newest first, or a new one), the document's summary, the questions and
answers with the pages each answer drew on as links, and the question box with Ask / Stop.
The panel only shows and asks; the window runs the model work and feeds the results back.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.actions import citation

NEW_SESSION = "New conversation"


def _paragraphs(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def _when(timestamp: str | None) -> str:
    return (timestamp or "")[:16].replace("T", " ")


class QuestionBox(QPlainTextEdit):
    """Enter asks; Shift+Enter starts a new line."""

    submitted = Signal()

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and \
                not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


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
        self.summary = QTextBrowser()
        self.summary.setOpenLinks(False)
        self.summary.anchorClicked.connect(self._anchor)
        self.summary.setMaximumHeight(150)
        self.summary.hide()
        self.transcript = QTextBrowser()
        self.transcript.setOpenLinks(False)
        self.transcript.anchorClicked.connect(self._anchor)
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
        self._streaming = False
        self._summary_text = ""
        self.set_document(None, [], None)

    # what is shown ----------------------------------------------------------------------------

    def set_document(self, doc: dict | None, sessions: list[dict], summary: dict | None) -> None:
        if self._streaming:  # an answer about the previous document goes on into its session
            self._streaming = False
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
        if not summary:
            self.summary.hide()
            self._summary_text = ""
            return
        self._summary_text = summary["text"]
        links = self._page_links(summary["pages"], -1)
        self.summary.setHtml(f"<p><b>Summary</b> {_paragraphs(summary['text'])}</p><p>{links}</p>")
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
        return f'<span style="color:#555">Pages: {" ".join(links)}</span>'

    @staticmethod
    def _source_links(sources: list[dict], message_index: int) -> str:
        """The passages an answer was given, most relevant first: page link and opening words."""
        rows = [f'<a href="cite:{message_index}:{s["page"]}">'
                f'{html.escape(citation(s["page"], s.get("section"))).replace(" ", "&nbsp;")}</a> '
                f'<span style="color:#555">“{html.escape(s["text"])}”</span>' for s in sources]
        return '<span style="color:#555">Sources:</span><br>' + "<br>".join(rows)

    def _render(self) -> None:
        parts = []
        if not self.messages:
            hint = "Ask anything about the document; answers cite the pages they draw on." if self.doc else \
                "Open a document to ask about it."
            parts.append(f'<p style="color:#777">{hint}</p>')
        for i, m in enumerate(self.messages):
            if m["role"] == "user":
                parts.append(f'<p style="margin-top:12px"><b>You</b> <span style="color:#888">'
                             f'{_when(m.get("created"))}</span><br>{_paragraphs(m["content"])}</p>')
            else:
                took = f" · {m['seconds']:.1f} s" if m.get("seconds") else ""
                cited = self._source_links(m["sources"], i) if m.get("sources") else \
                    self._page_links(m.get("pages") or [], i)
                parts.append(f'<p><b>Comma</b> <span style="color:#888">{_when(m.get("created"))}{took}</span>'
                             f'<br>{_paragraphs(m["content"]) or "<i>(no answer)</i>"}</p>'
                             f'<p>{cited}</p>')
        self.transcript.setHtml("".join(parts))
        self.transcript.moveCursor(QTextCursor.MoveOperation.End)
        self.transcript.ensureCursorVisible()

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
        self._render()
        self.ask_button.hide()
        self.stop_button.show()
        for w in (self.sessions, self.summarize_button, self.question):
            w.setEnabled(False)
        self.status.setText("Thinking…")

    def append_text(self, piece: str) -> None:
        if not self._streaming:
            return
        self.messages[-1]["content"] += piece
        cursor = self.transcript.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        # the empty answer paragraph renders "(no answer)" until text arrives; the end is inside it
        if len(self.messages[-1]["content"]) == len(piece):
            self._render()
        else:
            cursor.insertText(piece)
            self.transcript.setTextCursor(cursor)
            self.transcript.ensureCursorVisible()
        self.status.setText("Answering…")

    def answer_text(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""

    def end_answer(self, result: dict) -> None:
        self._streaming = False
        self.messages[-1].update(content=result["answer"], pages=result["pages"], seconds=result["seconds"],
                                 sources=result.get("sources") or [])
        self._render()
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
        self._streaming = False
        if self.messages and self.messages[-1]["role"] == "assistant":
            question = self.messages[-2]["content"]
            del self.messages[-2:]
            self.question.setPlainText(question)  # nothing was saved: the question can be asked again
        self._render()
        self._idle()
        self.status.setText(f"No answer: {message}")

    def _idle(self) -> None:
        self.stop_button.hide()
        self.ask_button.show()
        for w in (self.sessions, self.summarize_button, self.question, self.ask_button):
            w.setEnabled(self.doc is not None)
        self.question.setFocus()

    @property
    def streaming(self) -> bool:
        return self._streaming

    # links ------------------------------------------------------------------------------------

    def citation_links(self) -> list[str]:
        """Every page link in the transcript, in order (what a click would open)."""
        html_text = self.transcript.toHtml()
        return [part.split('"', 1)[0] for part in html_text.split('href="')[1:]]

    def open_link(self, href: str) -> None:
        self._anchor(QUrl(href))

    def _anchor(self, url: QUrl) -> None:
        text = url.toString()
        if not text.startswith("cite:"):
            return
        _, index, page = text.split(":")
        index = int(index)
        answer = self._summary_text if index < 0 else self.messages[index]["content"] if \
            0 <= index < len(self.messages) else ""
        self.citationClicked.emit(int(page), answer)
