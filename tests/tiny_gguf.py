"""Tiny GGUF files for tests, written by ``gguf.GGUFWriter``: a header with chosen metadata and a
few small tensors (``write_gguf``), or a one-layer Llama with a real tokenizer that llama.cpp
loads (``write_loadable_llama``, a few hundred KB, with zero weights: its words are no test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

# A tokenizer with the control tokens of the chat formats the tests render, byte fallback for
# any text, and single characters so that plain words tokenize into something readable.
CONTROL_TOKENS = ["<s>", "</s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]
BOS, EOS = 1, 2  # "<s>", "</s>"; token 0 is "<unk>"


def write_gguf(path: Path, arch: str = "llama", *, metadata: dict[str, Any] | None = None,
               tensors: dict[str, np.ndarray] | None = None, name: str | None = "Tiny Test Model",
               context: int | None = 2048, layers: int | None = 2, heads: int | None = 4, kv_heads: int | None = 2,
               file_type: int | None = LlamaFileType.MOSTLY_Q4_K_M, chat_template: str | None = None) -> Path:
    """A GGUF file of ``arch`` that llama.cpp need not load; ``metadata`` keys may hold ``{arch}``,
    and its ints are written as UINT32, its lists as arrays. ``None`` leaves a key out."""
    writer = GGUFWriter(path, arch)
    for value, add in ((name, writer.add_name), (context, writer.add_context_length), (layers, writer.add_block_count),
                       (heads, writer.add_head_count), (kv_heads, writer.add_head_count_kv),
                       (file_type, writer.add_file_type), (chat_template, writer.add_chat_template)):
        if value is not None:
            add(value)
    for key, value in (metadata or {}).items():
        _add(writer, key.format(arch=arch), value)
    default = {"token_embd.weight": np.zeros((32, 8), np.float32), "blk.0.attn_q.weight": np.zeros((8, 8), np.float16)}
    for tensor_name, data in (default if tensors is None else tensors).items():
        writer.add_tensor(tensor_name, data)
    _finish(writer)
    return path


def write_loadable_llama(path: Path, chat_template: str | None, *, add_bos: bool = True) -> Path:
    """A one-layer Llama that llama.cpp loads, with an SPM tokenizer whose BOS is ``<s>``."""
    tokens = ["<unk>", *CONTROL_TOKENS, *(f"<0x{b:02X}>" for b in range(256)), "▁",
              *(chr(c) for c in range(33, 127))]
    types = [TokenType.UNKNOWN] + [TokenType.CONTROL] * len(CONTROL_TOKENS) + [TokenType.BYTE] * 256 + \
        [TokenType.NORMAL] * (len(tokens) - 1 - len(CONTROL_TOKENS) - 256)
    n_vocab, n_embd, n_ff, n_head = len(tokens), 16, 32, 2
    writer = GGUFWriter(path, "llama")
    writer.add_name("Tiny Loadable Llama")
    writer.add_context_length(256)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(add_bos)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    weights = {
        "token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,), "output.weight": (n_vocab, n_embd),
        "blk.0.attn_norm.weight": (n_embd,), "blk.0.attn_q.weight": (n_embd, n_embd),
        "blk.0.attn_k.weight": (n_embd, n_embd), "blk.0.attn_v.weight": (n_embd, n_embd),
        "blk.0.attn_output.weight": (n_embd, n_embd), "blk.0.ffn_norm.weight": (n_embd,),
        "blk.0.ffn_gate.weight": (n_ff, n_embd), "blk.0.ffn_up.weight": (n_ff, n_embd),
        "blk.0.ffn_down.weight": (n_embd, n_ff),
    }
    for tensor_name, shape in weights.items():
        writer.add_tensor(tensor_name, np.zeros(shape, np.float32))
    _finish(writer)
    return path


def _add(writer: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))


def _finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
