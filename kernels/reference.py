"""The PyTorch definitions of the kernels' ops, importable without Triton (which is installed on
Linux only): the torch engine runs them where there is no CUDA, and each kernel's tests compare
the Triton op against its definition here. One function per op, named after the op's file."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.rope import rotate


def chunk_attention(q, k, v, lengths, cos, sin, scale: float) -> torch.Tensor:
    """Chunk attention (and decode attention, L = 1): per row, rotate by slot, mask causally by
    slot, softmax in float32."""
    B, H, L, D = q.shape
    groups = H // k.shape[1]
    out = torch.empty(B, L, H, D, dtype=q.dtype, device=q.device)
    for b in range(B):
        n = int(lengths[b])
        q_slots = torch.arange(n - L, n, device=q.device)
        k_slots = torch.arange(n, device=q.device)
        qr = rotate(q[b], q_slots, cos, sin)
        kr = rotate(k[b, :, :n], k_slots, cos, sin).repeat_interleave(groups, dim=0)
        vr = v[b, :, :n].float().repeat_interleave(groups, dim=0)
        allowed = k_slots[None, :] <= q_slots[:, None]
        o = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=allowed, scale=scale)
        out[b] = o.transpose(0, 1).to(q.dtype)
    return out.transpose(1, 2)


def compaction_(kv: torch.Tensor, keep: torch.Tensor, counts: torch.Tensor) -> None:
    """Compaction: per row, gather the kept slots of every plane into the front slots."""
    for b in range(kv.shape[2]):
        n = int(counts[b])
        kv[:, :, b, :, :n] = kv[:, :, b].index_select(-2, keep[b, :n].long())
