"""Chunk attention: a chunk of queries attends to the compacted cache and, causally, to itself.

The cache holds keys before RoPE. The chunk's own keys and values were already written at the
end of each row's cache, so row ``b`` holds ``lengths[b]`` valid slots and its ``L`` queries sit
at slots ``lengths[b] - L .. lengths[b] - 1``. Query ``i`` sees every slot up to its own. Both
queries and keys are rotated on the fly by their slot position (``kernels.rope``), so an
eviction that moves a key to another slot needs no re-rotation: the cached key is exact.

Shapes: ``q [B, H, L, D]``, ``k, v [B, Hkv, S, D]`` (``S`` ≥ every length; only the last dim must
be contiguous), ``lengths [B]`` int32 with ``L ≤ lengths[b] ≤ S``, rope tables ``[P, D // 2]``
float32 with ``P ≥ max(lengths)``. ``H`` is a multiple of ``Hkv`` (grouped-query attention).
The result has the shape of ``q``; it is a view of a ``[B, L, H, D]`` tensor, the layout the
output projection wants.

``reference`` is the PyTorch definition (float32, in ``kernels.reference`` so that it imports
without Triton); ``chunk_attention`` the Triton kernel (online softmax over key blocks,
bf16/fp16/fp32, head dims 64 and 128).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.reference import chunk_attention as reference  # noqa: F401  (the definition, beside it)

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634  # the kernels use exp2; scores are scaled into log2 units


@triton.jit
def _rotated(ptr, rows, row_ok, stride_row, cos_ptr, sin_ptr, slots, HALF: tl.constexpr):
    """Load ``[rows, 2 * HALF]`` vectors as two halves and rotate each by its slot (float32)."""
    cols = tl.arange(0, HALF)
    base = ptr + rows[:, None] * stride_row + cols[None, :]
    x1 = tl.load(base, mask=row_ok[:, None], other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=row_ok[:, None], other=0.0).to(tl.float32)
    table = slots[:, None] * HALF + cols[None, :]
    c = tl.load(cos_ptr + table, mask=row_ok[:, None], other=1.0)
    s = tl.load(sin_ptr + table, mask=row_ok[:, None], other=0.0)
    return x1 * c - x2 * s, x2 * c + x1 * s


@triton.jit
def _attend_block(acc, m_i, l_i, q1, q2, k_ptr, v_ptr, stride_ks, stride_vs, cos_ptr, sin_ptr,
                  start, n, q_slots, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
                  HALF: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    k_slots = start + tl.arange(0, BLOCK_N)
    k_ok = k_slots < n
    k1, k2 = _rotated(k_ptr, k_slots, k_ok, stride_ks, cos_ptr, sin_ptr, k_slots, HALF)
    # Scores in log2 units: the query was pre-scaled by softmax scale × log2(e).
    s = tl.dot(q1, tl.trans(k1.to(q1.dtype)), input_precision=PRECISION) + \
        tl.dot(q2, tl.trans(k2.to(q2.dtype)), input_precision=PRECISION)
    if MASKED:
        s = tl.where((k_slots[None, :] <= q_slots[:, None]) & k_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    d = tl.arange(0, HEAD_DIM)
    vals = tl.load(v_ptr + k_slots[:, None] * stride_vs + d[None, :], mask=k_ok[:, None], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(vals.dtype), vals, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _scaled_query(ptr, rows, row_ok, stride_row, cos_ptr, sin_ptr, slots, qk_scale, HALF: tl.constexpr):
    """Rotated query halves, pre-scaled by softmax scale × log2(e), in the input's dtype."""
    q1, q2 = _rotated(ptr, rows, row_ok, stride_row, cos_ptr, sin_ptr, slots, HALF)
    dtype = ptr.dtype.element_ty
    return (q1 * qk_scale).to(dtype), (q2 * qk_scale).to(dtype)


