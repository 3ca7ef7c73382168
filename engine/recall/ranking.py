"""The choice of the passages a question gets from the recall store.

The caller names candidate pages (``engine.recall.page_search`` finds them); each of their
passages is placed after the memory on its own branch of the cache and scored by the
log-likelihood of the question that follows it, all branches in one batch (ParallelComp's chunk
choice, with the passage's KV loaded rather than recomputed). The best passages, in document
order, are then loaded after the memory for the answer, and cited as its sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.protocols import Model, RecallCache
from engine.recall.store import PASSAGE_TOKENS, Passage, RecallStore

# The most passages an answer is given (about a page each). The bundled 135M model answered a
# needle from 1 or 2 passages and lost it among 3 (bench/recall.py, 8K haystack, depths 10 and 20%).
MAX_PASSAGES = 2
CANDIDATE_PAGES = 8  # pages the full-text index proposes for ranking
SCORED_TOKENS = 48  # the question's tokens whose likelihood ranks a passage (its start if longer)
# How candidates become an answer's passages (engine.answering.conversation.RANKINGS):
# - "words": the candidate pages' order (the full-text index's and the meaning index's, in turn)
#   chooses the passages and orders their citations;
# - "likelihood": every candidate's passages ranked by the question's likelihood after each
#   (ParallelComp's choice);
# - "rerank": the first RERANK_POOL passages in the candidates' order, ranked by that likelihood.
# Over the 52 questions of bench/data (bench/recall.py qa, the bundled model), ranking pools of
# 2, 3, 4, 5, 6 and 8 passages kept the gold page among the chosen for 98.1, 96.2, 94.2, 96.2,
# 96.2 and 94.2% of questions, and put it first for 86.5, 84.6, 84.6, 82.7, 80.8 and 78.8%
# (the candidates' order: 98.1 and 80.8%). So the likelihood orders the passages the candidates
# chose and does not choose them.
DEFAULT_RANKING = "rerank"
# The answering model (1.5B parameters) took 1.1 s to rank two passages where the bundled model
# took 0.21 s (bench/recall.py ranking), on a first token that already misses its 3 s: it keeps
# the candidates' order.
ANSWERING_RANKING = "words"
RERANK_POOL = MAX_PASSAGES
RANK_GROUP = 4  # candidates whose KV is read from the store and held at once while ranking
QUESTION_LEAD = "\nQuestion:"


@dataclass(frozen=True)
class Source:
    """A passage an answer was given, with how well it predicted the question."""

    page: int
    # How relevant the passage is, higher is more: the full-text index's BM25 relevance of its page
    # (ranking "words"), the mean log-probability of the question's tokens after it ("likelihood",
    # "rerank"), or on a backend that reports attention, its share of the answer's attention.
    score: float
    text: str  # its opening words

    def as_json(self) -> dict:
        return {"page": self.page, "score": round(self.score, 4), "text": self.text}


def question_tokens(model: Model, question: str) -> tuple[np.ndarray, int]:
    """The tokens that follow a passage when it is ranked, and how many of them (the question's,
    up to SCORED_TOKENS) are scored. Lead and question are tokenized as one text, so the
    question's first word keeps the form it has after a space."""
    lead = len(model.tokenize(QUESTION_LEAD))
    tokens = model.tokenize(f"{QUESTION_LEAD} {question.strip()}")[:lead + SCORED_TOKENS]
    return tokens.astype(np.int32), max(0, len(tokens) - lead)


def rank(cache: RecallCache, model: Model, store: RecallStore, candidates: list[Passage], question: str,
         prefix: int) -> list[tuple[Passage, float]]:
    """Candidates with the mean log-probability of the question after each, alone after the
    cache's first ``prefix`` slots (the memory's attention sinks), as ParallelComp ranks its
    chunks; best first."""
    tokens, scored = question_tokens(model, question)
    if scored == 0 or not candidates:
        return []
    scores: list[float] = []
    for lo in range(0, len(candidates), RANK_GROUP):
        group = candidates[lo:lo + RANK_GROUP]
        log_probs = cache.log_probs_after([store.states(p) for p in group], tokens, scored, prefix)
        scores += log_probs.mean(axis=1).tolist()
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i].index))
    return [(candidates[i], scores[i]) for i in order]


def choose(ranked: list[tuple[Passage, float]], budget: int, limit: int = MAX_PASSAGES) -> list[tuple[Passage, float]]:
    """The best passages that fit ``budget`` tokens, at most ``limit``, best first."""
    chosen: list[tuple[Passage, float]] = []
    used = 0
    for passage, score in ranked:
        if len(chosen) == limit:
            break
        if used + passage.tokens <= budget:
            chosen.append((passage, score))
            used += passage.tokens
    return chosen


def sink_slots(offsets: np.ndarray, prompt_tokens: int) -> int:
    """How many of a memory's first slots still sit at their read positions (the prompt's start,
    which every policy keeps as attention sinks): ranked passages follow them unshifted."""
    head = np.asarray(offsets[:prompt_tokens])
    same = head == np.arange(len(head))
    return int(len(head) if same.all() else np.argmin(same))


def ranking_room(passages: int = RANK_GROUP) -> int:
    """Cache slots kept free for ranking ``passages`` side by side beyond the memory: four
    candidates while the conversation is short (the cache ranks as many at a time as its free
    cells hold; on this CPU one at a time costs about the same as eight in a batch)."""
    return passages * (PASSAGE_TOKENS + SCORED_TOKENS + 8)
