"""What a person can do with Comma (read, ask, summarise, list), shared by the CLI and the window.

Each action joins the engine (model, reading, memories) to the library. Work that takes long
reports through a ``progress(done, total)`` callback and stops when ``cancelled()`` turns true,
so the CLI can draw a bar and the window can run it in a worker thread with a Cancel button.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.conversation import Conversation, fit_to_question
from engine.documents import read_document
from engine.errors import CommaError, LibraryError
from engine.memory import Memory
from engine.policy import make_policy, policy_key
from engine.protocols import Progress
from engine.reader import read
from engine.summary import summarize_notes
from storage.library import Library, document_id


@dataclass
class AskResult:
    answer: str
    session_id: str
    pages: list[int]
    ttft_s: float
    seconds: float


@dataclass
class Comma:
    """The library plus a lazily loaded model (loading it is the slow part of a cold start)."""

    library: Library = field(default_factory=Library)
    model_path: str | Path | None = None
    backend: str = "auto"
    # Told what the first start does to the bundled model's weights (a faster copy, once) and
    # how far it got, in bytes.
    notice: Callable[[str], None] | None = None
    preparing: Progress | None = None
    _model: object = None

    @property
    def model(self):
        if self._model is None:
            # The engine loads only when a model is needed.
            from engine.backends import load_model

            self._model = load_model(self.backend, self.model_path, models_folder=self.library.models_folder,
                                     progress=self.preparing, notice=self.notice)
        return self._model

    def ingest(self, path: str | Path, policy: str = "sepllm", cache: int | None = None, force: bool = False,
               notes: bool = True, progress: Progress | None = None,
               cancelled: Callable[[], bool] | None = None, parallel: int | None = None) -> dict:
        """``parallel``: read as independent chunks of that many tokens side by side (torch only)."""
        started = time.perf_counter()
        document = read_document(path)
        chosen = make_policy(policy, cache)
        model = self.model
        if parallel is not None and (not model.capabilities.parallel_reading or parallel < 1):
            raise CommaError(f"the {model.backend} engine cannot read in parallel chunks; parallel reading "
                             "needs --backend torch and a chunk of at least one token")
        doc_id = document_id(document)
        # A parallel reading keeps other slots than a sequential one under the same policy.
        key = policy_key(chosen) + (f"-parallel{parallel}" if parallel else "")
        existing = self.library.find_memory(doc_id, model.fingerprint, model.backend, key)
        if existing and not force and Path(existing["path"]).is_file():
            self.library.add_document(document)  # the file may have moved since
            return self._ingest_report(doc_id, document, existing, time.perf_counter() - started, reused=True)
        result = read(model, document, chosen, notes=notes, parallel=parallel, progress=progress,
                      cancelled=cancelled)
        target = self.library.memory_path(doc_id, key, model.fingerprint, model.backend)
        size = result.memory.save(target)
        # The library learns of the document only once its memory is on disk: a cancelled or
        # failed read, or a full disk, leaves no trace.
        self.library.add_document(document)
        record = {
            "doc_id": doc_id, "model_fingerprint": model.fingerprint, "model_name": model.name,
            "backend": model.backend, "policy_key": key, "policy": json.dumps(chosen.describe()),
            "path": str(target), "bytes": size, "document_tokens": result.memory.header["document_tokens"],
            "kept_tokens": result.memory.kept_tokens, "seconds": result.seconds,
        }
        self.library.save_memory(record, result.notes)
        saved = self.library.find_memory(doc_id, model.fingerprint, model.backend, key)
        return self._ingest_report(doc_id, document, saved, time.perf_counter() - started, reused=False)

    @staticmethod
    def _ingest_report(doc_id, document, memory: dict, seconds: float, reused: bool) -> dict:
        return {
            "doc_id": doc_id, "title": document.title, "pages": document.pages,
            "tokens": memory["document_tokens"], "kept_tokens": memory["kept_tokens"],
            "memory_path": memory["path"], "memory_bytes": memory["bytes"], "seconds": round(seconds, 3),
            "reused": reused,
        }

    def _memory_record(self, doc_id: str) -> tuple[dict, dict]:
        doc = self.library.document(doc_id)
        model = self.model
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
                f"document {doc['id']} ({doc['title']}) has no memory for the model {self.model.name}; "
                f"read it first: comma ingest {doc['path']}"
            )
        return doc, record

    def load_memory(self, record: dict) -> Memory:
        return Memory.load(Path(record["path"]), model_fingerprint=self.model.fingerprint,
                           backend=self.model.backend)

    def ask(self, doc_id: str, question: str, session_id: str | None = None,
            on_text: Callable[[str], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> AskResult:
        started = time.perf_counter()
        doc, record = self._memory_record(doc_id)
        if session_id is None:
            session_id = self.library.new_session(doc["id"], question)
        elif self.library.session(session_id)["doc_id"] != doc["id"]:
            raise LibraryError(f"session {session_id} belongs to another document")
        history = [{"role": m["role"], "content": m["content"]} for m in self.library.messages(session_id)]
        memory = fit_to_question(self.model, self.load_memory(record), question)
        ttft = None
        parts = []
        with Conversation(self.model, memory) as conversation:
            for piece in conversation.ask(question, history, should_stop=should_stop):
                ttft = ttft if ttft is not None else time.perf_counter() - started
                parts.append(piece)
                if on_text is not None:
                    on_text(piece)
            pages = conversation.answer_pages()
        answer = "".join(parts).strip()
        self.library.add_message(session_id, "user", question)
        self.library.add_message(session_id, "assistant", answer, pages)
        seconds = time.perf_counter() - started
        return AskResult(answer, session_id, pages, round(ttft if ttft is not None else seconds, 3), round(seconds, 3))

    def summarize(self, doc_id: str, force: bool = False, progress: Progress | None = None) -> dict:
        started = time.perf_counter()
        _, record = self._memory_record(doc_id)
        saved = None if force else self.library.summary(record["id"])
        if saved is None:
            notes = self.library.notes(record["id"])
            if not notes:
                raise LibraryError("this memory was read without section notes; read it again with --force")
            text = summarize_notes(self.model, [n["text"] for n in notes], progress)
            pages = sorted({p for n in notes for p in range(n["first_page"], n["last_page"] + 1)})
            self.library.save_summary(record["id"], text, pages)
            saved = self.library.summary(record["id"])
        return {"summary": saved["text"], "pages": saved["pages"],
                "seconds": round(time.perf_counter() - started, 3)}

    def list(self) -> list[dict]:
        return self.library.documents()
