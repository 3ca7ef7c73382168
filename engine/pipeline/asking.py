"""Asking: a question about a document answered from the right model's memory and store, or
from its best pages read on the spot, and kept in the library with the pages it came from.

``Comma.ask`` and the window's live conversation both go through :class:`DocumentConversation`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.answering import grounding
from engine.answering.conversation import Conversation, fit_to_question
from engine.errors import Cancelled, CommaError, LibraryError
from engine.generate import Sampling
from engine.memory.memory import Memory
from engine.policy import Full
from engine.protocols import Model
from engine.reading.reader import read
from engine.recall import spot_reading
from engine.recall.page_search import Found, combine
from engine.recall.ranking import Source
from engine.recall.store import RecallStore, snippet
from storage.library import Library

# Where a conversation finds what a question needs (engine.recall.page_search), given the
# document id and the question.
FindPages = Callable[[str, str], Found]

# How long a question waits for another program's write to the library to end before its answer
# is given as not kept (the answer itself does not wait).
LOCK_WAIT_S = 2.0


def citation(page: int, section: str | None) -> str:
    """How a cited page reads to a person: "§ 8 Termination, p. 12", "Preface, p. 3" or "p. 12"."""
    if not section:
        return f"p. {page}"
    mark = "§ " if section[:1].isdigit() and not section.startswith("§") else ""
    return f"{mark}{section}, p. {page}"


@dataclass
class AskResult:
    answer: str
    session_id: str
    pages: list[int]
    ttft_s: float
    seconds: float
    # {"page", "score", "text", "section"}, most relevant first; "section" is None without one
    sources: list[dict] = field(default_factory=list)
    recall: bool = False  # whether passages were looked for in the recall store
    recall_reason: str | None = None  # why not, when not
    model: str = "reading"  # which model answered: "answering" or "reading" (the small one)
    model_name: str = ""
    model_reason: str | None = None  # why the small model answered although an answering model was expected
    read_on_the_spot: list[int] = field(default_factory=list)  # pages the answering model read for this answer
    sections: list[str | None] = field(default_factory=list)  # the section each of ``pages`` begins in
    not_saved: str | None = None  # why the question and answer were not kept in the library
    unsupported: list[str] = field(default_factory=list)  # figures and names of the answer the document lacks


def read_again(doc: dict) -> str:
    return f"read it again to find answers on every page: comma ingest --force {doc['path']}"


def search_words(question: str, history: list[dict[str, str]]) -> list[str]:
    """What a question's pages are searched with: a follow-up ("and for libraries?", "how long
    does that take?") points back at the question before it, so it is searched by its own words
    and by the two questions together, and the two findings are fused; a follow-up that changes
    the subject still finds its own pages. On the dev part of bench/data/heldout the stretches
    so read held the second answer for 15 of 16 follow-ups: 12 by the follow-up's words alone, 16
    by the two questions alone, which would keep a new subject on the old pages (bench/README.md)."""
    earlier = [m["content"] for m in history if m["role"] == "user"]
    return [question, f"{earlier[-1]} {question}"] if earlier else [question]


def find(find_pages: FindPages, doc_id: str, searches: list[str]) -> Found:
    """What ``searches`` (``search_words``) find in one document, fused."""
    found = [find_pages(doc_id, search) for search in searches]
    return found[0] if len(found) == 1 else combine(found)


def check_question(question: str) -> None:
    """Refuse a question with nothing to ask, before anything is loaded or kept."""
    if not question.strip():
        raise CommaError("the question is empty; ask something about the document")


class DocumentConversation:
    """Questions about one document on one live cache: a follow-up skips loading the model's
    context and the memory again, and reuses the turns already in the cache.

    Without a memory (``record`` None: the answering model has not read the document yet),
    every question reads its best pages on the spot (``engine.recall.spot_reading``) and is answered
    from them alone."""

    def __init__(self, library: Library, find_pages: FindPages, model: Model, role: str, model_reason: str | None,
                 doc: dict, record: dict | None, memory: Memory | None, store: RecallStore | None,
                 reason: str | None, ranking: str):
        """``role``: "answering" or "reading" (the small model, ``model_reason`` says why when the
        answering model was expected); ``reason``: why answers come from the memory alone."""
        self.library, self.find_pages, self.model, self.role = library, find_pages, model, role
        self.model_reason = model_reason
        self.doc, self.record, self.memory = doc, record, memory
        self.store, self.reason, self.ranking = store, reason, ranking
        self._live: Conversation | None = None
        self._spot_read: dict[int, str] | None = None  # what the live spot memory holds; None with no such memory

    def _conversation(self, question: str) -> Conversation:
        if self._live is None:
            assert self.memory is not None
            # A parallel memory keeps the chunks that suit the first question.
            memory = fit_to_question(self.model, self.memory, question)
            self._live = Conversation(self.model, memory, recall=self.store, ranking=self.ranking)
        return self._live

    def _read_on_the_spot(self, searches: list[str], on_status: Callable[[str], None] | None,
                          should_stop: Callable[[], bool]) -> tuple[Conversation, list[int]]:
        library, doc, model = self.library, self.doc, self.model
        pages = spot_reading.spot_pages(find(self.find_pages, doc["id"], searches),
                                        lambda page: library.page_text(doc["id"], page),
                                        lambda text: len(model.tokenize(text)))
        if not pages:
            raise CommaError("no page of this document shares a word with the question, and the answering "
                             "model has not read the whole document yet; ask with the document's own words, "
                             "or wait for the background reading to finish")
        if pages == self._spot_read and self._live is not None:
            # A follow-up that needs the very stretches already read answers from them at once.
            return self._live, list(pages)
        if on_status is not None:
            listed = ", ".join(str(page) for page in pages)
            on_status(f"reading {len(pages)} page{'s' if len(pages) > 1 else ''} for this answer (p. {listed})…")
        document = spot_reading.pages_document(Path(doc["path"]), doc["title"], pages, doc["pages"])
        memory = read(model, document, Full(), notes=False, cancelled=should_stop).memory
        self.close()
        self._live, self._spot_read = Conversation(model, memory), pages
        return self._live, list(pages)

    def ask(self, question: str, session_id: str | None = None, on_text: Callable[[str], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False, started: float | None = None,
            on_status: Callable[[str], None] | None = None, sampling: Sampling = Sampling()) -> AskResult:
        started = started if started is not None else time.perf_counter()
        check_question(question)
        library, doc = self.library, self.doc
        if session_id is not None and library.session(session_id)["doc_id"] != doc["id"]:
            raise LibraryError(f"session {session_id} belongs to another document")
        # A library that is read-only, or that another program is writing to, is found now: it
        # still answers, and the answer says it is not kept, rather than being thrown away
        # after a wait for the lock.
        blocked = library.why_not_writable(LOCK_WAIT_S)
        not_saved = f"{blocked}; this conversation is not kept" if blocked else None
        history = [{"role": m["role"], "content": grounding.spoken(m["content"]) if m["role"] == "assistant"
                    else m["content"]} for m in (library.messages(session_id) if session_id else [])]
        spot: list[int] = []
        searches = search_words(question, history)
        if self.record is None:
            try:
                conversation, spot = self._read_on_the_spot(searches, on_status, should_stop)
            except Cancelled:
                return AskResult("", session_id or "", [], 0.0, round(time.perf_counter() - started, 3),
                                 model=self.role, model_name=self.model.name)
            candidates: list[tuple[int, float]] = []
        else:
            conversation = self._conversation(question)
            candidates = find(self.find_pages, doc["id"], searches).pages if conversation.recall is not None else []
        ttft = None
        parts = []
        for piece in conversation.ask(question, history, sampling, should_stop, candidates):
            ttft = ttft if ttft is not None else time.perf_counter() - started
            parts.append(piece)
            if on_text is not None:
                on_text(piece)
        # The spot memory holds only the pages read, in document order; they are cited best first.
        pages = spot or conversation.answer_pages()
        sources = [s.as_json() for s in conversation.sources] or \
            [Source(page, 0.0, snippet(library.page_text(doc["id"], page))).as_json() for page in spot]
        for source in sources:
            text = library.page_text(doc["id"], source["page"])
            source["section"] = library.section_at(doc["id"], source["page"], max(0, text.find(source["text"][:40])))
        answer = "".join(parts).strip()
        # Read on the spot, the model saw only the stretches read: a figure outside them is not
        # the document's even where another page has it. After the deep read, the whole document.
        # A document kept without its page text (an old library whose file is gone) is not checked.
        read = "\n".join((self._spot_read or {}).values()) if spot else "\n".join(library.page_texts(doc["id"]))
        missing = grounding.unsupported(answer, question, read) if read.strip() else []
        if missing:
            note = grounding.note(missing, "the passages read for this answer do" if spot else "the document does")
            answer += note
            if on_text is not None:
                on_text(note)
        kept_in = session_id or ""  # a conversation that is not kept has no session ("")
        if not_saved is None:
            try:
                # A new conversation is made with its first answer, so that nothing is left of
                # one whose answer could not be kept.
                with library.transaction():
                    kept_in = session_id or library.new_session(doc["id"], question)
                    library.add_message(kept_in, "user", question)
                    library.add_message(kept_in, "assistant", answer, pages, sources=sources)
            except LibraryError as exc:  # the lock was taken meanwhile, or the disk is full: shown, not kept
                kept_in, not_saved = session_id or "", str(exc)
        seconds = time.perf_counter() - started
        reason = self.reason or (f"{conversation.recall_error}; {read_again(doc)}" if conversation.recall_error else None)
        return AskResult(answer, kept_in, pages, round(ttft if ttft is not None else seconds, 3), round(seconds, 3),
                         sources, conversation.recall is not None or bool(spot), None if spot else reason,
                         self.role, self.model.name, self.model_reason if self.role == "reading" else None,
                         spot, [library.section_at(doc["id"], page) for page in pages], not_saved, missing)

    def close(self) -> None:
        if self._live is not None:
            self._live.close()
            self._live = None
        self._spot_read = None

    def __enter__(self) -> DocumentConversation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
