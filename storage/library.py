"""The library: which documents were read, their memories, notes, summaries and conversations.

A SQLite database (through sqlite-utils) and a folder of memory files, both under the data
folder: ``COMMA_HOME`` when set, else the platform's user data folder. A document's id is the
start of the SHA-256 of its bytes, so reading the same file again finds the same entry.

The schema carries a version (SQLite's ``user_version``); opening an older database migrates it
in place, keeping every row. Version 1 added page text with full-text
search (what the window's viewer and search read), session ``updated`` times (the sessions list
is newest first) and the time each answer took. Version 2 added each memory's recall store
(path and size) and each answer's sources. Version 3 added sections; version 4 the sentence
vectors of each page's passages (``engine.recall.page_search``), which documents read before get when
they are next ingested.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.request import pathname2url

import numpy as np
import platformdirs
import sqlite_utils

from engine.errors import LibraryError

DOC_ID_LENGTH = 12
SCHEMA_VERSION = 4
BUSY_TIMEOUT_S = 30.0


def data_folder() -> Path:
    home = os.environ.get("COMMA_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("comma", appauthor=False))


def models_folder(folder: Path) -> Path:
    """Where faster copies of model weights (engine.backends.gguf.fast_weights) are kept for ``folder``.
    COMMA_MODELS lets several data folders (the tests' temporary ones) share one copy."""
    return Path(os.environ.get("COMMA_MODELS") or folder / "models").expanduser()


def document_id(document) -> str:
    """A document's id: the start of the SHA-256 of its bytes."""
    return document.sha256[:DOC_ID_LENGTH]


def _now() -> str:
    # Microseconds: conversations are ordered by these stamps, and two writes a millisecond apart
    # tied (a new conversation then passed the one just answered). A millisecond stamp of an older
    # library still sorts before every later one.
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _read_only_failure(exc: Exception) -> bool:
    """Whether opening failed only because the data folder or database cannot be written."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    return isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc)


class Library:
    """``read_only``: the data folder cannot be written (a read-only mount, a backup opened in
    place); the library then lists, searches and answers, and every write is refused with a
    LibraryError saying so, before any long work starts (``check_writable``)."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else data_folder()
        self.memories_folder = self.folder / "memories"
        self.models_folder = models_folder(self.folder)
        self.read_only = False
        self.database = self.folder / "library.db"
        try:
            try:
                self._open(self.database)
            except (sqlite3.DatabaseError, OSError) as exc:
                if not (_read_only_failure(exc) and self.database.is_file()):
                    raise
                self._close_connection()
                self._open_read_only(self.database)
        except (sqlite3.DatabaseError, OSError) as exc:
            self._close_connection()
            raise self._refusal(self.database, exc) from exc

    def _close_connection(self) -> None:
        if getattr(self, "db", None) is not None:
            self.db.conn.close()
            del self.db

    def _refusal(self, database: Path, exc: Exception) -> LibraryError:
        """A sentence for what stopped the library from opening."""
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
            return LibraryError(f"the library {database} is in use by another program that is writing to it; "
                                "try again when it is done")
        if isinstance(exc, sqlite3.OperationalError):
            return LibraryError(f"cannot open the library {database}: {exc}; check that the data folder "
                                f"{self.folder} can be written, or choose another (COMMA_HOME)")
        if isinstance(exc, sqlite3.DatabaseError):  # not a database, or damaged pages
            return LibraryError(f"the library {database} is damaged ({exc}); move it aside (Comma then starts an "
                                "empty library) or restore it from a backup")
        assert isinstance(exc, OSError)
        return LibraryError(f"cannot use the data folder {self.folder}: {exc.strerror or exc} "
                            f"({exc.filename or self.folder}); choose another (COMMA_HOME)")

    def _open(self, database: Path) -> None:
        # Page text and conversations are private: the folders and the database are the user's alone.
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.memories_folder.mkdir(mode=0o700, exist_ok=True)
        database.touch(mode=0o600, exist_ok=True)
        for private, mode in ((self.folder, 0o700), (self.memories_folder, 0o700), (database, 0o600)):
            with contextlib.suppress(OSError):  # a folder on a file system without modes (FAT, a share)
                private.chmod(mode)
        # The window reads the library while its workers write it, each on its own connection:
        # write-ahead logging lets readers go on during a write, and a writer waits its turn.
        self.db = sqlite_utils.Database(sqlite3.connect(database, timeout=BUSY_TIMEOUT_S))
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        verdict = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]  # damage found now, not mid-reading
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict)
        self._create_tables()
        self._migrate()
        self.remove_stale_temporaries()

    def _open_read_only(self, database: Path) -> None:
        # pathname2url, not as_uri(): a Windows share's path must become file:////server/..., which
        # SQLite accepts, not file://server/..., whose host it refuses.
        uri = f"file:{pathname2url(str(database.resolve()))}?mode=ro"
        try:
            # Read-only but with locks and the write-ahead log: another program may still write
            # a file this user cannot (someone else's library), and recent rows may be in the log.
            self.db = sqlite_utils.Database(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S))
            verdict = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.OperationalError:
            # On a read-only mount SQLite cannot make the -shm file that reading a WAL database
            # needs; nothing can change the file there, so it may be read as immutable.
            self._close_connection()
            self.db = sqlite_utils.Database(sqlite3.connect(uri + "&immutable=1", uri=True))
            verdict = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict)
        version = self.schema_version
        if version != SCHEMA_VERSION or not self.db.table("documents").exists():
            self._close_connection()
            raise LibraryError(f"the library {database} is read-only and was made by another version of Comma "
                               f"(schema {version}, this one needs {SCHEMA_VERSION}), so it cannot be "
                               "brought up to date; open it where it can be written, or choose another (COMMA_HOME)")
        self.read_only = True

    def _write_refusal(self, exc: sqlite3.Error) -> LibraryError:
        """A sentence for a write the database refused; nothing of that write was kept."""
        text = str(exc)
        if self.read_only or "readonly" in text:
            return LibraryError(f"the library {self.database} is read-only, so nothing can be saved to it; "
                                "open it where it can be written, or choose another (COMMA_HOME)")
        if "locked" in text or "busy" in text:
            return LibraryError(f"the library {self.database} is in use by another program that is writing to it; "
                                "nothing was saved; try again when it is done")
        if "full" in text:
            return LibraryError(f"not enough disk space to save to the library {self.database}; nothing was saved")
        return LibraryError(f"the library {self.database} could not be written ({text}); nothing was saved")

    def check_writable(self, wait_s: float = 2.0) -> None:
        """Raise LibraryError now, before a reading of minutes, if its result could not be saved:
        the library is read-only, or another program holds its write lock."""
        if self.read_only:
            raise self._write_refusal(sqlite3.OperationalError("readonly"))
        self.db.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        try:
            self.db.conn.execute("BEGIN IMMEDIATE")
            self.db.conn.rollback()
        except sqlite3.Error as exc:
            raise self._write_refusal(exc) from exc
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        """Bring the schema up to SCHEMA_VERSION one step at a time. Each step only adds (tables,
        columns, an index) and checks what is already there, and the version is recorded after it
        completes, so a step that was interrupted simply runs again on the next open."""
        steps = {1: self._migrate_to_1, 2: self._migrate_to_2, 3: self._migrate_to_3, 4: self._migrate_to_4}
        for version in range(self.schema_version + 1, SCHEMA_VERSION + 1):
            with self.db.conn:
                steps[version]()
                self.db.execute(f"PRAGMA user_version = {version}")

    def _migrate_to_1(self) -> None:
        db = self.db
        db.table("pages").create({"doc_id": str, "page": int, "text": str}, pk=("doc_id", "page"),
                           foreign_keys=[("doc_id", "documents")], if_not_exists=True)
        if not db.table("pages_fts").exists():
            db.table("pages").enable_fts(["text"], fts_version="FTS5", create_triggers=True, tokenize="porter")
        if "updated" not in db.table("sessions").columns_dict:
            db.table("sessions").add_column("updated", str)
        db.execute("""update sessions set updated = coalesce(
                          (select max(created) from messages where messages.session_id = sessions.id), created)
                      where updated is null""")
        if "seconds" not in db.table("messages").columns_dict:
            db.table("messages").add_column("seconds", float)

    def _migrate_to_2(self) -> None:
        memories = self.db.table("memories").columns_dict
        if "recall_path" not in memories:
            self.db.table("memories").add_column("recall_path", str)
        if "recall_bytes" not in memories:
            self.db.table("memories").add_column("recall_bytes", int)
        if "sources" not in self.db.table("messages").columns_dict:
            self.db.table("messages").add_column("sources", str)

    def _migrate_to_3(self) -> None:
        # Documents read before keep no sections until they are read again; citations then
        # simply show no section.
        self.db.table("sections").create({
            "doc_id": str, "idx": int, "title": str, "level": int, "page": int, "within": int,
        }, pk=("doc_id", "idx"), foreign_keys=[("doc_id", "documents")], if_not_exists=True)

    def _migrate_to_4(self) -> None:
        # The vectors are float16 bytes, ``dim`` of them; ``encoder`` names the model that made
        # them, so vectors of another encoder are never compared with a question's.
        self.db.table("passage_vectors").create({
            "doc_id": str, "idx": int, "encoder": str, "page": int, "start": int, "end": int, "vector": bytes,
        }, pk=("doc_id", "idx"), foreign_keys=[("doc_id", "documents")], if_not_exists=True)

    def _create_tables(self) -> None:
        db = self.db
        db.table("documents").create({
            "id": str, "sha256": str, "title": str, "path": str, "kind": str, "pages": int,
            "chars": int, "added": str,
        }, pk="id", if_not_exists=True)
        db.table("memories").create({
            "id": int, "doc_id": str, "model_fingerprint": str, "model_name": str, "backend": str,
            "policy_key": str, "policy": str, "path": str, "bytes": int, "document_tokens": int,
            "kept_tokens": int, "seconds": float, "created": str,
        }, pk="id", foreign_keys=[("doc_id", "documents")], if_not_exists=True)
        db.table("memories").create_index(["doc_id", "model_fingerprint", "backend", "policy_key"],
                                    unique=True, if_not_exists=True)
        db.table("notes").create({
            "memory_id": int, "idx": int, "first_page": int, "last_page": int, "text": str,
        }, pk=("memory_id", "idx"), foreign_keys=[("memory_id", "memories")], if_not_exists=True)
        db.table("summaries").create({
            "memory_id": int, "text": str, "pages": str, "created": str,
        }, pk="memory_id", foreign_keys=[("memory_id", "memories")], if_not_exists=True)
        db.table("sessions").create({
            "id": str, "doc_id": str, "title": str, "created": str,
        }, pk="id", foreign_keys=[("doc_id", "documents")], if_not_exists=True)
        db.table("messages").create({
            "id": int, "session_id": str, "role": str, "content": str, "pages": str, "created": str,
        }, pk="id", foreign_keys=[("session_id", "sessions")], if_not_exists=True)

    # documents -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction, all or nothing, holding the write lock from its start (BEGIN
        IMMEDIATE): sqlite-utils commits each statement made outside a transaction on its own,
        and a deferred transaction that reads first can fail when it comes to write. Inside
        another, it is part of that one (a caller can make several writes one)."""
        if self.read_only:
            raise self._write_refusal(sqlite3.OperationalError("readonly"))
        if self.db.conn.in_transaction:
            yield
            return
        try:
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.conn.rollback()
                raise
            self.db.conn.commit()
        except sqlite3.Error as exc:
            raise self._write_refusal(exc) from exc

    def add_document(self, document) -> str:
        doc_id = document_id(document)
        with self.transaction():
            # Insert-or-ignore, then update: a check before the insert would race another process
            # adding the same file (IntegrityError).
            self.db.table("documents").insert({
                "id": doc_id, "sha256": document.sha256, "title": document.title,
                "path": str(document.path), "kind": document.kind, "pages": document.pages,
                "chars": len(document.text), "added": _now(),
            }, ignore=True)
            self.db.table("documents").update(doc_id, {"path": str(document.path), "title": document.title})
            if hasattr(document, "page_text") and not self.has_pages(doc_id):
                self._insert_pages(doc_id, document)
            if hasattr(document, "sections"):
                self._replace_sections(doc_id, document)
        return doc_id

    def _replace_sections(self, doc_id: str, document) -> None:
        self.db.table("sections").delete_where("doc_id = ?", [doc_id])
        rows = []
        for idx, section in enumerate(document.sections):
            page = document.page_at(section.start)
            rows.append({"doc_id": doc_id, "idx": idx, "title": section.title, "level": section.level,
                         "page": page, "within": section.start - document.page_starts[page - 1]})
        self.db.table("sections").insert_all(rows)

    def section_at(self, doc_id: str, page: int, within: int = 0) -> str | None:
        """The title of the section that holds character ``within`` of ``page`` (the last one
        begun by then), or None when the document has no sections or it comes before the first."""
        row = self.db.execute(
            """select title from sections where doc_id = ? and (page < ? or (page = ? and within <= ?))
               order by page desc, within desc, idx desc limit 1""", [doc_id, page, page, within]).fetchone()
        return row[0] if row else None

    def sections(self, doc_id: str) -> list[dict]:
        return list(self.db.table("sections").rows_where("doc_id = ?", [doc_id], order_by="idx"))

    def _insert_pages(self, doc_id: str, document) -> None:
        self.db.table("pages").insert_all(
            ({"doc_id": doc_id, "page": p, "text": document.page_text(p)} for p in range(1, document.pages + 1)),
            ignore=True,
        )

    def has_pages(self, doc_id: str) -> bool:
        return self.db.execute("select 1 from pages where doc_id = ? limit 1", [doc_id]).fetchone() is not None

    def add_pages(self, doc_id: str, document) -> None:
        """Fill in the page text of a document added before the library kept it (schema 0)."""
        with self.transaction():
            self._insert_pages(doc_id, document)

    def page_texts(self, doc_id: str) -> list[str]:
        """The text of every page, in order (empty when the library has none for it)."""
        rows = self.db.execute("select text from pages where doc_id = ? order by page", [doc_id]).fetchall()
        return [r[0] for r in rows]

    def page_text(self, doc_id: str, page: int) -> str:
        row = self.db.execute("select text from pages where doc_id = ? and page = ?", [doc_id, page]).fetchone()
        return row[0] if row else ""

    def set_passage_vectors(self, doc_id: str, encoder: str, rows: list[tuple[int, int, int, np.ndarray]]) -> None:
        """Keep the sentence vectors of a document's passages, ``(page, start, end, vector)``
        each, in place of any it had."""
        with self.transaction():
            self.db.table("passage_vectors").delete_where("doc_id = ?", [doc_id])
            self.db.table("passage_vectors").insert_all(
                ({"doc_id": doc_id, "idx": i, "encoder": encoder, "page": page, "start": start, "end": end,
                  "vector": np.asarray(vector, np.float16).tobytes()}
                 for i, (page, start, end, vector) in enumerate(rows)), batch_size=500)

    def passage_vectors(self, doc_id: str, encoder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(pages, spans, vectors)`` of a document's passages made by ``encoder``, in order: each
        passage's page, its ``(start, end)`` characters within the page, and its vector; empty
        when it has none. A row whose vector is not the length of the first is left out."""
        rows = self.db.execute("select page, start, end, vector from passage_vectors where doc_id = ? and encoder = ? "
                               "order by idx", [doc_id, encoder]).fetchall()
        size = len(rows[0][3]) if rows else 0
        kept = [row for row in rows if size and len(row[3]) == size]
        if not kept:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros((0, 0), np.float32)
        pages = np.array([row[0] for row in kept], np.int64)
        spans = np.array([(row[1], row[2]) for row in kept], np.int64)
        vectors = np.frombuffer(b"".join(row[3] for row in kept), np.float16).reshape(len(kept), -1)
        return pages, spans, vectors.astype(np.float32)

    def search(self, query: str, doc_id: str | None = None, limit: int = 50) -> list[dict]:
        """Pages whose text holds every word of ``query`` (stemmed), best first, with a snippet
        where the matches are wrapped in [ and ]."""
        words = query.replace("\x00", " ").split()  # SQLite ends a string at NUL: a syntax error
        if not words:
            return []
        match = " ".join('"' + w.replace('"', '""') + '"' for w in words)
        sql = """select pages.doc_id, pages.page, documents.title,
                        snippet(pages_fts, 0, '[', ']', '…', 12) as snippet
                 from pages_fts join pages on pages.rowid = pages_fts.rowid
                 join documents on documents.id = pages.doc_id
                 where pages_fts match ?"""
        args: list = [match]
        if doc_id is not None:
            sql += " and pages.doc_id = ?"
            args.append(doc_id)
        sql += " order by rank, pages.page limit ?"
        args.append(limit)
        cursor = self.db.execute(sql, args)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def match_pages(self, doc_id: str, match: str, limit: int) -> list[tuple[int, float]]:
        """Pages of one document that an FTS5 query (``engine.recall.page_search.words_query``)
        matches, best first, each with its BM25 relevance (higher is more relevant)."""
        rows = self.db.execute(
            """select pages.page, -rank from pages_fts join pages on pages.rowid = pages_fts.rowid
               where pages_fts match ? and pages.doc_id = ? order by rank, pages.page limit ?""",
            [match, doc_id, limit]).fetchall()
        return [(r[0], r[1]) for r in rows]

    def remove_document(self, doc_id: str) -> None:
        """Forget a document: its pages, memories (and their files), notes, summaries, sessions."""
        doc = self.document(doc_id)
        memories = self.memories(doc["id"])
        with self.transaction():
            for m in memories:
                self.db.table("notes").delete_where("memory_id = ?", [m["id"]])
                self.db.table("summaries").delete_where("memory_id = ?", [m["id"]])
            self.db.execute("delete from messages where session_id in (select id from sessions where doc_id = ?)",
                            [doc["id"]])
            for table in ("sessions", "memories", "pages", "sections", "passage_vectors"):
                self.db.table(table).delete_where("doc_id = ?", [doc["id"]])
            self.db.table("documents").delete_where("id = ?", [doc["id"]])
        for m in memories:
            self._unlink_own(m["path"], ".mem")
            if m.get("recall_path"):
                self._unlink_own(m["recall_path"], ".recall")
        for partial in self.memories_folder.glob(f"{doc['id']}-*.partial*"):  # a read stopped half-way
            partial.unlink(missing_ok=True)
        self.ocr_cache_path(doc["sha256"]).unlink(missing_ok=True)

    def _unlink_own(self, path: str, suffix: str) -> None:
        """Delete a file the library names only when it is one of its own: a path in a damaged or
        edited library.db must never delete a file outside the memories folder."""
        target = Path(path)
        try:
            inside = target.resolve().parent == self.memories_folder.resolve()
        except OSError:
            return
        if inside and target.suffix == suffix and not target.is_symlink():
            target.unlink(missing_ok=True)

    def document(self, doc_id: str) -> dict:
        # A literal prefix: LIKE would take "%" and "_" in a typed id as wildcards.
        rows = list(self.db.table("documents").rows_where("id = ? or substr(id, 1, ?) = ?",
                                                     [doc_id, len(doc_id) or 1, doc_id]))
        if len(rows) != 1:
            why = "is ambiguous" if rows else "is not in the library"
            raise LibraryError(f"document {doc_id!r} {why}; `comma list` shows the ids")
        return rows[0]

    def documents(self) -> list[dict]:
        docs = list(self.db.table("documents").rows_where(order_by="added"))
        for d in docs:
            d["memories"] = self.memories(d["id"])
        return docs

    # memories --------------------------------------------------------------------------------

    def memory_path(self, doc_id: str, policy_key: str, model_fingerprint: str, backend: str) -> Path:
        return self.memories_folder / f"{doc_id}-{backend}-{policy_key}-{model_fingerprint[:12]}.mem"

    def ocr_cache_path(self, sha256: str) -> Path:
        """Where the text OCR found on a document's scanned pages is kept (by its content)."""
        return self.folder / "ocr" / f"{sha256}.json"

    def recall_path(self, memory_path: Path) -> Path:
        """A new name for the recall store of a reading of the memory at ``memory_path``: beside
        it, unique, so a new store can be in place before the memory it belongs to is replaced."""
        return memory_path.with_name(f"{memory_path.stem}.{uuid.uuid4().hex[:12]}.recall")

    def checkpoint_path(self, memory_path: Path) -> Path:
        """Where a resumable reading into ``memory_path`` keeps how far it has got."""
        return memory_path.with_name(memory_path.name + ".partial")

    def remove_stale_temporaries(self, older_than_s: float = 86_400) -> None:
        """Delete what an interrupted save left in the memories folder (a crash mid-read leaves a
        partial recall store); a day's age keeps another process's save in progress safe."""
        cutoff = time.time() - older_than_s
        # A save's temporary file is dated by its writes; the second name a save gives the memory
        # it replaces (engine/pipeline/comma.py) by its making, which changes the inode's ctime.
        for pattern, age in ((".*.tmp", lambda st: st.st_mtime), (".*.previous", lambda st: st.st_ctime)):
            for leftover in self.memories_folder.glob(pattern):
                try:
                    if age(leftover.stat()) < cutoff:
                        leftover.unlink()
                except OSError:
                    pass

    def find_memory(self, doc_id: str, model_fingerprint: str, backend: str, policy_key: str | None = None):
        where = "doc_id = ? and model_fingerprint = ? and backend = ?"
        args = [doc_id, model_fingerprint, backend]
        if policy_key is not None:
            where += " and policy_key = ?"
            args.append(policy_key)
        rows = list(self.db.table("memories").rows_where(where, args, order_by="created desc, id desc"))
        return rows[0] if rows else None

    def reading_rate(self, model_fingerprint: str, backend: str) -> float | None:
        """Characters of document text this model has read per second here, over its last
        readings (None before the first): what a new reading's time is estimated from."""
        row = self.db.execute(
            """select sum(chars), sum(seconds) from (
                 select d.chars as chars, m.seconds as seconds from memories m join documents d on d.id = m.doc_id
                 where m.model_fingerprint = ? and m.backend = ? and m.seconds > 0
                 order by m.id desc limit 20)""", [model_fingerprint, backend]).fetchone()
        return row[0] / row[1] if row and row[0] and row[1] else None

    def memories(self, doc_id: str) -> list[dict]:
        return list(self.db.table("memories").rows_where("doc_id = ?", [doc_id], order_by="id"))

    def save_memory(self, record: dict, notes: list) -> int:
        """Insert or replace the memory row for its (document, model, backend, policy), with notes."""
        row = {**record, "created": _now()}
        key = ("doc_id", "model_fingerprint", "backend", "policy_key")
        with self.transaction():
            # One statement inserts or replaces the row: a look-up first would race another
            # process saving the same memory (IntegrityError on the unique index).
            names = ", ".join(f"[{name}]" for name in row)
            updates = ", ".join(f"[{name}] = excluded.[{name}]" for name in row if name not in key)
            self.db.execute(
                f"insert into memories ({names}) values ({', '.join('?' for _ in row)}) "
                f"on conflict ({', '.join(key)}) do update set {updates}", list(row.values()))
            memory_id = self.db.execute(
                f"select id from memories where {' and '.join(f'{k} = ?' for k in key)}",
                [record[k] for k in key]).fetchone()[0]
            self.db.table("notes").delete_where("memory_id = ?", [memory_id])
            self.db.table("summaries").delete_where("memory_id = ?", [memory_id])
            self.db.table("notes").insert_all(
                {"memory_id": memory_id, "idx": i, "first_page": n.first_page, "last_page": n.last_page,
                 "text": n.text} for i, n in enumerate(notes)
            )
        return memory_id

    def notes(self, memory_id: int) -> list[dict]:
        return list(self.db.table("notes").rows_where("memory_id = ?", [memory_id], order_by="idx"))

    def save_summary(self, memory_id: int, text: str, pages: list[int]) -> None:
        with self.transaction():
            self.db.table("summaries").upsert({"memory_id": memory_id, "text": text, "pages": json.dumps(pages),
                                         "created": _now()}, pk="memory_id")

    def summary(self, memory_id: int) -> dict | None:
        rows = list(self.db.table("summaries").rows_where("memory_id = ?", [memory_id]))
        if not rows:
            return None
        return {**rows[0], "pages": json.loads(rows[0]["pages"])}

    # sessions --------------------------------------------------------------------------------

    def new_session(self, doc_id: str, title: str) -> str:
        session_id = uuid.uuid4().hex[:12]
        now = _now()
        with self.transaction():
            self.db.table("sessions").insert({"id": session_id, "doc_id": doc_id, "title": " ".join(title.split())[:80],
                                        "created": now, "updated": now})
        return session_id

    def sessions(self, doc_id: str) -> list[dict]:
        """A document's conversations, the most recently active first, with their message counts."""
        cursor = self.db.execute(
            """select sessions.*, (select count(*) from messages where session_id = sessions.id) as messages
               from sessions where doc_id = ? order by updated desc, created desc, rowid desc""", [doc_id])
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def rename_session(self, session_id: str, title: str) -> None:
        self.session(session_id)
        with self.transaction():
            self.db.table("sessions").update(session_id, {"title": " ".join(title.split())[:80]})

    def remove_session(self, session_id: str) -> None:
        self.session(session_id)
        with self.transaction():
            self.db.table("messages").delete_where("session_id = ?", [session_id])
            self.db.table("sessions").delete_where("id = ?", [session_id])

    def session(self, session_id: str) -> dict:
        rows = list(self.db.table("sessions").rows_where("id = ?", [session_id]))
        if not rows:
            raise LibraryError(f"session {session_id!r} is not in the library")
        return rows[0]

    def add_message(self, session_id: str, role: str, content: str, pages: list[int] | None = None,
                    seconds: float | None = None, sources: list[dict] | None = None) -> None:
        now = _now()
        with self.transaction():
            self.db.table("messages").insert({"session_id": session_id, "role": role, "content": content,
                                        "pages": json.dumps(pages or []), "created": now, "seconds": seconds,
                                        "sources": json.dumps(sources or [])})
            self.db.table("sessions").update(session_id, {"updated": now})

    def set_last_answer_seconds(self, session_id: str, seconds: float) -> None:
        """Record how long the session's latest answer took (the window shows it)."""
        with self.transaction():
            self.db.execute("""update messages set seconds = ? where id = (
                                   select max(id) from messages where session_id = ? and role = 'assistant')""",
                            [seconds, session_id])

    def messages(self, session_id: str) -> list[dict]:
        rows = self.db.table("messages").rows_where("session_id = ?", [session_id], order_by="id")
        return [{**r, "pages": json.loads(r["pages"]), "sources": json.loads(r.get("sources") or "[]")} for r in rows]
