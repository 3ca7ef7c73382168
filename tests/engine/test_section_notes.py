"""Section notes: one sentence of each passage, the one nearest its centroid, found in the text."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.documents.document import read_document
from engine.policy import make_policy
from engine.reading.reader import read
from engine.reading.section_notes import (
    NOTE_MAX_CHARS,
    NOTE_MAX_COUNT,
    NOTE_MIN_INTERVAL,
    inverse_document_frequency,
    key_sentence,
    passage_bounds,
    sentences,
)
from tests.fakes import FakeModel

LEASE = (
    "The tenant pays the rent on the first day of each month. "
    "Rent paid late carries a fee of five percent of the monthly rent. "
    "The garden behind the house is looked after by a gardener the landlord chooses. "
    "If the rent is late twice in a year, the landlord may end the lease with a month's notice. "
    "Table 3."
)


def test_the_note_is_the_sentence_nearest_the_passage_as_a_whole():
    idf = inverse_document_frequency([LEASE, "The garden has apple trees and a pond. The pond has fish."])
    # Rent, late and the landlord are what the passage is about; the garden is a side remark.
    assert key_sentence(LEASE, idf) == ("If the rent is late twice in a year, the landlord may end the lease "
                                        "with a month's notice.")
    garden = LEASE + " The garden's hedge is cut by the gardener. The gardener waters the garden. " * 3
    assert key_sentence(garden, idf) == "The garden's hedge is cut by the gardener."


def test_headings_and_fragments_are_not_notes_when_a_sentence_is_there():
    text = "ANNEX B\n\nobligations continue after the end of the lease.\n\nThe deposit is returned within thirty days."
    assert key_sentence(text, inverse_document_frequency([text])) == "The deposit is returned within thirty days."


def test_a_numbered_clause_is_a_sentence():
    text = ("ANNEX B\n\nthe deposit returned, the tenant's deposit returned in thirty days.\n\n"
            "3.1 The deposit is returned to the tenant within thirty days of the end.")
    assert key_sentence(text, inverse_document_frequency([text])) == \
        "3.1 The deposit is returned to the tenant within thirty days of the end."


def test_a_passage_without_a_sentence_still_gets_its_most_central_line_and_none_without_words():
    table = "col_a col_b total_rent\n\nrent 1200 rent 1300\n\n42 17 99"
    assert key_sentence(table, inverse_document_frequency([table])) == "rent 1200 rent 1300"
    assert key_sentence("12 34\n\n-- ..", {}) == ""


def test_lines_broken_inside_a_sentence_and_a_typeset_hyphen_are_joined():
    text = "When the == operator is used, the string to the right is consid\u2010\n       ered a pattern, as if\nextglob were on."
    assert sentences(text) == ["When the == operator is used, the string to the right is considered a pattern, "
                               "as if extglob were on."]


def test_passages_cover_the_document_in_order_and_their_number_is_bounded():
    for prompt, total in [(10, 10), (10, 11), (7, 5000), (30, 1_000_000)]:
        bounds = passage_bounds(prompt, total)
        assert [b[0] for b in bounds[1:]] == [b[1] for b in bounds[:-1]]
        if bounds:
            assert bounds[0][0] == prompt and bounds[-1][1] == total
        assert len(bounds) <= NOTE_MAX_COUNT
        assert all(e - s >= NOTE_MIN_INTERVAL for s, e in bounds[:-1])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("abc XYZ.,!?\n\t\u2010-:0123"), max_size=400))
def test_a_note_is_always_the_documents_own_words(text):
    note = key_sentence(text, inverse_document_frequency([text]))
    assert len(note) <= NOTE_MAX_CHARS + 1
    # Line breaks and a typeset hyphen at a line's end are all a note may drop.
    squash = lambda t: re.sub(r"[\s\u2010]", "", t)  # noqa: E731
    assert squash(note.removesuffix("…")) in squash(text)


def test_a_read_hands_back_a_note_per_passage_with_its_pages(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_text("\n\n".join(f"Part {i} is about topic number {i}, which this sentence describes at length. " * 12
                                  for i in range(1, 9)))
    document = read_document(path)
    result = read(FakeModel(), document, make_policy("sepllm", 400), chunk=200)
    header = result.memory.header
    assert len(result.notes) == len(passage_bounds(header["prompt_tokens"],
                                                   header["prompt_tokens"] + header["document_tokens"])) > 2
    assert result.notes[0].first_page == 1 and result.notes[-1].last_page == document.pages > 1
    assert all(a.last_page <= b.first_page for a, b in zip(result.notes, result.notes[1:], strict=False))
    starts = [*document.page_starts, len(document.text)]
    for note in result.notes:
        spanned = document.text[starts[note.first_page - 1]:starts[note.last_page]]
        assert note.text in " ".join(spanned.split())
    assert read(FakeModel(), document, make_policy("sepllm", 400), chunk=200, notes=False).notes == []
