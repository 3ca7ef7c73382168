"""The window as people expect it: nothing that cannot act is enabled, the document is
shown while it is read, the panes stay where the person put them, light and dark both read, and
the keyboard reaches everything. The fake model (tests.fakes) stands in for the real one."""

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from app import theme
from app.settings import Settings
from app.window import MainWindow
from tests.fakes import use_fake_model, write_doc

SMALL = Settings(cache=320, notes=False, answering="off")
WAIT = 20_000


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def window(qtbot, home, monkeypatch):
    fake = use_fake_model(monkeypatch, token_seconds=0.02)
    window = MainWindow(SMALL)
    window.fake = fake
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window


def read(qtbot, window, path):
    with qtbot.waitSignal(window.library_panel.documentSelected, timeout=WAIT):
        [job] = window.read_files([str(path)])
    return job


def test_with_no_document_page_zoom_and_find_are_off(window, qtbot, tmp_path):
    viewer = window.viewer
    assert not any(c.isEnabled() for c in viewer.controls) and not viewer.pages_label.isVisible()
    assert viewer.page.text() == "Page –"
    assert not window.conversation.question.isEnabled()
    read(qtbot, window, write_doc(tmp_path / "harbour.txt"))
    qtbot.waitUntil(lambda: window.doc is not None, timeout=WAIT)
    assert all(c.isEnabled() for c in viewer.controls) and viewer.pages_label.text() == f"of {viewer.view.source.count}"
    assert viewer.page.text().startswith("Page 1")


def test_the_document_is_shown_while_it_is_read_with_how_far_it_has_got(window, qtbot, tmp_path):
    seen = []

    def look(*_):  # runs after the window's own handler of the same signal
        seen.append((window.viewer.view.source is not None, window.doc, window.viewer.view.read_upto,
                     window.viewer.reading_label.text()))

    doc = write_doc(tmp_path / "harbour.txt")
    [job] = window.read_files([str(doc)], on_job=lambda job: (job.described.connect(look), job.progress.connect(look)))
    qtbot.waitUntil(lambda: window.doc is not None, timeout=WAIT)
    shown, doc_open, upto, label = seen[0]
    assert shown and doc_open is None and upto == 0 and label.startswith("read to p. 0 of")
    assert any(u and u > 0 for _, _, u, _ in seen[1:]), "the mark moves as the reading goes"
    assert window.viewer.view.read_upto is None and window.viewer.reading_label.text() == ""


def test_a_reading_does_not_take_the_pane_from_a_document_opened_since(window, qtbot, tmp_path):
    read(qtbot, window, write_doc(tmp_path / "first.txt"))
    first = window.doc["id"]
    [job] = window.read_files([str(write_doc(tmp_path / "second.txt", needle_at=2))],
                              on_job=lambda job: job.started.connect(lambda: window.open_document(first)))
    qtbot.waitUntil(lambda: not window.library_panel.progress.isVisible(), timeout=WAIT)
    assert window.previewing is None


def test_a_long_reading_line_keeps_the_panes_where_they_were_and_sizes_are_kept(window, qtbot, home, monkeypatch):
    window.resize(1400, 820)
    window.splitter.setSizes([263, 700, 437])
    QApplication.processEvents()
    before = window.splitter.sizes()
    progress = window.library_panel.progress
    progress.start("A very long file name of a contract between two parties, signed in 2026 " * 3 + ".pdf")
    progress.describe({"title": "The Shared MIME-info Database specification, version 0.21, and more " * 3,
                       "pages": 1234})
    progress.update_progress(123_456, 987_654)
    QApplication.processEvents()
    assert window.splitter.sizes() == before
    assert progress.title.text().startswith("Reading The Shared MIME-info") and progress.title.toolTip() == \
        progress.title.text()
    window.close()
    use_fake_model(monkeypatch)
    again = MainWindow(SMALL)
    qtbot.addWidget(again)
    again.show()
    again.resize(1400, 820)
    QApplication.processEvents()
    assert abs(again.splitter.sizes()[0] - before[0]) <= 2


