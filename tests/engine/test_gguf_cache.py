"""The llama.cpp cache: eviction keeps positions 0..n-1, snapshots restore exactly, and a
compressed cache keeps the model's predictions sane (broken re-positioning makes them explode)."""

from pathlib import Path

import numpy as np
import pytest

from engine.backends.gguf.model import GGUFModel, llama
from engine.errors import MemoryFileError
from engine.policy import Full, SepLLM, Streaming
from engine.protocols import Logits
from engine.reading.scoring import score

pytestmark = pytest.mark.model
GPL3 = Path("/usr/share/common-licenses/GPL-3")


@pytest.fixture(scope="module")
def model():
    return GGUFModel()


@pytest.fixture(scope="module")
def tokens(model):
    if not GPL3.exists():
        pytest.skip("needs /usr/share/common-licenses/GPL-3")
    return model.tokenize(GPL3.read_text())[:1200]


def fill(model, tokens, n_ctx=1024):
    cache = model.new_cache(n_ctx, 256)
    cache.append(tokens, np.arange(len(tokens)), model.separator_ids[tokens])
    return cache


def test_evict_compacts_positions_and_tracks_offsets(model, tokens):
    cache = fill(model, tokens[:300])
    keep = np.concatenate([np.arange(4), np.array([50, 51, 120]), np.arange(200, 300)])
    cache.evict(keep)
    assert cache.length == len(keep)
    assert cache.offsets.tolist() == keep.tolist()
    assert llama.llama_memory_seq_pos_min(cache.memory, 0) == 0
    assert llama.llama_memory_seq_pos_max(cache.memory, 0) == len(keep) - 1
    cache.append(tokens[300:310], np.arange(300, 310), model.separator_ids[tokens[300:310]])
    assert llama.llama_memory_seq_pos_max(cache.memory, 0) == len(keep) + 9


def test_removing_slots_slides_what_follows_into_their_place(model, tokens):
    """An earlier turn's passage leaves: positions stay 0..n-1, offsets lose only its document
    slots, and the text after it, kept with its keys re-rotated, predicts as before."""
    cache = fill(model, tokens[:200], n_ctx=1024)
    cache.import_slots(cache.export_slots(150, 200), np.arange(150, 200))  # a passage after the memory
    cache.decode_main_tail(tokens[300:340])
    before = cache.decode_main_tail(tokens[340:341])
    cache.truncate(cache.length - 1)
    cache.remove(200, 250)
    assert cache.length == 240 and cache.offsets.tolist() == list(range(200))
    assert llama.llama_memory_seq_pos_max(cache.memory, 0) == 239
    after = cache.decode_main_tail(tokens[340:341])
    assert int(np.argmax(after)) == int(np.argmax(before))
    cache.remove(100, 210)  # document slots and conversation together
    assert cache.length == 131 and cache.offsets.tolist() == list(range(100))
    restored = model.new_cache(512, 256)
    restored.restore(cache.snapshot(), np.arange(131), np.zeros(131, dtype=bool))
    with pytest.raises(ValueError):
        cache.remove(120, 500)


def mean_nll(cache, tokens):
    logits = cache.append(tokens, np.arange(len(tokens)), np.zeros(len(tokens), dtype=bool), logits=Logits.ALL)
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(tokens) - 1), tokens[1:]].mean()


def test_snapshot_round_trips_after_eviction(model, tokens):
    cache = fill(model, tokens[:200])
    cache.evict(np.concatenate([np.arange(4), np.arange(100, 200)]))
    state = cache.snapshot()
    restored = model.new_cache(512, 256)
    restored.restore(state, cache.offsets, cache.separators)
    assert restored.snapshot() == state
    # The restored cells sit contiguously where the live ones have holes, so float sums run in
    # another order: predictions agree closely, not bit for bit.
    live, loaded = mean_nll(cache, tokens[200:400]), mean_nll(restored, tokens[200:400])
    assert abs(live - loaded) < 0.01 * live


