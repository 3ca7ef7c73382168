"""The pipeline: what a person can do with Comma (read, ask, summarise, list), the one path that
the CLI and the window both call.

Each action joins the engine (models, reading, memories, page finding) to the library, and
every engine decision is made here: which model reads and which answers, from what (its memory
and store, or pages read on the spot), which ranking chooses passages. Work that takes long
reports through a ``progress(done, total)`` callback and stops when ``cancelled()`` turns true,
so the CLI can draw a bar and the window can run it in a worker thread with a Cancel button.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from engine.answering.summary import summarize_notes
from engine.backends.loading import default_answering
from engine.documents.document import Document, read_document
from engine.documents.limits import Limits
from engine.errors import CommaError, LibraryError, MemoryFileError
from engine.generate import Sampling
from engine.memory import checkpoint as read_checkpoint
from engine.memory.file_format import open_store, read_header
from engine.memory.memory import Memory
from engine.pipeline.asking import AskResult, DocumentConversation, check_question, read_again
from engine.pipeline.models import LoadedModels
from engine.policy import Full, make_policy, policy_key
from engine.protocols import Available, Model, Progress
from engine.reading.reader import read
from engine.reading.stream import DEFAULT_CHUNK
from engine.recall import page_search, sentence_encoder
from engine.recall.ranking import ANSWERING_RANKING, CANDIDATE_PAGES, DEFAULT_RANKING
from engine.recall.store import RecallStore
from storage.library import Library, document_id

# The bundled model's reading, 348 tokens/s on the slower of the 2-core CPUs measured (bench/results/
# cpu_ceiling_cpu.json; section notes cost it nothing), at R-intro's 3.4 characters a token; only
# until this computer has read once.
FIRST_READING_CHARS_PER_S = 1180.0


class AnsweringPlan(NamedTuple):
    """Which model answers questions about a document now, and from what: ``record`` is its
    memory's row, None when the answering model has not read the document yet (it then reads
    the pages a question needs on the spot)."""

    model: Model
    doc: dict
    record: dict | None


@dataclass
class Comma:
    """The library plus lazily loaded models (loading one is the slow part of a cold start): the
    reading model, and the answering model beside it when it is installed (``answering``:
    "auto" uses it, "off" lets the reading model answer)."""

    library: Library = field(default_factory=Library)
    model_path: str | Path | None = None
    backend: str = "auto"
    answering: str = field(default_factory=default_answering)
    limits: Limits = field(default_factory=Limits)  # how big a file may be read
    # Told what the first start does to the models' files (a faster copy, the answering model's
    # assembly, once each) and how far it got, in bytes.
    notice: Callable[[str], None] | None = None
    preparing: Progress | None = None
    models: LoadedModels = field(default_factory=LoadedModels)  # shared by the window's worker threads
    _live: DocumentConversation | None = None

    @property
    def model(self):
        """The reading model (loaded on first use: the engine loads only when a model is needed)."""
        return self.models.reading(self.backend, self.model_path, self.library.models_folder, self.preparing,
                                   self.notice)

    def _answering(self) -> Available:
        return self.models.answering(self.answering, self.backend, self.model_path, self.library.models_folder,
                                     self.preparing, self.notice)

    @property
    def answerer(self):
        """The answering model, or None when the reading model answers (``answerer_reason`` says why)."""
        return self._answering().thing

    @property
    def answerer_reason(self) -> str | None:
        return self._answering().reason

    @property
    def encoder(self):
        """The sentence encoder that finds pages by meaning, or None (``encoder_reason`` says why)."""
        return self.models.encoder().thing

    @property
    def encoder_reason(self) -> str | None:
        return self.models.encoder().reason

    def index_meaning(self, document: Document, progress: Progress | None = None,
                      cancelled: Callable[[], bool] | None = None) -> dict:
        """Keep the sentence vectors of a document's passages (once: a document that has them
        keeps them), so that a question finds its pages by meaning too. The document must be in
        the library already."""
        doc_id = document_id(document)
        if self.encoder is None:
            return {"skipped": self.encoder_reason}
        pages, _, _ = self.library.passage_vectors(doc_id, sentence_encoder.NAME)
        if len(pages):
            return {"passages": len(pages), "seconds": 0.0, "reused": True}
        if self.library.read_only:
            return {"skipped": "pages are found by their words alone: the library is read-only"}
        started = time.perf_counter()
        texts = ((page, document.page_text(page)) for page in range(1, document.pages + 1))
        rows = page_search.index(self.encoder, texts, progress, cancelled)
        self.library.set_passage_vectors(doc_id, sentence_encoder.NAME, rows)
        return {"passages": len(rows), "seconds": round(time.perf_counter() - started, 1), "reused": False}

    def candidate_pages(self, doc_id: str, question: str, limit: int = CANDIDATE_PAGES) -> list[tuple[int, float]]:
        """The pages to answer ``question`` from, best first: the full-text index's and, where
        the document has its meaning index, the nearest in meaning, fused (engine.recall.page_search)."""
        return self.find_pages(doc_id, question, limit).pages

    def find_pages(self, doc_id: str, question: str, limit: int = CANDIDATE_PAGES) -> page_search.Found:
        """``candidate_pages``, and the document's passages best first for the question."""
        return page_search.find_pages(self.library, self.encoder, sentence_encoder.NAME, doc_id, question, limit)

    def ensure_pages(self, doc_id: str) -> bool:
        """Fill in the page text of a document added before the library kept it (schema 0), from
        its file when that is still there and unchanged. True when the pages are there now. It
        may read a whole PDF: the window calls it from a worker."""
        if self.library.has_pages(doc_id):
            return True
        if self.library.read_only:  # a document added before page text was kept stays without it here
            return False
        doc = self.library.document(doc_id)
        try:
            document = read_document(doc["path"], self.limits)
        except CommaError:
            return False
        if document.sha256 != doc["sha256"]:
            return False
        self.library.add_pages(doc_id, document)
        return True

    def read_file(self, path: str | Path, progress: Progress | None = None,
                  cancelled: Callable[[], bool] | None = None) -> Document:
        """The document in a file, within this Comma's limits (DocumentError says why not).
        Scanned pages are read by OCR once (``progress`` in pages) and kept in the library.
        It is read to be kept: a library that cannot keep it is found first, before any OCR."""
        self.library.check_writable()
        return read_document(path, self.limits, self.library.ocr_cache_path, progress, cancelled)

    def has_reading(self, document: Document, policy: str = "sepllm", cache: int | None = None) -> bool:
        """Whether the reading model has a memory of this document under this policy (ingest reuses it)."""
        model = self.model
        existing = self.library.find_memory(document_id(document), model.fingerprint, model.backend,
                                            policy_key(make_policy(policy, cache)))
        return self._memory_there(existing)

    def reading_estimate(self, document: Document) -> float:
        """Seconds the fast read of ``document`` should take, from this model's past readings on
        this computer, or from this project's measured speed before the first."""
        model = self.model
        rate = self.library.reading_rate(model.fingerprint, model.backend) or FIRST_READING_CHARS_PER_S
        return len(document.text) / rate

    def ingest(self, path: str | Path | Document, policy: str = "sepllm", cache: int | None = None, force: bool = False,
               notes: bool = True, progress: Progress | None = None,
               cancelled: Callable[[], bool] | None = None, parallel: int | None = None, recall: bool = True,
               deep: bool = True, deep_progress: Progress | None = None,
               meaning_progress: Progress | None = None) -> dict:
        """``parallel``: read as independent chunks of that many tokens side by side (torch only).
        ``recall``: keep the KV of every passage too, so answers can come from any page (where
        the backend can; a parallel reading cannot). ``deep``: then read it again with the
        answering model, when there is one (its report is under "deep"). ``path`` may be a
        document read already (the window reads it first, to show it and to estimate the time).
        Between the two, the meaning index (``index_meaning``, reported under "meaning"; its
        progress, in passages, to ``meaning_progress``)."""
        started = time.perf_counter()
        document = path if isinstance(path, Document) else self.read_file(path)
        report = self._read_into_library(self.model, document, policy, cache, force, notes, progress, cancelled,
                                         parallel, recall, started)
        report["meaning"] = self.index_meaning(document, meaning_progress, cancelled)
        if deep and not parallel and self.answerer is not None:
            report["deep"] = self._read_into_library(self.answerer, document, policy, cache, force, False,
                                                     deep_progress, cancelled, None, recall, time.perf_counter(),
                                                     resumable=True)
        return report

    def deep_read(self, doc_id: str, policy: str = "sepllm", cache: int | None = None, force: bool = False,
                  progress: Progress | None = None, cancelled: Callable[[], bool] | None = None,
                  chunk: int = DEFAULT_CHUNK) -> dict:
        """Read a document of the library with the answering model (the window runs this in the
        background after the fast read); it must be the file that was read before."""
        if self.answerer is None:
            raise CommaError(self.answerer_reason or "there is no answering model: the reading model answers")
        doc = self.library.document(doc_id)
        answerer = self.answerer
        key = policy_key(make_policy(policy, cache))
        existing = self.library.find_memory(doc["id"], answerer.fingerprint, answerer.backend, key)
        if not force and self._memory_there(existing) and self._store_matches(existing):
            # Done before: the file itself is not even opened (it may have moved since).
            return self._ingest_report(doc["id"], doc["title"], doc["pages"], existing, 0.0, reused=True)
        document = self.read_file(doc["path"])
        if document_id(document) != doc["id"]:
            raise CommaError(f"{doc['path']} has changed since it was read; read it again first: "
                             f"comma ingest {doc['path']}")
        return self._read_into_library(self.answerer, document, policy, cache, force, False, progress, cancelled,
                                       None, True, time.perf_counter(), chunk, resumable=True)

    def _read_into_library(self, model, document, policy: str, cache: int | None, force: bool, notes: bool,
                           progress: Progress | None, cancelled: Callable[[], bool] | None, parallel: int | None,
                           recall: bool, started: float, chunk: int = DEFAULT_CHUNK, resumable: bool = False) -> dict:
        """``resumable``: keep a checkpoint as the read goes, and go on from one (a long read)."""
        chosen = make_policy(policy, cache)
        if parallel is not None and (not model.capabilities.parallel_reading or parallel < 1):
            raise CommaError(f"the {model.backend} engine cannot read in parallel chunks; parallel reading "
                             "needs --backend torch and a chunk of at least one token")
        doc_id = document_id(document)
        # A parallel reading keeps other slots than a sequential one under the same policy.
        key = policy_key(chosen) + (f"-parallel{parallel}" if parallel else "")
        existing = self.library.find_memory(doc_id, model.fingerprint, model.backend, key)
        # A full-attention memory already holds every passage.
        wants_store = recall and model.capabilities.recall and not parallel and not isinstance(chosen, Full)
        if existing and not force and self._memory_there(existing) and \
                (self._store_matches(existing) or not wants_store):
            if not self.library.read_only:
                self.library.add_document(document)  # the file may have moved since
            return self._ingest_report(doc_id, document.title, document.pages, existing, time.perf_counter() - started,
                                       reused=True)
        # A read-only or locked library is found now, not after a reading of minutes.
        self.library.check_writable()
        target = self.library.memory_path(doc_id, key, model.fingerprint, model.backend)
        store_path = self.library.recall_path(target) if wants_store else None
        checkpoint = self.library.checkpoint_path(target) if resumable else None
        result = read(model, document, chosen, notes=notes, chunk=chunk, parallel=parallel, recall=store_path,
                      progress=progress, cancelled=cancelled, checkpoint=checkpoint)
        # The new store goes in beside the old pair under a name of its own; saving the memory is
        # the switch; only then is the old store removed. A failure at any step, the library's
        # own write included, leaves the previous memory and store as they were.
        existed = target.is_file()
        previous = _keep_previous(target)
        try:
            try:
                if result.recall is not None:
                    result.recall.commit()
                size = result.memory.save(target)
                self._save_record(model, document, key, chosen, target, store_path, size, result)
            except BaseException:
                if store_path is not None:
                    store_path.unlink(missing_ok=True)
                _restore_previous(target, previous, existed)
                raise
        finally:
            if result.recall is not None:
                result.recall.discard()
            if previous is not None:
                previous.unlink(missing_ok=True)
        old_store = existing.get("recall_path") if existing else None
        if old_store and old_store != (str(store_path) if store_path else None):
            self.library.delete_own_file(old_store, ".recall")
        if checkpoint is not None:
            read_checkpoint.remove(checkpoint)
        saved = self.library.find_memory(doc_id, model.fingerprint, model.backend, key)
        return self._ingest_report(doc_id, document.title, document.pages, saved, time.perf_counter() - started,
                                   reused=False)

    def _save_record(self, model, document, key: str, chosen, target: Path, store_path: Path | None, size: int,
                     result) -> None:
        """The library's rows for a memory now on disk: the library learns of the document only
        then, so a cancelled or failed read, or a full disk, leaves no trace."""
        doc_id = document_id(document)
        record = {
            "doc_id": doc_id, "model_fingerprint": model.fingerprint, "model_name": model.name,
            "backend": model.backend, "policy_key": key, "policy": json.dumps(chosen.describe()),
            "path": str(target), "bytes": size, "document_tokens": result.memory.header["document_tokens"],
            "kept_tokens": result.memory.kept_tokens, "seconds": result.seconds,
            "recall_path": str(store_path) if store_path else None,
            "recall_bytes": store_path.stat().st_size if store_path else None,
        }
        with self.library.transaction():
            self.library.add_document(document)
            self.library.save_memory(record, result.notes)

    @staticmethod
    def _ingest_report(doc_id, title: str, pages: int, memory: dict, seconds: float, reused: bool) -> dict:
        return {
            "doc_id": doc_id, "title": title, "pages": pages,
            "tokens": memory["document_tokens"], "kept_tokens": memory["kept_tokens"],
            "memory_path": memory["path"], "memory_bytes": memory["bytes"],
            "recall_path": memory.get("recall_path"), "recall_bytes": memory.get("recall_bytes"),
            "model": memory["model_name"], "seconds": round(seconds, 3), "reused": reused,
        }

    def _memory_record(self, doc_id: str, model=None) -> tuple[dict, dict]:
        """A document's row and its memory's row for ``model`` (the reading model by default);
        LibraryError says why there is none to answer from."""
        doc = self.library.document(doc_id)
        model = model or self.model
        record = self.library.find_memory(doc["id"], model.fingerprint, model.backend)
        if record is None and model.derived_from and \
                self.library.find_memory(doc["id"], model.derived_from, model.backend):
            raise LibraryError(
                f"document {doc['id']} ({doc['title']}) was read with the original {model.name} weights; "
                f"Comma now runs a faster {model.weight_type} copy of them, which cannot reuse that memory. "
                f"Read it again (once): comma ingest {doc['path']}"
            )
        if record is None:
            raise LibraryError(
                f"document {doc['id']} ({doc['title']}) has no memory for the model {model.name}; "
                f"read it first: comma ingest {doc['path']}"
            )
        if not self._memory_there(record):
            raise _missing(doc, record, self.library)
        return doc, record

    def _memory_there(self, record: dict | None) -> bool:
        """Whether a memory row's file is there, and one of the library's own (a row naming a
        file elsewhere is taken as missing)."""
        path = self.library.own_file(record["path"], ".mem") if record else None
        return path is not None and path.is_file()

    def load_memory(self, doc: dict, record: dict, model=None) -> Memory:
        """A document's memory, checked to be of that very document (a memory file copied over
        another's would otherwise answer, and cite pages, for the wrong document) and to map
        its pages (a crafted page map would cite pages it does not have)."""
        path = self.library.own_file(record["path"], ".mem")
        if path is None or not path.is_file():
            raise _missing(doc, record, self.library)
        memory = Memory.load_for(model or self.model, path)
        if memory.header["document_sha256"] != doc["sha256"]:
            raise MemoryFileError(
                f"memory file {path} was made from another document than {doc['title']} "
                f"({doc['id']}); {read_again(doc)}")
        starts = memory.header["page_token_starts"]  # in order: engine.memory.schema checked it on load
        if len(starts) != doc["pages"]:
            raise MemoryFileError(f"memory file {path} maps {len(starts)} pages, but {doc['title']} ({doc['id']}) "
                                  f"has {doc['pages']}; {read_again(doc)}")
        return memory

    def _store_matches(self, record: dict) -> bool:
        """Whether a memory row's recall store is there and belongs to that very reading."""
        store_path = self.library.own_file(record.get("recall_path"), ".recall")
        memory_path = self.library.own_file(record["path"], ".mem")
        if store_path is None or memory_path is None:
            return False
        try:
            store = open_store(store_path, model_fingerprint=record["model_fingerprint"], backend=record["backend"])
            return store.header.get("read_id") == read_header(memory_path).get("read_id")
        except MemoryFileError:
            return False

    def open_recall(self, doc: dict, record: dict, memory: Memory, model=None) -> Available[RecallStore]:
        """The memory's recall store, or None and why it cannot be used (answers then come from
        the memory alone)."""
        model = model or self.model
        again = read_again(doc)
        if not model.capabilities.recall:
            return Available(None, f"the {model.backend} engine does not keep recall stores yet")
        if memory.parallel:
            return Available(None, "a memory read in parallel chunks has no recall store")
        if not record.get("recall_path"):
            return Available(None, f"this memory was read without a recall store; {again}")
        path = self.library.own_file(record["recall_path"], ".recall")
        if path is None:
            return Available(None, f"its recall store {record['recall_path']} is missing; {again}")
        try:
            store = RecallStore.open(path, model, memory.header)
        except MemoryFileError as exc:
            return Available(None, f"{exc}; {again}")
        outside = next((p.page for p in store.passages if not 1 <= p.page <= doc["pages"]), None)
        if outside is not None:
            return Available(None, f"recall store {path} holds a passage of page {outside}, but {doc['title']} "
                                   f"has {doc['pages']} pages; {again}")
        return Available(store)

    def _answering_plan(self, doc_id: str) -> AnsweringPlan:
        """Which model answers questions about a document now, and from what."""
        answerer = self.answerer
        if answerer is None:
            doc, record = self._memory_record(doc_id)
            return AnsweringPlan(self.model, doc, record)
        doc = self.library.document(doc_id)
        return AnsweringPlan(answerer, doc, self.library.find_memory(doc["id"], answerer.fingerprint, answerer.backend))

    def conversation(self, doc_id: str, ranking: str | None = None) -> DocumentConversation:
        """A live conversation over a document, for several questions in a row. ``ranking``: how
        its passages are chosen (engine.answering.conversation.RANKINGS); by default the reading model
        reranks and the answering model keeps the candidates' order (engine.recall.ranking says why)."""
        model, doc, record = self._answering_plan(doc_id)
        answering = model is self.answerer
        ranking = ranking or (ANSWERING_RANKING if answering else DEFAULT_RANKING)
        role, why = ("answering", None) if answering else ("reading", self.answerer_reason)
        if record is None:
            return DocumentConversation(self.library, self.find_pages, model, role, why, doc, None, None, None, None,
                                        ranking)
        memory = self.load_memory(doc, record, model)
        store, reason = self.open_recall(doc, record, memory, model)
        return DocumentConversation(self.library, self.find_pages, model, role, why, doc, record, memory, store, reason,
                                    ranking)

    def ask(self, doc_id: str, question: str, session_id: str | None = None,
            on_text: Callable[[str], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False, live: bool = False,
            ranking: str | None = None, on_status: Callable[[str], None] | None = None,
            sampling: Sampling = Sampling()) -> AskResult:
        """``live``: keep the conversation's cache for the next question about the same
        document (the window does; a one-shot command does not). ``on_status`` hears what is
        done before the answer starts (pages read on the spot)."""
        started = time.perf_counter()
        check_question(question)
        conversation = self._live_conversation(doc_id, ranking) if live else self.conversation(doc_id, ranking)
        try:
            return conversation.ask(question, session_id, on_text, should_stop, started=started, on_status=on_status,
                                    sampling=sampling)
        finally:
            if not live:
                conversation.close()

    def _live_conversation(self, doc_id: str, ranking: str | None = None) -> DocumentConversation:
        model, doc, record = self._answering_plan(doc_id)
        live = self._live
        # A document read again since (or read by the answering model meanwhile) has a new
        # memory: the old cache would answer from the old one.
        if live is None or live.model is not model or live.record != record or live.doc["id"] != doc["id"]:
            self.close_conversation()
            self._live = live = self.conversation(doc_id, ranking)
        return live

    def close_conversation(self) -> None:
        """Free the live conversation's cache (leaving a document, closing the window)."""
        if self._live is not None:
            self._live.close()
            self._live = None

    def summarize(self, doc_id: str, force: bool = False, progress: Progress | None = None) -> dict:
        started = time.perf_counter()
        _, record = self._memory_record(doc_id)
        saved = None if force else self.library.summary(record["id"])
        if saved is None:
            notes = self.library.notes(record["id"])
            if not notes:
                raise LibraryError("this memory was read without section notes; read it again with --force")
            # The notes are the small model's, taken while it read; the answering model writes better.
            text = summarize_notes(self.answerer or self.model, [n["text"] for n in notes], progress)
            pages = sorted({p for n in notes for p in range(n["first_page"], n["last_page"] + 1)})
            if self.library.read_only:  # written, shown, not kept
                return {"summary": text, "pages": pages, "seconds": round(time.perf_counter() - started, 3),
                        "not_saved": "the library is read-only; this summary was not kept"}
            self.library.save_summary(record["id"], text, pages)
            saved = {"text": text, "pages": pages}
        return {"summary": saved["text"], "pages": saved["pages"],
                "seconds": round(time.perf_counter() - started, 3)}

    def list(self) -> list[dict]:
        """The documents, each with its memories; a memory whose file is gone says so ("missing")."""
        docs = self.library.documents()
        for doc in docs:
            for memory in doc["memories"]:
                memory["missing"] = not self._memory_there(memory)
        return docs


def _missing(doc: dict, record: dict, library: Library) -> LibraryError:
    why = "is gone (deleted, or the data folder was copied without it)" \
        if library.own_file(record["path"], ".mem") else f"is not in {library.memories_folder} (library.db was edited)"
    return LibraryError(f"the memory of document {doc['id']} ({doc['title']}) is missing: {record['path']} {why}; "
                        f"read it again: comma ingest {doc['path']}")


def _keep_previous(target: Path) -> Path | None:
    """A second name for the memory at ``target`` (a hard link: no copy), so that it can be put
    back if what replaces it is never recorded; None where there is none, or links are not
    possible (FAT, some shares). Its suffix is not one the library's clean-up of stale saves
    removes by age: a link carries the old memory's times."""
    if not target.is_file():
        return None
    previous = target.with_name(f".{target.name}.previous")
    try:
        previous.unlink(missing_ok=True)
        os.link(target, previous)
    except OSError:
        return None
    return previous


def _restore_previous(target: Path, previous: Path | None, existed: bool) -> None:
    """Put the previous memory back; without a second name for it, remove the new file only if
    there was none before (where there was, the failed save left it, or its successor, in place:
    either still belongs to the document the library records)."""
    try:
        if previous is not None:
            os.replace(previous, target)
        elif not existed:
            target.unlink(missing_ok=True)
    except OSError:
        pass
