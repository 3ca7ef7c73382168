"""The window, offscreen, on the real bundled model (kept tiny: ~1,300 tokens, cache 320, no notes
unless a summary is wanted): drop → progress → ready → ask → streamed answer → a cited page opens
in the viewer; cancelling a reading; a restart that restores the session and answers a follow-up
without reading again; bad files reported in words with the library unchanged."""

import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from app import settings as settings_store
from app.settings import Settings
from app.window import MainWindow
from tests.fakes import use_fake_model

GPL3 = Path("/usr/share/common-licenses/GPL-3")
SMALL = Settings(cache=320, notes=False)
WAIT = 120_000  # ms; the 2-core CI machine is slow and shared


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def gpl_text(tmp_path, chars=6000, name="gpl3-start.txt"):
    if not GPL3.exists():
        pytest.skip("needs /usr/share/common-licenses/GPL-3")
    path = tmp_path / name
    path.write_text(GPL3.read_text()[:chars])
    return path


def drop(window, paths):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    return event


def rows(home):
    db = home / "library.db"
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"select * from {t}").fetchall()
                for t in ("documents", "memories", "pages", "sessions", "messages")}


def spy(obj, name, seen):
    """Record the calls of a window method that signals are routed through."""
    original = getattr(obj, name)

    def wrapper(*args):
        seen.append(args)
        return original(*args)

    setattr(obj, name, wrapper)


def wait_until(qtbot, condition, timeout=WAIT):
    """qtbot.waitUntil, and on a timeout the stack of every thread (where did the work stop?)."""
    import faulthandler
    import sys

    try:
        qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)
    except Exception:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        raise


def make_window(qtbot, settings=SMALL):
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    return window


@pytest.mark.model
def test_drop_read_ask_stream_and_open_a_cited_page(qtbot, home, tmp_path):
    doc = gpl_text(tmp_path)
    window = make_window(qtbot)
    progress, pieces = [], []
    spy(window, "_reading_progress", progress)

    drop(window, [doc])
    assert "queued" in window.library_panel.pending_texts()[0] or window.library_panel.progress.isVisible()
    wait_until(qtbot, lambda: (progress))
    assert window.library_panel.progress.isVisible()
    assert "tokens" in window.library_panel.progress.detail.text()
    panel = window.library_panel
    wait_until(qtbot, lambda: (panel.doc_ids() and not panel.pending_texts()))
    done, total = progress[-1][1:]
    assert done == total > 1000
    assert not window.library_panel.progress.isVisible()
    assert "ready" in window.library_panel.list.item(0).text()
    assert window.doc is not None and window.doc["title"] == "GNU GENERAL PUBLIC LICENSE"
    assert window.viewer.view.source.count == window.doc["pages"] == 3
    assert window.viewer.view.current_page() == 1

    spy(window.conversation, "append_text", pieces)
    window.conversation.question.setPlainText("What does this license let me do with copies?")
    qtbot.mouseClick(window.conversation.ask_button, Qt.MouseButton.LeftButton)
    assert window.conversation.streaming and window.conversation.stop_button.isVisibleTo(window)
    wait_until(qtbot, lambda: not window.conversation.streaming)
    assert window.banner.text() == ""
    answer = window.conversation.messages[-1]
    assert len(pieces) > 3 and "".join(p[0] for p in pieces).strip() == answer["content"]
    assert answer["pages"] and window.conversation.session_id
    saved = window.library.messages(window.conversation.session_id)
    assert [m["role"] for m in saved] == ["user", "assistant"] and saved[1]["seconds"] > 0

    links = window.conversation.citation_links()
    assert links and links[0].startswith("cite:1:")
    # The answer's sources are the passages recall gave it, linked most relevant first.
    assert answer["sources"] and [f"cite:1:{s['page']}" for s in answer["sources"]] == links
    page = int(links[-1].rsplit(":", 1)[1])
    assert 1 <= page <= 3
    window.conversation.transcript.anchorClicked.emit(QUrl(links[-1]))
    assert window.viewer.view.current_page() == page
    assert window.viewer.view.cited_page == page - 1
    assert window.viewer.view.marks.get(page - 1), "the passage is highlighted"

    out = window.export_session(str(tmp_path / "conversation.md"))
    markdown = Path(out).read_text()
    assert "## What does this license let me do with copies?" in markdown and f"{page}" in markdown


