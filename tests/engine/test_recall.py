"""Recall: the store written in the read, the passages a question gets, and every way a store can
be unusable (then the answer comes from the memory alone, says why, and nothing saved changes).

Most tests run on the fake model (tests.fakes), whose cache keeps token ids as its "KV"; the
tests marked ``model`` check the llama.cpp side with the bundled model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import MemoryFileError
from engine.memory.file_format import StoreWriter, open_store
from engine.pipeline.comma import Comma
from engine.protocols import Available
from engine.recall import page_search
from engine.recall.ranking import sink_slots
from engine.recall.store import PASSAGE_TOKENS, RecallStore
from storage.library import Library
from tests.fakes import QUESTION, needle_page, use_fake_model, write_doc


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def comma(tmp_path, monkeypatch):
    use_fake_model(monkeypatch, token_seconds=0)
    return Comma(Library(tmp_path / "home"))


@pytest.fixture
def read_doc(comma, tmp_path):
    report = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False)
    return report


def test_the_read_stores_every_document_token_once_in_page_sized_passages(comma, read_doc):
    doc, record = comma._memory_record(read_doc["doc_id"])
    memory = comma.load_memory(doc, record)
    store = RecallStore.open(Path(record["recall_path"]), comma.model, memory.header)
    prompt = memory.header["prompt_tokens"]
    covered = np.concatenate([o for p in store.passages for o in store.piece_offsets(p)])
    assert covered.tolist() == list(range(prompt, prompt + memory.header["document_tokens"]))
    starts = memory.header["page_token_starts"]
    for passage in store.passages:
        assert passage.tokens <= PASSAGE_TOKENS
        offsets = np.concatenate(store.piece_offsets(passage))
        page_of = np.searchsorted(starts, offsets, side="right")
        assert set(page_of.tolist()) == {passage.page}  # a passage never spans two pages
    assert read_doc["recall_bytes"] == Path(record["recall_path"]).stat().st_size


def test_the_question_gets_the_page_that_holds_its_answer(comma, read_doc):
    result = comma.ask(read_doc["doc_id"], QUESTION)
    assert result.recall is True and result.recall_reason is None
    gold = needle_page(comma, read_doc["doc_id"])
    assert result.pages[0] == gold and result.sources[0]["page"] == gold
    assert len(result.pages) <= 5 and len(result.sources) <= 3
    assert {"page", "score", "text", "section"} == set(result.sources[0])
    saved = comma.library.messages(result.session_id)[-1]
    assert saved["sources"] == result.sources and saved["pages"] == result.pages


def test_a_question_with_no_candidate_pages_is_answered_from_the_memory(comma, read_doc):
    comma.models.use(encoder=Available(None, "no meaning index here"))  # else the nearest pages in meaning are candidates
    result = comma.ask(read_doc["doc_id"], "Zzyzx?")
    assert result.answer and result.recall is True and result.sources == []
    doc, record = comma._memory_record(read_doc["doc_id"])
    memory = comma.load_memory(doc, record)
    assert result.pages == memory.pages(np.flatnonzero(~memory.separators))


def test_a_follow_up_runs_on_the_same_live_cache(comma, read_doc):
    with comma.conversation(read_doc["doc_id"]) as conversation:
        first = conversation.ask(QUESTION)
        made = len(comma.model.created)
        second = conversation.ask("And which gate does the harbour code open?", first.session_id)
        assert len(comma.model.created) == made  # no new cache, no memory loaded again
    assert second.session_id == first.session_id and second.pages[0] == needle_page(comma, read_doc["doc_id"])
    assert len(comma.library.messages(first.session_id)) == 4


def _decoded(conversation) -> list[int]:
    """Counts the tokens each decode of the live cache computes."""
    counts: list[int] = []
    cache = conversation._live.cache
    decode = cache.decode_main_tail

    def counted(tokens):
        counts.append(len(tokens))
        return decode(tokens)

    cache.decode_main_tail = counted
    return counts


def test_a_follow_up_s_passages_go_in_its_turn_and_nothing_before_is_computed_again(comma, tmp_path):
    """The first turn's passages leave the cache; its text and answer stay, not computed again."""
    path = tmp_path / "two.txt"
    write_doc(path, needle_at=1, parts=8)
    path.write_text(path.read_text() + " The lighthouse keeper is called Amelia Stone, and she rows.")
    doc_id = comma.ingest(path, notes=False)["doc_id"]
    with comma.conversation(doc_id) as conversation:
        first = conversation.ask(QUESTION)
        live = conversation._live
        kept = live.memory.kept_tokens
        held, slots = list(live.cache.tokens), list(live._cached)
        assert any(isinstance(slot, tuple) for slot in slots)
        counts = _decoded(conversation)
        second = conversation.ask("Who is the lighthouse keeper?", first.session_id)
        text = held[:kept] + [token for token, slot in zip(held[kept:], slots, strict=True)
                              if not isinstance(slot, tuple)]
        assert live.cache.tokens[:len(text)] == text
        loaded = [p.index for p in live._turns[1].passages]
        assert loaded and all((i, 0) in live._cached for i in loaded)
        assert {slot[0] for slot in live._cached if isinstance(slot, tuple)} == set(loaded)
    assert first.pages[0] == needle_page(comma, doc_id) and second.pages[0] != first.pages[0]
    assert second.sources[0]["page"] == second.pages[0]
    question = len(comma.model.tokenize(" Who is the lighthouse keeper?"))
    # Computed for the follow-up: its turn's text around its passages (loaded, not computed), then the answer.
    assert sum(counts[:2]) < question + 64 and all(n == 1 for n in counts[2:])  # bytes: the template is ~50


