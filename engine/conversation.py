"""Answering questions from a saved memory, streamed token by token.

The memory is restored into a fresh cache with room for the conversation after it (and, with a
recall store, for the passages each question chooses: the first question's right after the
memory, a follow-up's inside its own turn; see ``engine.recall``). Every question is laid out
after the memory as the chat template wants it (earlier turns included); what the cache holds
already from the turns before is reused and only the rest is computed, so a follow-up costs its
own passages' loading and its own tokens, not the whole conversation again. The memory's own slots
are never changed by asking, and the file on disk is only read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from engine.errors import CommaError, MemoryFileError
from engine.generate import Sampling, generate_text
from engine.memory import Memory
from engine.prompts import PASSAGES, question_suffix, with_passages
from engine.protocols import Model, ParallelModel, RecallCache
from engine.recall import (
    DEFAULT_RANKING,
    MAX_PASSAGES,
    PASSAGE_TOKENS,
    Passage,
    RecallStore,
    Source,
    choose,
    rank,
    ranking_room,
    sink_slots,
)

CONVERSATION_ROOM = 2048
# Follow-ups whose own passages the cache keeps room for, beyond the first question's (where the
# model's trained context allows): each turn's passages stay where they were loaded.
FOLLOW_UP_TURNS = 3
# After the memory: a token id, or (passage index, slot within it) for a loaded passage's slot.
Slot = int | tuple[int, int]
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


def _within_passage(slot: Slot) -> bool:
    return isinstance(slot, tuple) and slot[1] > 0


class Conversation:
    """Questions and follow-ups over one memory, on one live cache.

    With a recall store, every question chooses its own passages (``candidate_pages`` name
    where to look). The first question's follow the memory, as more of the document; a
    follow-up's go inside its own turn, after the conversation so far, so that nothing before
    them is computed again and a follow-up costs its passages' loading and its own tokens. When
    the cache has no room left, the latest earlier follow-up's passages leave (its turn stays as
    text) and what came after them is computed again; a conversation given as ``history`` that
    this cache did not answer is text. When a store cannot be used (a damaged passage, say), the
    answer comes from the memory alone and ``recall_error`` says why."""

    def __init__(self, model: Model, memory: Memory, room: int = CONVERSATION_ROOM, recall: RecallStore | None = None,
                 ranking: str = DEFAULT_RANKING):
        """``ranking``: "words" keeps the order of the candidate pages; "likelihood" orders their
        passages by the question's likelihood after each."""
        if ranking not in RANKINGS:
            raise CommaError(f"unknown ranking {ranking!r}; choose one of {', '.join(RANKINGS)}")
        self.model, self.memory, self.room, self.recall, self.ranking = model, memory, room, recall, ranking
        if recall is not None and not model.capabilities.recall:
            raise CommaError(f"the {model.backend} engine cannot load recall passages")
        # A question's passages fit the trained context after the memory and the conversation's
        # room; the follow-ups' passages get what is left of it, up to FOLLOW_UP_TURNS turns.
        free = max(0, model.n_ctx_train - memory.kept_tokens - room)
        self.passage_budget = min(free, MAX_PASSAGES * PASSAGE_TOKENS) if recall else 0
        follow_ups = min(FOLLOW_UP_TURNS * self.passage_budget, free - self.passage_budget)
        # What follows the memory stays within the trained positions; ranking's side sequences
        # (at their passages' own positions) get the cells beyond.
        self.layout_cells = room + self.passage_budget + follow_ups
        ranking_extra = max(0, ranking_room() - self.passage_budget) if recall and ranking == "likelihood" else 0
        self.cache = model.new_cache(memory.kept_tokens + self.layout_cells + ranking_extra)
        try:
            self.cache.restore(memory.state, memory.offsets, memory.separators)
        except Exception:
            self.cache.close()
            raise
        # What the cache holds after the memory: token ids, and (passage index, slot) for the
        # slots of a loaded passage.
        self._cached: list[Slot] = []
        self._turns: list[tuple[str, tuple[Passage, ...]]] = []  # questions this cache answered, with their passages
        self.sources: list[Source] = []
        self.recall_error: str | None = None

    def close(self) -> None:
        """Free the cache (a llama.cpp context, or GPU memory) now rather than at collection."""
        self.cache.close()

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _layout(self, history: list[dict[str, str]], question: str, passages: tuple[Passage, ...],
                answer_room: int) -> list[Slot]:
        """What follows the memory for ``question`` after ``history``: each turn's text as
        tokens, and its passages where they go (the first turn's right after the memory, a
        follow-up's inside its turn). Within the room: earlier follow-ups' passages leave first,
        then the first turn's, then the oldest turns."""
        pairs = [[asked, history[2 * n + 1]["content"], given]
                 for n, (asked, given) in enumerate(self._known(history))]
        cells = self.layout_cells
        while True:
            slots, text = self._render(pairs, question, passages)
            if text + answer_room <= self.room and len(slots) + answer_room <= cells:
                return slots
            follow_ups = [pair for pair in pairs[1:] if pair[2]]
            if text + answer_room > self.room or not (follow_ups or (pairs and pairs[0][2])):
                if not pairs:
                    raise CommaError(f"the question is too long ({text} tokens); keep it under "
                                     f"{self.room - answer_room} tokens")
                pairs = pairs[1:]
            else:
                # The latest follow-up's passages leave first: only what came after them is
                # computed again. The first question's, right after the memory, go last.
                (follow_ups[-1] if follow_ups else pairs[0])[2] = ()

    def _known(self, history: list[dict[str, str]]) -> list[tuple[str, tuple[Passage, ...]]]:
        """Each earlier turn's question, with the passages this cache gave it (none for a turn
        it did not answer)."""
        out = []
        for n in range(len(history) // 2):
            asked = history[2 * n]["content"]
            ours = n < len(self._turns) and self._turns[n][0] == asked
            out.append((asked, self._turns[n][1] if ours else ()))
        return out

    def _render(self, pairs: list, question: str, passages: tuple[Passage, ...]) -> tuple[list[Slot], int]:
        """The layout of these turns, and how many of its slots are text."""
        turns = [*pairs, [question, None, passages]]
        messages: list[dict[str, str]] = []
        marked: list[tuple[Passage, ...]] = []
        for i, (asked, answer, chosen) in enumerate(turns):
            if i > 0 and chosen:
                marked.append(chosen)
                asked = with_passages(asked)
            messages.append({"role": "user", "content": asked})
            if answer is not None:
                messages.append({"role": "assistant", "content": answer})
        pieces = question_suffix(self.model, messages[:-1], messages[-1]["content"]).split(PASSAGES)
        slots: list[Slot] = self._slots(turns[0][2])
        text = 0
        for i, piece in enumerate(pieces):
            tokens = self.model.tokenize(piece, special=True).tolist() if piece else []
            slots += tokens
            text += len(tokens)
            if i < len(marked):
                slots += self._slots(marked[i])
        return slots, text

    @staticmethod
    def _slots(passages: tuple[Passage, ...]) -> list[Slot]:
        return [(p.index, k) for p in passages for k in range(p.tokens)]

    def answer_pages(self) -> list[int]:
        """The pages the answer was given: its sources' pages, most relevant first (at most
        MAX_CITED); without recall, the pages the memory keeps in full (its windows), ascending.

        Separator slots come from every part of the document; the windows are the passage the
        model sees word for word, so they are what an answer can quote.
        """
        if self.sources:
            return list(dict.fromkeys(s.page for s in self.sources))[:MAX_CITED]
        return self.memory.pages(np.flatnonzero(~self.memory.separators))

    def _choose_passages(self, question: str, candidate_pages: list[tuple[int, float]]) -> tuple[Passage, ...]:
        """The passages for ``question`` from the candidates' pages, in document order (its
        ``sources`` best first)."""
        store, cache = self.recall, self.cache
        assert store is not None and isinstance(cache, RecallCache)
        if self.passage_budget == 0:
            self.recall, self.sources = None, []
            self.recall_error = "the memory leaves no room for passages within the model's trained context"
            return ()
        try:
            candidates = store.on_pages([page for page, _ in candidate_pages])
            if self.ranking == "likelihood":
                sinks = sink_slots(self.memory.offsets, self.memory.header["prompt_tokens"])
                ranked = rank(cache, self.model, store, candidates, question, sinks)
            else:  # the candidate pages' order and score
                order = {page: (i, relevance) for i, (page, relevance) in enumerate(candidate_pages)}
                ranked = [(p, order[p.page][1]) for p in sorted(candidates, key=lambda p: (order[p.page][0], p.index))]
            chosen = choose(ranked, self.passage_budget)
            self.sources = [Source(p.page, score, store.text(p, self.model)) for p, score in chosen]
            return tuple(sorted((p for p, _ in chosen), key=lambda p: p.index))
        except MemoryFileError as exc:
            self._without_recall(str(exc))
            return ()

    def _without_recall(self, reason: str) -> None:
        """From now on the memory alone: no passage is loaded, none is cited."""
        self.recall, self.recall_error, self.sources = None, reason, []
        self._turns = [(asked, ()) for asked, _ in self._turns]
        self.cache.truncate(self.memory.kept_tokens)
        self._cached = []

    def _fill(self, wanted: list[Slot]) -> np.ndarray:
        """Make the cache hold ``wanted`` after the memory, computing only from the first slot
        that differs from what it holds; the last token's logits."""
        same = 0
        limit = min(len(self._cached), len(wanted) - 1)
        while same < limit and self._cached[same] == wanted[same]:
            same += 1
        while same and _within_passage(wanted[same]):
            same -= 1  # a passage is loaded whole
        self.cache.truncate(self.memory.kept_tokens + same)
        self._cached = wanted[:same]
        logits = None
        at = same
        while at < len(wanted):
            slot = wanted[at]
            if isinstance(slot, tuple):
                passage = self._passage(slot[0])
                assert self.recall is not None and isinstance(self.cache, RecallCache)
                pieces = zip(self.recall.states(passage), self.recall.piece_offsets(passage), strict=True)
                for (state, _n), offsets in pieces:
                    self.cache.import_slots(state, offsets)
                at += passage.tokens
            else:
                end = at
                while end < len(wanted) and not isinstance(wanted[end], tuple):
                    end += 1
                logits = self.cache.decode_main_tail(np.array(wanted[at:end], dtype=np.int32))
                at = end
            self._cached = wanted[:at]
        assert logits is not None  # a layout ends with the assistant's turn opening
        return logits

    def _passage(self, index: int) -> Passage:
        assert self.recall is not None
        return self.recall.passages[index]

    def ask(self, question: str, history: list[dict[str, str]] | None = None,
            sampling: Sampling = Sampling(), should_stop: Callable[[], bool] = lambda: False,
            candidate_pages: list[tuple[int, float]] | None = None) -> Iterator[str]:
        """Yield the answer's text as it is generated."""
        history = history or []
        self._layout(history, question, (), sampling.max_tokens)  # a question too long is refused first
        passages = self._choose_passages(question, candidate_pages or []) if self.recall is not None else ()
        wanted = self._layout(history, question, passages, sampling.max_tokens)
        try:
            logits = self._fill(wanted)
        except MemoryFileError as exc:
            self._without_recall(str(exc))
            passages = ()
            logits = self._fill(self._layout(history, question, (), sampling.max_tokens))
        self._turns = [*self._known(history), (question, passages)]

        def step(token: int) -> np.ndarray:
            self._cached.append(token)
            return self.cache.decode_main_tail(np.array([token], dtype=np.int32))

        for piece in generate_text(self.model, logits, step, sampling, should_stop):
            if piece:
                yield piece