@pytest.mark.model
def test_cancel_a_reading_saves_nothing(qtbot, home, tmp_path):
    doc = gpl_text(tmp_path, chars=14000, name="longer.txt")
    window = make_window(qtbot)
    progress, cancelled = [], []
    spy(window, "_reading_progress", progress)
    spy(window, "_reading_cancelled", cancelled)
    drop(window, [doc])
    wait_until(qtbot, lambda: (progress))
    qtbot.mouseClick(window.library_panel.progress.cancel, Qt.MouseButton.LeftButton)
    wait_until(qtbot, lambda: (cancelled))
    assert progress[-1][1] < progress[-1][2], "stopped before the end"
    assert not window.library_panel.pending_texts() and not window.library_panel.progress.isVisible()
    assert "cancelled" in window.statusBar().currentMessage()
    assert window.library.documents() == [] and list((home / "memories").iterdir()) == []
    assert window.banner.text() == ""


@pytest.fixture(scope="module")
def read_home(tmp_path_factory):
    """A data folder where the document was read (with notes) and one question asked, by the
    fake model (tests.fakes): these tests follow the window's flows, not the model's words."""
    tmp = tmp_path_factory.mktemp("restart")
    doc = gpl_text(tmp)
    from engine.pipeline.comma import Comma
    from storage.library import Library

    with pytest.MonkeyPatch.context() as mp:
        use_fake_model(mp)
        comma = Comma(Library(tmp / "home"))
        report = comma.ingest(doc, cache=320, notes=True)
        first = comma.ask(report["doc_id"], "Who publishes this license?")
    return {"home": tmp / "home", "doc_id": report["doc_id"], "session": first.session_id}


@pytest.fixture
def fake_model(monkeypatch):
    return use_fake_model(monkeypatch)


def test_closing_the_window_closes_its_models(qtbot, read_home, fake_model, monkeypatch, tmp_path):
    import shutil

    home = shutil.copytree(read_home["home"], tmp_path / "home")  # the shared library stays as it is
    monkeypatch.setenv("COMMA_HOME", str(home))
    window = make_window(qtbot)
    assert window.ask("And may I change it?") is not None
    wait_until(qtbot, lambda: not window.conversation.streaming)
    assert window.engine.shared.loaded and not fake_model.closed
    window.close()
    assert fake_model.closed and not window.engine.shared.loaded


