"""Finding pages by meaning: passages cut from page text, a page's best passage, the two rankings
taken in turn, the index's progress and Cancel; and, through Comma, a question in a reader's words
finding the page that shares none of its words."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import Cancelled
from engine.pipeline.comma import Comma
from engine.protocols import Available
from engine.recall import page_search
from engine.recall.sentence_encoder import load_encoder
from storage.library import Library
from tests.fakes import use_fake_model


def test_passages_overlap_keep_their_characters_and_skip_empty_pages():
    text = " ".join(f"w{i}" for i in range(250))
    found = page_search.passages([(3, text), (4, "   "), (5, "one short page")], words=120, stride=80)
    on_3 = [p for p in found if p.page == 3]
    assert [len(p.text.split()) for p in on_3] == [120, 120, 90]  # starts at words 0, 80, 160
    assert all(text[p.start:p.end] == p.text for p in on_3)
    assert on_3[1].text.startswith("w80 ") and on_3[-1].text.endswith("w249")
    assert [(p.page, p.text) for p in found if p.page != 3] == [(5, "one short page")]


def test_a_page_ranks_by_its_best_passage_and_the_row_is_that_passage():
    pages = np.array([1, 1, 2, 3])
    vectors = np.array([[1, 0], [0.6, 0.8], [0.8, 0.6], [0, 1]], np.float32)
    ranked = page_search.meaning_ranking(np.array([0.0, 1.0], np.float32), pages, vectors, limit=2)
    assert [(page, row) for page, _, row in ranked] == [(3, 3), (1, 1)]
    assert ranked[0][1] == pytest.approx(1.0)
    assert page_search.meaning_ranking(np.ones(2, np.float32), np.zeros(0, np.int64), np.zeros((0, 2)), 5) == []


def test_rankings_fuse_by_reciprocal_rank_each_item_once():
    fused = page_search.fuse([[4, 7, 2], [7, 5, 4]], k=1)
    # 7: 1/3 + 1/2, 4: 1/2 + 1/4, 5: 1/3, 2: 1/4 (ties keep the order first seen)
    assert [page for page, _ in fused] == [7, 4, 5, 2]
    assert [score for _, score in fused] == pytest.approx([5 / 6, 3 / 4, 1 / 3, 1 / 4])
    assert page_search.fuse([[], [7, 5]], k=1) == [(7, 0.5), (5, pytest.approx(1 / 3))]
    assert page_search.fuse([[1, 0]], k=5, items=["a", "b"]) == [("b", 1 / 6), ("a", 1 / 7)]


def test_passages_rank_by_the_rare_question_words_they_hold():
    found = [page_search.PagePassage(1, 0, 30, "the licence and the software"),
             page_search.PagePassage(1, 30, 60, "the licence may be terminated"),
             page_search.PagePassage(2, 0, 30, "the licence covers software")]
    # "terminated" is on one passage, "licence" on all three: the rare word decides.
    assert page_search.word_ranking("When is the licence terminated?", found) == [1, 0, 2]
    assert page_search.word_ranking("What about payment?", found) == []


class CountingEncoder:
    dim = 2

    def __init__(self):
        self.batches = 0

    def encode(self, texts):
        self.batches += 1
        return np.tile(np.array([1.0, 0.0], np.float32), (len(texts), 1))


def test_the_index_reports_progress_in_passages_and_stops_when_cancelled(monkeypatch):
    monkeypatch.setattr(page_search, "INDEX_BATCH", 2)
    pages = [(p, f"page {p} text") for p in range(1, 6)]
    seen = []
    rows = page_search.index(CountingEncoder(), pages, progress=lambda done, total: seen.append((done, total)))
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5] and seen == [(2, 5), (4, 5), (5, 5)]
    encoder = CountingEncoder()
    with pytest.raises(Cancelled, match="by its words"):
        page_search.index(encoder, pages, cancelled=lambda: encoder.batches == 1)
    assert encoder.batches == 1


CONTRACT = [
    "This agreement is made between the supplier and the customer for the delivery of goods.",
    "Either party may terminate this agreement by giving forty-five days' written notice to the other.",
    "Invoices are payable within thirty days. Late payment bears interest at two percent a month.",
    "The supplier warrants the goods against defects in materials and workmanship for one year.",
]


@pytest.fixture
def contract(tmp_path, monkeypatch):
    real, reason = load_encoder()
    assert real is not None, reason
    use_fake_model(monkeypatch, token_seconds=0, encoder=real)
    path = tmp_path / "contract.md"
    # Markdown pages are cut by length: each clause gets a page of its own.
    path.write_text("\n\n".join(clause + " " + "Filler words follow here. " * 110 for clause in CONTRACT))
    comma = Comma(Library(tmp_path / "home"))
    return comma, comma.ingest(path, notes=False), path


def test_ingest_keeps_the_meaning_index_once_and_a_reader_s_words_find_the_page(contract):
    comma, report, path = contract
    doc_id = report["doc_id"]
    assert report["meaning"]["passages"] > 0 and report["meaning"]["reused"] is False
    page = next(p for p in range(1, 20) if "forty-five days" in comma.library.page_text(doc_id, p))
    question = "How long before I can get out of the deal?"
    assert page_search.word_pages(comma.library, doc_id, question, 8) == []  # no word of it is on any page
    found = comma.find_pages(doc_id, question)
    assert found.pages[0][0] == page
    best = found.passages[0][0]
    assert best.page == page and "forty-five days" in best.text
    assert comma.library.page_text(doc_id, page)[best.start:best.end] == best.text
    again = comma.ingest(path, notes=False)
    assert again["meaning"]["reused"] is True and again["meaning"]["passages"] == report["meaning"]["passages"]


def test_without_the_encoder_pages_come_from_words_and_ingest_says_why(tmp_path, monkeypatch):
    use_fake_model(monkeypatch, token_seconds=0)
    path = tmp_path / "contract.md"
    path.write_text("\n\n".join(CONTRACT))
    comma = Comma(Library(tmp_path / "home"))
    comma.models.use(encoder=Available(None, "pages are found by their words alone: the sentence encoder is not installed"))
    report = comma.ingest(path, notes=False)
    assert "words alone" in report["meaning"]["skipped"]
    found = comma.find_pages(report["doc_id"], "What notice terminates the agreement?")
    assert found.pages[0][0] == 1
    assert found.passages[0][0].page == 1 and "terminate" in found.passages[0][0].text
