"""The library: documents by content hash, one memory per (document, model, backend, policy),
notes and summaries that follow their memory, sessions with their messages."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.errors import LibraryError
from engine.pipeline.comma import Comma
from engine.reading.section_notes import Note
from engine.recall import page_search
from storage.library import Library, data_folder


@dataclass
class Doc:
    path: Path
    sha256: str
    title: str = "A title"
    kind: str = "txt"
    pages: int = 3
    text: str = "abc"


def memory_record(doc_id, policy_key="sepllm-4-64-256-800", kept=100):
    return {"doc_id": doc_id, "model_fingerprint": "f" * 64, "model_name": "M", "backend": "gguf",
            "policy_key": policy_key, "policy": "{}", "path": f"/x/{doc_id}.mem", "bytes": 10,
            "document_tokens": 1000, "kept_tokens": kept, "seconds": 1.0}


def test_data_folder_follows_comma_home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMA_HOME", str(tmp_path / "h"))
    assert data_folder() == tmp_path / "h"
    monkeypatch.delenv("COMMA_HOME")
    assert "comma" in str(data_folder())


def test_documents_are_identified_by_content(tmp_path):
    lib = Library(tmp_path)
    a = lib.add_document(Doc(Path("/a.txt"), "ab" * 32))
    assert lib.add_document(Doc(Path("/moved/a.txt"), "ab" * 32)) == a
    assert lib.document(a)["path"] == "/moved/a.txt"
    assert lib.document(a[:6])["id"] == a
    with pytest.raises(LibraryError, match="not in the library"):
        lib.document("ffff")


def test_memory_is_replaced_with_its_notes_and_summary(tmp_path):
    lib = Library(tmp_path)
    doc_id = lib.add_document(Doc(Path("/a.txt"), "cd" * 32))
    first = lib.save_memory(memory_record(doc_id), [Note(1, 2, "one"), Note(2, 3, "two")])
    lib.save_summary(first, "old summary", [1, 2, 3])
    again = lib.save_memory(memory_record(doc_id, kept=120), [Note(1, 3, "only")])
    assert again == first
    assert [n["text"] for n in lib.notes(first)] == ["only"]
    assert lib.summary(first) is None
    assert lib.find_memory(doc_id, "f" * 64, "gguf")["kept_tokens"] == 120
    other = lib.save_memory(memory_record(doc_id, policy_key="streaming-4-800"), [])
    assert other != first and len(lib.documents()[0]["memories"]) == 2
    assert lib.find_memory(doc_id, "0" * 64, "gguf") is None


def test_sessions_keep_messages_in_order(tmp_path):
    lib = Library(tmp_path)
    doc_id = lib.add_document(Doc(Path("/a.txt"), "ef" * 32))
    session = lib.new_session(doc_id, "What is it?")
    lib.add_message(session, "user", "What is it?")
    lib.add_message(session, "assistant", "A test.", [2, 3])
    assert [(m["role"], m["pages"]) for m in lib.messages(session)] == [("user", []), ("assistant", [2, 3])]
    assert Library(tmp_path).session(session)["doc_id"] == doc_id
    with pytest.raises(LibraryError, match="not in the library"):
        lib.session("nope")


# --- schema 1: page text and search, session order, migration from schema 0 ---------------------

PAGES = ("The licensee may copy the Program.", "", "Termination ends your rights.")


@dataclass
class PagedDoc(Doc):
    pages: int = len(PAGES)
    text: str = "".join(PAGES)

    def page_text(self, page):
        return PAGES[page - 1]


def test_pages_are_kept_and_searchable(tmp_path):
    lib = Library(tmp_path)
    doc_id = lib.add_document(PagedDoc(Path("/a.txt"), "12" * 32))
    assert lib.page_texts(doc_id) == ["The licensee may copy the Program.", "", "Termination ends your rights."]
    assert lib.page_text(doc_id, 3).startswith("Termination")
    hits = lib.search("terminated")  # stemmed: terminated ~ termination
    assert [(h["doc_id"], h["page"]) for h in hits] == [(doc_id, 3)]
    assert "[Termination]" in hits[0]["snippet"] and hits[0]["title"] == "A title"
    assert lib.search('copy "program') and lib.search("copy", doc_id="nope") == []
    assert lib.search("   ") == []
    lib.add_document(PagedDoc(Path("/moved.txt"), "12" * 32))  # added again: pages not doubled
    assert len(lib.page_texts(doc_id)) == 3


def test_sessions_newest_first_renamed_and_removed(tmp_path):
    lib = Library(tmp_path)
    doc_id = lib.add_document(Doc(Path("/a.txt"), "34" * 32))
    first = lib.new_session(doc_id, "First   question\nwith a line break")
    second = lib.new_session(doc_id, "Second")
    lib.add_message(first, "user", "again?", seconds=None)
    lib.add_message(first, "assistant", "yes", [1], seconds=0.5)
    sessions = lib.sessions(doc_id)
    assert [s["id"] for s in sessions] == [first, second]
    assert sessions[0]["title"] == "First question with a line break" and sessions[0]["messages"] == 2
    assert lib.messages(first)[1]["seconds"] == 0.5
    lib.rename_session(second, "Renamed")
    assert lib.session(second)["title"] == "Renamed"
    lib.remove_session(first)
    assert [s["id"] for s in lib.sessions(doc_id)] == [second]
    assert lib.db["messages"].count == 0


def test_a_conversation_stamped_by_an_older_library_sorts_before_a_later_one_in_its_millisecond(tmp_path):
    lib = Library(tmp_path)
    doc_id = lib.add_document(Doc(Path("/a.txt"), "35" * 32))
    older, later = lib.new_session(doc_id, "older"), lib.new_session(doc_id, "later")
    lib.db["sessions"].update(older, {"updated": "2026-01-01T00:00:00.123+00:00"})
    lib.db["sessions"].update(later, {"updated": "2026-01-01T00:00:00.123001+00:00"})
    assert [s["id"] for s in lib.sessions(doc_id)] == [later, older]


def test_removing_a_document_forgets_everything_about_it(tmp_path):
    lib = Library(tmp_path)
    doc_id = lib.add_document(PagedDoc(Path("/a.txt"), "56" * 32))
    record = memory_record(doc_id)
    mem = lib.memories_folder / "m.mem"
    mem.write_bytes(b"x")
    memory_id = lib.save_memory({**record, "path": str(mem)}, [Note(1, 2, "n")])
    lib.save_summary(memory_id, "s", [1])
    session = lib.new_session(doc_id, "q")
    lib.add_message(session, "user", "q")
    lib.remove_document(doc_id)
    assert lib.documents() == [] and not mem.exists() and lib.search("licensee") == []
    for table in ("pages", "memories", "notes", "summaries", "sessions", "messages"):
        assert lib.db[table].count == 0, table


SCHEMA_0 = """
CREATE TABLE [documents] ([id] TEXT PRIMARY KEY, [sha256] TEXT, [title] TEXT, [path] TEXT, [kind] TEXT,
    [pages] INTEGER, [chars] INTEGER, [added] TEXT);
