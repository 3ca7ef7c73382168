"""Decode attention: one new query token per row attends to its whole compacted cache.

This is ``kernels.chunk_attention`` with ``L = 1``, and ``kernels.chunk_attention.reference`` is its
definition. Row ``b``'s query sits at slot ``lengths[b] - 1`` (its own key is already cached there)
and sees slots ``0 .. lengths[b] - 1``; queries and keys are rotated by slot on the fly
(``kernels.rope``), keys being cached before RoPE.

Shapes: ``q [B, H, 1, D]``, ``k, v [B, Hkv, S, D]`` (only the last dim must be contiguous, so a
view into a bigger all-layers cache works), ``lengths [B]`` int32 with ``1 ≤ lengths[b] ≤ S``, rope
tables ``[P, D // 2]`` float32 with ``P ≥ max(lengths)``. ``H`` is a multiple of ``Hkv``. The result
has the shape of ``q``; it is a view of a ``[B, 1, H, D]`` tensor.

One query per row leaves a ``[B, H]`` grid far too small to fill a GPU, so the keys are split
(flash-decoding). Phase 1 runs ``(B * Hkv, num_splits)`` programs; each takes every query head
of one KV head (so each K/V block is loaded once for the whole GQA group), walks its share of the
row's keys with an online softmax and writes float32 partials: the running max, the sum of
exponentials and the unnormalised output. Phase 2 rescales the partials of a head to a common
max and divides. Splits are assigned per row from ``lengths[b]`` inside the kernel, so the host
never reads the lengths (no device sync); splits beyond a short row's keys write empty partials.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.chunk_attention import INTERPRETING, LOG2E, _attend_range, _scaled_query


@triton.jit
def _decode_split_kernel(q_ptr, k_ptr, v_ptr, len_ptr, cos_ptr, sin_ptr,
                         m_ptr, l_ptr, acc_ptr, qk_scale,
                         stride_qb, stride_qh,
                         stride_kb, stride_kh, stride_ks,
                         stride_vb, stride_vh, stride_vs,
                         Hkv, NUM_SPLITS, GROUPS: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    HALF: tl.constexpr = HEAD_DIM // 2
    # int64 row index: a row's offset in an all-layers cache can pass 2**31 elements.
    b = (tl.program_id(0) // Hkv).to(tl.int64)
    kv_h = tl.program_id(0) % Hkv
    split = tl.program_id(1)
    n = tl.load(len_ptr + b)

    # The group's query heads are rows of one tile, padded to BLOCK_M (tl.dot needs ≥ 16 rows).
    r = tl.arange(0, BLOCK_M)
    r_ok = r < GROUPS
    first_head = kv_h * GROUPS
    q1, q2 = _scaled_query(q_ptr + b * stride_qb + first_head * stride_qh, r, r_ok, stride_qh,
                           cos_ptr, sin_ptr, tl.where(r_ok, n - 1, 0), qk_scale, HALF)

    k_ptr += b * stride_kb + kv_h * stride_kh
    v_ptr += b * stride_vb + kv_h * stride_vh
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # The query sits at the last slot, so the causal mask is only "below n".
    q_slots = tl.zeros([BLOCK_M], dtype=tl.int32) + n - 1

    # Whole key blocks are dealt out evenly, so only the split holding slot n - 1 needs a mask.
    per_split = tl.cdiv(tl.cdiv(n, BLOCK_N), NUM_SPLITS) * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(n, lo + per_split)
    full_end = tl.maximum(lo, lo + (hi - lo) // BLOCK_N * BLOCK_N)
    acc, m_i, l_i = _attend_range(acc, m_i, l_i, q1, q2, k_ptr, v_ptr, stride_ks, stride_vs, cos_ptr, sin_ptr,
                                  lo, full_end, hi, n, q_slots, BLOCK_N, HALF, HEAD_DIM, PRECISION)

    # Partials are laid out [B, H, NUM_SPLITS(, HEAD_DIM)], contiguous.
    head_split = (b * Hkv * GROUPS + first_head + r) * NUM_SPLITS + split
    tl.store(m_ptr + head_split, m_i, mask=r_ok)
    tl.store(l_ptr + head_split, l_i, mask=r_ok)
    d = tl.arange(0, HEAD_DIM)
    tl.store(acc_ptr + head_split[:, None] * HEAD_DIM + d[None, :], acc, mask=r_ok[:, None])


@triton.jit
def _decode_reduce_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, stride_ob, stride_oh, H, NUM_SPLITS,
                          HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0) // H
    h = tl.program_id(0) % H
    first = tl.program_id(0).to(tl.int64) * NUM_SPLITS
    # Two passes over the partials in tiles of BLOCK_S, so any split count fits in registers:
    # the common max first (finite: split 0 always holds slot 0), then the rescaled sums, in
    # which empty splits (max -inf) weigh 0.
    m_max = float("-inf")
    for s0 in range(0, NUM_SPLITS, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        m_max = tl.maximum(m_max, tl.max(tl.load(m_ptr + first + s, mask=s < NUM_SPLITS, other=float("-inf")), 0))
    d = tl.arange(0, HEAD_DIM)
    out = tl.zeros([HEAD_DIM], dtype=tl.float32)
    total = 0.0
    for s0 in range(0, NUM_SPLITS, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        s_ok = s < NUM_SPLITS
        w = tl.exp2(tl.load(m_ptr + first + s, mask=s_ok, other=float("-inf")) - m_max)
        total += tl.sum(tl.load(l_ptr + first + s, mask=s_ok, other=0.0) * w, 0)
        acc = tl.load(acc_ptr + (first + s)[:, None] * HEAD_DIM + d[None, :], mask=s_ok[:, None], other=0.0)
        out += tl.sum(acc * w[:, None], 0)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + d, (out / total).to(o_ptr.dtype.element_ty))


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages); small blocks keep the interpreter quick.

    Three stages of 16-bit K, V and the float32 rope rows take 88 KB of shared memory at head dim
    128; float32 K and V would need 232 KB, more than an H100 has, so they get two stages.
    """
    if INTERPRETING:
        return 16, 1, 1
    return 64, 4 if head_dim <= 64 else 8, 2 if dtype == torch.float32 else 3


