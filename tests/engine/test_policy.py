"""Invariants of the one cache-policy implementation that both backends use."""

import numpy as np
import pytest

from engine.policy import Full, SepLLM, Streaming, make_policy, policy_from_description, policy_key


def run(policy, flags, chunk):
    """Feed `flags` through `policy` chunk by chunk; return kept original offsets after each step."""
    cache = np.zeros(0, dtype=np.int64)
    history = []
    for start in range(0, len(flags), chunk):
        incoming = min(chunk, len(flags) - start)
        keep = policy.keep(flags[cache], incoming)
        if keep is not None:
            assert np.all(np.diff(keep) > 0), "kept slots must stay in cache order"
            cache = cache[keep]
        cache = np.concatenate([cache, np.arange(start, start + incoming)])
        history.append(cache.copy())
    return history


def random_flags(n, seed=0, rate=0.1):
    return np.random.default_rng(seed).random(n) < rate


def test_full_never_evicts():
    flags = random_flags(3000)
    assert run(Full(), flags, 100)[-1].tolist() == list(range(3000))


@pytest.mark.parametrize("chunk", [1, 7, 64, 200])
def test_streaming_is_sinks_plus_recent_window(chunk):
    policy = Streaming(initial=4, capacity=100)
    chunk = policy.max_chunk(chunk)
    flags = random_flags(1000)
    for cache in run(policy, flags, chunk):
        assert len(cache) <= 100
        end = cache[-1] + 1
        if end > 100:
            recent = 100 - 4
            assert cache.tolist() == [0, 1, 2, 3] + list(range(end - recent, end))


@pytest.mark.parametrize("chunk", [1, 5, 32, 100])
def test_sepllm_tiers(chunk):
    a, s, w, c = 4, 16, 48, 160
    policy = SepLLM(a, s, w, c)
    chunk = policy.max_chunk(chunk)
    flags = random_flags(3000, seed=chunk, rate=0.15)
    prev_len = 0
    for cache in run(policy, flags, chunk):
        assert len(cache) <= c, "never above c after eviction and append"
        end = cache[-1] + 1
        assert cache[:a].tolist() == list(range(min(a, end))), "initial tokens are always kept"
        if end <= c:
            assert cache.tolist() == list(range(end)), "nothing evicted while the cache fits"
        incoming = (end - 1) % chunk + 1
        if len(cache) < prev_len + incoming:
            # an eviction just happened: the local window and the new chunk are whole ...
            assert cache[-(w + incoming):].tolist() == list(range(end - w - incoming, end))
            # ... and everything between the initial tokens and the window is a separator
            middle = cache[a:-(w + incoming)]
            assert flags[middle].all() and len(middle) <= s
            assert len(cache) <= a + s + w + incoming, "eviction shrinks back to about a+s+w"
        prev_len = len(cache)


def test_sepllm_keeps_most_recent_separators():
    policy = SepLLM(initial=2, separators=3, window=4, capacity=12)
    flags = np.zeros(12, dtype=bool)
    flags[[2, 3, 5, 6, 7]] = True
    keep = policy.keep(flags, incoming=1)
    assert keep.tolist() == [0, 1, 5, 6, 7, 8, 9, 10, 11]


def test_sepllm_keeps_old_separators_through_later_evictions():
    policy = SepLLM(initial=1, separators=2, window=2, capacity=8)
    flags = np.zeros(40, dtype=bool)
    flags[[3, 20]] = True
    final = run(policy, flags, policy.max_chunk(3))[-1].tolist()
    assert 3 in final and 20 in final


def test_no_eviction_when_it_fits():
    assert SepLLM(4, 8, 16, 64).keep(np.zeros(50, dtype=bool), 14) is None
    assert Streaming(4, 64).keep(np.zeros(60, dtype=bool), 4) is None


def test_average_usage_swings_between_floor_and_capacity():
    policy = SepLLM(4, 64, 256, 800)
    sizes = [len(c) for c in run(policy, random_flags(20000, rate=0.08), policy.max_chunk(256))]
    assert min(sizes[10:]) >= 256 and max(sizes) <= 800
    assert policy.floor < np.mean(sizes[10:]) < 800


@pytest.mark.parametrize("bad", [dict(initial=4, separators=64, window=800, capacity=800),
                                 dict(initial=-1, separators=1, window=1, capacity=10)])
def test_sepllm_rejects_impossible_sizes(bad):
    with pytest.raises(ValueError, match="a \\+ s \\+ w < c"):
        SepLLM(**bad)


def test_streaming_rejects_impossible_sizes():
    with pytest.raises(ValueError):
        Streaming(initial=10, capacity=10)


def test_make_policy_scales_with_capacity_and_round_trips():
    p = make_policy("sepllm", 1600)
    assert (p.initial, p.separators, p.window, p.capacity) == (4, 128, 512, 1600)
    assert make_policy("sepllm") == SepLLM()
    for policy in [p, Streaming(4, 300), Full()]:
        assert policy_from_description(policy.describe()) == policy
    assert policy_key(SepLLM()) == "sepllm-4-64-256-800"
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("h2o")