CREATE TABLE [memories] ([id] INTEGER PRIMARY KEY, [doc_id] TEXT REFERENCES [documents]([id]),
    [model_fingerprint] TEXT, [model_name] TEXT, [backend] TEXT, [policy_key] TEXT, [policy] TEXT, [path] TEXT,
    [bytes] INTEGER, [document_tokens] INTEGER, [kept_tokens] INTEGER, [seconds] FLOAT, [created] TEXT);
CREATE UNIQUE INDEX [idx_memories_doc_id_model_fingerprint_backend_policy_key]
    ON [memories] ([doc_id], [model_fingerprint], [backend], [policy_key]);
CREATE TABLE [notes] ([memory_id] INTEGER REFERENCES [memories]([id]), [idx] INTEGER, [first_page] INTEGER,
    [last_page] INTEGER, [text] TEXT, PRIMARY KEY ([memory_id], [idx]));
CREATE TABLE [summaries] ([memory_id] INTEGER PRIMARY KEY REFERENCES [memories]([id]), [text] TEXT,
    [pages] TEXT, [created] TEXT);
CREATE TABLE [sessions] ([id] TEXT PRIMARY KEY, [doc_id] TEXT REFERENCES [documents]([id]), [title] TEXT,
    [created] TEXT);
CREATE TABLE [messages] ([id] INTEGER PRIMARY KEY, [session_id] TEXT REFERENCES [sessions]([id]), [role] TEXT,
    [content] TEXT, [pages] TEXT, [created] TEXT);