def test_restart_restores_the_session_and_answers_without_reading_again(qtbot, read_home, fake_model, monkeypatch):
    monkeypatch.setenv("COMMA_HOME", str(read_home["home"]))

    def no_reading(*args, **kwargs):
        raise AssertionError("the document was prefilled again")

    monkeypatch.setattr("engine.reading.reader.prefill", no_reading)
    window = make_window(qtbot)
    assert window.doc is not None and window.doc["id"] == read_home["doc_id"]
    conv = window.conversation
    assert conv.session_id == read_home["session"]
    assert conv.messages[0]["content"] == "Who publishes this license?"
    assert "Who publishes this license?" in conv.transcript.toPlainText()

    job = window.ask("And may I change it?")
    assert job is not None
    wait_until(qtbot, lambda: not conv.streaming)
    assert window.banner.text() == "", window.banner.text()
    saved = window.library.messages(read_home["session"])
    assert [m["content"] for m in saved][::2] == ["Who publishes this license?", "And may I change it?"]
    assert saved[-1]["content"] == conv.messages[-1]["content"] != ""
    assert conv.session_id == read_home["session"] and "2 questions" in conv.sessions.currentText()
    assert conv.sessions.count() == 2  # "New conversation" and this one

    # Stop while the answer streams: what was said so far is kept
    pieces = []
    spy(conv, "append_text", pieces)
    window.ask("Tell me everything about the conditions for conveying copies, in detail.")
    wait_until(qtbot, lambda: (pieces))
    qtbot.mouseClick(conv.stop_button, Qt.MouseButton.LeftButton)
    wait_until(qtbot, lambda: not conv.streaming)
    assert "(stopped)" in conv.status.text() and window.banner.text() == ""
    assert window.library.messages(read_home["session"])[-1]["content"] == conv.messages[-1]["content"]

    window.summarize()
    wait_until(qtbot, lambda: conv.summary.isVisible())
    assert "Summary" in conv.summary.toPlainText() and window.banner.text() == ""

    # a new conversation beside the restored one
    conv.sessions.setCurrentIndex(0)
    conv.sessions.activated.emit(0)
    assert conv.session_id is None and conv.messages == []
    window.ask("What is this text?")
    wait_until(qtbot, lambda: not conv.streaming)
    sessions = window.library.sessions(read_home["doc_id"])
    assert len(sessions) == 2 and conv.session_id == sessions[0]["id"] != read_home["session"]
    assert sessions[0]["title"] == "What is this text?"

    # the summary is kept: a second window shows it at once
    again = make_window(qtbot)
    assert again.conversation.summary.isVisible()


def test_bad_files_are_reported_and_the_library_is_unchanged(qtbot, home, tmp_path):
    window = make_window(qtbot)
    before = rows(home)
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    unknown = tmp_path / "notes.xyz"
    unknown.write_text("hello")
    failed = []
    spy(window, "_reading_failed", failed)
    drop(window, [empty, unknown])  # both queue up
    assert len(window.library_panel.pending_texts()) == 2
    wait_until(qtbot, lambda: len(failed) == 2)
    texts = window.library_panel.pending_texts()
    assert "empty" in texts[0] and ".xyz" in texts[1]
    assert "Could not read notes.xyz" in window.banner.text()
    assert rows(home) == before and window.library.documents() == []
    assert not window.engine.shared.loaded, "a bad file is refused before any model is loaded"
    window.library_panel.dismissRequested.emit(failed[0][0])
    assert len(window.library_panel.pending_texts()) == 1


def test_mismatched_memory_is_a_message_not_a_crash(qtbot, home, tmp_path):
    """A document whose memory is missing (e.g. deleted by hand): asking says so in the window."""
    from engine.documents.document import read_document
    from storage.library import Library

    doc = gpl_text(tmp_path, chars=2500)
    Library(home).add_document(read_document(doc))
    window = make_window(qtbot, Settings(model_path=str(tmp_path / "missing.gguf")))
    assert window.doc is not None
    window.ask("What is it?")
    wait_until(qtbot, lambda: not window.conversation.streaming)
    assert "missing.gguf" in window.banner.text()
    assert window.conversation.messages == [] and window.conversation.question.toPlainText() == "What is it?"
    assert window.library.sessions(window.doc["id"]) == []


def test_viewer_find_and_library_search(qtbot, home, tmp_path):
    from engine.documents.document import read_document
    from storage.library import Library

    doc = gpl_text(tmp_path, chars=9000)
    doc_id = Library(home).add_document(read_document(doc))
    window = make_window(qtbot)
    assert window.doc["id"] == doc_id and window.viewer.view.source.count == window.doc["pages"] > 1
    assert window.viewer.find_text("copyleft") >= 1
    page = window.viewer.view.current_page()
    assert window.viewer.view.marks.get(page - 1) and "copyleft" in window.viewer.page_text(page).lower()
    assert window.viewer.find_text("no such words here") == 0
    window.viewer.view.set_zoom(2.0)
    assert window.viewer.view.zoom == 2.0

    window.library_panel.search_edit.setText("warranty")
    hits = window.library_panel.hits
    assert hits.isVisible() and hits.count() >= 1
    last = hits.item(hits.count() - 1)
    hits.itemClicked.emit(last)
    page = window.viewer.view.current_page()
    assert last.text().startswith(f"p. {page} ")
    assert "warranty" in window.viewer.page_text(page).lower() and window.viewer.view.marks.get(page - 1)
    assert f"page {page}" in window.viewer.find_label.text()


