"""Answering questions from a saved memory, streamed token by token.

The memory is restored into a fresh cache with room for the conversation after it (and, with a
recall store, for the passages each question chooses: the first question's right after the
memory, a follow-up's inside its own turn; see ``engine.recall.store``). Every question is laid out
after the memory as the chat template wants it (earlier turns included, as text); what the cache
holds already from the turns before is reused and only the rest is computed, so a follow-up costs
its own passages' loading and its own tokens, not the whole conversation again. The memory's own
slots are never changed by asking, and the file on disk is only read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from engine.errors import CommaError, MemoryFileError
from engine.generate import Sampling, generate_text
from engine.memory.memory import Memory
from engine.prompts import ANSWER, PASSAGES, question_layout, with_passages
from engine.protocols import AttentionCache, Model, RecallCache
from engine.recall.ranking import (
    DEFAULT_RANKING,
    MAX_PASSAGES,
    RANK_GROUP,
    RERANK_POOL,
    Source,
    choose,
    rank,
    ranking_room,
    sink_slots,
)
from engine.recall.store import PASSAGE_TOKENS, Passage, RecallStore

CONVERSATION_ROOM = 2048
# After the memory: a token id, or (passage index, slot within it) for a loaded passage's slot.
Slot = int | tuple[int, int]
MAX_CITED = 5
RANKINGS = ("words", "likelihood", "rerank")  # engine.recall.ranking says what each does


def fit_to_question(model: Model, memory: Memory, question: str) -> Memory:
    """The memory to answer ``question`` from. A parallel memory can hold more slots than the
    model was trained to attend over; the backend then keeps the chunks that best predict the
    question (ParallelComp's chunk choice), within the trained positions minus the room."""
    if not memory.parallel:
        return memory
    if not model.capabilities.chunk_choice:
        raise MemoryFileError(f"this memory was read in parallel chunks, which the {model.backend} engine "
                              "cannot answer from; read the document again without --parallel")
    budget = max(model.n_ctx_train - CONVERSATION_ROOM, memory.header["chunks"][0])
    from engine.reading.parallel import select_chunks  # needs torch, like the memory's reading did

    return select_chunks(model, memory, question, budget)


_MARKS = re.compile(f"({re.escape(PASSAGES)}|{re.escape(ANSWER)})")


@dataclass
class _Turn:
    """A question this cache answered: the passages it was given and the tokens it generated."""

    question: str
    passages: tuple[Passage, ...]
    answer: list[int] = field(default_factory=list)

    def spoken(self, model: Model) -> str:
        return model.detokenize(self.answer).decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class _Earlier:
    """An earlier turn as the next layout renders it."""

    question: str
    answer: str
    given: bool  # it was given passages (they have left; the words that introduced them stay)
    tokens: list[int] | None  # the answer's tokens as this cache generated them, or None: its text


def _plain(text: str) -> str:
    """A person's text without the marks the layout splits at."""
    return text.replace(PASSAGES, "").replace(ANSWER, "")


def _within_passage(slot: Slot) -> bool:
    return isinstance(slot, tuple) and slot[1] > 0


class Conversation:
    """Questions and follow-ups over one memory, on one live cache.

    With a recall store, every question chooses its own passages (``candidate_pages`` name
    where to look). The first question's follow the memory, as more of the document; a
    follow-up's go inside its own turn, after the conversation so far, so that nothing before
    them is computed again. The earlier turns' passages leave the cache when the next question
    comes, and their turns stay as text whose KV is kept, slid into their place (as eviction
    slides the memory's): a follow-up costs its passages' loading and its own tokens, and the
    cache, over which every answer token attends, stays one turn's passages long (measured here
    with the bundled model, a decode step took 25 ms after 2,000 slots and 58 ms after 7,000).
    A conversation given as ``history`` that this cache did not answer is text. When a store
    cannot be used (a damaged passage, say), the answer comes from the memory alone and
    ``recall_error`` says why."""

    def __init__(self, model: Model, memory: Memory, room: int = CONVERSATION_ROOM, recall: RecallStore | None = None,
                 ranking: str = DEFAULT_RANKING):
        """``ranking``: "words" keeps the order of the candidate pages; "likelihood" orders their
        passages by the question's likelihood after each; "rerank" ranks the first RERANK_POOL
        passages in the pages' order by that likelihood."""
        if ranking not in RANKINGS:
            raise CommaError(f"unknown ranking {ranking!r}; choose one of {', '.join(RANKINGS)}")
        self.model, self.memory, self.room, self.recall, self.ranking = model, memory, room, recall, ranking
        if recall is not None and not model.capabilities.recall:
            raise CommaError(f"the {model.backend} engine cannot load recall passages")
        # A question's passages fit the trained context after the memory and the conversation's
        # room.
        free = max(0, model.n_ctx_train - memory.kept_tokens - room)
        self.passage_budget = min(free, MAX_PASSAGES * PASSAGE_TOKENS) if recall else 0
        # What follows the memory stays within the trained positions; ranking's side sequences
        # (at their passages' own positions) get the cells beyond.
        self.layout_cells = room + self.passage_budget
        ranked = {"likelihood": RANK_GROUP, "rerank": min(RANK_GROUP, RERANK_POOL)}.get(ranking, 0) if recall else 0
        ranking_extra = max(0, ranking_room(ranked) - self.passage_budget) if ranked else 0
        self.cache = model.new_cache(memory.kept_tokens + self.layout_cells + ranking_extra)
        try:
            self.cache.restore(memory.state, memory.offsets, memory.separators)
        except Exception:
            self.cache.close()
            raise
        # What the cache holds after the memory: token ids, and (passage index, slot) for the
        # slots of a loaded passage.
        self._cached: list[Slot] = []
        self._turns: list[_Turn] = []
        self.sources: list[Source] = []
        self._source_passages: list[int] = []  # the passage index of each of ``sources``
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
        tokens, and this question's passages where they go (right after the memory for the
        first question, inside its own turn for a follow-up). The oldest turns leave when the
        text outgrows the room (and what follows them is computed again)."""
        pairs = self._earlier(history)
        while True:
            slots, text = self._render(pairs, question, passages)
            # The passages are within passage_budget, so within the room the layout fits its cells.
            if text + answer_room <= self.room:
                return slots
            if not pairs:
                raise CommaError(f"the question is too long ({text} tokens); keep it under "
                                 f"{self.room - answer_room} tokens")
            pairs = pairs[1:]

    def _known(self, history: list[dict[str, str]]) -> list[_Turn | None]:
        """For each earlier turn, the one this cache answered (None for a turn it did not)."""
        out: list[_Turn | None] = []
        for n in range(len(history) // 2):
            turn = self._turns[n] if n < len(self._turns) else None
            ours = turn is not None and turn.question == history[2 * n]["content"] \
                and turn.spoken(self.model) == history[2 * n + 1]["content"]
            out.append(turn if ours else None)
        return out

    def _earlier(self, history: list[dict[str, str]]) -> list[_Earlier]:
        """The earlier turns to lay out. An answer this cache generated keeps its own tokens:
        a tokenizer need not give generated text back as the same tokens, and every slot from
        the first difference on would be computed again."""
        out = []
        for n, turn in enumerate(self._known(history)):
            asked, answer = _plain(history[2 * n]["content"]), _plain(history[2 * n + 1]["content"])
            out.append(_Earlier(asked, answer, turn is not None and bool(turn.passages),
                                turn.answer if turn is not None and turn.answer else None))
        return out

    def _render(self, pairs: list[_Earlier], question: str,
                passages: tuple[Passage, ...]) -> tuple[list[Slot], int]:
        """The layout of these turns, then ``question`` with ``passages``, and how many of its
        slots are text. An earlier follow-up keeps the words that introduced its passages, as
        the cache computed them."""
        messages: list[dict[str, str]] = []
        answers: list[list[int]] = []
        for i, pair in enumerate(pairs):
            messages.append({"role": "user", "content": with_passages(pair.question) if i and pair.given
                             else pair.question})
            if pair.tokens is not None:
                answers.append(pair.tokens)
            messages.append({"role": "assistant", "content": ANSWER if pair.tokens is not None else pair.answer})
        question = _plain(question)
        asked = with_passages(question) if pairs and passages else question
        # The marks are in the contents only (a person's own are taken out by _plain), and
        # control tokens in the template's text only.
        pieces = [(piece, template) for text, template in question_layout(self.model, messages, asked)
                  for piece in ([text] if template else _MARKS.split(text))]
        texts = [piece for piece, _ in pieces]
        if texts.count(ANSWER) != len(answers):  # a template that drops or repeats turns: all text
            return self._render([replace(pair, tokens=None) for pair in pairs], question, passages)
        slots: list[Slot] = self._slots(passages) if not pairs else []
        marks = texts.count(PASSAGES)
        text = 0
        for piece, template in pieces:
            if piece == PASSAGES:
                marks -= 1  # the marks of earlier turns are left empty; the last one is this question's
                slots += self._slots(passages) if marks == 0 else []
                continue
            tokens = answers.pop(0) if piece == ANSWER else \
                self.model.tokenize(piece, special=template).tolist() if piece else []
            slots += tokens
            text += len(tokens)
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
            self.recall, self.sources, self._source_passages = None, [], []
            self.recall_error = "the memory leaves no room for passages within the model's trained context"
            return ()
        try:
            candidates = store.on_pages([page for page, _ in candidate_pages])
            if self.ranking != "likelihood":  # the candidate pages' order and score
                order = {page: (i, relevance) for i, (page, relevance) in enumerate(candidate_pages)}
                candidates = sorted(candidates, key=lambda p: (order[p.page][0], p.index))
            if self.ranking == "words":
                ranked = [(p, order[p.page][1]) for p in candidates]
            else:
                pool = candidates if self.ranking == "likelihood" else candidates[:RERANK_POOL]
                sinks = sink_slots(self.memory.offsets, self.memory.header["prompt_tokens"])
                ranked = rank(cache, self.model, store, pool, question, sinks)
            chosen = choose(ranked, self.passage_budget)
            self.sources = [Source(p.page, score, store.text(p, self.model)) for p, score in chosen]
            self._source_passages = [p.index for p, _ in chosen]
            return tuple(sorted((p for p, _ in chosen), key=lambda p: p.index))
        except MemoryFileError as exc:
            self._without_recall(str(exc))
            return ()

    def _without_recall(self, reason: str) -> None:
        """From now on the memory alone: no passage is loaded, none is cited."""
        self.recall, self.recall_error, self.sources, self._source_passages = None, reason, [], []
        self._turns = [_Turn(turn.question, (), turn.answer) for turn in self._turns]
        self.cache.truncate(self.memory.kept_tokens)
        self._cached = []

    def _common(self, wanted: list[Slot]) -> int:
        """How many of ``wanted``'s first slots the cache holds already (whole passages only)."""
        same = 0
        limit = min(len(self._cached), len(wanted) - 1)
        while same < limit and self._cached[same] == wanted[same]:
            same += 1
        while same and _within_passage(wanted[same]):
            same -= 1  # a passage is loaded whole
        return same

    def _remove_earlier_passages(self) -> None:
        """Take the earlier turns' passages out of the cache, keeping the text after them where
        it slides to (before this question's passages are ranked, so that ranking has the cells)."""
        if not isinstance(self.cache, RecallCache):
            return
        at = len(self._cached)
        while at > 0:
            if not isinstance(self._cached[at - 1], tuple):
                at -= 1
                continue
            end = at
            while at > 0 and isinstance(self._cached[at - 1], tuple):
                at -= 1
            self.cache.remove(self.memory.kept_tokens + at, self.memory.kept_tokens + end)
            del self._cached[at:end]

    def _fill(self, wanted: list[Slot]) -> np.ndarray:
        """Make the cache hold ``wanted`` after the memory, computing only from the first slot
        that differs from what it holds; the last token's logits."""
        same = self._common(wanted)
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
        self._remove_earlier_passages()
        passages = self._choose_passages(question, candidate_pages or []) if self.recall is not None else ()
        wanted = self._layout(history, question, passages, sampling.max_tokens)
        try:
            logits = self._fill(wanted)
        except MemoryFileError as exc:
            self._without_recall(str(exc))
            passages = ()
            logits = self._fill(self._layout(history, question, (), sampling.max_tokens))
        turn = _Turn(question, passages)
        self._turns = [known or _Turn(history[2 * n]["content"], ())
                       for n, known in enumerate(self._known(history))] + [turn]

        def step(token: int) -> np.ndarray:
            logits = self.cache.decode_main_tail(np.array([token], dtype=np.int32))
            self._cached.append(token)  # once the cache holds it
            turn.answer.append(token)
            return logits

        attending = self.cache if passages and self.model.capabilities.answer_attention \
            and isinstance(self.cache, AttentionCache) else None
        if attending is not None:
            attending.record_attention()
        for piece in generate_text(self.model, logits, step, sampling, should_stop):
            if piece:
                yield piece
        if attending is not None:
            self._order_sources_by_attention(attending.attention_paid())

    def _order_sources_by_attention(self, paid: np.ndarray) -> None:
        """Sources most attended by the answer first, each scored by its share of the attention
        the answer paid to all of them (the torch engine's citations)."""
        mass = dict.fromkeys(self._source_passages, 0.0)
        for at, slot in enumerate(self._cached, start=self.memory.kept_tokens):
            if isinstance(slot, tuple) and slot[0] in mass:
                mass[slot[0]] += float(paid[at])
        total = sum(mass.values()) or 1.0
        ranked = sorted(zip(self.sources, self._source_passages, strict=True), key=lambda pair: -mass[pair[1]])
        self.sources = [replace(source, score=mass[index] / total) for source, index in ranked]
        self._source_passages = [index for _, index in ranked]