def test_the_layout_s_marks_typed_in_a_question_are_only_text(comma, read_doc):
    from engine.prompts import ANSWER, PASSAGES

    with comma.conversation(read_doc["doc_id"]) as conversation:
        session = None
        for question in [f"{PASSAGES} {QUESTION} {ANSWER}", f"And {ANSWER} the gate {PASSAGES}?"]:
            result = conversation.ask(question, session)
            session = result.session_id
            live = conversation._live
            held = [slot for slot in live._cached if isinstance(slot, tuple)]
            assert result.answer and len(held) == sum(p.tokens for p in live._turns[-1].passages) > 0
            assert len(held) <= live.passage_budget


def test_a_resumed_session_s_new_turns_keep_their_passages(comma, read_doc):
    """Earlier turns from the library are text; the turns this cache answers keep their passages."""
    doc_id = read_doc["doc_id"]
    session = comma.library.new_session(doc_id, "old")
    for role, text in [("user", "What of the river?"), ("assistant", "It flows."),
                       ("user", "And the market?"), ("assistant", "It is busy.")]:
        comma.library.add_message(session, role, text)
    with comma.conversation(doc_id) as conversation:
        conversation.ask(QUESTION, session)
        counts = _decoded(conversation)
        conversation.ask("Which gate does it open?", session)
        live = conversation._live
        assert [bool(t.passages) for t in live._turns] == [False, False, True, True]
    assert sum(counts[:2]) < len("Which gate does it open?") + 64


def test_the_cache_holds_only_the_latest_question_s_passages_and_answers_go_on(comma, tmp_path):
    path = tmp_path / "many.txt"
    write_doc(path, needle_at=2, parts=10)
    doc_id = comma.ingest(path, notes=False)["doc_id"]
    questions = [QUESTION, "What of the river?", "What of the orchard?", "What of the candle?", "What of the valley?"]
    with comma.conversation(doc_id) as conversation:
        session = None
        for n, question in enumerate(questions):
            counts = _decoded(conversation) if n else []
            result = conversation.ask(question, session)
            session = result.session_id
            assert result.answer and result.recall and result.sources
            live = conversation._live
            loaded = {slot[0] for slot in live._cached if isinstance(slot, tuple)}
            assert loaded == {p.index for p in live._turns[-1].passages}
            # Only the follow-up's own turn is computed, however many turns came before.
            assert sum(counts[:2]) < len(question) + 64 and all(k == 1 for k in counts[2:])
            assert len(live._cached) <= live.layout_cells
    assert live.memory.kept_tokens + live.layout_cells <= comma.model.n_ctx_train
    assert len(comma.library.messages(session)) == 2 * len(questions)