def test_restore_that_does_not_fit_is_refused(model, tokens):
    cache = fill(model, tokens[:300])
    small = model.new_cache(128, 64)
    with pytest.raises(MemoryFileError, match="did not load"):
        small.restore(cache.snapshot(), cache.offsets, cache.separators)


@pytest.mark.parametrize("positions", ["all_last", "from_minus_5", "one_twice", "one_past_the_end"])
def test_a_state_whose_cells_claim_other_positions_is_refused(model, tokens, positions):
    """llama.cpp loads such a state and decodes on; the cache refuses it before llama.cpp sees it.
    (Cells need not be in position order: after an eviction new tokens fill freed cells.)"""
    cache = fill(model, tokens[:100])
    cache.evict(np.concatenate([np.arange(4), np.arange(50, 100)]))
    cache.append(tokens[100:120], np.arange(100, 120), model.separator_ids[tokens[100:120]])
    state = bytearray(cache.snapshot())
    n = cache.length
    cells = np.frombuffer(state, dtype="<i4", count=3 * n, offset=16).reshape(n, 3).copy()
    assert sorted(cells[:, 0].tolist()) == list(range(n))
    if positions == "all_last":
        cells[:, 0] = n - 1
    elif positions == "from_minus_5":
        cells[:, 0] -= 5
    elif positions == "one_twice":
        cells[1, 0] = cells[0, 0]
    else:
        cells[np.argmax(cells[:, 0]), 0] = n
    state[16:16 + cells.nbytes] = cells.tobytes()
    with model.new_cache(256, 64) as fresh, pytest.raises(MemoryFileError, match=f"positions 0..{n - 1}"):
        fresh.restore(bytes(state), cache.offsets, cache.separators)
    cache.close()


def test_sepllm_below_capacity_scores_exactly_like_full(model, tokens):
    short = tokens[:400]
    full = score(model, short, Full(), chunk=128)
    sep = score(model, short, SepLLM(4, 16, 64, 800), chunk=128)
    np.testing.assert_allclose(sep.logprobs, full.logprobs, atol=1e-4)


def test_compressed_caches_keep_perplexity_near_full(model, tokens):
    full = score(model, tokens, Full(), chunk=256).perplexity(400)
    streaming = score(model, tokens, Streaming(4, 256)).perplexity(400)
    sepllm = score(model, tokens, SepLLM(4, 32, 128, 256)).perplexity(400)
    # Without re-positioning keys inside the cache, perplexity explodes past 100 here.
    assert full < streaming < 1.5 * full
    assert full < sepllm < 1.5 * full


def test_a_stored_passage_loads_and_ranks_exactly_as_it_was_read(model, tokens, monkeypatch):
    """As a store written before compaction keeps it: llama.cpp's own state."""
    monkeypatch.setattr("engine.backends.gguf.context.compact", lambda state, n_layer: state)
    question = model.tokenize(" What does the licence say about copying?")
    scored = len(question) - 1
    with fill(model, tokens[:600], 2048) as read:
        passage = read.export_slots(400, 600)
        direct = read.log_probs_after([[]], question, scored, 600)
    with fill(model, tokens[:400], 2048) as later:
        # Ranked where it was read (no shift), after the same 400 slots ...
        ranked = later.log_probs_after([[(passage, 200)]], question, scored, 400)
        assert later.length == 400  # ranking leaves the main sequence as it was
        later.import_slots(passage, np.arange(400, 600))
        imported = later.log_probs_after([[]], question, scored, 600)
    np.testing.assert_allclose(ranked, direct, atol=1e-3)
    np.testing.assert_allclose(imported, direct, atol=1e-3)
    with fill(model, tokens[:100], 2048) as moved:
        # ... and moved to follow a shorter cache: keys are re-rotated, predictions stay sane.
        moved.import_slots(passage, np.arange(400, 600))
        assert moved.length == 300 and moved.offsets[-1] == 599
        shifted = moved.log_probs_after([[]], question, scored, 300)
    assert abs(shifted.mean() - direct.mean()) < 1.0


