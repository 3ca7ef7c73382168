"""One suite for every backend (as kvpress runs every press through one): what engine.protocols
promises of a model and its cache holds for llama.cpp, for the torch engine on this CPU, and for
the fake model the window's tests use."""

import importlib.util

import numpy as np
import pytest

from engine.protocols import AttentionCache, Cache, Capabilities, Logits, Model, RecallCache
from tests.fakes import FakeModel

BACKENDS = ["gguf", "fake"] + (["torch"] if importlib.util.find_spec("transformers") else [])
TEXT = ("Either party may end this agreement with forty-five days' written notice. Fees are due "
        "within thirty days of each invoice; late fees accrue monthly. ") * 12


@pytest.fixture(scope="module", params=BACKENDS)
def model(request):
    if request.param == "fake":
        return FakeModel()
    from engine.backends.loading import load_model

    return load_model(request.param, None, device="cpu" if request.param == "torch" else None)


@pytest.fixture
def tokens(model):
    return model.tokenize(TEXT)[:200]


def filled(model, tokens, n_ctx=512):
    cache = model.new_cache(n_ctx)
    cache.append(tokens, np.arange(len(tokens)), model.separator_ids[tokens])
    return cache


def test_model_and_cache_follow_the_protocols(model, tokens):
    assert isinstance(model, Model) and isinstance(model.capabilities, Capabilities)
    with model.new_cache(64) as cache:
        assert isinstance(cache, Cache)
        assert cache.length == 0 and len(cache.offsets) == 0
        # What a model says its caches can do, they can.
        assert isinstance(cache, RecallCache) == model.capabilities.recall
        assert isinstance(cache, AttentionCache) == model.capabilities.answer_attention


def test_append_evict_truncate_track_slots(model, tokens):
    with filled(model, tokens) as cache:
        assert cache.length == len(tokens) and cache.offsets.tolist() == list(range(len(tokens)))
        keep = np.concatenate([np.arange(4), np.arange(100, 200)])
        cache.evict(keep)
        assert cache.length == len(keep) and cache.offsets.tolist() == keep.tolist()
        assert cache.separators.tolist() == model.separator_ids[tokens][keep].tolist()
        cache.truncate(50)
        assert cache.length == 50 and cache.offsets.tolist() == keep[:50].tolist()


def test_decoding_hands_back_one_vocabulary_vector(model, tokens):
    with filled(model, tokens[:50]) as cache:
        logits = cache.decode_main_tail(tokens[50:60])
        assert logits.shape == (model.n_vocab,)
        assert cache.length == 60


def test_snapshot_restores_the_same_predictions(model, tokens):
    with filled(model, tokens[:120]) as cache:
        cache.evict(np.concatenate([np.arange(4), np.arange(60, 120)]))
        state, offsets, separators = cache.snapshot(), cache.offsets.copy(), cache.separators.copy()
        live = cache.decode_main_tail(tokens[120:130])
    with model.new_cache(256) as restored:
        restored.restore(state, offsets, separators)
        assert restored.length == len(offsets) and restored.offsets.tolist() == offsets.tolist()
        again = restored.decode_main_tail(tokens[120:130])
    assert int(np.argmax(again)) == int(np.argmax(live))


def test_log_probs_of_every_position(model, tokens):
    with model.new_cache(256) as cache:
        logits = cache.append(tokens[:40], np.arange(40), model.separator_ids[tokens[:40]], Logits.ALL)
        lp = model.log_probs_at(logits, tokens[1:40])
    assert lp.shape == (39,) and np.all(lp <= 1e-6) and np.all(np.isfinite(lp))
