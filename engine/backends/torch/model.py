"""A transformers model loaded for Comma: from a GGUF file (dequantized) or a local folder.

bf16 on CUDA, float32 on the CPU. Its vocabulary, tokenizer and chat template come from the
same source through transformers. The model's attention is Comma's (``engine.backends.torch.attention``)
and its caches are ``SlotCache``s. The methods mirror the gguf backend's model, so the reader,
the conversation and the summary run unchanged on either.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.utils import logging as hf_logging

from engine.backends.torch import attention
from engine.backends.torch.device import choose_device, ops_for
from engine.errors import CommaError, MemoryFileError, ModelError
from engine.models.files import model_fingerprint, resolve_model_source
from engine.models.gguf_header import read_model_info
from engine.protocols import Capabilities
from engine.vocabulary import PieceVocabulary

# Families whose attention is plain multi-head or grouped-query attention with one rotary
# module: the cache can be compacted and the keys rotated by slot.
SUPPORTED_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@contextlib.contextmanager
def _quiet_tqdm():
    """transformers' GGUF loader draws its own tqdm bar on stderr, which is the person's."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


@dataclass(frozen=True)
class CacheShape:
    layers: int
    kv_heads: int
    head_dim: int


class TorchModel(PieceVocabulary):
    backend = "torch"
    derived_from = None  # transformers reads any GGUF weight type as it is: no faster copy
    capabilities = Capabilities(parallel_reading=True, chunk_choice=True, recall=True, answer_attention=True)

    def __init__(self, path: str | os.PathLike | None = None, device: str | None = None):
        self.path, gguf_file = resolve_model_source(path)
        chosen = choose_device(device)
        dtype = torch.bfloat16 if chosen.type == "cuda" else torch.float32
        if gguf_file:
            # A truncated or crafted file is named and explained from its header, where
            # transformers' loader would fail inside numpy with a reshape error.
            read_model_info(self.path)
        folder = str(self.path.parent if gguf_file else self.path)
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        try:
            with _quiet_tqdm():
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
                hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype,
                                                          attn_implementation=attention.NAME)
        # A damaged file fails deep inside gguf or transformers, in many different ways.
        except Exception as exc:
            raise ModelError(f"transformers could not load {self.path}: {exc}") from exc
        self._attach(hf, tokenizer, chosen, Path(gguf_file).stem if gguf_file else self.path.name)

    @classmethod
    def from_module(cls, hf, device: str | None = None, name: str = "in-memory model") -> TorchModel:
        """Wrap a model built in memory (random weights for benchmarks): no tokenizer, no file."""
        model = cls.__new__(cls)
        model.path = Path(name)
        hf.config._attn_implementation = attention.NAME
        model._attach(hf, None, choose_device(device), name)
        model.fingerprint = f"in-memory:{name}"
        return model

    def _attach(self, hf, tokenizer, device: torch.device, name: str) -> None:
        family = hf.config.model_type
        if family not in SUPPORTED_FAMILIES:
            raise ModelError(f"{name} is a {family!r} model; the torch backend reads "
                             f"{', '.join(sorted(SUPPORTED_FAMILIES))} models")
        self.device, self.dtype = device, next(hf.parameters()).dtype
        self.hf = hf.to(device).eval()
        self.tokenizer = tokenizer
        # The model's own rotary module builds the slot tables; a no-op one takes its place so
        # that keys reach the cache unrotated.
        self._rotary = self.hf.model.rotary_emb
        cfg = self.hf.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.hf.model.rotary_emb = attention.PreRoPE(head_dim)
        self.shape = CacheShape(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim)
        self.name = name
        self.n_vocab = len(tokenizer) if tokenizer is not None else cfg.vocab_size
        self.n_ctx_train = int(getattr(cfg, "max_position_embeddings", 0) or 0) or 1 << 30
        self.n_layer = cfg.num_hidden_layers
        bos = tokenizer.bos_token_id if tokenizer is not None else None
        self.bos = bos if bos is not None else -1
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def new_cache(self, n_ctx: int, n_batch: int = 512, rows: int = 1):
        """A cache of ``n_ctx`` slots per row; ``n_batch`` is the gguf backend's concern (one
        forward pass takes any number of tokens here)."""
        from engine.backends.torch.cache import SlotCache  # the cache module builds on this one

        return SlotCache(self, n_ctx, rows)

    def close(self) -> None:
        """Free the weights (on a GPU, its memory goes back to the pool at once); the model's
        caches are closed first."""
        if getattr(self, "hf", None) is not None:
            self.hf = None
            self._tables = None
            if str(self.device).startswith("cuda"):
                torch.cuda.empty_cache()

    def check_state(self, state: bytes, n_tokens: int) -> None:
        """A length bound only, before a cache is sized: ``SlotCache.restore`` reads the tensors
        and checks their shape. Two bytes an element is the least a saved cache uses (16-bit)."""
        per_token = self.shape.layers * 2 * self.shape.kv_heads * self.shape.head_dim * 2
        if len(state) < n_tokens * per_token:
            raise MemoryFileError(f"the memory's KV state ({len(state):,} bytes) cannot hold the {n_tokens:,} "
                                  "tokens its header claims; read the document again with --force")

    def log_probs_at(self, logits: torch.Tensor, targets: np.ndarray) -> np.ndarray:
        """log P(target) per row, reduced where the logits were computed (on a GPU), so only one
        number per token crosses to the host, not a vocabulary's worth."""
        logits = logits[:len(targets)]
        index = torch.as_tensor(targets.astype(np.int64), device=logits.device)
        rows = torch.arange(len(targets), device=logits.device)
        return torch.log_softmax(logits.float(), dim=-1)[rows, index].double().cpu().numpy()

    def rope(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Half cos/sin tables for slots ``0..positions-1`` (grown on demand, never shrunk)."""
        if self._tables is None or self._tables[0].shape[0] < positions:
            size = max(positions, 1024)
            ids = torch.arange(size, device=self.device)[None]
            probe = torch.zeros(1, dtype=torch.float32, device=self.device)
            cos, sin = self._rotary(probe, ids)
            half = cos.shape[-1] // 2
            self._tables = (cos[0, :, :half].float().contiguous(), sin[0, :, :half].float().contiguous())
        return self._tables

    def compaction(self):
        """The in-place slot gather for this model's device (``engine.backends.torch.device``)."""
        return ops_for(self.device.type).compact_

    @contextlib.contextmanager
    def out_of_memory_message(self):
        try:
            yield
        except torch.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise CommaError("the GPU ran out of memory while reading; nothing was saved. Try a smaller "
                             "--cache, or --backend gguf") from exc

    @cached_property
    def fingerprint(self) -> str:
        return model_fingerprint(self.path)

    @cached_property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    @cached_property
    def pieces(self) -> list[bytes]:  # type: ignore[override]  # computed once, then read-only
        """The raw bytes of every token id; control tokens print as nothing."""
        byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
        special = set(self.tokenizer.all_special_ids)
        byte_level = "ByteLevel" in type(self.tokenizer.backend_tokenizer.decoder).__name__
        out = []
        for token, text in enumerate(self.tokenizer.convert_ids_to_tokens(list(range(self.n_vocab)))):
            if token in special or text is None:
                out.append(b"")
            elif byte_level and all(ch in byte_of for ch in text):
                out.append(bytes(byte_of[ch] for ch in text))
            elif text.startswith("<0x") and text.endswith(">") and len(text) == 6:
                out.append(bytes([int(text[3:5], 16)]))
            else:
                out.append(text.replace("\u2581", " ").encode("utf-8"))
        return out

    @cached_property
    def _end_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        generation = getattr(self.hf, "generation_config", None)
        eos = getattr(generation, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos])
        for token in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        ids.discard(None)
        return frozenset(ids)

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._end_ids

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> np.ndarray:
        """Token ids of ``text``; without ``special`` a document cannot smuggle in control tokens."""
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]
        if add_bos and self.bos >= 0 and getattr(self.tokenizer, "add_bos_token", False):
            ids = [self.bos, *ids]
        return np.asarray(ids, dtype=np.int32)

    def apply_chat_template(self, messages: list[dict[str, str]], add_assistant: bool) -> str:
        if not self.chat_template:
            raise CommaError(f"{self.name} has no chat template; use an instruction-tuned model")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_assistant)
