"""A GGUF model loaded once through llama.cpp: its vocabulary, tokenizer and chat template.

Contexts (the KV caches) are made from it by ``engine.backends.gguf.context``; a model can serve many.
"""

from __future__ import annotations

import ctypes
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from engine.backends.gguf.chat_template import ChatTemplate
from engine.backends.gguf.context import GGUFCache
from engine.backends.gguf.native import llama
from engine.backends.gguf.sequence_state import read_state
from engine.errors import MemoryFileError, ModelError
from engine.models.files import fingerprint, resolve_model_path
from engine.models.gguf_header import read_model_info, refusal
from engine.protocols import Capabilities
from engine.vocabulary import PieceVocabulary


class GGUFModel(PieceVocabulary):
    """The weights and vocabulary of one GGUF file, shared by every context made from it."""

    backend = "gguf"
    # llama.cpp reads one sequence at a time (no parallel chunks); side sequences sharing the
    # main one's cells store, rank and load recall passages.
    capabilities = Capabilities(recall=True)

    def __init__(self, path: str | os.PathLike | None = None, derived_from: str | None = None):
        """``derived_from``: the fingerprint of the model this file is a faster copy of, so that
        memories made with that model can be told apart from a mismatch (engine.backends.gguf.fast_weights)."""
        self.path: Path = resolve_model_path(path)
        self.derived_from = derived_from
        # The header is checked by our own reader first: llama.cpp gives no reason for a file it
        # cannot load, and loads some models whose cache Comma could not compress.
        self.info = read_model_info(self.path)
        reason = refusal(self.info)
        if reason is not None:
            raise ModelError(reason)
        params = llama.llama_model_default_params()
        params.n_gpu_layers = 0
        self.ptr = llama.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.ptr:
            raise ModelError(f"llama.cpp could not load {self.path}; the file may be damaged")
        self.vocab = llama.llama_model_get_vocab(self.ptr)
        self.architecture = self.info.architecture
        self.name = self.info.name
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama.llama_model_n_ctx_train(self.ptr)
        self.n_layer = llama.llama_model_n_layer(self.ptr)
        self.bos = llama.llama_vocab_bos(self.vocab)
        self.weight_type = (llama.llama_ftype_name(llama.llama_model_ftype(self.ptr)) or b"unknown").decode()

    def close(self) -> None:
        """Free the weights; the model's caches must be closed first."""
        if getattr(self, "ptr", None):
            llama.llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.close()

    def new_cache(self, n_ctx: int, n_batch: int = 512) -> GGUFCache:
        return GGUFCache(self, n_ctx, n_batch)

    def check_state(self, state: bytes, n_tokens: int) -> None:
        """The state is one sequence of ``n_tokens`` cells at positions ``0..n_tokens-1``, with
        this model's layers and rows, to its last byte (llama.cpp itself checks only layers and
        sizes, and only once its context is made)."""
        positions, rows = read_state(state, self.n_layer)
        if not np.array_equal(np.sort(positions), np.arange(n_tokens)):
            raise MemoryFileError(
                f"the memory's KV state does not hold its {n_tokens:,} tokens at positions 0..{n_tokens - 1} "
                "(altered, or not this memory's state); read the document again with --force")
        self.check_rows(rows)

    def check_rows(self, rows: tuple) -> None:
        """Rows of another size than this model's own caches make would let a small file claim
        cells it does not hold, and a context be sized for them."""
        if rows and rows != self.state_rows:
            raise MemoryFileError("the memory's KV state has rows of another size than this model's "
                                  "(altered, or made with other cache settings); read the document again with --force")

    @cached_property
    def state_rows(self) -> tuple:
        """The row layout of this model's own saved state, from a one-token cache."""
        with self.new_cache(64, 64) as cache:
            cache.append(np.array([max(self.bos, 0)], dtype=np.int32), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=bool))
            return read_state(cache.snapshot(), self.n_layer)[1]

    def log_probs_at(self, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """log P(target) for each row of ``logits`` (host arrays, as llama.cpp hands them over)."""
        logits = logits[:len(targets)]
        peak = logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
        return logits[np.arange(len(targets)), targets] - log_norm

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.path)

    @cached_property
    def chat_template(self) -> str | None:
        tmpl = llama.llama_model_chat_template(self.ptr, None)
        return tmpl.decode("utf-8") if tmpl else None

    @cached_property
    def pieces(self) -> list[bytes]:  # type: ignore[override]  # computed once, then read-only
        """The raw bytes of every token id, as the model would print it."""
        buf = ctypes.create_string_buffer(256)
        out = []
        for token in range(self.n_vocab):
            n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            out.append(buf.raw[: max(n, 0)])
        return out

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self.vocab, token))

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> np.ndarray:
        """Token ids of ``text``; ``special`` parses control tokens such as ``<|im_start|>``.

        Document text is always tokenized with ``special=False`` so that a document cannot
        smuggle chat-control tokens into the prompt.
        """
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_bos, special)
        if n < 0:
            capacity = -n
            buf = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_bos, special)
        return np.ctypeslib.as_array(buf)[:n].astype(np.int32)

    @cached_property
    def chat(self) -> ChatTemplate:
        """The renderer of this model's prompts; its ``fallback_reason`` is worth a log line."""
        eos = llama.llama_vocab_eos(self.vocab)
        return ChatTemplate(self.chat_template, self._token_text(self.bos), self._token_text(eos),
                            adds_bos=bool(llama.llama_vocab_get_add_bos(self.vocab)))

    def _token_text(self, token: int) -> str:
        if token < 0:  # the vocabulary has no such token
            return ""
        return (llama.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", "replace")

    def apply_chat_template(self, messages: list[dict[str, str]], add_assistant: bool) -> str:
        """Render ``messages`` with the model's own template (engine.backends.gguf.chat_template)."""
        return self.chat.render(messages, add_assistant)
