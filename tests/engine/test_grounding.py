"""An answer's figures and names that the document never contains are noted after it; what the
document or the question holds, a small count and a sentence's first word are not."""

from __future__ import annotations

from engine.answering import grounding
from engine.pipeline.comma import Comma
from storage.library import Library
from tests.fakes import QUESTION, use_fake_model, write_doc

LICENCE = ("This License terminates automatically if You fail to comply. Notices must be given in writing "
           "to the Licensor within 60 days. Version 2.0 was published by the Foundation.")


def test_a_figure_or_a_name_the_document_lacks_is_unsupported():
    answer = "You have 30 days to cure a breach, under the laws of the United States."
    assert grounding.unsupported(answer, "How long do I have to cure a breach?", LICENCE) == ["30", "United", "States"]


def test_what_the_document_or_the_question_says_is_supported():
    assert grounding.unsupported("Within 60 days, in writing, to the Licensor.", "When?", LICENCE) == []
    assert grounding.unsupported("Version 2.0, by the Foundation.", "Which version?", LICENCE) == []
    assert grounding.unsupported("Yes: Debian accepts it.", "Does Debian accept it?", LICENCE) == []


def test_sentence_openings_and_small_counts_are_not_claims():
    assert grounding.claims("Notices go by post. Two copies are kept, and it names two parties.") == []
    assert grounding.claims("It takes thirty days and 45 hours; ask Mozilla.") == ["45", "thirty", "Mozilla"]


def test_the_note_names_the_missing_words_and_what_lacks_them():
    note = grounding.note(["30", "United"])
    assert note.startswith("\n\n") and "the document does not contain “30”, “United”" in note
    assert "the passages read for this answer do not contain “30”" in grounding.note(["30"], "the passages read "
                                                                                           "for this answer do")


def test_an_answer_with_a_figure_the_document_lacks_comes_with_the_note(tmp_path, monkeypatch):
    use_fake_model(monkeypatch, token_seconds=0)
    comma = Comma(Library(tmp_path / "home"))
    doc_id = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False)["doc_id"]
    monkeypatch.setattr("tests.fakes.ANSWER", "The code is 9931.")  # what the fake model says
    streamed: list[str] = []
    result = comma.ask(doc_id, QUESTION, on_text=streamed.append)
    assert result.unsupported == ["9931"] and result.answer.endswith(grounding.note(["9931"]))
    assert "".join(streamed).strip() == result.answer
    assert comma.library.messages(result.session_id)[-1]["content"] == result.answer
    assert grounding.spoken(result.answer) == "The code is 9931."
    monkeypatch.setattr("tests.fakes.ANSWER", "The code is 4417.")
    assert comma.ask(doc_id, QUESTION).unsupported == []


def test_a_follow_up_after_a_noted_answer_keeps_the_turn_the_cache_answered(tmp_path, monkeypatch):
    use_fake_model(monkeypatch, token_seconds=0)
    comma = Comma(Library(tmp_path / "home"))
    doc_id = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False)["doc_id"]
    monkeypatch.setattr("tests.fakes.ANSWER", "The code is 9931.")
    with comma.conversation(doc_id) as conversation:
        first = conversation.ask(QUESTION)
        assert first.unsupported
        conversation.ask("And which gate does it open?", first.session_id)
        live = conversation._live
        assert live is not None and live._turns[0].answer  # the first turn is the cache's own, not text again


def test_read_on_the_spot_a_figure_outside_the_passages_read_is_noted_though_another_page_has_it(tmp_path,
                                                                                                 monkeypatch):
    from tests.fakes import FakeAnswerer

    use_fake_model(monkeypatch, token_seconds=0, answerer=FakeAnswerer(0))
    comma = Comma(Library(tmp_path / "home"))
    path = write_doc(tmp_path / "harbour.txt")
    path.write_text(path.read_text() + " The lighthouse was built in 1887.")
    doc_id = comma.ingest(path, notes=False, deep=False)["doc_id"]
    monkeypatch.setattr("tests.fakes.ANSWER", "The code is 4417, set in 1887.")
    result = comma.ask(doc_id, QUESTION)
    assert result.read_on_the_spot and result.unsupported == ["1887"]
    assert result.answer.endswith(grounding.note(["1887"], "the passages read for this answer do"))


def test_a_document_kept_without_its_page_text_is_not_checked(tmp_path, monkeypatch):
    use_fake_model(monkeypatch, token_seconds=0)
    comma = Comma(Library(tmp_path / "home"))
    doc_id = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False)["doc_id"]
    monkeypatch.setattr("tests.fakes.ANSWER", "The code is 9931.")
    monkeypatch.setattr(comma.library, "page_texts", lambda doc_id: [])  # an old library's document
    result = comma.ask(doc_id, QUESTION)
    assert result.unsupported == [] and result.answer == "The code is 9931."
