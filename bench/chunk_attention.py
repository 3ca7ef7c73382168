"""Chunk attention: Comma's Triton kernel against PyTorch SDPA (flash backend) doing the same work.

Method: batch 1, Llama-3-8B attention shapes (32 query heads over 8 KV heads, head dim 128,
bfloat16), random inputs. A chunk of L queries (1024, 2048, 4096) sits after a cache of C keys
(800, 2048, 8192): every query attends to the whole cache and causally to the chunk. Our kernel
reads keys before RoPE from a view into a cache buffer and rotates queries and keys on the fly,
so its time includes RoPE. SDPA gets queries and keys rotated beforehand (that rotation is not
timed), ``enable_gqa=True`` and a lower-right causal bias, forced onto the flash backend. Times
are medians of ``triton.testing.do_bench``; TFLOP/s counts 4·H·D per attended (query, key) pair.
Each shape also checks the kernel against SDPA (relative L2 error). Without CUDA, ``--small``
runs one tiny float16 shape under the Triton interpreter to show the path works (times mean
nothing there). Prints one JSON object.

    python bench/chunk_attention.py [--small] [--out bench/results/chunk_attention_h100.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are decorated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch.nn.functional as F
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from bench.report import emit
from kernels.chunk_attention import chunk_attention
from kernels.rope import rotate


def tables(positions: int, head_dim: int, device, base: float = 500000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float().to(device), angles.sin().float().to(device)


def one_shape(L: int, C: int, heads: int, kv_heads: int, D: int, dtype, device) -> dict:
    S = C + L
    q = torch.randn(1, heads, L, D, device=device, dtype=dtype)
    cache = torch.randn(2, 1, kv_heads, S + 64, D, device=device, dtype=dtype)
    k, v = cache[0], cache[1]
    lengths = torch.tensor([S], dtype=torch.int32, device=device)
    cos, sin = tables(S + 64, D, device)
    scale = D ** -0.5
    slots = torch.arange(S, device=device)
    qr = rotate(q, slots[C:], cos, sin).to(dtype)
    kr = rotate(k[:, :, :S], slots, cos, sin).to(dtype)
    vr = v[:, :, :S].contiguous()
    bias = causal_lower_right(L, S)

    def ours():
        return chunk_attention(q, k, v, lengths, cos, sin, scale)

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qr, kr, vr, attn_mask=bias, scale=scale, enable_gqa=True)

    ref = sdpa() if CUDA else F.scaled_dot_product_attention(
        qr.float(), kr.float().repeat_interleave(heads // kv_heads, 1),
        vr.float().repeat_interleave(heads // kv_heads, 1),
        attn_mask=torch.arange(S, device=device)[None] <= torch.arange(C, S, device=device)[:, None], scale=scale)
    out = ours()
    error = float((out.double() - ref.double()).norm() / ref.double().norm())
    row = {"chunk": L, "cache": C, "relative_error_vs_sdpa": error}
    if CUDA:
        pairs = L * C + L * (L + 1) / 2
        flops = 4 * heads * D * pairs
        ours_ms = triton.testing.do_bench(ours, return_mode="median")
        sdpa_ms = triton.testing.do_bench(sdpa, return_mode="median")
        row.update(ours_ms=ours_ms, sdpa_flash_ms=sdpa_ms, ours_tflops=flops / ours_ms / 1e9,
                   sdpa_tflops=flops / sdpa_ms / 1e9, speedup_vs_sdpa=sdpa_ms / ours_ms)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shape (the CPU interpreter)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not CUDA and not args.small:
        parser.error("without CUDA only --small runs (under the Triton interpreter)")
    device = "cuda" if CUDA else "cpu"
    if args.small:
        shapes, heads, kv_heads, D, dtype = [(20, 40)], 4, 2, 64, torch.float16
    else:
        shapes = [(L, C) for L in (1024, 2048, 4096) for C in (800, 2048, 8192)]
        heads, kv_heads, D, dtype = 32, 8, 128, torch.bfloat16
    torch.manual_seed(0)
    rows = [one_shape(L, C, heads, kv_heads, D, dtype, device) for L, C in shapes]
    figures = {"shape": {"heads": heads, "kv_heads": kv_heads, "head_dim": D, "dtype": str(dtype)},
               "results": rows}
    if CUDA:
        figures["median_speedup_vs_sdpa"] = sorted(r["speedup_vs_sdpa"] for r in rows)[len(rows) // 2]
    model = SimpleNamespace(name="Llama-3-8B attention shapes" if not args.small else "tiny shape")
    emit("chunk_attention", __doc__.split("Method: ")[1].split("\n\n")[0], model, figures, args.out)


if __name__ == "__main__":
    main()