def test_settings_and_recent_files_persist(home):
    settings_store.save(Settings(model_path="/m.gguf", backend="gguf", policy="streaming", cache=512, notes=False))
    loaded = settings_store.load()
    assert loaded == Settings(model_path="/m.gguf", backend="gguf", policy="streaming", cache=512, notes=False)
    assert (home / "settings.ini").is_file()
    settings_store.add_recent("/a.pdf")
    settings_store.add_recent("/b.pdf")
    assert settings_store.add_recent("/a.pdf") == ["/a.pdf", "/b.pdf"]
    assert settings_store.recent_files() == ["/a.pdf", "/b.pdf"]


def test_answer_settings_are_kept_edited_and_reach_the_question(qtbot, home):
    from app.settings import SettingsDialog
    from engine.generate import Sampling

    settings_store.save(Settings(temperature=0.7, top_p=0.9, max_answer_tokens=400))
    loaded = settings_store.load()
    assert (loaded.temperature, loaded.top_p, loaded.max_answer_tokens) == (0.7, 0.9, 400)
    assert loaded.sampling() == Sampling(max_tokens=400, temperature=0.7, top_p=0.9)
    assert Settings(temperature=7.0).sampling() == Sampling(), "a hand-edited value out of range means the default"
    dialog = SettingsDialog(loaded)
    qtbot.addWidget(dialog)
    dialog.temperature.setValue(0.0)
    dialog.max_answer.setValue(64)
    chosen = dialog.result_settings()
    assert chosen.sampling() == Sampling(max_tokens=64, top_p=0.9)
    from app.workers import Engine

    class Recorder:
        """Stands in for the lane's Comma: keeps what the question was asked with."""

        seen: list = []

        def ask(self, *args, **kwargs):
            self.seen.append(kwargs["sampling"])
            raise RuntimeError("recorded")

    engine = Engine(chosen)
    try:
        job = engine.ask("doc", "question?", None)
        with pytest.raises(RuntimeError, match="recorded"):
            job._work(job, Recorder())
    finally:
        engine.shutdown()
    assert Recorder.seen == [chosen.sampling()]


def test_screenshot_option_parses():
    from app.cli import build_parser

    args = build_parser().parse_args(["--open", "x.pdf", "--screenshot", "out.png"])
    assert args.command is None and args.open == "x.pdf" and args.screenshot == "out.png"


def test_a_damaged_memory_is_a_message_and_changes_nothing(qtbot, read_home, fake_model, monkeypatch):
    monkeypatch.setenv("COMMA_HOME", str(read_home["home"]))
    window = make_window(qtbot)
    memory = Path(window.library.memories(read_home["doc_id"])[0]["path"])
    original = memory.read_bytes()
    before = window.library.messages(read_home["session"])
    try:
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0xFF
        memory.write_bytes(bytes(damaged))
        window.ask("Is it still there?")
        wait_until(qtbot, lambda: not window.conversation.streaming)
        assert "altered" in window.banner.text()
        assert window.library.messages(read_home["session"]) == before
        assert window.conversation.question.toPlainText() == "Is it still there?"
        assert memory.read_bytes() == bytes(damaged)
    finally:
        memory.write_bytes(original)


