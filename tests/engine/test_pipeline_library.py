"""The pipeline and the library it keeps: a library moved or copied whole answers from its own
memories; a memory whose page map is not its document's pages is refused; a library another
program is writing to answers at once and says the answer is not kept; an empty question is
refused before anything is loaded or kept."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

import storage.library
from engine.errors import CommaError, MemoryFileError
from engine.memory.file_format import read_memory, write_memory
from engine.pipeline.comma import Comma
from storage.library import Library
from tests.fakes import QUESTION, needle_page, use_fake_model, write_doc
from tests.storage.test_library_files import snapshot


@pytest.fixture
def fake(monkeypatch):
    return use_fake_model(monkeypatch, token_seconds=0)


@pytest.fixture
def comma(fake, tmp_path):
    return Comma(Library(tmp_path / "home"))


@pytest.fixture
def doc_id(comma, tmp_path) -> str:
    return comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False)["doc_id"]


def close(comma: Comma) -> None:
    comma.library.db.conn.close()


# --- a library moved or copied whole ---------------------------------------------------------------

def test_a_library_moved_whole_answers_and_a_copy_removes_only_its_own_files(comma, doc_id, tmp_path):
    close(comma)
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "home", moved)
    there = Comma(Library(moved))
    result = there.ask(doc_id, QUESTION)
    assert result.recall and needle_page(there, doc_id) in result.pages
    [memory] = there.list()[0]["memories"]
    assert not memory["missing"] and memory["path"].startswith(str(moved / "memories"))
    again = there.ingest(tmp_path / "harbour.txt", notes=False)
    assert again["reused"] and Path(again["memory_path"]).parent == moved / "memories"
    assert Path(again["recall_path"]).parent == moved / "memories"

    close(there)
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    before = snapshot(moved)
    Library(copy).remove_document(doc_id)
    assert not list((copy / "memories").iterdir())
    assert snapshot(moved) == before and Comma(Library(moved)).ask(doc_id, QUESTION).recall


def test_an_older_library_naming_its_memories_by_absolute_paths_still_answers_once_moved(comma, doc_id, tmp_path):
    [record] = comma.library.memories(doc_id)  # as this library gives them: absolute
    with comma.library.db.conn:
        comma.library.db.execute("update memories set path = ?, recall_path = ?",
                                 [record["path"], record["recall_path"]])
        comma.library.db.execute("PRAGMA user_version = 4")
    close(comma)
    shutil.move(tmp_path / "home", tmp_path / "moved")
    there = Comma(Library(tmp_path / "moved"))
    assert there.library.db.execute("select path from memories").fetchone()[0].startswith("memories/")
    assert there.ask(doc_id, QUESTION).recall


# --- the page map -------------------------------------------------------------------------------

def _rewrite_header(path: Path, change) -> None:
    """The memory again, valid checksums around a header its reader never wrote."""
    f = read_memory(path)
    header = {k: v for k, v in f.header.items() if k not in ("sections", "format_version")}
    change(header)
    write_memory(path, header, dict(f.sections))


@pytest.mark.parametrize("change, words", [
    pytest.param(lambda h: h.update(page_token_starts=[]), "maps 0 pages", id="empty"),
    pytest.param(lambda h: h.update(page_token_starts=[h["prompt_tokens"]] * 1_000_000), "maps 1000000 pages",
                 id="a million pages"),
    pytest.param(lambda h: h.update(page_token_starts=h["page_token_starts"][:-1]), "maps 3 pages",
                 id="one page short"),
])
def test_a_memory_whose_page_map_is_not_its_document_s_pages_is_refused(comma, doc_id, change, words):
    [record] = comma.library.memories(doc_id)
    _rewrite_header(Path(record["path"]), change)
    with pytest.raises(MemoryFileError, match=f"{words}, but .* has 4; read it again"):
        comma.ask(doc_id, QUESTION)
    assert comma.library.sessions(doc_id) == []


def test_a_store_with_passages_past_the_document_s_last_page_is_not_used(comma, doc_id):
    doc, record = comma._memory_record(doc_id)
    memory = comma.load_memory(doc, record)
    assert comma.open_recall(doc, record, memory).thing is not None
    store, reason = comma.open_recall({**doc, "pages": 2}, record, memory)
    assert store is None and "holds a passage of page 3, but" in reason and "has 2 pages" in reason


# --- a library another program is writing to ---------------------------------------------------

def test_a_library_another_program_writes_to_answers_at_once_and_keeps_nothing(comma, doc_id):
    session = comma.ask(doc_id, QUESTION).session_id
    other = sqlite3.connect(comma.library.database)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        fresh = comma.ask(doc_id, QUESTION)
        follow_up = comma.ask(doc_id, "Which gate does it open?", session)
        assert time.monotonic() - started < 15, "the answers did not wait for the lock"
    finally:
        other.rollback()
        other.close()
    for result in (fresh, follow_up):
        assert result.answer and result.not_saved == ("the library is in use by another program that is writing "
                                                      "to it; this conversation is not kept")
    assert fresh.session_id == "" and follow_up.session_id == session
    assert [s["messages"] for s in comma.library.sessions(doc_id)] == [2]


def test_a_lock_taken_while_the_answer_is_written_keeps_the_answer_and_nothing_else(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(storage.library, "BUSY_TIMEOUT_S", 0.5)
    comma = Comma(Library(tmp_path / "home"))
    doc_id = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False)["doc_id"]
    other = sqlite3.connect(comma.library.database)

    def lock(_piece: str) -> None:
        if not other.in_transaction:
            other.execute("BEGIN IMMEDIATE")

    try:
        result = comma.ask(doc_id, QUESTION, on_text=lock)
    finally:
        other.rollback()
        other.close()
    assert result.answer and result.session_id == ""
    assert "in use by another program" in result.not_saved and "nothing was saved" in result.not_saved
    assert comma.library.sessions(doc_id) == []


# --- an empty question -------------------------------------------------------------------------------

@pytest.mark.parametrize("question", ["", "   ", "\n\t "])
@pytest.mark.parametrize("live", [False, True])
def test_an_empty_question_is_refused_before_anything_is_loaded_or_kept(comma, fake, doc_id, question, live):
    fake.created.clear()
    with pytest.raises(CommaError, match="the question is empty"):
        comma.ask(doc_id, question, live=live)
    assert fake.created == [] and comma.library.sessions(doc_id) == []
    with comma.conversation(doc_id) as conversation, pytest.raises(CommaError, match="the question is empty"):
        conversation.ask(question)
    assert comma.library.sessions(doc_id) == []