def test_a_compacted_passage_is_41_percent_of_the_state_and_predicts_as_the_f16_one(model, tokens):
    from engine.backends.gguf.compact_state import expand, is_compact

    question = model.tokenize(" What does the licence say about copying?")
    scored = len(question) - 1
    with fill(model, tokens[:1000], 2048) as read:
        passage = read.export_slots(500, 1000)
        direct = read.log_probs_after([[]], question, scored, 1000)
    raw = expand(passage, model.n_layer, model.state_rows)
    assert is_compact(passage) and not is_compact(raw) and len(passage) < 0.42 * len(raw)
    with fill(model, tokens[:500], 2048) as later:
        ranked = later.log_probs_after([[(passage, 500)]], question, scored, 500)
        later.import_slots(passage, np.arange(500, 1000))
        imported = later.log_probs_after([[]], question, scored, 1000)
    # Measured: the mean 0.075 nats a token away, single tokens up to 0.36 (a broken codec: several).
    for got in (ranked, imported):
        assert abs(got.mean() - direct.mean()) < 0.15 and np.abs(got - direct).max() < 0.6


@pytest.mark.parametrize("damage", [
    lambda blob: blob[:len(blob) // 2],  # truncated
    lambda blob: blob[:4] + (0).to_bytes(4, "little") + blob[8:],  # no cells
    lambda blob: blob[:4] + (1 << 30).to_bytes(4, "little") + blob[8:],  # more cells than any store
])
def test_a_damaged_compacted_passage_is_refused_not_loaded(model, tokens, damage):
    with fill(model, tokens[:300]) as read:
        passage = read.export_slots(100, 200)
    with fill(model, tokens[:50]) as later, pytest.raises(MemoryFileError, match="KV"):
        later.import_slots(damage(passage), np.arange(100, 200))
    assert later.length == 50


def test_a_passage_that_does_not_match_its_tokens_is_refused(model, tokens):
    with fill(model, tokens[:300]) as read:
        passage = read.export_slots(100, 200)
    with fill(model, tokens[:50]) as later, pytest.raises(MemoryFileError, match="is not 150 tokens"):
        later.import_slots(passage, np.arange(0, 150))


def test_a_state_whose_rows_are_smaller_than_the_models_is_refused(model, tokens):
    """Rows of 0 bytes would let a tiny file claim a million cells, and a context be sized for
    them, before llama.cpp looks at the rows."""
    import struct

    cache = fill(model, tokens[:50])
    n = cache.length
    head = cache.snapshot()[:16 + 12 * n]  # magic, sequence, streams, cell count, the cell table
    layers = model.n_layer
    crafted = head + struct.pack("<II", 0, layers) + struct.pack("<iQ", 1, 0) * (2 * layers)
    with pytest.raises(MemoryFileError, match="rows of another size"):
        model.check_state(crafted, n)
    cache.close()


def test_a_cache_that_cannot_take_its_kept_slots_back_stops_the_read_and_saves_nothing(model, tmp_path, monkeypatch):
    """Eviction packs the kept cells by saving and loading them; llama.cpp refusing the load is a
    message, the read keeps nothing, and the next read works."""
    from engine.errors import CommaError
    from engine.pipeline.comma import Comma
    from storage.library import Library

    path = tmp_path / "gpl.txt"
    path.write_text(GPL3.read_text()[:6000])
    comma = Comma(library=Library(tmp_path / "home"), answering="off")
    comma.models.use(reading=model)
    with monkeypatch.context() as patch:
        patch.setattr(llama, "llama_state_seq_set_data", lambda *args: 0)
        with pytest.raises(CommaError, match="could not put the kept slots back"):
            comma.ingest(path, cache=160, notes=False, recall=False, deep=False)
    assert all(comma.library.find_memory(d["id"], model.fingerprint, "gguf") is None
               for d in comma.library.documents())
    assert not any((comma.library.folder / "memories").glob("*"))
    report = comma.ingest(path, cache=160, notes=False, recall=False, deep=False)
    assert report["kept_tokens"] <= 160 and Path(report["memory_path"]).is_file()