def default_splits(batch: int, kv_heads: int, capacity: int, block_n: int, device: torch.device) -> int:
    """Splits for about two waves of phase-1 programs, at most one per key block of the capacity.

    The capacity ``S`` bounds every length without reading ``lengths`` back to the host; a row
    shorter than that leaves its last splits empty, which costs little.
    """
    blocks = triton.cdiv(capacity, block_n)
    if INTERPRETING or device.type != "cuda":
        return min(4, blocks)
    return max(1, min(blocks, triton.cdiv(2 * _sm_count(device), batch * kv_heads)))


def _check(q, k, v, lengths, cos, sin) -> None:
    if q.dim() != 4 or q.shape[2] != 1:
        raise ValueError(f"q must be [B, H, 1, D], got {tuple(q.shape)}")
    if k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"k and v must both be [B, Hkv, S, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    B, H, _, D = q.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k/v {tuple(k.shape)} do not match q {tuple(q.shape)} in batch or head dim")
    if H % k.shape[1]:
        raise ValueError(f"{H} query heads cannot share {k.shape[1]} key/value heads evenly")
    if D < 2 or D & (D - 1):
        raise ValueError(f"head dim must be a power of two, not {D}")
    if D not in (64, 128) and not INTERPRETING:
        raise ValueError(f"decode_attention supports head dims 64 and 128 on GPU, not {D}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one of fp32/fp16/bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("the last dimension of q, k and v must be contiguous")
    if lengths.shape != (B,) or lengths.dtype != torch.int32:
        raise ValueError(f"lengths must be int32 [{B}], got {lengths.dtype} {tuple(lengths.shape)}")
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != D // 2 or cos.dtype != torch.float32:
        raise ValueError(f"rope tables must be float32 [P, {D // 2}], got {cos.dtype} {tuple(cos.shape)}")
    if not (cos.is_contiguous() and sin.is_contiguous()):
        raise ValueError("rope tables must be contiguous")


def decode_attention(q, k, v, lengths, cos, sin, scale: float, *, num_splits: int | None = None) -> torch.Tensor:
    """Attention of each row's single query over its cache; ``num_splits`` overrides the split count."""
    _check(q, k, v, lengths, cos, sin)
    B, H, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    block_n, warps, stages = _config(D, q.dtype)
    splits = default_splits(B, Hkv, S, block_n, q.device) if num_splits is None else num_splits
    if splits < 1:
        raise ValueError(f"num_splits must be ≥ 1, got {splits}")
    groups = H // Hkv
    m = torch.empty(B, H, splits, dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m)
    acc = torch.empty(B, H, splits, D, dtype=torch.float32, device=q.device)
    _decode_split_kernel[(B * Hkv, splits)](
        q, k, v, lengths, cos, sin, m, l_part, acc, scale * LOG2E,
        q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        Hkv, splits, GROUPS=groups, HEAD_DIM=D,
        BLOCK_M=max(16, triton.next_power_of_2(groups)), BLOCK_N=block_n,
        # TF32 would cost fp32 callers about three digits; fp16/bf16 dots ignore the setting.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=warps, num_stages=stages,
    )
    out = torch.empty(B, 1, H, D, dtype=q.dtype, device=q.device)
    _decode_reduce_kernel[(B * H,)](
        m, l_part, acc, out, out.stride(0), out.stride(2), H, splits,
        HEAD_DIM=D, BLOCK_S=min(32, triton.next_power_of_2(splits)), num_warps=1 if INTERPRETING else 4,
    )
    return out.transpose(1, 2)