def test_no_recall_keeps_only_the_memory_and_says_so_when_asked(comma, tmp_path):
    report = comma.ingest(write_doc(tmp_path / "small.txt"), notes=False, recall=False)
    assert report["recall_path"] is None
    assert not list((comma.library.memories_folder).glob("*.recall"))
    result = comma.ask(report["doc_id"], QUESTION)
    assert result.recall is False and "without a recall store" in result.recall_reason
    assert "--force" in result.recall_reason and result.answer
    # Asking for a store later reads the document again rather than reusing the bare memory.
    again = comma.ingest(tmp_path / "small.txt", notes=False)
    assert not again["reused"] and Path(again["recall_path"]).is_file()


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def damage_passage(path: Path) -> None:
    """One flipped byte in every passage (a store's passages are verified when they are loaded)."""
    data = bytearray(path.read_bytes())
    for name, (offset, _length, _digest) in open_store(path, model_fingerprint="f" * 64, backend="fake").sections.items():
        if name.startswith("piece"):
            data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_remove(path: Path) -> None:
    path.unlink()


def damage_not_a_store(path: Path) -> None:
    path.write_bytes(b"not a recall store at all, just bytes" * 10)


@pytest.mark.parametrize("damage, words", [
    (damage_truncate, "damaged"),
    (damage_passage, "altered or corrupted"),
    (damage_remove, "not found"),
    (damage_not_a_store, "damaged"),
])
def test_an_unusable_store_means_an_answer_from_the_memory_and_nothing_changed(comma, read_doc, damage, words):
    store = Path(read_doc["recall_path"])
    damage(store)
    before = (sha(read_doc["memory_path"]), store.read_bytes() if store.exists() else None)
    result = comma.ask(read_doc["doc_id"], QUESTION)
    assert result.answer and result.recall is False and result.sources == []
    assert words in result.recall_reason and "ingest --force" in result.recall_reason
    assert (sha(read_doc["memory_path"]), store.read_bytes() if store.exists() else None) == before


def test_a_store_from_another_reading_or_model_is_refused(comma, read_doc, tmp_path):
    other = comma.ingest(write_doc(tmp_path / "other.txt", needle_at=2), notes=False)
    store = Path(read_doc["recall_path"])
    store.write_bytes(Path(other["recall_path"]).read_bytes())
    result = comma.ask(read_doc["doc_id"], QUESTION)
    assert result.recall is False and "another reading" in result.recall_reason
    with pytest.raises(MemoryFileError, match="another model"):
        open_store(store, model_fingerprint="0" * 64, backend="fake")
    with pytest.raises(MemoryFileError, match="backend"):
        open_store(store, model_fingerprint="f" * 64, backend="gguf")


def test_a_store_is_invisible_until_committed_and_a_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "doc.recall"
    path.write_bytes(b"the previous store")
    with StoreWriter(path) as writer:
        writer.add("piece0", b"kv bytes")
        writer.seal({"model_fingerprint": "m", "backend": "fake"})
    assert path.read_bytes() == b"the previous store"  # never committed
    with StoreWriter(path) as writer:
        writer.add("piece0", b"kv bytes")
        writer.add("tokens", b"1234")
        size = writer.seal({"model_fingerprint": "m", "backend": "fake"})
        writer.commit()
    assert path.stat().st_size == size and sorted(p.name for p in tmp_path.iterdir()) == ["doc.recall"]
    store = open_store(path, model_fingerprint="m", backend="fake")
    assert store.read(["tokens", "piece0"]) == {"tokens": b"1234", "piece0": b"kv bytes"}


def test_a_cancelled_read_leaves_no_store(comma, tmp_path):
    from engine.errors import Cancelled

    calls = []
    with pytest.raises(Cancelled):
        comma.ingest(write_doc(tmp_path / "c.txt"), notes=False,
                     cancelled=lambda: calls.append(1) or len(calls) > 3)
    assert list(comma.library.memories_folder.iterdir()) == []


def test_candidate_pages_take_any_content_word_of_the_question(comma, read_doc):
    library = comma.library
    gold = needle_page(comma, read_doc["doc_id"])
    best = page_search.word_pages(library, read_doc["doc_id"], QUESTION, 8)
    assert best[0][0] == gold and best[0][1] > 0 and [r for _, r in best] == sorted((r for _, r in best), reverse=True)
    assert page_search.word_pages(library, read_doc["doc_id"], "what is the", 8) == []  # stop words only
    assert [p for p, _ in page_search.word_pages(library, read_doc["doc_id"], '"harbour" OR (', 8)] == [gold]  # no FTS syntax


def test_sinks_are_the_memory_slots_still_at_their_read_positions():
    assert sink_slots(np.array([0, 1, 2, 3, 9, 17]), 6) == 4
    assert sink_slots(np.array([0, 1, 2]), 3) == 3


