"""The library: which documents were read, their memories, notes, summaries and conversations.

A SQLite database (through sqlite-utils) and a folder of memory files, both under the data
folder: ``COMMA_HOME`` when set, else the platform's user data folder. A document's id is the
start of the SHA-256 of its bytes, so reading the same file again finds the same entry.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import platformdirs
import sqlite_utils

from engine.errors import LibraryError

DOC_ID_LENGTH = 12


def data_folder() -> Path:
    home = os.environ.get("COMMA_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("comma", appauthor=False))


def document_id(document) -> str:
    """A document's id: the start of the SHA-256 of its bytes."""
    return document.sha256[:DOC_ID_LENGTH]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Library:
    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else data_folder()
        self.memories_folder = self.folder / "memories"
        self.memories_folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(self.folder / "library.db")
        self.db.execute("PRAGMA foreign_keys = ON")
        self._create_tables()

    def _create_tables(self) -> None:
        db = self.db
        db["documents"].create({
            "id": str, "sha256": str, "title": str, "path": str, "kind": str, "pages": int,
            "chars": int, "added": str,
        }, pk="id", if_not_exists=True)
        db["memories"].create({
            "id": int, "doc_id": str, "model_fingerprint": str, "model_name": str, "backend": str,
            "policy_key": str, "policy": str, "path": str, "bytes": int, "document_tokens": int,
            "kept_tokens": int, "seconds": float, "created": str,
        }, pk="id", foreign_keys=[("doc_id", "documents")], if_not_exists=True)
        db["memories"].create_index(["doc_id", "model_fingerprint", "backend", "policy_key"],
                                    unique=True, if_not_exists=True)
        db["notes"].create({
            "memory_id": int, "idx": int, "first_page": int, "last_page": int, "text": str,
        }, pk=("memory_id", "idx"), foreign_keys=[("memory_id", "memories")], if_not_exists=True)
        db["summaries"].create({
            "memory_id": int, "text": str, "pages": str, "created": str,
        }, pk="memory_id", foreign_keys=[("memory_id", "memories")], if_not_exists=True)
        db["sessions"].create({
            "id": str, "doc_id": str, "title": str, "created": str,
        }, pk="id", foreign_keys=[("doc_id", "documents")], if_not_exists=True)
        db["messages"].create({
            "id": int, "session_id": str, "role": str, "content": str, "pages": str, "created": str,
        }, pk="id", foreign_keys=[("session_id", "sessions")], if_not_exists=True)

    # documents -------------------------------------------------------------------------------

    def add_document(self, document) -> str:
        doc_id = document_id(document)
        existing = self.db["documents"].rows_where("id = ?", [doc_id])
        if next(existing, None) is None:
            self.db["documents"].insert({
                "id": doc_id, "sha256": document.sha256, "title": document.title,
                "path": str(document.path), "kind": document.kind, "pages": document.pages,
                "chars": len(document.text), "added": _now(),
            })
        else:
            self.db["documents"].update(doc_id, {"path": str(document.path)})
        return doc_id

    def document(self, doc_id: str) -> dict:
        rows = list(self.db["documents"].rows_where("id = ? or id like ?", [doc_id, f"{doc_id}%"]))
        if len(rows) != 1:
            why = "is ambiguous" if rows else "is not in the library"
            raise LibraryError(f"document {doc_id!r} {why}; `comma list` shows the ids")
        return rows[0]

    def documents(self) -> list[dict]:
        docs = list(self.db["documents"].rows_where(order_by="added"))
        for d in docs:
            d["memories"] = self.memories(d["id"])
        return docs

    # memories --------------------------------------------------------------------------------

    def memory_path(self, doc_id: str, policy_key: str, model_fingerprint: str, backend: str) -> Path:
        return self.memories_folder / f"{doc_id}-{backend}-{policy_key}-{model_fingerprint[:12]}.mem"

    def find_memory(self, doc_id: str, model_fingerprint: str, backend: str, policy_key: str | None = None):
        where = "doc_id = ? and model_fingerprint = ? and backend = ?"
        args = [doc_id, model_fingerprint, backend]
        if policy_key is not None:
            where += " and policy_key = ?"
            args.append(policy_key)
        rows = list(self.db["memories"].rows_where(where, args, order_by="created desc, id desc"))
        return rows[0] if rows else None

    def memories(self, doc_id: str) -> list[dict]:
        return list(self.db["memories"].rows_where("doc_id = ?", [doc_id], order_by="id"))

    def save_memory(self, record: dict, notes: list) -> int:
        """Insert or replace the memory row for its (document, model, backend, policy), with notes."""
        with self.db.conn:
            old = self.find_memory(record["doc_id"], record["model_fingerprint"], record["backend"],
                                   record["policy_key"])
            if old is not None:
                self.db["notes"].delete_where("memory_id = ?", [old["id"]])
                self.db["summaries"].delete_where("memory_id = ?", [old["id"]])
                self.db["memories"].update(old["id"], {**record, "created": _now()})
                memory_id = old["id"]
            else:
                memory_id = self.db["memories"].insert({**record, "created": _now()}).last_pk
            self.db["notes"].insert_all(
                {"memory_id": memory_id, "idx": i, "first_page": n.first_page, "last_page": n.last_page,
                 "text": n.text} for i, n in enumerate(notes)
            )
        return memory_id

    def notes(self, memory_id: int) -> list[dict]:
        return list(self.db["notes"].rows_where("memory_id = ?", [memory_id], order_by="idx"))

    def save_summary(self, memory_id: int, text: str, pages: list[int]) -> None:
        self.db["summaries"].upsert({"memory_id": memory_id, "text": text, "pages": json.dumps(pages),
                                     "created": _now()}, pk="memory_id")

    def summary(self, memory_id: int) -> dict | None:
        rows = list(self.db["summaries"].rows_where("memory_id = ?", [memory_id]))
        if not rows:
            return None
        return {**rows[0], "pages": json.loads(rows[0]["pages"])}

    # sessions --------------------------------------------------------------------------------

    def new_session(self, doc_id: str, title: str) -> str:
        session_id = uuid.uuid4().hex[:12]
        self.db["sessions"].insert({"id": session_id, "doc_id": doc_id, "title": title[:80], "created": _now()})
        return session_id

    def session(self, session_id: str) -> dict:
        rows = list(self.db["sessions"].rows_where("id = ?", [session_id]))
        if not rows:
            raise LibraryError(f"session {session_id!r} is not in the library")
        return rows[0]

    def add_message(self, session_id: str, role: str, content: str, pages: list[int] | None = None) -> None:
        self.db["messages"].insert({"session_id": session_id, "role": role, "content": content,
                                    "pages": json.dumps(pages or []), "created": _now()})

    def messages(self, session_id: str) -> list[dict]:
        rows = self.db["messages"].rows_where("session_id = ?", [session_id], order_by="id")
        return [{**r, "pages": json.loads(r["pages"])} for r in rows]
