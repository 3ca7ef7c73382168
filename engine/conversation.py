"""Answering questions from a saved memory, streamed token by token.

The memory is restored into a fresh cache with room for the conversation after it (and, with a
recall store, for the passages each question chooses, between the memory and the conversation;
see ``engine.recall``). Every
question is laid out after the memory as the chat template wants it (earlier turns included);
tokens already in the cache from the previous turn are reused and only the rest is computed,
so a follow-up costs its own tokens, not the whole conversation again. The memory's own slots
are never changed by asking, and the file on disk is only read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from engine.errors import CommaError, MemoryFileError
from engine.generate import Sampling, generate_text
from engine.memory import Memory
from engine.prompts import question_suffix
from engine.protocols import Model, ParallelModel, RecallCache
from engine.recall import (
    DEFAULT_RANKING,
    MAX_PASSAGES,
    PASSAGE_TOKENS,
    RecallStore,
    Source,
    choose,
    rank,
    ranking_room,
    sink_slots,
)

CONVERSATION_ROOM = 2048
MAX_CITED = 5
RANKINGS = ("words", "likelihood")


def fit_to_question(model: Model, memory: Memory, question: str) -> Memory:
    """The memory to answer ``question`` from. A parallel memory can hold more slots than the
    model was trained to attend over; the backend then keeps the chunks that best predict the
    question (ParallelComp's chunk choice), within the trained positions minus the room."""
    if "chunks" not in memory.header:
        return memory
    if not model.capabilities.chunk_choice or not isinstance(model, ParallelModel):
        raise MemoryFileError(f"this memory was read in parallel chunks, which the {model.backend} engine "
                              "cannot answer from; read the document again without --parallel")
    budget = max(model.n_ctx_train - CONVERSATION_ROOM, memory.header["chunks"][0])
    return model.select_chunks(memory, question, budget)


class Conversation:
    """Questions and follow-ups over one memory, on one live cache.

    With a recall store, every question first chooses its own passages (``candidate_pages``
    name where to look) and they are loaded after the memory, before the conversation; the
    earlier turns stay as text. When a store cannot be used (a damaged passage, say), the
    answer comes from the memory alone and ``recall_error`` says why."""

    def __init__(self, model: Model, memory: Memory, room: int = CONVERSATION_ROOM, recall: RecallStore | None = None,
                 ranking: str = DEFAULT_RANKING):
        """``ranking``: "words" keeps the order of the candidate pages (the full-text index's);
        "likelihood" orders their passages by the question's likelihood after each."""
        if ranking not in RANKINGS:
            raise CommaError(f"unknown ranking {ranking!r}; choose one of {', '.join(RANKINGS)}")
        self.model, self.memory, self.room, self.recall, self.ranking = model, memory, room, recall, ranking
        if recall is not None and not model.capabilities.recall:
            raise CommaError(f"the {model.backend} engine cannot load recall passages")
        # Passages fit the trained context after the memory and the conversation's room.
        self.passage_budget = min(max(0, model.n_ctx_train - memory.kept_tokens - room),
                                  MAX_PASSAGES * PASSAGE_TOKENS) if recall else 0
        extra = (max(self.passage_budget, ranking_room()) if ranking == "likelihood" else self.passage_budget) \
            if recall else 0
        self.cache = model.new_cache(memory.kept_tokens + room + extra)
        try:
            self.cache.restore(memory.state, memory.offsets, memory.separators)
        except Exception:
            self.cache.close()
            raise
        self._after_memory: list[int] = []
        self._loaded: list[int] = []  # passage indices after the memory, in document order
        self.sources: list[Source] = []
        self.recall_error: str | None = None

    def close(self) -> None:
        """Free the cache (a llama.cpp context, or GPU memory) now rather than at collection."""
        self.cache.close()

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _prompt_tokens(self, history: list[dict[str, str]], question: str, answer_room: int) -> np.ndarray:
        # Oldest turns go first when the conversation outgrows the room after the memory.
        turns = list(history)
        while True:
            tokens = self.model.tokenize(question_suffix(self.model, turns, question), special=True)
            if len(tokens) + answer_room <= self.room:
                return tokens
            if not turns:
                raise CommaError(f"the question is too long ({len(tokens)} tokens); keep it under "
                                 f"{self.room - answer_room} tokens")
            turns = turns[2:]

    def answer_pages(self) -> list[int]:
        """The pages the answer was given: its sources' pages, most relevant first (at most
        MAX_CITED); without recall, the pages the memory keeps in full (its windows), ascending.

        Separator slots come from every part of the document; the windows are the passage the
        model sees word for word, so they are what an answer can quote.
        """
        if self.sources:
            return list(dict.fromkeys(s.page for s in self.sources))[:MAX_CITED]
        return self.memory.pages(np.flatnonzero(~self.memory.separators))

    def _choose_passages(self, question: str, candidate_pages: list[tuple[int, float]]) -> None:
        """Rank the candidates' passages for ``question`` and load the best after the memory."""
        store, cache = self.recall, self.cache
        assert store is not None and isinstance(cache, RecallCache)
        if self.passage_budget == 0:
            self.recall, self.sources = None, []
            self.recall_error = "the memory leaves no room for passages within the model's trained context"
            return
        try:
            candidates = store.on_pages([page for page, _ in candidate_pages])
            if self.ranking == "likelihood":
                sinks = sink_slots(self.memory.offsets, self.memory.header["prompt_tokens"])
                ranked = rank(cache, self.model, store, candidates, question, sinks)
            else:  # the full-text index's order and relevance
                order = {page: (i, relevance) for i, (page, relevance) in enumerate(candidate_pages)}
                ranked = [(p, order[p.page][1]) for p in sorted(candidates, key=lambda p: (order[p.page][0], p.index))]
            chosen = choose(ranked, self.passage_budget)
            in_order = sorted(chosen, key=lambda c: c[0].index)
            wanted = [p.index for p, _ in in_order]
            if wanted != self._loaded:
                cache.truncate(self.memory.kept_tokens)
                self._loaded, self._after_memory = [], []
                for passage, _ in in_order:
                    for (state, _n), offsets in zip(store.states(passage), store.piece_offsets(passage), strict=True):
                        cache.import_slots(state, offsets)
                self._loaded = wanted
            self.sources = [Source(p.page, score, store.text(p, self.model)) for p, score in chosen]
        except MemoryFileError as exc:
            self.recall, self.recall_error, self.sources = None, str(exc), []
            cache.truncate(self.memory.kept_tokens)
            self._loaded, self._after_memory = [], []

    def ask(self, question: str, history: list[dict[str, str]] | None = None,
            sampling: Sampling = Sampling(), should_stop: Callable[[], bool] = lambda: False,
            candidate_pages: list[tuple[int, float]] | None = None) -> Iterator[str]:
        """Yield the answer's text as it is generated."""
        prompt = self._prompt_tokens(history or [], question, sampling.max_tokens)
        if self.recall is not None:
            self._choose_passages(question, candidate_pages or [])
        previous = self._after_memory
        same = 0
        limit = min(len(previous), len(prompt) - 1)
        while same < limit and previous[same] == prompt[same]:
            same += 1
        # The document slots (memory, then any passages) carry offsets; the conversation follows them.
        base = len(self.cache.offsets)
        self.cache.truncate(base + same)
        logits = self.cache.decode_main_tail(prompt[same:])
        self._after_memory = prompt.tolist()

        def step(token: int) -> np.ndarray:
            self._after_memory.append(token)
            return self.cache.decode_main_tail(np.array([token], dtype=np.int32))

        for piece in generate_text(self.model, logits, step, sampling, should_stop):
            if piece:
                yield piece

