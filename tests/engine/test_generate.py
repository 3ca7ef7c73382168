"""The generation loop: greedy by default (the same answer every time), sampling with temperature
and top-p when asked, reproducible with a seed, and settings out of range refused clearly."""

import numpy as np
import pytest

from engine.generate import Sampling, choose, generate

LOGITS = np.array([5.0, 4.0, 1.0, -3.0], dtype=np.float32)
END = 3


def run(sampling: Sampling, steps: int = 40) -> list[int]:
    """Tokens from a model whose next-token logits never change, until ``steps`` or the end token."""
    return list(generate(LOGITS.copy(), lambda token: LOGITS.copy(), lambda t: t == END,
                         Sampling(**{**sampling.__dict__, "max_tokens": steps, "repetition_penalty": 1.0})))


def test_greedy_is_the_default_and_always_the_same():
    assert Sampling().temperature == 0.0
    assert run(Sampling()) == [0] * 40


def test_a_temperature_samples_and_a_seed_repeats_it():
    first = run(Sampling(temperature=1.5, seed=7))
    assert first == run(Sampling(temperature=1.5, seed=7))
    assert len(set(first)) > 1, "sampling at 1.5 draws more than the top token"
    assert first != run(Sampling(temperature=1.5, seed=8))


def test_top_p_keeps_only_the_nucleus():
    rng = np.random.default_rng(0)
    # P(token 0) is 0.72: a nucleus of 0.5 is that token alone, one of 0.9 adds token 1.
    assert {choose(LOGITS, Sampling(temperature=1.0, top_p=0.5), rng) for _ in range(200)} == {0}
    assert {choose(LOGITS, Sampling(temperature=1.0, top_p=0.9), rng) for _ in range(400)} == {0, 1}


def test_a_low_temperature_is_nearly_greedy():
    rng = np.random.default_rng(1)
    assert {choose(LOGITS, Sampling(temperature=0.05), rng) for _ in range(200)} == {0}


@pytest.mark.parametrize("values, words", [
    ({"temperature": -0.1}, "temperature must be between 0 and 2"),
    ({"temperature": 9.0}, "temperature must be between 0 and 2"),
    ({"top_p": 0.0}, "top-p must be above 0"),
    ({"top_p": 1.5}, "top-p must be above 0 and at most 1"),
    ({"max_tokens": 0}, "answer length must be between 1"),
])
def test_settings_out_of_range_are_refused(values, words):
    with pytest.raises(ValueError, match=words):
        Sampling(**values)
