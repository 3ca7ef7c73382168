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
they are next ingested. Version 5 keeps memory and recall-store paths relative to the data folder
(``memories/NAME``), so a library moved or copied whole keeps working.

Every file the library names from a row is confined to its own folders: ids and hashes are
checked for their shape, and a path that would lead out of ``memories/`` or ``ocr/`` (an absolute
path, ``..``, a link) is treated as missing, never read or deleted, whatever ``library.db`` says.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import sqlite3
import stat
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
SCHEMA_VERSION = 5
BUSY_TIMEOUT_S = 30.0
STALE_AGE_S = 86_400.0  # what an interrupted save leaves is this old before it is removed
_DOC_ID = re.compile(f"[0-9a-f]{{{DOC_ID_LENGTH}}}")
_SHA256 = re.compile("[0-9a-f]{64}")


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


def is_document_id(value: object) -> bool:
    """Whether ``value`` has the shape of a document id (what a file name may be made of)."""
    return isinstance(value, str) and _DOC_ID.fullmatch(value) is not None


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


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


def _stored_name(path: str | None) -> str | None:
    """An absolute path of a file in a "memories" folder as the library keeps it now."""
    if not path or not Path(path).is_absolute() or Path(path).parent.name != "memories":
        return path
    return f"memories/{Path(path).name}"


def _directly_in(target: Path, folder: Path) -> bool:
    """Whether ``target`` lies directly in ``folder`` once links are followed and is no link
    itself. A link loop (RuntimeError on Python 3.11) or any other failure to resolve is a no."""
    try:
        return target.resolve().parent == folder.resolve() and not target.is_symlink()
    except (OSError, RuntimeError):
        return False