INSERT INTO documents VALUES ('abababababab', '{sha}', 'Old doc', '{path}', 'txt', 1, 20, '2026-01-01T00:00:00+00:00');
INSERT INTO memories VALUES (1, 'abababababab', 'ff', 'M', 'gguf', 'sepllm', '{{}}', '/x.mem', 10, 100, 50, 1.0,
    '2026-01-01T00:00:00+00:00');
INSERT INTO notes VALUES (1, 0, 1, 1, 'a note');
INSERT INTO summaries VALUES (1, 'a summary', '[1]', '2026-01-01T00:00:00+00:00');
INSERT INTO sessions VALUES ('s1', 'abababababab', 'Old question', '2026-01-01T00:00:00+00:00');
INSERT INTO sessions VALUES ('s2', 'abababababab', 'Older question', '2025-12-01T00:00:00+00:00');
INSERT INTO messages VALUES (1, 's2', 'user', 'Older question', '[]', '2026-02-01T00:00:00+00:00');
INSERT INTO messages VALUES (2, 's2', 'assistant', 'An answer.', '[1]', '2026-02-01T00:00:05+00:00');
"""


def test_a_schema_0_library_opens_migrated_with_its_data(tmp_path):
    import hashlib
    import sqlite3

    source = tmp_path / "old.txt"
    source.write_text("Old text about copying.")
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    with sqlite3.connect(tmp_path / "library.db") as conn:
        conn.executescript(SCHEMA_0.format(sha=sha, path=source))
    lib = Library(tmp_path)
    assert lib.schema_version == 5
    assert [d["title"] for d in lib.documents()] == ["Old doc"]
    assert lib.documents()[0]["memories"][0]["kept_tokens"] == 50
    # a memory read before recall stores has none; an old answer has no sources
    assert lib.documents()[0]["memories"][0]["recall_path"] is None
    assert lib.messages("s2")[1]["sources"] == []
    assert [n["text"] for n in lib.notes(1)] == ["a note"] and lib.summary(1)["text"] == "a summary"
    # sessions get an "updated" time from their last message, so the active one comes first
    assert [s["id"] for s in lib.sessions("abababababab")] == ["s2", "s1"]
    assert [m["content"] for m in lib.messages("s2")] == ["Older question", "An answer."]
    # page text arrives from the file when first needed, and is then searchable
    assert lib.page_texts("abababababab") == []
    assert Comma(library=lib).ensure_pages("abababababab")
    assert lib.search("copying")[0]["page"] == 1
    lib.add_message("s1", "user", "new")
    assert [s["id"] for s in Library(tmp_path).sessions("abababababab")] == ["s1", "s2"]
    assert lib.section_at("abababababab", 1) is None and lib.sections("abababababab") == []
    assert lib.passage_vectors("abababababab", "any")[0].size == 0  # read before: no meaning index yet
    assert Library(tmp_path).schema_version == 5  # opening again changes nothing


def test_pages_of_a_changed_file_are_not_taken(tmp_path):
    lib = Library(tmp_path)
    source = tmp_path / "a.txt"
    source.write_text("Original.")
    doc_id = lib.add_document(Doc(source, "00" * 32))  # Doc has no page_text: like schema 0
    comma = Comma(library=lib)
    assert not comma.ensure_pages(doc_id)
    source.unlink()
    assert not comma.ensure_pages(doc_id)


def test_reading_rate_is_this_models_characters_per_second(tmp_path):
    lib = Library(tmp_path)
    assert lib.reading_rate("f" * 64, "gguf") is None
    for n, (chars, seconds) in enumerate([(3000, 2.0), (1000, 2.0)]):
        doc_id = lib.add_document(Doc(Path(f"/{n}.txt"), f"{n}" * 64, text="x" * chars))
        lib.save_memory({**memory_record(doc_id), "seconds": seconds}, [])
    assert lib.reading_rate("f" * 64, "gguf") == pytest.approx(1000.0)
    assert lib.reading_rate("f" * 64, "torch") is None and lib.reading_rate("0" * 64, "gguf") is None


def test_sections_are_kept_per_page_and_replaced_when_read_again(tmp_path):
    from engine.documents.document import Document, Section

    text = "Intro words. " * 10 + "8 Termination. Either party may end it." + " More." * 5
    at = text.index("8 Termination")
    doc = Document(Path("/c.txt"), "C", "ee" * 32, text, (0, 60, 120), "txt",
                   (Section("Preamble", 1, 0), Section("8 Termination", 1, at)))
    lib = Library(tmp_path)
    doc_id = lib.add_document(doc)
    page = doc.page_at(at)
    assert lib.section_at(doc_id, page, at - doc.page_starts[page - 1]) == "8 Termination"
    assert page == 3 and lib.section_at(doc_id, 3, 0) == "Preamble" and lib.section_at(doc_id, 1) == "Preamble"
    assert lib.section_at(doc_id, 3, 50) == "8 Termination"
    lib.add_document(Document(Path("/c.txt"), "C", "ee" * 32, text, (0, 60, 120), "txt"))
    assert lib.sections(doc_id) == [] and lib.section_at(doc_id, 3, 50) is None
    lib.add_document(doc)
    lib.remove_document(doc_id)
    assert lib.db["sections"].count == 0


def test_removing_a_document_deletes_only_the_librarys_own_files(tmp_path):
    # An edited library.db pointed a memory at a person's file; "Remove from library" deleted it.
    lib = Library(tmp_path / "home")
    doc_id = lib.add_document(Doc(Path("/a.txt"), "ab" * 32))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    own = lib.memories_folder / "mine.mem"
    own.write_bytes(b"memory")
    lib.save_memory({**memory_record(doc_id), "path": str(victim)}, [])
    lib.save_memory({**memory_record(doc_id, policy_key="streaming-4-800"), "path": str(own)}, [])
    sneaky = lib.memories_folder / "link.mem"
    sneaky.symlink_to(victim)
    lib.save_memory({**memory_record(doc_id, policy_key="full"), "path": str(sneaky)}, [])
    ocr_kept = lib.ocr_cache_path("ab" * 32)
    ocr_kept.parent.mkdir()
    ocr_kept.write_text("{}")
    lib.remove_document(doc_id)
    assert victim.read_text() == "precious" and not own.exists() and lib.documents() == []
    assert not ocr_kept.exists()  # what OCR read of it goes with it


def test_ids_are_literal_prefixes_and_a_nul_in_a_search_is_no_error(tmp_path):
    lib = Library(tmp_path)
    doc_id = lib.add_document(Doc(Path("/a.txt"), "ab" * 32, text="Notice ends it."))
    for wildcard in ("%", "_", "ab%", "a_"):
        with pytest.raises(LibraryError, match="not in the library"):
            lib.document(wildcard)
    assert lib.document(doc_id[:4])["id"] == doc_id
    assert lib.search("\x00") == [] and lib.search("not\x00ice") == []


def test_the_library_is_private(tmp_path):
    lib = Library(tmp_path / "home")
    assert (lib.folder.stat().st_mode & 0o777) == 0o700
    assert (lib.memories_folder.stat().st_mode & 0o777) == 0o700
    assert ((lib.folder / "library.db").stat().st_mode & 0o777) == 0o600


def test_two_processes_adding_the_same_document_and_memory_do_not_collide(tmp_path):
    # Each check-then-insert could interleave with another writer's and raise IntegrityError.
    import threading

    errors, barrier = [], threading.Barrier(4, timeout=60)
    Library(tmp_path)  # the schema exists before the writers open it

    def writer() -> None:
        try:
            lib = Library(tmp_path)
            barrier.wait()
            for n in range(15):
                doc_id = lib.add_document(Doc(Path("/same.txt"), "ab" * 32))
                lib.save_memory(memory_record(doc_id, kept=n), [Note(1, 2, f"note {n}")])
        except Exception as exc:  # noqa: BLE001 (any error at all fails the test)
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    lib = Library(tmp_path)
    [doc] = lib.documents()
    assert len(doc["memories"]) == 1 and len(lib.notes(doc["memories"][0]["id"])) == 1


def test_a_save_that_fails_half_way_changes_nothing(tmp_path, monkeypatch):
    # sqlite-utils commits each statement on its own outside a transaction: without one, a
    # failure after the memory row was written left it pointing at notes that were gone.
    lib = Library(tmp_path)
    doc_id = lib.add_document(Doc(Path("/a.txt"), "cd" * 32))
    first = lib.save_memory(memory_record(doc_id, kept=100), [Note(1, 2, "kept note")])
    table = type(lib.db["notes"])

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(table, "insert_all", broken)
    with pytest.raises(OSError):
        lib.save_memory(memory_record(doc_id, kept=999), [Note(1, 3, "new note")])
    monkeypatch.undo()
    assert lib.find_memory(doc_id, "f" * 64, "gguf")["kept_tokens"] == 100
    assert [n["text"] for n in lib.notes(first)] == ["kept note"]


@pytest.mark.parametrize("breakage, words", [
    ("random bytes", "is damaged"),
    ("a page overwritten", "is damaged"),
    ("memories is a file", "cannot use the data folder"),
    ("the folder is a file", "cannot use the data folder"),
])
def test_a_broken_library_is_a_clear_error_and_is_left_as_it_was(tmp_path, breakage, words):
    home = tmp_path / "home"
    lib = Library(home)
    lib.add_document(Doc(Path("/a.txt"), "ab" * 32, text="Some page text. " * 400))
    lib.db.conn.close()
    database = home / "library.db"
    for leftover in home.glob("library.db-*"):  # checkpointed by the close
        leftover.unlink()
    if breakage == "random bytes":
        database.write_bytes(bytes(range(256)) * 64)
    elif breakage == "a page overwritten":
        data = bytearray(database.read_bytes())
        data[4096:8192] = b"\xff" * 4096
        database.write_bytes(bytes(data))
    elif breakage == "memories is a file":
        (home / "memories").rmdir()
        (home / "memories").write_text("not a folder")
    else:
        home = tmp_path / "plain-file"
        home.write_text("not a folder")
    before = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} if home.is_dir() else home.read_bytes()
    with pytest.raises(LibraryError, match=words):
        Library(home)
    after = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} if home.is_dir() else home.read_bytes()
    assert after == before


def test_a_library_another_program_holds_locked_says_so(tmp_path, monkeypatch):
    import sqlite3

    import storage.library

    Library(tmp_path).db.conn.close()
    other = sqlite3.connect(tmp_path / "library.db")
    other.execute("PRAGMA locking_mode = EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(storage.library, "BUSY_TIMEOUT_S", 0.2)
    with pytest.raises(LibraryError, match="in use by another program"):
        Library(tmp_path)
    other.close()
    assert Library(tmp_path).documents() == []


def test_a_library_database_that_cannot_be_opened_says_what_to_check(tmp_path):
    (tmp_path / "library.db").mkdir()  # what SQLite cannot open, as on a folder it may not write
    with pytest.raises(LibraryError, match="cannot open the library .* can be written"):
        Library(tmp_path)


def test_passage_vectors_are_kept_per_encoder_replaced_whole_and_removed_with_the_document(tmp_path):
    import numpy as np

    lib = Library(tmp_path)
    source = tmp_path / "a.txt"
    source.write_text("Some text.")
    doc_id = lib.add_document(Doc(source, "ab" * 32))
    rows = [(1, 0, 4, np.array([0.6, 0.8], np.float32)), (2, 5, 9, np.array([1.0, 0.0], np.float32))]
    lib.set_passage_vectors(doc_id, "enc", rows)
    pages, spans, vectors = lib.passage_vectors(doc_id, "enc")
    assert pages.tolist() == [1, 2] and spans.tolist() == [[0, 4], [5, 9]]
    assert np.allclose(vectors, [[0.6, 0.8], [1.0, 0.0]], atol=1e-3) and vectors.dtype == np.float32
    assert lib.passage_vectors(doc_id, "another encoder")[0].size == 0
    lib.set_passage_vectors(doc_id, "enc", rows[1:])
    assert lib.passage_vectors(doc_id, "enc")[0].tolist() == [2]
    lib.remove_document(doc_id)
    assert lib.db.execute("select count(*) from passage_vectors").fetchone()[0] == 0


def test_a_page_with_the_question_s_words_together_comes_before_pages_that_repeat_one_of_them(tmp_path):
    from engine.documents.document import Document

    pages = [
        "San Francisco had startups. In San Francisco the best founders met investors; San Francisco grew. " * 3,
        "Essays on painting and cities. The best thing to do in San Francisco is to sit in the park. Then more.",
        "San Francisco, San Francisco, and a thing or two about the weather in San Francisco. " * 3,
    ]
    starts = [sum(len(p) for p in pages[:i]) for i in range(len(pages))]
    lib = Library(tmp_path)
    doc_id = lib.add_document(Document(Path("/e.txt"), "E", "dd" * 32, "".join(pages), tuple(starts), "txt"))
    found = [page for page, _ in page_search.word_pages(lib, doc_id, "What is the best thing to do in San Francisco?", 8)]
    assert found[0] == 2 and set(found) == {1, 2, 3}  # every page that shares a word stays a candidate
