"""A few needle-in-a-haystack cells with the bundled model (bench/recall.py runs the full grid):
recall must find the needle's page and the answer must hold the needle, so that recall cannot
silently break. The haystack is the GPL-3 text, the needle and question the field's own."""

from pathlib import Path

import pytest

from engine.pipeline.comma import Comma
from storage.library import Library

pytestmark = pytest.mark.model
GPL3 = Path("/usr/share/common-licenses/GPL-3")
NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
QUESTION = "What is the best thing to do in San Francisco?"


@pytest.fixture(scope="module")
def comma(tmp_path_factory):
    return Comma(Library(tmp_path_factory.mktemp("home")))


@pytest.mark.parametrize("depth", [25, 75])
def test_the_needle_is_found_on_its_page_and_answered(comma, tmp_path, depth):
    if not GPL3.exists():
        pytest.skip("needs /usr/share/common-licenses/GPL-3")
    text = GPL3.read_text()[:12000]
    at = text.rfind(".", 0, len(text) * depth // 100) + 1
    path = tmp_path / "haystack.txt"
    path.write_text(text[:at] + f" {NEEDLE} " + text[at:])
    report = comma.ingest(path, notes=False)
    gold = next(p for p in range(1, report["pages"] + 1) if "Dolores" in comma.library.page_text(report["doc_id"], p))
    assert gold != report["pages"]  # the needle is not in the memory's last window
    result = comma.ask(report["doc_id"], QUESTION)
    assert result.recall and result.pages[0] == gold and result.sources[0]["page"] == gold
    assert "sandwich" in result.answer.lower() and "dolores park" in result.answer.lower()


def test_a_follow_up_finds_the_needle_from_passages_in_its_own_turn(comma, tmp_path):
    """On llama.cpp: the follow-up's passages are loaded after the first turn, not before it."""
    if not GPL3.exists():
        pytest.skip("needs /usr/share/common-licenses/GPL-3")
    text = GPL3.read_text()[:12000]
    at = text.rfind(".", 0, len(text) // 3) + 1
    path = tmp_path / "haystack.txt"
    path.write_text(text[:at] + f" {NEEDLE} " + text[at:])
    report = comma.ingest(path, notes=False)
    gold = next(p for p in range(1, report["pages"] + 1) if "Dolores" in comma.library.page_text(report["doc_id"], p))
    with comma.conversation(report["doc_id"]) as conversation:
        first = conversation.ask("What must I give recipients when I convey object code?")
        live = conversation._live
        before = len(live._cached)
        computed: list[int] = []
        decode = live.cache.decode_main_tail
        live.cache.decode_main_tail = lambda tokens: (computed.append(len(tokens)), decode(tokens))[1]
        follow = conversation.ask(QUESTION, first.session_id)
        assert live._turns[0].passages and live._turns[1].passages  # both turns were given passages
        in_cache = {slot[0] for slot in live._cached if isinstance(slot, tuple)}
        assert in_cache == {p.index for p in live._turns[1].passages}  # the first turn's left
    # Only the follow-up's own text is computed: not the first turn's passages, question and
    # answer again (the answer keeps the tokens generated, whatever its text tokenizes to).
    assert sum(n for n in computed if n > 1) < 60 < before
    assert follow.pages[0] == gold
    assert "sandwich" in follow.answer.lower() and "dolores park" in follow.answer.lower()
