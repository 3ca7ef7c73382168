"""The conversation panel on its own, offscreen: answers rendered from their Markdown, questions
and the documents' text shown as typed, the two kinds of turn told apart in light and dark
palettes, Copy giving the Markdown source, and a streaming answer re-rendered a few times a
second however fast its pieces come, without pulling a person who scrolled up back down."""

import time

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QUrl
from PySide6.QtGui import QColor, QFont, QImage, QPalette, QTextDocument, QTextFrame, QTextTable
from PySide6.QtWidgets import QApplication

from app.conversation_panel import RENDER_INTERVAL_MS, ConversationPanel

ANSWER = """The licence lets you:
- copy it
- change it

You may **share** copies; run `gpl --version`
to see which.

| Right | Kept |
|-------|------|
| copy  | yes  |
| sell  | yes  |
"""


@pytest.fixture
def panel(qtbot):
    panel = ConversationPanel()
    qtbot.addWidget(panel)
    panel.resize(480, 600)
    panel.show()
    panel.set_document({"id": "d", "title": "The licence"}, [], None)
    return panel


def turns(panel):
    """The transcript's top-level frames: one per turn."""
    return [f for f in panel.transcript.document().rootFrame().childFrames() if not isinstance(f, QTextTable)]


def blocks(frame):
    """Every block inside a frame, tables' cells included, in order."""
    doc = frame.document()
    block = doc.findBlock(frame.firstPosition())
    while block.isValid() and block.position() < frame.lastPosition():
        yield block
        block = block.next()


def fragments(frame):
    for block in blocks(frame):
        it = block.begin()
        while not it.atEnd():
            yield it.fragment()
            it += 1


def frame_text(frame):
    return "\n".join(b.text() for b in blocks(frame))


def lists(frame):
    return list({id(b.textList()): b.textList() for b in blocks(frame) if b.textList() is not None}.values())


def tables(frame: QTextFrame):
    found: list[QTextTable] = []
    for child in frame.childFrames():
        found += [child] if isinstance(child, QTextTable) else tables(child)
    return found


def point_in(panel, frame, offset=3):
    """A point of the transcript's viewport inside a frame's text."""
    cursor = frame.firstCursorPosition()
    cursor.setPosition(frame.firstPosition() + offset)
    return panel.transcript.cursorRect(cursor).center()


def test_an_answer_is_rendered_from_its_markdown(panel):
    panel.show_messages([{"role": "user", "content": "What may I do?"},
                         {"role": "assistant", "content": ANSWER, "pages": [3]}])
    answer = turns(panel)[1]
    text = frame_text(answer)
    assert "**" not in text and "`" not in text and "|" not in text and "- copy" not in text
    [items] = lists(answer)
    assert [b.text() for b in blocks(answer) if b.textList() is items] == ["copy it", "change it"]
    [table] = tables(answer)
    assert (table.rows(), table.columns()) == (3, 2) and table.cellAt(2, 0).firstCursorPosition().block().text() == "sell"
    shown = {f.text(): f.charFormat() for f in fragments(answer)}
    assert shown["share"].fontWeight() == QFont.Weight.Bold
    assert shown["gpl --version"].fontFixedPitch()
    # the model's line break inside a paragraph is CommonMark's soft break: the lines are joined
    assert "You may share copies; run gpl --version to see which." in text.split("\n")
    assert panel.citation_links() == ["cite:1:3"]


def test_a_list_right_after_a_line_of_text_follows_commonmark(panel):
    """Models often start a list on the line after its lead-in. CommonMark (and so the exported
    Markdown, wherever it is read) makes that a list when it is bulleted or numbered from 1; a
    line numbered otherwise stays part of the paragraph, as a wrapped "2019. was…" would."""
    panel.show_messages([{"role": "user", "content": "Which?"},
                         {"role": "assistant",
                          "content": "- first\n\nBullets:\n- a\n- b\n\nSteps:\n1. x\n2. y\n\nThen:\n3. z"}])
    answer = turns(panel)[1]
    first, bullets, steps = lists(answer)
    assert first.count() == 1 and bullets.count() == 2 and steps.count() == 2
    assert bullets.format().style() != steps.format().style()  # a bulleted list and a numbered one
    texts = [b.text() for b in blocks(answer)]
    assert texts[1] == "first"  # a list that opens the answer leaves no blank line under its heading
    assert "Bullets:" in texts and "Steps:" in texts and "Then: 3. z" in texts