@triton.jit
def _attend_range(acc, m_i, l_i, q1, q2, k_ptr, v_ptr, stride_ks, stride_vs, cos_ptr, sin_ptr,
                  lo, mask_from, hi, n, q_slots, BLOCK_N: tl.constexpr, HALF: tl.constexpr,
                  HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    """Online softmax over key slots ``lo .. hi``; only blocks from ``mask_from`` on need a mask."""
    for start in range(lo, mask_from, BLOCK_N):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q1, q2, k_ptr, v_ptr, stride_ks, stride_vs,
                                      cos_ptr, sin_ptr, start, n, q_slots, False, BLOCK_N, HALF, HEAD_DIM,
                                      PRECISION)
    for start in range(mask_from, hi, BLOCK_N):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q1, q2, k_ptr, v_ptr, stride_ks, stride_vs,
                                      cos_ptr, sin_ptr, start, n, q_slots, True, BLOCK_N, HALF, HEAD_DIM,
                                      PRECISION)
    return acc, m_i, l_i


@triton.jit
def _chunk_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, len_ptr, cos_ptr, sin_ptr, qk_scale,
                            stride_qb, stride_qh, stride_ql,
                            stride_kb, stride_kh, stride_ks,
                            stride_vb, stride_vh, stride_vs,
                            stride_ob, stride_oh, stride_ol,
                            L, H: tl.constexpr, GROUPS: tl.constexpr, HEAD_DIM: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    HALF: tl.constexpr = HEAD_DIM // 2
    block = tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    kv_h = h // GROUPS
    n = tl.load(len_ptr + b)
    first = n - L  # slot of the chunk's first query

    m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < L
    q_slots = first + m
    q1, q2 = _scaled_query(q_ptr + b * stride_qb + h * stride_qh, m, m_ok, stride_ql, cos_ptr, sin_ptr,
                           tl.where(m_ok, q_slots, 0), qk_scale, HALF)

    k_ptr += b * stride_kb + kv_h * stride_kh
    v_ptr += b * stride_vb + kv_h * stride_vh
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # Key blocks wholly before this block's first query need no mask; the rest do.
    block_first = first + block * BLOCK_M
    unmasked_end = (block_first // BLOCK_N) * BLOCK_N
    end = tl.minimum(n, block_first + BLOCK_M)
    acc, m_i, l_i = _attend_range(acc, m_i, l_i, q1, q2, k_ptr, v_ptr, stride_ks, stride_vs, cos_ptr, sin_ptr,
                                  0, unmasked_end, end, n, q_slots, BLOCK_N, HALF, HEAD_DIM, PRECISION)

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    d = tl.arange(0, HEAD_DIM)
    o = o_ptr + b * stride_ob + h * stride_oh + m[:, None] * stride_ol + d[None, :]
    tl.store(o, out.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])


def _blocks(L: int, head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for this problem.

    Chosen so that the sm_90 build keeps everything in registers (no stack; the build test
    checks): the rotated key halves are float32 temporaries beside the float32 accumulator, so
    head dim 128 gets two pipeline stages and head dim 64 eight warps.
    """
    if INTERPRETING:
        return 16, 16, 1, 1
    block_m = 128 if L >= 128 else max(16, triton.next_power_of_2(L))
    if head_dim <= 64:
        return block_m, 64, 8, 3
    return block_m, 64, 8, 2


def chunk_attention(q, k, v, lengths, cos, sin, scale: float) -> torch.Tensor:
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    if D not in (64, 128) and not INTERPRETING:
        raise ValueError(f"chunk_attention supports head dims 64 and 128, not {D}")
    if H % Hkv:
        raise ValueError(f"{H} query heads cannot share {Hkv} key/value heads evenly")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("the last dimension of q, k and v must be contiguous")
    out = torch.empty(B, L, H, D, dtype=q.dtype, device=q.device)
    if L == 0:
        return out.transpose(1, 2)
    block_m, block_n, warps, stages = _blocks(L, D)
    grid = (triton.cdiv(L, block_m), B * H)
    _chunk_attention_kernel[grid](
        q, k, v, out, lengths, cos, sin, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(2), out.stride(1),
        L, H=H, GROUPS=H // Hkv, HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n,
        # float32 callers (the CPU-equivalent path) want float32 products, not TF32.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=warps, num_stages=stages,
    )
    return out.transpose(1, 2)
