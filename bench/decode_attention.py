"""Decode attention: the split-K Triton kernel against PyTorch SDPA for one new token over a long cache.

Method: batch 1, Llama-3-8B attention shapes (32 query heads over 8 KV heads, head dim 128,
bfloat16, RoPE base 500000), random cache contents. For each cache length (1K .. 64K) the kernel
reads a view into a 64K-slot cache holding keys before RoPE and rotates them on the fly, as the
engine does; SDPA gets the same keys rotated beforehand into contiguous ``[1, 8, n, 128]`` tensors,
a query of length 1 and ``enable_gqa=True`` (rotation not timed). Times are medians of
``triton.testing.do_bench`` (which flushes L2 between runs); GB/s counts the bytes of K and V each
call must read (``2 × Hkv × n × D × 2`` bytes). Each length also checks the kernel against
``kernels.chunk_attention.reference`` (relative L2 error). Without CUDA only ``--small`` runs: a tiny
float16 shape under the Triton interpreter (``TRITON_INTERPRET=1``, bfloat16 dots are wrong there),
timed by the median of wall-clock runs; it shows the path works, its times mean nothing.
Prints one JSON object.

    python bench/decode_attention.py [--small] [--out bench/results/decode_attention_h100.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    # Must be set before triton.jit wraps the kernels at import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch.nn.functional as F
import triton
import triton.testing

from bench.report import emit
from kernels.chunk_attention import reference
from kernels.decode_attention import decode_attention
from kernels.rope import rotate

FULL = SimpleNamespace(name="Llama-3-8B attention shapes (32 heads, 8 KV heads, head dim 128)",
                       heads=32, kv_heads=8, head_dim=128, lengths=[1024 * 2 ** i for i in range(7)])
SMALL = SimpleNamespace(name="tiny check shape (4 heads, 2 KV heads, head dim 64)",
                        heads=4, kv_heads=2, head_dim=64, lengths=[40, 100])


def rope_tables(positions: int, head_dim: int, base: float = 500000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float(), angles.sin().float()


def median_ms(fn) -> float:
    if CUDA:
        return triton.testing.do_bench(fn, return_mode="median")
    fn()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def measure(shape, dtype, device) -> list[dict]:
    cap, D = max(shape.lengths), shape.head_dim
    scale = D ** -0.5
    cache = torch.randn(2, 1, shape.kv_heads, cap, D, device=device).to(dtype)
    k, v = cache[0], cache[1]
    q = torch.randn(1, shape.heads, 1, D, device=device).to(dtype)
    cos, sin = (t.to(device) for t in rope_tables(cap, D))
    rows = []
    for n in shape.lengths:
        lengths = torch.tensor([n], dtype=torch.int32, device=device)
        slots = torch.arange(n, device=device)
        k_rot = rotate(k[:, :, :n], slots, cos, sin).to(dtype).contiguous()
        v_n = v[:, :, :n].contiguous()
        q_rot = rotate(q, slots[-1:], cos, sin).to(dtype)
        ours = decode_attention(q, k, v, lengths, cos, sin, scale)
        ref = reference(q, k, v, lengths, cos, sin, scale).float()
        error = float((ours.float() - ref).norm() / ref.norm())
        ms = median_ms(partial(decode_attention, q, k, v, lengths, cos, sin, scale))
        sdpa_ms = median_ms(partial(F.scaled_dot_product_attention, q_rot, k_rot, v_n, scale=scale, enable_gqa=True))
        kv_bytes = 2 * shape.kv_heads * n * D * cache.element_size()
        rows.append({
            "cache_tokens": n,
            "triton_ms": round(ms, 4),
            "sdpa_ms": round(sdpa_ms, 4),
            "triton_gb_s": float(f"{kv_bytes / ms / 1e6:.3g}"),
            "sdpa_gb_s": float(f"{kv_bytes / sdpa_ms / 1e6:.3g}"),
            "speedup_over_sdpa": round(sdpa_ms / ms, 2),
            "relative_error": float(f"{error:.2e}"),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="tiny shape; the only choice without CUDA")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not CUDA and not args.small:
        parser.error("without CUDA the kernel runs under the Triton interpreter: pass --small")
    shape = SMALL if args.small else FULL
    dtype = torch.bfloat16 if CUDA else torch.float16
    device = "cuda" if CUDA else "cpu"
    figures = {
        "device": torch.cuda.get_device_name() if CUDA else "cpu (Triton interpreter)",
        "dtype": str(dtype).removeprefix("torch."),
        "batch": 1,
        "heads": shape.heads,
        "kv_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "results": measure(shape, dtype, device),
    }
    emit("decode_attention", __doc__.split("Method:")[1].split("Prints")[0], shape, figures, args.out)


if __name__ == "__main__":
    main()