def test_settings_dialog_and_a_new_data_folder(qtbot, home, tmp_path):
    from app.settings import SettingsDialog
    from engine.documents.document import read_document
    from engine.documents.limits import Limits
    from storage.library import Library

    Library(home).add_document(read_document(gpl_text(tmp_path, chars=2000)))
    window = make_window(qtbot)
    assert window.library_panel.doc_ids()
    dialog = SettingsDialog(window.settings, window)
    qtbot.addWidget(dialog)
    dialog.backend.setCurrentText("gguf")
    dialog.cache.setValue(400)
    dialog.folder.setText(str(tmp_path / "elsewhere"))
    dialog.max_pages.setValue(12_000)
    dialog.max_expanded.setValue(500)
    chosen = dialog.result_settings()
    assert (chosen.backend, chosen.cache, chosen.notes) == ("gguf", 400, False)
    assert chosen.limits() == Limits(pages=12_000, expanded_bytes=500_000_000)
    assert Settings(max_pages=0).limits() == Limits()  # a hand-edited 0 would refuse every file
    window.apply_settings(chosen)
    assert window.library.folder == tmp_path / "elsewhere" and window.library_panel.doc_ids() == []
    assert window.doc is None and window.engine.settings == chosen
    assert window.engine._make_comma().limits.pages == 12_000
    assert settings_store.load() == chosen  # kept for the next start


def test_recent_files_menu(qtbot, home, tmp_path):
    window = make_window(qtbot)
    settings_store.add_recent(str(tmp_path / "a.pdf"))
    window._fill_recent()
    assert [a.text() for a in window.recent_menu.actions()] == [str(tmp_path / "a.pdf")]


def test_page_links_collapse_long_runs():
    from app.conversation_panel import ConversationPanel

    html = ConversationPanel._page_links([1, 2, 3, 4, 5, 9, 11, 12], 2)
    assert html.count("<a ") == 4 and "cite:2:1" in html and "1–5" in html and "cite:2:12" in html
    assert ConversationPanel._page_links([], 0) == ""


def test_leaving_a_document_mid_answer_keeps_the_answer_in_its_own_session(qtbot, read_home, fake_model, monkeypatch,
                                                                           tmp_path):
    from engine.documents.document import read_document
    from storage.library import Library

    monkeypatch.setenv("COMMA_HOME", str(read_home["home"]))
    other = Library(read_home["home"]).add_document(read_document(gpl_text(tmp_path, chars=1500, name="other.txt")))
    window = make_window(qtbot)
    window.library_panel.select(read_home["doc_id"])
    conv = window.conversation
    session = conv.session_id
    before = len(window.library.messages(session))
    pieces = []
    spy(conv, "append_text", pieces)
    job = window.ask("What does the preamble say about freedom?")
    wait_until(qtbot, lambda: pieces)
    window.library_panel.select(other)
    assert window.doc["id"] == other and not conv.streaming and conv.messages == []
    assert conv.ask_button.isEnabled()
    wait_until(qtbot, lambda: job.state != "running")
    assert conv.messages == [] and window.banner.text() == ""
    saved = window.library.messages(session)
    assert len(saved) == before + 2 and saved[-2]["content"] == "What does the preamble say about freedom?"


def test_sessions_renamed_and_deleted_and_summary_needs_notes(qtbot, home, tmp_path):
    from engine.documents.document import read_document
    from storage.library import Library

    library = Library(home)
    doc_id = library.add_document(read_document(gpl_text(tmp_path, chars=2000)))
    older = library.new_session(doc_id, "First question")
    library.add_message(older, "user", "First question")
    newer = library.new_session(doc_id, "Second question")
    library.add_message(newer, "user", "Second question")
    library.add_message(newer, "assistant", "An answer.", [1])
    window = make_window(qtbot)
    conv = window.conversation
    assert conv.session_id == newer and conv.sessions.count() == 3
    window.rename_session("Renamed conversation")
    assert library.session(newer)["title"] == "Renamed conversation"
    assert conv.sessions.currentText().startswith("Renamed conversation")
    window.delete_session(confirm=False)
    assert [s["id"] for s in library.sessions(doc_id)] == [older] and conv.session_id is None
    assert conv.messages == [] and library.messages(newer) == []

    assert window.summarize() is None
    assert "without section notes" in window.banner.text()


