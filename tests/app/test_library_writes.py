"""What happens to a reading when the library cannot take its result: another program holds the
write lock (found before the reading starts), the library's write fails after the memory was
saved (the new files go, the previous memory comes back), or the data folder is read-only (the
library lists and answers, keeps nothing new, and says so), in the CLI and the window."""

import gc
import sqlite3
import subprocess
from pathlib import Path

import pytest

from app.cli import run
from engine.errors import LibraryError
from engine.pipeline.comma import Comma
from storage.library import Library
from tests.fakes import QUESTION, use_fake_model, write_doc


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def comma(tmp_path, monkeypatch):
    model = use_fake_model(monkeypatch, token_seconds=0)
    comma = Comma(Library(tmp_path / "home"))
    comma.fake = model
    return comma


def test_a_library_locked_by_another_program_is_found_before_the_reading(comma, tmp_path):
    doc = write_doc(tmp_path / "harbour.txt")
    other = sqlite3.connect(comma.library.folder / "library.db")
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LibraryError, match="in use by another program"):
            comma.ingest(doc, notes=False)
        assert comma.fake.created == [], "nothing was read"
        assert list((comma.library.folder / "memories").iterdir()) == []
    finally:
        other.rollback()
        other.close()
    assert not comma.ingest(doc, notes=False)["reused"]


def _full_disk(self, *args, **kwargs):
    raise sqlite3.OperationalError("database or disk is full")


def test_a_failed_library_write_removes_the_memory_it_was_for(comma, tmp_path, monkeypatch):
    kept = comma.ingest(write_doc(tmp_path / "kept.txt"), notes=False)
    before = files(comma.library.folder / "memories")
    monkeypatch.setattr(Library, "save_memory", _full_disk)
    with pytest.raises(LibraryError, match="not enough disk space to save to the library"):
        comma.ingest(write_doc(tmp_path / "new.txt", needle_at=2), notes=False)
    assert files(comma.library.folder / "memories") == before
    assert [d["id"] for d in comma.library.documents()] == [kept["doc_id"]]


def test_a_failed_library_write_when_reading_again_keeps_the_previous_memory(comma, tmp_path, monkeypatch):
    doc = write_doc(tmp_path / "kept.txt")
    first = comma.ingest(doc, notes=False)
    before = files(comma.library.folder / "memories")
    monkeypatch.setattr(Library, "save_memory", _full_disk)
    with pytest.raises(LibraryError, match="nothing was saved"):
        comma.ingest(doc, notes=False, force=True)
    monkeypatch.undo()
    assert files(comma.library.folder / "memories") == before
    assert comma.ask(first["doc_id"], QUESTION).recall, "the previous memory and its store still answer"


@pytest.fixture
def mount(tmp_path):
    """A tmpfs that can be made read-only (a real read-only data folder; root ignores modes)."""
    target = tmp_path / "mount"
    target.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "comma-test", str(target)],
                      capture_output=True).returncode:
        pytest.skip("making a read-only data folder needs permission to mount a tmpfs")
    yield target
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


def make_read_only(mount: Path) -> None:
    gc.collect()  # the libraries opened above close their databases, which a remount needs
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)


def cli(capsys, *argv):
    code = run([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_read_only_library_lists_and_answers_and_keeps_nothing(mount, tmp_path, monkeypatch, capsys):
    use_fake_model(monkeypatch, token_seconds=0)
    home = mount / "home"
    monkeypatch.setenv("COMMA_HOME", str(home))
    doc = write_doc(tmp_path / "harbour.txt")
    assert cli(capsys, "ingest", doc, "--no-notes")[0] == 0
    doc_id = Library(home).documents()[0]["id"]
    make_read_only(mount)
    before = files(home)

    code, out, err = cli(capsys, "list")
    assert code == 0 and doc_id in out, err
    code, out, err = cli(capsys, "ask", doc_id, QUESTION)
    assert code == 0 and "The fake model answers" in out and "[pages " in out and "session" not in out, err
    assert "note: the library is read-only; this conversation is not kept" in err
    code, _, err = cli(capsys, "ingest", write_doc(tmp_path / "other.txt", needle_at=2), "--no-notes")
    assert code == 2 and err.startswith("error: the library") and "is read-only" in err
    assert len(err.strip().splitlines()) == 1
    assert files(home) == before


def test_the_window_on_a_read_only_library_says_so_and_starts_no_reading(mount, tmp_path, monkeypatch, qtbot):
    from app.settings import Settings
    from app.window import MainWindow

    use_fake_model(monkeypatch, token_seconds=0)
    home = mount / "home"
    Comma(Library(home)).ingest(write_doc(tmp_path / "harbour.txt"), notes=False)
    make_read_only(mount)
    window = MainWindow(Settings(cache=320, notes=False, data_folder=str(home)))
    qtbot.addWidget(window)
    assert "read-only" in window.statusBar().currentMessage()
    assert window.deep_jobs == {} and window.library_panel.doc_ids()


def test_a_read_only_library_of_an_older_schema_is_refused_and_left_as_it_was(mount):
    home = mount / "home"
    library = Library(home)
    library.db.execute("PRAGMA user_version = 2")
    library.db.conn.commit()
    library.db.conn.close()
    make_read_only(mount)
    before = files(home)
    with pytest.raises(LibraryError, match="is read-only and was made by another version of Comma"):
        Library(home)
    assert files(home) == before


def test_the_window_says_why_a_read_only_library_cannot_forget_a_document(mount, tmp_path, monkeypatch, qtbot):
    from PySide6.QtWidgets import QMessageBox

    from app.settings import Settings
    from app.window import MainWindow

    use_fake_model(monkeypatch, token_seconds=0)
    home = mount / "home"
    doc_id = Comma(Library(home)).ingest(write_doc(tmp_path / "harbour.txt"), notes=False)["doc_id"]
    make_read_only(mount)
    window = MainWindow(Settings(cache=320, notes=False, data_folder=str(home)))
    qtbot.addWidget(window)
    window.show()
    monkeypatch.setattr(QMessageBox, "question", lambda *args, **kwargs: QMessageBox.StandardButton.Yes)
    window.remove_document(doc_id)
    assert "is read-only" in window.banner.text() and window.library_panel.doc_ids() == [doc_id]