class Library:
    """``read_only``: the data folder cannot be written (a read-only mount, a backup opened in
    place), or its owner made the database read-only; the library then lists, searches and
    answers, and every write is refused with a LibraryError saying so, before any long work
    starts (``check_writable``)."""

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
        if database.is_file() and not database.stat().st_mode & stat.S_IWUSR:
            # Its owner made it read-only: so it is to Comma too (root could write it regardless).
            raise PermissionError(errno.EACCES, "the library database is read-only", str(database))
        # Page text and conversations are private: the folders and the database are the user's alone.
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.memories_folder.mkdir(mode=0o700, exist_ok=True)
        database.touch(mode=0o600, exist_ok=True)
        for private, mode in ((self.folder, 0o700), (self.memories_folder, 0o700), (database, 0o600)):
            with contextlib.suppress(OSError):  # a folder on a file system without modes (FAT, a share)
                current = stat.S_IMODE(private.stat().st_mode)
                if current & ~mode:  # only ever taken away: a file made read-only stays so
                    private.chmod(current & mode)
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
        self.remove_orphaned_stores()

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
        failure = self._write_failure(wait_s)
        if failure is not None:
            raise self._write_refusal(failure) from failure

    def why_not_writable(self, wait_s: float = 2.0) -> str | None:
        """``check_writable`` in a few words ("the library is read-only", "the library is in use by
        another program that is writing to it"), for work whose result is shown although it
        cannot be kept; None when it can be."""
        failure = self._write_failure(wait_s)
        if failure is None:
            return None
        text = str(failure)
        if self.read_only or "readonly" in text:
            return "the library is read-only"
        if "locked" in text or "busy" in text:
            return "the library is in use by another program that is writing to it"
        return f"the library cannot be written ({text})"

    def _write_failure(self, wait_s: float) -> sqlite3.Error | None:
        """What a write would fail with now, waiting up to ``wait_s`` for another writer; None if none."""
        if self.read_only:
            return sqlite3.OperationalError("readonly")
        self.db.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        try:
            self.db.conn.execute("BEGIN IMMEDIATE")
            self.db.conn.rollback()
        except sqlite3.Error as exc:
            return exc
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        return None

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        """Bring the schema up to SCHEMA_VERSION one step at a time. Each step adds (tables,
        columns, an index) or rewrites values, checking what is already there, and the version is
        recorded after it completes, so a step that was interrupted simply runs again on the next open."""
        steps = {1: self._migrate_to_1, 2: self._migrate_to_2, 3: self._migrate_to_3, 4: self._migrate_to_4,
                 5: self._migrate_to_5}
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

    def _migrate_to_5(self) -> None:
        # Memories were named by absolute paths, which a moved or copied library no longer
        # matches; every file the library wrote lies directly in a folder named "memories". Other
        # paths are left as they are, and treated as missing.
        rows = self.db.execute("select id, path, recall_path from memories").fetchall()
        for memory_id, *paths in rows:
            relative = [_stored_name(p) for p in paths]
            if relative != paths:
                self.db.execute("update memories set path = ?, recall_path = ? where id = ?",
                                [*relative, memory_id])

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
        """Forget a document: its pages, memories (and their files), notes, summaries, sessions.
        Files are deleted only where the rows name the library's own (the module says which)."""
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
        # The rows are gone for good now: what follows only tidies files, and never fails.
        for m in memories:
            self.delete_own_file(m["path"], ".mem")
            self.delete_own_file(m.get("recall_path"), ".recall")
        if is_document_id(doc["id"]):
            for partial in self.memories_folder.glob(f"{doc['id']}-*.partial*"):  # a read stopped half-way
                self._delete_in(partial, self.memories_folder)
            self._remove_unreferenced_stores(f"{doc['id']}-*.recall")
        if is_sha256(doc["sha256"]):
            self._delete_in(self.ocr_cache_path(doc["sha256"]), self.folder / "ocr")

    def own_file(self, path: str | None, suffix: str) -> Path | None:
        """The file a memory row names (``path`` or ``recall_path``, as the library returns them),
        when it is one of the library's own: directly in the memories folder once links are
        followed, named ``*suffix``, not itself a link. None otherwise: a path in a damaged,
        edited or moved library.db is then treated as missing, never read or deleted."""
        if not path:
            return None
        target = self.folder / path  # an absolute path replaces the folder, and is checked alike
        return target if target.suffix == suffix and _directly_in(target, self.memories_folder) else None

    def delete_own_file(self, path: str | None, suffix: str) -> None:
        """Delete the file a memory row names if it is one of the library's own (``own_file``)."""
        target = self.own_file(path, suffix)
        if target is not None:
            self._delete_in(target, self.memories_folder)

    @staticmethod
    def _delete_in(target: Path, folder: Path) -> None:
        """Delete ``target`` if it lies directly in ``folder`` (links followed) and is no link;
        an error leaves it (the caller's transaction has committed: a traceback now would say
        that what was done was not)."""
        if _directly_in(target, folder):
            with contextlib.suppress(OSError):
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
        name = f"{doc_id}-{backend}-{policy_key}-{model_fingerprint[:12]}.mem"
        if not is_document_id(doc_id) or Path(name).name != name or "\\" in name or ".." in name:
            raise LibraryError(f"{name!r} cannot name a memory file in {self.memories_folder}")
        return self.memories_folder / name

    def ocr_cache_path(self, sha256: str) -> Path:
        """Where the text OCR found on a document's scanned pages is kept (by its content)."""
        if not is_sha256(sha256):
            raise LibraryError(f"{sha256!r} is not a document's SHA-256; the library {self.database} may be "
                               "damaged: remove the document and read it again")
        return self.folder / "ocr" / f"{sha256}.json"

    def recall_path(self, memory_path: Path) -> Path:
        """A new name for the recall store of a reading of the memory at ``memory_path``: beside
        it, unique, so a new store can be in place before the memory it belongs to is replaced."""
        return memory_path.with_name(f"{memory_path.stem}.{uuid.uuid4().hex[:12]}.recall")

    def checkpoint_path(self, memory_path: Path) -> Path:
        """Where a resumable reading into ``memory_path`` keeps how far it has got."""
        return memory_path.with_name(memory_path.name + ".partial")

    def remove_stale_temporaries(self, older_than_s: float = STALE_AGE_S) -> None:
        """Delete what an interrupted save left in the memories folder (a crash mid-read leaves a
        partial recall store); a day's age keeps another process's save in progress safe."""
        cutoff = time.time() - older_than_s
        # A save's temporary file is dated by its writes; the second name a save gives the memory
        # it replaces (engine/pipeline/comma.py) by its making, which changes the inode's ctime.
        for pattern, age in ((".*.tmp", lambda st: st.st_mtime), (".*.previous", lambda st: st.st_ctime)):
            for leftover in self.memories_folder.glob(pattern):
                try:
                    if age(leftover.stat()) < cutoff:
                        self._delete_in(leftover, self.memories_folder)
                except OSError:
                    pass

    def remove_orphaned_stores(self, older_than_s: float = STALE_AGE_S) -> None:
        """Delete recall stores that no memory names (each as large as the document's KV): two
        readings of one document at once each commit a store, and the row keeps only one. A
        store is committed just before its row is written, so a day's age and no save of its
        memory in progress leave another process's save alone."""
        self._remove_unreferenced_stores("*.recall", time.time() - older_than_s)

    def _remove_unreferenced_stores(self, pattern: str, cutoff: float | None = None) -> None:
        """Delete the stores matching ``pattern`` in the memories folder that no row names and
        whose memory is not being saved; with ``cutoff``, only those last written before it."""
        named = {Path(p).name for (p,) in self.db.execute(
            "select recall_path from memories where recall_path is not null").fetchall()}
        for store in self.memories_folder.glob(pattern):
            memory = store.name.rsplit(".", 2)[0] + ".mem"  # NAME.UNIQUE.recall beside NAME.mem
            try:
                if store.name in named or any(self.memories_folder.glob(f".{glob.escape(memory)}.*.tmp")) or \
                        (cutoff is not None and store.stat().st_mtime >= cutoff):
                    continue
            except OSError:
                continue
            self._delete_in(store, self.memories_folder)

    def find_memory(self, doc_id: str, model_fingerprint: str, backend: str, policy_key: str | None = None):
        where = "doc_id = ? and model_fingerprint = ? and backend = ?"
        args = [doc_id, model_fingerprint, backend]
        if policy_key is not None:
            where += " and policy_key = ?"
            args.append(policy_key)
        rows = list(self.db.table("memories").rows_where(where, args, order_by="created desc, id desc"))
        return self._with_paths(rows[0]) if rows else None

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
        return [self._with_paths(row)
                for row in self.db.table("memories").rows_where("doc_id = ?", [doc_id], order_by="id")]

    def _with_paths(self, row: dict) -> dict:
        """A memory row with its files as paths in this data folder (a row keeps them relative to it)."""
        for key in ("path", "recall_path"):
            if row.get(key):
                row[key] = str(self.folder / row[key])
        return row

    def save_memory(self, record: dict, notes: list) -> int:
        """Insert or replace the memory row for its (document, model, backend, policy), with notes.
        Its files are kept relative to the data folder when they lie in its memories folder."""
        row = {**record, "created": _now()}
        for name in ("path", "recall_path"):
            if row.get(name) and Path(row[name]).parent == self.memories_folder:
                row[name] = f"memories/{Path(row[name]).name}"
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
