"""The sentence encoder: the same vectors as transformers' BERT, unit length, a question nearest the
passage that answers it, and a clear reason when it is not installed or cannot be loaded."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from engine.recall import sentence_encoder
from engine.recall.sentence_encoder import MAX_TOKENS, SentenceEncoder, load_encoder, model_folder


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    folder = model_folder()
    assert folder is not None, f"the sentence encoder is part of the test install: {sentence_encoder.INSTALL}"
    return SentenceEncoder(folder)


@pytest.mark.skipif(not (importlib.util.find_spec("torch") and importlib.util.find_spec("transformers")),
                    reason="the reference is transformers' BERT (the gpu extra)")
def test_the_vectors_are_transformers_mean_pooled_bert(encoder):
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = model_folder()
    texts = ["How do I end the contract?", "x", "Either party may terminate this agreement. " * 60]
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert np.abs(encoder.encode(texts) - expected).max() < 1e-5


def test_vectors_are_unit_length_in_input_order_and_a_long_text_is_cut(encoder):
    texts = ["a short one", "Either party may terminate. " * 200, "a short one"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, encoder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-6)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_a_question_in_a_reader_s_words_is_nearest_the_passage_that_answers_it(encoder):
    question, *passages = encoder.encode([
        "How long must I wait before ending the contract?",
        "Either party may terminate this agreement by giving forty-five days' written notice.",
        "Preheat the oven to 180 degrees and bake the cake for forty minutes.",
        "The licensee shall pay the fees within thirty days of the invoice.",
    ])
    assert int(np.argmax(np.array(passages) @ question)) == 0


def test_without_the_package_pages_are_found_by_words_and_the_reason_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    load_encoder.cache_clear()
    try:
        encoder, reason = load_encoder()
    finally:
        load_encoder.cache_clear()
    assert encoder is None and "words alone" in reason and sentence_encoder.INSTALL in reason


def test_a_damaged_install_is_a_reason_not_a_traceback(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(model_folder() / name, folder / name)
    (folder / "model.safetensors").write_bytes(b"not weights")
    monkeypatch.setattr(sentence_encoder, "model_folder", lambda: folder)
    load_encoder.cache_clear()
    try:
        encoder, reason = load_encoder()
    finally:
        load_encoder.cache_clear()
    assert encoder is None and "cannot be loaded" in reason and str(folder) in reason
