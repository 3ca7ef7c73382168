"""The files a library names: only its own are ever read or deleted, whatever library.db says
(absolute paths, "..", links out of the data folder, a link loop, ids and hashes of another
shape); permissions are only ever tightened; recall stores no memory names do not pile up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.errors import CommaError, LibraryError
from engine.pipeline.comma import Comma
from storage.library import Library
from tests.fakes import QUESTION, use_fake_model, write_doc

DAY = 86_400


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: a file's bytes, a link's target (links are not followed)."""
    seen: dict[str, object] = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            seen[key] = ("link", os.readlink(path)) if path.is_symlink() else \
                path.read_bytes() if path.is_file() else "folder"
    return seen


@pytest.fixture
def outside(tmp_path) -> Path:
    """Files beside the data folder (tmp_path / "home") that a hostile row points at."""
    folder = tmp_path / "outside"
    folder.mkdir()
    for name in ("victim.mem", "victim.recall", "name.json", "x-1.partial", "x-1.partial-recall", "x-1.recall"):
        (folder / name).write_text(f"precious {name}")
    (folder / "sub").mkdir()
    (folder / "sub" / "victim.mem").write_text("precious too")
    return folder


def hostile_memory_paths(lib: Library, outside: Path) -> dict[str, tuple[str, str]]:
    """``(path, recall_path)`` a damaged or edited library.db might hold, by what is wrong with them."""
    memories = lib.memories_folder
    (memories / "link.mem").symlink_to(outside / "victim.mem")
    (memories / "link.recall").symlink_to(outside / "victim.recall")
    (memories / "loop.mem").symlink_to(memories / "loop.mem")
    (memories / "loop.recall").symlink_to(memories / "loop.recall")
    (memories / "sub").symlink_to(outside / "sub", target_is_directory=True)
    return {
        "absolute": (str(outside / "victim.mem"), str(outside / "victim.recall")),
        "dot-dot from memories": ("memories/../../outside/victim.mem", "memories/../../outside/victim.recall"),
        "dot-dot from the folder": ("../outside/victim.mem", "../outside/victim.recall"),
        "a link out": ("memories/link.mem", "memories/link.recall"),
        "a link loop": ("memories/loop.mem", "memories/loop.recall"),
        "a linked folder": ("memories/sub/victim.mem", "memories/sub/victim.recall"),
        "another suffix": (str(outside / "name.json"), str(outside / "x-1.partial")),
    }