def test_pyside_keeps_every_reference_to_true_and_none():
    """PySide6 6.12.0 dropped a reference to True on every emit() and to None on every void call
    (setText…), which aborted Python 3.11 after a few hundred streamed tokens (bool_dealloc);
    pyproject.toml excludes it. 200 calls each are far below what aborts, and show the loss."""
    import sys

    from PySide6.QtCore import QObject, Signal
    from PySide6.QtWidgets import QLabel

    class Probe(QObject):
        ping = Signal()

    probe, label = Probe(), QLabel()
    for _ in range(10):  # first calls may cache objects of their own
        probe.ping.emit()
        label.setText("x")
    true_before, none_before = sys.getrefcount(True), sys.getrefcount(None)
    for _ in range(200):
        probe.ping.emit()
        label.setText("x")
    # The bug loses one reference per call (200 here); noise is a few either way.
    assert true_before - sys.getrefcount(True) < 50, "this PySide6 loses a reference to True per emit()"
    assert none_before - sys.getrefcount(None) < 50, "this PySide6 loses a reference to None per void call"


def test_sources_under_an_answer_open_their_page_and_a_follow_up_keeps_the_cache(qtbot, home, tmp_path, monkeypatch):
    from tests.fakes import QUESTION, write_doc

    fake = use_fake_model(monkeypatch, token_seconds=0)
    window = make_window(qtbot)
    drop(window, [write_doc(tmp_path / "harbour.txt")])
    wait_until(qtbot, lambda: window.doc is not None and not window.engine.jobs[-1].state == "running")
    wait_until(qtbot, lambda: window.library.memories(window.doc["id"]))
    conv = window.conversation
    gold = next(p for p in range(1, 20) if "4417" in window.library.page_text(window.doc["id"], p))
    window.ask(QUESTION)
    wait_until(qtbot, lambda: not conv.streaming and conv.messages and conv.messages[-1]["content"])
    answer = conv.messages[-1]
    assert answer["sources"][0]["page"] == gold
    shown = conv.transcript.toPlainText()
    assert "Sources:" in shown and answer["sources"][0]["text"].split()[0] in shown
    assert conv.citation_links()[0] == f"cite:{len(conv.messages) - 1}:{gold}"
    conv.open_link(conv.citation_links()[0])
    assert window.viewer.view.cited_page == gold - 1

    caches = len(fake.created)
    window.ask("And which gate does the code open?")
    wait_until(qtbot, lambda: not conv.streaming and len(conv.messages) == 4 and conv.messages[-1]["content"])
    assert len(fake.created) == caches  # the follow-up ran on the live conversation's cache
    assert window.banner.text() == ""

    # Without its recall store the answer still comes, from the memory, and says so.
    Path(window.library.memories(window.doc["id"])[0]["recall_path"]).unlink()
    window.close()
    again = make_window(qtbot)
    again.ask("Once more: the harbour code?")
    wait_until(qtbot, lambda: not again.conversation.streaming and again.conversation.messages
               and again.conversation.messages[-1]["content"])
    assert "memory alone" in again.conversation.status.text() and "--force" in again.conversation.status.text()


