"""The library: documents by content hash, one memory per (document, model, backend, policy),
notes and summaries that follow their memory, sessions with their messages."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.errors import LibraryError
from engine.reader import Note
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
