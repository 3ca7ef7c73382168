"""Compaction: after an eviction, gather each row's surviving slots to the front, in place.

The cache of every layer is one tensor ``kv [n_layers, 2, B, Hkv, Cap, D]`` (keys, values), so a
single launch compacts the whole model. Row ``b`` keeps the slots ``keep[b, :counts[b]]``
(ascending; ``keep [B, Kmax]`` int32/int64, entries past ``counts[b]`` are padding); afterwards
slot ``i < counts[b]`` of every layer, k/v and head of that row holds what slot ``keep[b, i]``
held. Slots from ``counts[b]`` on are left as they are. Keys are cached before RoPE, so moving
one needs no re-rotation (``kernels.rope``).

``reference_`` is the PyTorch definition (in ``kernels.reference``); ``compact_`` the Triton kernel, one program per
``(layer, k/v, row, head)`` plane.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.chunk_attention import INTERPRETING
from kernels.reference import compaction_ as reference_  # noqa: F401  (the definition, beside it)


@triton.jit
def _compact_kernel(kv_ptr, keep_ptr, counts_ptr, stride_keep, B, Hkv, CAP, D,
                    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    # The plane (layer, k/v, row, head) is flat index pid of the first four dims; int64 because
    # a whole-model cache easily holds more than 2**31 elements.
    plane = tl.program_id(0).to(tl.int64)
    b = (plane // Hkv) % B
    n = tl.load(counts_ptr + b)
    base = kv_ptr + plane * CAP * D
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    # Why gathering in place is race-free: only this program touches this plane, and it fills
    # destination slots in ascending blocks. Because keep is ascending and distinct, keep[i] ≥ i,
    # so the block of destinations i0 .. i0 + BLOCK_S - 1 reads only sources ≥ i0: never a slot an
    # earlier block wrote (those are < i0). Inside a block a source may also be a destination of
    # the same block (keep[i] = i + 1 with both in the block), so the whole block is loaded
    # before any of it is stored, and the barrier makes every thread's loads finish before any
    # thread stores (different warps hold different rows). The same barrier also orders each
    # block's stores after all earlier loads of the program.
    for start in range(0, n, BLOCK_S):
        i = start + tl.arange(0, BLOCK_S)
        i_ok = i < n
        src = tl.load(keep_ptr + b * stride_keep + i, mask=i_ok, other=0)
        ok = i_ok[:, None] & d_ok[None, :]
        rows = tl.load(base + src[:, None] * D + d[None, :], mask=ok)
        tl.debug_barrier()
        tl.store(base + i[:, None] * D + d[None, :], rows, mask=ok)


def _check(kv, keep, counts) -> None:
    if kv.dim() != 6 or kv.shape[1] != 2:
        raise ValueError(f"kv must be [n_layers, 2, B, Hkv, Cap, D], got {tuple(kv.shape)}")
    if not kv.is_contiguous():
        raise ValueError("kv must be contiguous")
    B, cap = kv.shape[2], kv.shape[4]
    if keep.dim() != 2 or keep.shape[0] != B or keep.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"keep must be int32/int64 [{B}, Kmax], got {keep.dtype} {tuple(keep.shape)}")
    if keep.stride(-1) != 1:
        raise ValueError("the last dimension of keep must be contiguous")
    if keep.shape[1] > cap:
        raise ValueError(f"keep has {keep.shape[1]} columns but the cache only {cap} slots")
    if counts.shape != (B,) or counts.dtype != torch.int32:
        raise ValueError(f"counts must be int32 [{B}], got {counts.dtype} {tuple(counts.shape)}")


def compact_(kv: torch.Tensor, keep: torch.Tensor, counts: torch.Tensor) -> None:
    """Gather ``keep[b, :counts[b]]`` to the front of every plane of row ``b``, in place, one launch.

    ``counts[b] ≤ Kmax`` and ``keep[b, i] < Cap`` are the caller's to keep: checking them would
    read them back from the GPU.
    """
    _check(kv, keep, counts)
    n_layers, _, B, Hkv, cap, D = kv.shape
    planes = n_layers * 2 * B * Hkv
    if planes == 0:
        return
    block_d = triton.next_power_of_2(D)
    # 4096 elements a block: a tile of 8192 needs ~190 registers a thread (its int64 addresses).
    block_s = 16 if INTERPRETING else max(1, 4096 // block_d)
    _compact_kernel[(planes,)](kv, keep, counts, keep.stride(0), B, Hkv, cap, D,
                               BLOCK_S=block_s, BLOCK_D=block_d, num_warps=1 if INTERPRETING else 4)