def test_the_answering_model_reads_in_the_background_and_answers_before_and_after(qtbot, home, tmp_path, monkeypatch):
    from tests.fakes import QUESTION, FakeAnswerer, write_doc

    answerer = FakeAnswerer(token_seconds=0.002)
    use_fake_model(monkeypatch, token_seconds=0, answerer=answerer)
    settings = Settings(cache=320, notes=False, answering="auto")
    window = make_window(qtbot, settings)
    states = []
    spy(window.library_panel, "set_deep", states)
    drop(window, [write_doc(tmp_path / "harbour.txt")])
    wait_until(qtbot, lambda: window.doc is not None and window.library.memories(window.doc["id"]))
    doc_id = window.doc["id"]
    wait_until(qtbot, lambda: any(s[1] and "%" in s[1] for s in states), timeout=10_000)  # it reports how far it is
    assert any("accurate answers" in (s[1] or "") for s in states)
    wait_until(qtbot, lambda: doc_id not in window.deep_jobs)
    assert window.library_panel.deep_state(doc_id) is None
    memories = window.library.memories(doc_id)
    assert {m["model_name"] for m in memories} == {"Fake model", "Fake answering model"}
    conv = window.conversation
    window.ask(QUESTION)
    wait_until(qtbot, lambda: not conv.streaming and conv.messages and conv.messages[-1]["content"])
    assert "read p." not in conv.status.text() and window.banner.text() == ""
    window.close()

    # After a restart, a document whose deep read is done is not read again.
    again = make_window(qtbot, settings)
    wait_until(qtbot, lambda: doc_id not in again.deep_jobs)
    assert len(again.library.memories(doc_id)) == 2 and again.library_panel.deep_state(doc_id) is None


def test_a_question_before_the_deep_read_is_answered_from_its_pages_read_on_the_spot(qtbot, home, tmp_path,
                                                                                     monkeypatch):
    from tests.fakes import QUESTION, FakeAnswerer, write_doc

    answerer = FakeAnswerer(token_seconds=0)
    use_fake_model(monkeypatch, token_seconds=0, answerer=answerer)
    window = make_window(qtbot, Settings(cache=320, notes=False, answering="auto"))
    monkeypatch.setattr(window, "deep_read", lambda doc_id: None)  # the background read has not got there
    drop(window, [write_doc(tmp_path / "harbour.txt")])
    wait_until(qtbot, lambda: window.doc is not None and window.library.memories(window.doc["id"]))
    wait_until(qtbot, lambda: not window.engine.jobs or window.engine.jobs[-1].state != "running")
    conv = window.conversation
    window.ask(QUESTION)
    wait_until(qtbot, lambda: not conv.streaming and conv.messages and conv.messages[-1]["content"])
    gold = next(p for p in range(1, 20) if "4417" in window.library.page_text(window.doc["id"], p))
    assert f"read p. {gold}" in conv.status.text()
    assert conv.messages[-1]["sources"][0]["page"] == gold


def test_a_deep_read_waits_while_a_question_is_answered(qtbot, home, tmp_path, monkeypatch):
    from tests.fakes import FakeAnswerer, write_doc

    answerer = FakeAnswerer(token_seconds=0)
    use_fake_model(monkeypatch, token_seconds=0, answerer=answerer)
    window = make_window(qtbot, Settings(cache=320, notes=False, answering="auto"))
    monkeypatch.setattr(window, "deep_read", lambda doc_id: None)
    drop(window, [write_doc(tmp_path / "harbour.txt")])
    wait_until(qtbot, lambda: window.doc is not None and window.library.memories(window.doc["id"]))
    doc_id = window.doc["id"]
    window.engine._answering.set()  # as while a question is answered
    job = window.engine.deep_read(doc_id)
    notices, done = [], []
    job.notice.connect(notices.append)
    job.finished.connect(done.append)
    window.engine.start(job)
    wait_until(qtbot, lambda: notices)
    assert notices == ["paused while a question is answered"]
    qtbot.wait(300)
    assert not done and len(window.library.memories(doc_id)) == 1
    window.engine._answering.clear()
    wait_until(qtbot, lambda: done)
    assert len(window.library.memories(doc_id)) == 2