def test_a_question_is_its_own_turn_and_shows_as_typed(panel):
    question = "Is <b>x</b> **y** `z`?\n- not a list\n<script>alert(1)</script>"
    panel.show_messages([{"role": "user", "content": question, "created": "2024-05-01T09:30:00"}])
    [turn] = turns(panel)
    lines = frame_text(turn).split("\n")
    assert lines[0] == "You  2024-05-01 09:30" and "\n".join(lines[1:]) == question
    assert not lists(turn)
    assert all(f.charFormat().fontWeight() != QFont.Weight.Bold for f in fragments(turn) if f.text() != "You")


def test_turns_are_told_apart_in_light_and_dark_palettes(panel):
    panel.show_messages([{"role": "user", "content": "Q?", "created": "2024-05-01T09:30:00"},
                         {"role": "assistant", "content": "A."}])
    question, answer = turns(panel)
    assert frame_text(question).startswith("You") and frame_text(answer).startswith("Comma")
    for block in (question.firstCursorPosition().block(), answer.firstCursorPosition().block()):
        assert block.begin().fragment().charFormat().fontWeight() == QFont.Weight.Bold  # the role's label
    light_q, light_a = question.frameFormat().background().color(), answer.frameFormat().background().color()
    assert light_q != light_a and question.frameFormat().leftMargin() > answer.frameFormat().leftMargin()

    dark = QPalette(panel.palette())
    for role, colour in ((QPalette.ColorRole.Base, "#1e1e1e"), (QPalette.ColorRole.AlternateBase, "#262626"),
                         (QPalette.ColorRole.Text, "#eeeeee"), (QPalette.ColorRole.Highlight, "#3d6fb4"),
                         (QPalette.ColorRole.PlaceholderText, "#9a9a9a")):
        dark.setColor(role, QColor(colour))
    panel.setPalette(dark)  # a change of theme redraws the turns in the new palette's colours
    question, answer = turns(panel)
    for frame in (question, answer):
        assert frame.frameFormat().background().color().lightnessF() < 0.3
    assert question.frameFormat().background().color() != answer.frameFormat().background().color()
    time_format = next(f for f in fragments(question) if "09:30" in f.text()).charFormat()
    assert time_format.foreground().color() == QColor("#9a9a9a")


def test_copy_puts_the_answers_markdown_on_the_clipboard(panel):
    panel.show_messages([{"role": "user", "content": "What may I do?"},
                         {"role": "assistant", "content": ANSWER, "pages": [3]},
                         {"role": "user", "content": "And sell?"},
                         {"role": "assistant", "content": "Yes, **for a fee**.", "pages": [4]}])
    clipboard = QApplication.clipboard()
    html = panel.transcript.toHtml()
    assert 'href="copy:1"' in html and 'href="copy:3"' in html and 'href="copy:0"' not in html
    panel.transcript.anchorClicked.emit(QUrl("copy:1"))  # what a click on the answer's Copy does
    assert clipboard.text() == ANSWER

    # and from the context menu, on the answer under the pointer, even inside its table
    question, first, _, second = turns(panel)
    assert panel.answer_at(point_in(panel, question)) is None
    menu = panel.context_menu(point_in(panel, second))
    menu.actions()[0].trigger()
    assert menu.actions()[0].text() == "Copy answer as Markdown" and clipboard.text() == "Yes, **for a fee**."
    [table] = tables(first)
    cell = table.cellAt(1, 0).firstCursorPosition()
    assert panel.answer_at(panel.transcript.cursorRect(cell).center()) == 1


def test_streaming_renders_a_few_times_however_many_pieces_come(panel, qtbot, monkeypatch):
    renders: list[float] = []  # when each render of the answer began
    original = panel._render_answer

    def counted():
        renders.append(time.monotonic())
        original()

    monkeypatch.setattr(panel, "_render_answer", counted)
    panel.show_messages([])
    assert panel.transcript.toPlainText().startswith("Ask anything about the document")
    panel.begin_answer("Everything, please")
    assert "Ask anything" not in panel.transcript.toPlainText() and len(turns(panel)) == 2
    pieces = [f"word{i} " if i % 50 else "\n\n- item " for i in range(500)]
    for piece in pieces:  # all at once, as a fast model's tokens queue up behind a busy window
        panel.append_text(piece)
    assert renders == []  # nothing is rendered per piece
    qtbot.waitUntil(lambda: bool(renders), timeout=5000)
    qtbot.wait(3 * RENDER_INTERVAL_MS)
    assert len(renders) == 1
    answer = turns(panel)[-1]
    assert "word499" in frame_text(answer) and "Copy" not in frame_text(answer)  # no Copy while it streams

    # a steady stream shows while it lasts, never more often than the interval
    renders.clear()
    start = time.monotonic()
    for i in range(40):
        panel.append_text(f"more{i} ")
        qtbot.wait(5)
    elapsed = time.monotonic() - start
    assert 1 <= len(renders) <= elapsed * 1000 / RENDER_INTERVAL_MS + 1
    assert all(b - a >= RENDER_INTERVAL_MS / 1000 * 0.9 for a, b in zip(renders, renders[1:], strict=False))

    renders.clear()
    final = "".join(pieces) + "".join(f"more{i} " for i in range(40))
    assert panel.answer_text() == final
    panel.end_answer({"answer": final, "pages": [2], "seconds": 1.0, "ttft_s": 0.1})
    qtbot.wait(3 * RENDER_INTERVAL_MS)
    assert len(renders) == 1  # the final text exactly once, and nothing pending after it
    answer = turns(panel)[-1]
    shown = frame_text(answer)
    assert all(f"word{i}" in shown for i in range(500) if i % 50) and "more39" in shown and "Copy" in shown
    assert len(lists(answer)) == 1 and lists(answer)[0].count() == 10