HOSTILE = ["absolute", "dot-dot from memories", "dot-dot from the folder", "a link out", "a link loop",
           "a linked folder", "another suffix"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_no_memory_row_makes_comma_read_or_delete_a_file_outside_its_folder(tmp_path, outside, monkeypatch, kind):
    use_fake_model(monkeypatch, token_seconds=0)
    comma = Comma(Library(tmp_path / "home"))
    lib = comma.library
    doc = write_doc(tmp_path / "harbour.txt")
    report = comma.ingest(doc, notes=False)
    doc_id = report["doc_id"]
    path, recall_path = hostile_memory_paths(lib, outside)[kind]
    before = snapshot(outside)

    def point_the_row_outside() -> None:
        with lib.db.conn:
            lib.db.execute("update memories set path = ?, recall_path = ? where doc_id = ?",
                           [path, recall_path, doc_id])

    point_the_row_outside()
    [record] = lib.memories(doc_id)
    assert comma.list()[0]["memories"][0]["missing"] is True
    assert not comma._store_matches(record)
    with pytest.raises(LibraryError, match="is missing"):
        comma.ask(doc_id, QUESTION)
    # Read again: the new pair is saved, and the old store the row named is not deleted.
    assert not comma.ingest(doc, notes=False)["reused"]
    assert comma.ask(doc_id, QUESTION).recall
    point_the_row_outside()
    lib.remove_orphaned_stores(older_than_s=0)
    lib.remove_stale_temporaries(older_than_s=0)
    lib.remove_document(doc_id)
    assert lib.documents() == []
    assert snapshot(outside) == before


@pytest.mark.parametrize("doc_id, sha256", [
    pytest.param("../../outside/x", "../../outside/name", id="dot-dot"),
    pytest.param("{outside}/x", "{outside}/name", id="absolute"),
    pytest.param("abcdef123456", "../../outside/name", id="a good id, a bad hash"),
    pytest.param("ABCDEF123456", "AB" * 32, id="upper case"),
])
def test_no_document_row_makes_remove_delete_a_file_outside_its_folder(tmp_path, outside, doc_id, sha256):
    # The OCR cache is ocr/{sha256}.json and a read stopped half-way memories/{id}-*.partial*:
    # a row's id or hash of another shape would lead those paths anywhere.
    lib = Library(tmp_path / "home")
    doc_id, sha256 = doc_id.format(outside=outside), sha256.format(outside=outside)
    paths = hostile_memory_paths(lib, outside)
    with lib.db.conn:
        lib.db.execute("insert into documents (id, sha256, title, path, kind, pages, chars, added) "
                       "values (?, ?, 'T', '/a.txt', 'txt', 1, 3, '2026-01-01')", [doc_id, sha256])
        for n, (path, recall_path) in enumerate(paths.values()):
            lib.db.execute("insert into memories (doc_id, model_fingerprint, backend, policy_key, path, recall_path) "
                           "values (?, 'f', 'fake', ?, ?, ?)", [doc_id, f"key{n}", path, recall_path])
    before = snapshot(outside)
    with pytest.raises(LibraryError, match="is not a document's SHA-256"):
        lib.ocr_cache_path(sha256)
    lib.remove_document(doc_id)
    assert lib.documents() == [] and lib.db["memories"].count == 0
    assert snapshot(outside) == before


def test_remove_deletes_its_own_ocr_partial_and_store_files_and_leaves_links_and_others(tmp_path, outside):
    lib = Library(tmp_path / "home")
    sha = "ab" * 32
    doc_id = sha[:12]
    with lib.db.conn:
        lib.db.execute("insert into documents (id, sha256, title, path, kind, pages, chars, added) "
                       "values (?, ?, 'T', '/a.txt', 'txt', 1, 3, '2026-01-01')", [doc_id, sha])
    memories = lib.memories_folder
    own = [memories / f"{doc_id}-fake-sepllm-ffffffffffff.mem.partial",
           memories / f"{doc_id}-fake-sepllm-ffffffffffff.mem.partial-recall",
           memories / f"{doc_id}-fake-sepllm-ffffffffffff.0123456789ab.recall"]
    for path in own:
        path.write_text("own")
    (memories / f"{doc_id}-a.partial").symlink_to(outside / "x-1.partial")
    (memories / f"{doc_id}-b.partial").mkdir()  # a folder where a file was expected is no error
    kept = memories / "cdcdcdcdcdcd-fake-sepllm-ffffffffffff.0123456789ab.recall"  # another document's
    kept.write_text("other")
    ocr = lib.folder / "ocr"
    ocr.mkdir()
    (ocr / f"{sha}.json").symlink_to(outside / "name.json")
    before = snapshot(outside)
    lib.remove_document(doc_id)
    assert not any(path.exists() for path in own) and kept.exists()
    assert (ocr / f"{sha}.json").is_symlink() and snapshot(outside) == before


def test_a_symlink_loop_in_the_library_s_folders_is_no_traceback_after_remove(tmp_path):
    lib = Library(tmp_path / "home")
    sha = "cd" * 32
    with lib.db.conn:
        lib.db.execute("insert into documents (id, sha256, title, path, kind, pages, chars, added) "
                       "values (?, ?, 'T', '/a.txt', 'txt', 1, 3, '2026-01-01')", [sha[:12], sha])
    (lib.folder / "ocr").symlink_to(lib.folder / "ocr")  # resolving it raises RuntimeError (3.11)
    (lib.memories_folder / f"{sha[:12]}-x.partial").symlink_to(lib.memories_folder / f"{sha[:12]}-x.partial")
    lib.remove_document(sha[:12])
    assert lib.documents() == []


# --- paths kept relative to the data folder ------------------------------------------------------

def test_memory_paths_are_kept_relative_and_given_back_in_the_folder(tmp_path):
    lib = Library(tmp_path / "home")
    with lib.db.conn:
        lib.db.execute("insert into documents (id, sha256, title, path, kind, pages, chars, added) "
                       "values ('abababababab', ?, 'T', '/a.txt', 'txt', 1, 3, '2026-01-01')", ["ab" * 32])
    mem, store = lib.memories_folder / "m.mem", lib.memories_folder / "m.1.recall"
    lib.save_memory({"doc_id": "abababababab", "model_fingerprint": "f", "backend": "fake", "policy_key": "k",
                     "path": str(mem), "recall_path": str(store)}, [])
    assert lib.db.execute("select path, recall_path from memories").fetchone() == ("memories/m.mem",
                                                                                  "memories/m.1.recall")
    assert lib.find_memory("abababababab", "f", "fake")["path"] == str(mem)
    assert lib.memories("abababababab")[0]["recall_path"] == str(store)


def test_absolute_paths_of_an_older_library_become_relative(tmp_path):
    lib = Library(tmp_path / "home")
    with lib.db.conn:
        lib.db.execute("insert into documents (id, sha256, title, path, kind, pages, chars, added) "
                       "values ('abababababab', ?, 'T', '/a.txt', 'txt', 1, 3, '2026-01-01')", ["ab" * 32])
        for n, (path, store) in enumerate([("/old/home/memories/a.mem", "/old/home/memories/a.1.recall"),
                                           ("/elsewhere/b.mem", None)]):
            lib.db.execute("insert into memories (doc_id, model_fingerprint, backend, policy_key, path, recall_path) "
                           "values ('abababababab', 'f', 'fake', ?, ?, ?)", [f"k{n}", path, store])
        lib.db.execute("PRAGMA user_version = 4")
    lib.db.conn.close()
    lib = Library(tmp_path / "home")
    assert lib.schema_version == 5
    assert lib.db.execute("select path, recall_path from memories order by id").fetchall() == [
        ("memories/a.mem", "memories/a.1.recall"), ("/elsewhere/b.mem", None)]


# --- permissions -----------------------------------------------------------------------------------

def test_opening_a_library_only_ever_takes_permissions_away(tmp_path):
    home = tmp_path / "home"
    Library(home).db.conn.close()
    database = home / "library.db"
    home.chmod(0o750)
    database.chmod(0o644)
    Library(home).db.conn.close()
    assert (home.stat().st_mode & 0o777, database.stat().st_mode & 0o777) == (0o700, 0o600)
    database.chmod(0o444)  # its owner made it read-only
    before = database.read_bytes()
    lib = Library(home)
    assert database.stat().st_mode & 0o777 == 0o444, "no write permission came back"
    assert lib.read_only, "a database its owner made read-only is read-only, root or not"
    with pytest.raises(LibraryError, match="is read-only"):
        lib.check_writable()
    with pytest.raises(LibraryError, match="is read-only"):
        lib.new_session("abababababab", "q")
    assert database.read_bytes() == before and database.stat().st_mode & 0o777 == 0o444


def test_a_read_only_library_database_is_refused_for_reading_and_still_answers(tmp_path, monkeypatch):
    use_fake_model(monkeypatch, token_seconds=0)
    home = tmp_path / "home"
    doc_id = Comma(Library(home)).ingest(write_doc(tmp_path / "harbour.txt"), notes=False)["doc_id"]
    (home / "library.db").chmod(0o400)
    comma = Comma(Library(home))
    with pytest.raises(CommaError, match="is read-only"):
        comma.ingest(write_doc(tmp_path / "other.txt", needle_at=2), notes=False)
    result = comma.ask(doc_id, QUESTION)
    assert result.answer and result.not_saved == "the library is read-only; this conversation is not kept"
    assert (home / "library.db").stat().st_mode & 0o777 == 0o400


# --- recall stores no memory names -----------------------------------------------------------------

def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_recall_store_no_memory_names_goes_a_day_on_or_with_its_document(tmp_path, monkeypatch):
    # Two readings of one file at once each commit a store; the row keeps one, the other stayed.
    use_fake_model(monkeypatch, token_seconds=0)
    home = tmp_path / "home"
    report = Comma(Library(home)).ingest(write_doc(tmp_path / "harbour.txt"), notes=False)
    named = Path(report["recall_path"])
    stem = named.name.split(".")[0]
    old, young = (named.with_name(f"{stem}.{n * 12}.recall") for n in "ab")
    saving_stem = f"{report['doc_id']}-fake-other-ffffffffffff"  # another memory of it, being saved now
    saving = named.with_name(f"{saving_stem}.{'c' * 12}.recall")
    for orphan in (old, young, saving):
        orphan.write_bytes(named.read_bytes())
    other = named.with_name("cdcdcdcdcdcd-fake-sepllm-ffffffffffff.0123456789ab.recall")
    other.write_bytes(b"another document's orphan")
    for path in (old, saving, named, other):
        _age(path, 2 * DAY)
    being_saved = named.parent / f".{saving_stem}.mem.abc.tmp"
    being_saved.write_bytes(b"its memory")

    lib = Library(home)
    assert not old.exists() and not other.exists(), "a day old and named by no memory"
    assert young.exists() and saving.exists() and named.exists()
    assert Comma(lib).ask(report["doc_id"], QUESTION).recall
    being_saved.unlink()
    lib.remove_document(report["doc_id"])
    assert not young.exists() and not saving.exists() and not named.exists()