@pytest.fixture
def restore_look():
    app = QApplication.instance()
    style, palette = app.style().name(), app.palette()
    yield app
    app.setStyle(style)
    app.setPalette(palette)


@pytest.mark.parametrize("scheme", [Qt.ColorScheme.Light, Qt.ColorScheme.Dark])
def test_light_and_dark_both_read(window, restore_look, scheme):
    theme.apply(restore_look, scheme)
    QApplication.processEvents()  # widgets take a new application palette by event
    palette = window.palette()
    assert theme.is_dark(palette) == (scheme == Qt.ColorScheme.Dark)
    text, base = palette.color(QPalette.ColorRole.Text), palette.color(QPalette.ColorRole.Base)
    assert abs(text.lightnessF() - base.lightnessF()) > 0.6
    link = palette.color(QPalette.ColorRole.Link)
    assert abs(link.lightnessF() - base.lightnessF()) > 0.3
    window.error("Could not read x.pdf")
    background, colour = theme.banner_colours(window.banner.palette(), error=True)
    assert background in window.banner.styleSheet() and colour in window.banner.styleSheet()
    assert theme.is_dark(window.banner.palette()) == (scheme == Qt.ColorScheme.Dark)


def test_keys_reach_the_question_find_help_and_stop(window, qtbot, tmp_path):
    read(qtbot, window, write_doc(tmp_path / "harbour.txt"))
    qtbot.waitUntil(lambda: window.doc is not None, timeout=WAIT)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=2000)
    QTest.keyClick(window, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: window.conversation.question.hasFocus(), timeout=2000)
    QTest.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: window.viewer.find_edit.hasFocus(), timeout=2000)
    QTest.keyClick(window.viewer.find_edit, Qt.Key.Key_Tab)
    assert window.conversation.sessions.hasFocus(), "Tab goes on from the document to the conversation"
    QTest.keyClick(window, Qt.Key.Key_F1)
    qtbot.waitUntil(lambda: getattr(window, "help_dialog", None) is not None and window.help_dialog.isVisible(),
                    timeout=2000)
    assert "Ctrl+L" in window.help_dialog.text() and "Esc" in window.help_dialog.text()
    window.help_dialog.hide()
    window.fake.token_seconds = 0.3  # an answer of some seconds, so that Esc comes while it streams
    job = window.ask("Where do the boats moor?")
    qtbot.waitUntil(lambda: window.conversation.streaming, timeout=WAIT)
    window.activateWindow()  # shortcuts act in the active window; the help box was it a moment ago
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=2000)
    QTest.keyClick(window, Qt.Key.Key_Escape)
    assert job.is_cancelled(), "Esc stops the answer"
    qtbot.waitUntil(lambda: not window.conversation.streaming, timeout=WAIT)
    from tests.fakes import ANSWER

    assert ANSWER not in window.conversation.transcript.toPlainText(), "the answer stopped before its end"


def test_a_reading_shown_then_not_wanted_gives_the_pane_back_to_the_document_before(window, qtbot, tmp_path,
                                                                                      monkeypatch):
    import time

    from tests.fakes import FakeCache

    read(qtbot, window, write_doc(tmp_path / "first.txt"))
    slow = FakeCache.append
    monkeypatch.setattr(FakeCache, "append", lambda self, *a, **k: (time.sleep(0.05), slow(self, *a, **k))[1])
    first = window.doc["id"]
    window.conversation.begin_answer("Kept?")
    window.conversation.end_answer({"answer": "Yes.", "pages": [1], "seconds": 0.1, "ttft_s": 0.1})
    shown = []

    def not_wanted(job):
        job.described.connect(lambda _info: (shown.append(window.doc is None and window.conversation.messages == []),
                                             job.cancel()))

    [job] = window.read_files([str(write_doc(tmp_path / "second.txt", needle_at=2))], on_job=not_wanted)
    with qtbot.waitSignal(job.cancelled, timeout=WAIT):
        pass
    assert shown == [True], "while shown, the previous document's conversation is not"
    qtbot.waitUntil(lambda: window.doc is not None and window.doc["id"] == first, timeout=WAIT)
    assert window.library_panel.current_doc() == first and window.previewing is None