def test_streaming_follows_the_end_unless_the_person_scrolled_up(panel, qtbot):
    panel.show_messages([m for i in range(8) for m in ({"role": "user", "content": f"Question {i}?"},
                                                       {"role": "assistant", "content": f"Answer {i}.\n\n" * 4})])
    bar = panel.transcript.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() == bar.maximum()
    panel.begin_answer("Go on")
    for i in range(30):
        panel.append_text(f"Line {i}.\n\n")
    qtbot.waitUntil(lambda: "Line 29." in frame_text(turns(panel)[-1]), timeout=5000)
    assert bar.value() == bar.maximum()  # at the end, it follows the answer down

    bar.setValue(bar.maximum() // 3)  # the person scrolls up to read
    kept = bar.value()
    for i in range(30, 60):
        panel.append_text(f"Line {i}.\n\n")
    qtbot.waitUntil(lambda: "Line 59." in frame_text(turns(panel)[-1]), timeout=5000)
    assert bar.value() == kept < bar.maximum()
    panel.end_answer({"answer": panel.answer_text(), "pages": [], "seconds": 1.0, "ttft_s": 0.1})
    assert bar.value() == kept


def test_the_documents_text_and_markup_show_literally(panel, qtbot, tmp_path):
    """Snippets and section titles come from the documents, and answers repeat them: HTML in any
    of them is shown as written, and nothing an answer names (an image) is loaded."""
    image = tmp_path / "secret.png"
    picture = QImage(7, 3, QImage.Format.Format_RGB32)
    picture.fill(QColor("red"))
    picture.save(str(image))
    answer = f"**Quoted:** <b>x</b> <i>y</i>\n\n![seen]({QUrl.fromLocalFile(str(image)).toString()})"
    sources = [{"page": 4, "section": "<b>Intro</b>", "text": "<img src=x> & <i>hi</i> **no**"}]
    panel.show_messages([{"role": "user", "content": "Q"},
                         {"role": "assistant", "content": answer, "pages": [4], "sources": sources}])
    turn = turns(panel)[1]
    text = frame_text(turn).replace("\u00a0", " ")  # a citation does not break across lines
    assert "Quoted: <b>x</b> <i>y</i>" in text and "**" not in text.split("\n")[1]
    assert "<b>Intro</b>, p. 4 “<img src=x> & <i>hi</i> **no**”" in text
    assert not any(f.charFormat().fontItalic() for f in fragments(turn))
    assert any(f.charFormat().isImageFormat() for f in fragments(turn))  # the Markdown image is there
    panel.transcript.viewport().grab()  # laid out and painted: an image would be loaded now
    shown = panel.transcript.document().resource(QTextDocument.ResourceType.ImageResource,
                                                 QUrl.fromLocalFile(str(image)))
    assert shown is not None and shown.size() != picture.size()  # a placeholder, not the file

    cited = []
    panel.citationClicked.connect(lambda page, text: cited.append((page, text)))
    assert panel.citation_links() == ["cite:1:4"]
    panel.transcript.anchorClicked.emit(QUrl("cite:1:4"))
    panel.transcript.anchorClicked.emit(QUrl("cite:one:4"))  # a model's own link is not ours: ignored
    assert cited == [(4, answer)]


def test_the_summary_is_rendered_from_its_markdown(panel):
    summary = {"text": "The **key** terms:\n- copying\n- changing", "pages": [1, 2]}
    panel.set_summary(summary)
    doc = panel.summary.document()
    text = doc.toPlainText()
    assert text.startswith("Summary\nThe key terms:") and "**" not in text
    assert sum(1 for i in range(doc.blockCount()) if doc.findBlockByNumber(i).textList()) == 2
    cited = []
    panel.citationClicked.connect(lambda page, text: cited.append((page, text)))
    panel.open_link("cite:-1:2")
    assert cited == [(2, summary["text"])]