def test_cli_json_reports_recall_and_a_note_when_it_is_off(comma, read_doc, capsys, monkeypatch):
    from app.cli import run

    monkeypatch.setenv("COMMA_HOME", str(comma.library.folder))
    assert run(["ask", read_doc["doc_id"], QUESTION, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    gold = needle_page(comma, read_doc["doc_id"])
    assert out["recall"] is True and out["pages"][0] == gold and out["sources"][0]["page"] == gold
    Path(read_doc["recall_path"]).unlink()
    assert run(["ask", read_doc["doc_id"], QUESTION]) == 0
    captured = capsys.readouterr()
    assert "note: answered from the memory alone" in captured.err and "Traceback" not in captured.err


def test_a_full_disk_while_the_store_is_written_saves_nothing(comma, tmp_path, monkeypatch):
    import errno

    from engine.memory.file_format import StoreWriter

    real = StoreWriter._write
    calls = []

    def fill_up(self, data):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(StoreWriter, "_write", fill_up)
    with pytest.raises(MemoryFileError, match="not enough disk space.*--no-recall"):
        comma.ingest(write_doc(tmp_path / "full.txt"), notes=False)
    assert list(comma.library.memories_folder.iterdir()) == [] and comma.library.documents() == []


def test_reading_again_replaces_the_pair_and_a_mismatched_store_is_read_again(comma, read_doc, tmp_path):
    again = comma.ingest(tmp_path / "harbour.txt", notes=False, force=True)
    stores = list(comma.library.memories_folder.glob("*.recall"))
    assert stores == [Path(again["recall_path"])] and again["recall_path"] != read_doc["recall_path"]
    # A store that is not this memory's (swapped in from another reading) is not reused.
    other = comma.ingest(write_doc(tmp_path / "other.txt", needle_at=2), notes=False)
    Path(again["recall_path"]).write_bytes(Path(other["recall_path"]).read_bytes())
    third = comma.ingest(tmp_path / "harbour.txt", notes=False)
    assert not third["reused"] and comma.ask(third["doc_id"], QUESTION).recall


def test_an_altered_store_header_is_refused(comma, read_doc):
    store = Path(read_doc["recall_path"])
    data = store.read_bytes()
    at = data.rindex(b'"prompt_tokens": ') + len(b'"prompt_tokens": ')
    store.write_bytes(data[:at] + b"9" + data[at + 1:])
    with pytest.raises(MemoryFileError, match="damaged"):
        open_store(store, model_fingerprint="f" * 64, backend="fake")


def test_both_rankings_find_the_page_and_the_cli_takes_either(comma, read_doc, capsys, monkeypatch):
    from app.cli import run

    gold = needle_page(comma, read_doc["doc_id"])
    for ranking in ("words", "likelihood", "rerank"):
        result = comma.ask(read_doc["doc_id"], QUESTION, ranking=ranking)
        assert result.pages[0] == gold and result.sources[0]["score"] > (0 if ranking == "words" else -5)
    monkeypatch.setenv("COMMA_HOME", str(comma.library.folder))
    assert run(["ask", read_doc["doc_id"], QUESTION, "--ranking", "likelihood", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pages"][0] == gold


def test_rerank_ranks_the_first_candidates_by_likelihood_and_no_others(comma, tmp_path, monkeypatch):
    from engine.answering.conversation import Conversation

    for module in ("engine.recall.store", "engine.answering.conversation"):
        monkeypatch.setattr(f"{module}.PASSAGE_TOKENS", 4096)  # a page is one passage
    report = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False)
    doc, record = comma._memory_record(report["doc_id"])
    memory = comma.load_memory(doc, record)
    store, _ = comma.open_recall(doc, record, memory)
    gold = needle_page(comma, report["doc_id"])
    first, second = [page for page in (1, 2, 3) if page != gold][:2]
    candidates = [(first, 3.0), (second, 2.0), (gold, 1.0)]  # the candidates' order puts the needle third

    def cited(ranking: str) -> tuple[list[int], list[float]]:
        with Conversation(comma.model, memory, recall=store, ranking=ranking) as conversation:
            "".join(conversation.ask(QUESTION, [], candidate_pages=candidates))
            return conversation.answer_pages(), [s.score for s in conversation.sources]

    assert cited("words")[0] == [first, second]
    monkeypatch.setattr("engine.answering.conversation.RERANK_POOL", 3)
    pages, scores = cited("rerank")
    assert pages[0] == gold and len(pages) == 2 and scores[0] > scores[1]
    monkeypatch.setattr("engine.answering.conversation.RERANK_POOL", 2)
    assert gold not in cited("rerank")[0]  # beyond the pool, a candidate is not ranked


def test_a_store_that_cannot_be_created_is_a_message(tmp_path):
    with pytest.raises(MemoryFileError, match="could not save the recall store"):
        StoreWriter(tmp_path / "no such folder" / "doc.recall")


def test_sources_and_pages_name_their_section(comma, tmp_path, capsys, monkeypatch):
    from app.cli import run
    from tests.fakes import NEEDLE, filler

    parts = [f"# {n} {title}\n\n{filler(n)}" for n, title in enumerate(["Scope", "Fees", "Gates", "Term"], 1)]
    parts[2] += f" {NEEDLE}"
    path = tmp_path / "contract.md"
    path.write_text("\n\n".join(parts))
    report = comma.ingest(path, notes=False)
    result = comma.ask(report["doc_id"], QUESTION)
    assert result.sources[0]["section"] == "3 Gates"
    assert result.sections == [comma.library.section_at(report["doc_id"], p) for p in result.pages]
    assert "3 Gates" in result.sections or "2 Fees" in result.sections
    monkeypatch.setenv("COMMA_HOME", str(comma.library.folder))
    assert run(["ask", report["doc_id"], QUESTION]) == 0
    assert f"§ 3 Gates, p. {result.sources[0]['page']}:" in capsys.readouterr().out


def _rewrite_pieces(path: Path, change, change_tokens=lambda tokens: tokens) -> None:
    """The store again, with valid checksums around a passage table or token ids its writer never makes."""
    f = open_store(path, model_fingerprint="f" * 64, backend="fake")
    header = {k: v for k, v in f.header.items() if k not in ("sections", "format_version")}
    header["pieces"] = change([list(p) for p in header["pieces"]])
    blobs = f.read(list(f.sections))
    blobs["tokens"] = change_tokens(np.frombuffer(blobs["tokens"], "<i4").copy()).astype("<i4").tobytes()
    with StoreWriter(path) as writer:
        for name, blob in blobs.items():
            writer.add(name, blob)
        writer.seal(header)
        writer.commit()


@pytest.mark.parametrize("change", [
    pytest.param(lambda p: [[p[0][0], 10**15, p[0][2], 0], *p[1:]], id="a piece of 10^15 tokens"),
    pytest.param(lambda p: [[p[0][0], float("inf"), p[0][2], 0], *p[1:]], id="Infinity tokens"),
    pytest.param(lambda p: [p[0], [p[0][0], *p[1][1:]], *p[2:]], id="two pieces at one place"),
    pytest.param(lambda p: [[p[0][0], p[0][1], 0, 0], *p[1:]], id="page 0"),
    pytest.param(lambda p: [[*p[0][:2], p[0][2] + 1, 0], *p[1:]], id="a piece on a page its tokens are not on"),
])
def test_a_crafted_passage_table_is_damage_and_the_answer_comes_from_the_memory(comma, read_doc, change):
    store = Path(read_doc["recall_path"])
    _rewrite_pieces(store, change)
    crafted = store.read_bytes()
    result = comma.ask(read_doc["doc_id"], QUESTION)
    assert result.answer and result.recall is False and "unreadable passage table" in result.recall_reason
    assert store.read_bytes() == crafted


@pytest.mark.parametrize("token", [2**31 - 1, 258, -1])
def test_a_stored_token_id_the_model_lacks_is_damage_and_the_answer_comes_from_the_memory(comma, read_doc, token):
    """Token ids past the vocabulary would fail detokenizing the sources' snippets, and negative
    ones would show other words: the store is refused when it is opened, saying why."""
    store = Path(read_doc["recall_path"])

    def change(tokens):
        tokens[len(tokens) // 2] = token
        return tokens

    _rewrite_pieces(store, lambda pieces: pieces, change)
    crafted = store.read_bytes()
    result = comma.ask(read_doc["doc_id"], QUESTION)
    assert result.answer and result.recall is False and result.sources == []
    assert "token ids outside the model's vocabulary" in result.recall_reason
    assert store.read_bytes() == crafted
