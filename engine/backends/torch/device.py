"""The one place that decides where the torch engine runs and with which ops: CUDA runs
Comma's Triton kernels, every other device their PyTorch definitions (``kernels.reference``),
so the CPU path never imports Triton (which exists on Linux only)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from engine.errors import ModelError


def choose_device(name: str | None) -> torch.device:
    """``name`` when given (refusing CUDA where there is none), else CUDA when present, else CPU."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("CUDA was requested but no CUDA GPU is available; use --backend gguf or auto")
    return device


@dataclass(frozen=True)
class Ops:
    chunk_attention: Any  # (q, k, v, lengths, cos, sin, scale) -> out
    decode_attention: Any  # same signature, one query per row
    compact_: Any  # (kv, keep, counts) -> None, in place


@cache
def ops_for(device_type: str) -> Ops:
    if device_type == "cuda":
        from kernels import chunk_attention, compaction, decode_attention

        return Ops(chunk_attention.chunk_attention, decode_attention.decode_attention, compaction.compact_)
    from kernels import reference

    return Ops(reference.chunk_attention, reference.chunk_attention, reference.compaction_)