@pytest.mark.parametrize("start", [False, True])
def test_a_long_reading_asks_first(qtbot, home, tmp_path, monkeypatch, start):
    from tests.fakes import write_doc

    use_fake_model(monkeypatch, token_seconds=0)
    monkeypatch.setattr("engine.pipeline.comma.Comma.reading_estimate", lambda self, document: 40 * 60.0)
    window = make_window(qtbot, Settings(cache=320, notes=False, answering="off", ask_above_minutes=10))
    asked = []
    monkeypatch.setattr(window, "confirm_long_reading", lambda question: asked.append(question) or start)
    cancelled = []
    spy(window, "_reading_cancelled", cancelled)
    drop(window, [write_doc(tmp_path / "harbour.txt")])
    wait_until(qtbot, lambda: window.engine.jobs and window.engine.jobs[-1].state in ("done", "cancelled"))
    assert len(asked) == 1 and "about 40 minutes" in asked[0] and "cancel it at any time" in asked[0]
    if start:
        assert window.engine.jobs[-1].state == "done" and len(window.library.documents()) == 1
    else:
        wait_until(qtbot, lambda: cancelled)
        assert window.library.documents() == [] and "not started: a long reading" in window.statusBar().currentMessage()


def test_a_scanned_page_can_be_found_and_highlighted(qtbot, home, tmp_path):
    from engine.pipeline.comma import Comma
    from storage.library import Library
    from tests.fakes import scanned_pdf

    path = scanned_pdf(tmp_path / "signed.pdf", [["1. Scope: goods and services."],
                                                  ["3. Termination: thirty days written notice."]], scanned={2})
    library = Library(home)
    document = Comma(library).read_file(path)
    doc_id = library.add_document(document)
    assert document.ocr_pages == (2,)
    window = make_window(qtbot)
    assert window.doc["id"] == doc_id
    assert window.viewer.find_text("written notice") == 1 and window.viewer.matches == [2]
    marks = window.viewer.view.marks.get(1)
    assert marks, "the scanned page's words are highlighted where they are"
    # "written notice" was typeset at about x 200-270, on the baseline y 90
    assert 170 < marks[0].left() < 240 and 88 < marks[0].bottom() < 100


def test_a_scanned_pdf_dropped_on_the_window_is_read_and_answered_with_its_page(qtbot, home, tmp_path, monkeypatch):
    from tests.fakes import NEEDLE, QUESTION, scanned_pdf

    use_fake_model(monkeypatch, token_seconds=0)
    half = NEEDLE.index(", and")
    pages = [["The lease starts in May and runs one year."], [NEEDLE[:half + 1], NEEDLE[half + 2:]],
             ["The tenant keeps the garden tidy."]]
    window = make_window(qtbot)
    notices = []
    spy(window, "_reading_notice", notices)
    drop(window, [scanned_pdf(tmp_path / "scan.pdf", pages, scanned={1, 2, 3})])
    wait_until(qtbot, lambda: window.doc is not None and window.library.memories(window.doc["id"]))
    assert any("OCR" in args[1] for args in notices)
    conv = window.conversation
    window.ask(QUESTION)
    wait_until(qtbot, lambda: not conv.streaming and conv.messages and conv.messages[-1]["content"])
    assert conv.messages[-1]["sources"][0]["page"] == 2
    assert "4417" in window.library.page_text(window.doc["id"], 2)


def test_text_from_documents_is_shown_as_plain_text(qtbot, home):
    window = make_window(qtbot)
    window.error("<h1>Huge</h1> /tmp/<b>x</b>.pdf is damaged")
    assert window.banner.label.textFormat() == Qt.TextFormat.PlainText
    assert window.library_panel.progress.title.textFormat() == Qt.TextFormat.PlainText
    assert window.library_panel.progress.detail.textFormat() == Qt.TextFormat.PlainText
    assert window.conversation.status.textFormat() == Qt.TextFormat.PlainText
