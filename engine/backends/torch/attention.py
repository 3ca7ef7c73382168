"""How Comma's attention plugs into transformers: the supported way, no copied model files.

Three hooks, all public transformers extension points or plain module composition:

* an attention function registered in ``AttentionInterface`` under ``"comma"``: it receives the
  layer's queries and the full slot buffers the cache's ``update`` returned, and runs the chunk
  or decode kernel (CUDA) or their PyTorch reference (CPU), rotating by slot on the fly;
* a mask function registered in ``AttentionMaskInterface`` that builds no mask, because the
  kernels mask causally by slot themselves (a dense mask for a 4M-token stream would be waste);
* the model's rotary module swapped for one that rotates nothing, so keys reach the cache
  before RoPE. The original module is kept to build the slot tables (it knows every RoPE
  scaling variant transformers supports).

The forward pass gets the cache's per-row lengths and tables through the ``comma_slots``
keyword, which transformers passes down to every attention call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from engine.backends.torch.device import ops_for
from kernels.rope import rotate

NAME = "comma"


@dataclass
class Slots:
    """What the attention kernels need besides q, k, v: valid slots per row and RoPE tables."""

    lengths: torch.Tensor  # int32 [B], including the tokens of this forward pass
    cos: torch.Tensor
    sin: torch.Tensor
    # When given, ``[B, capacity]`` float32: every decoded token's attention weight on each slot
    # is added to it, summed over layers and heads (which passages an answer drew on).
    paid: torch.Tensor | None = None


def attention_paid(q, k, slots: Slots, scale: float) -> torch.Tensor:
    """One query per row (a decode step): its softmax weights over each row's slots, summed over
    heads, ``[B, capacity]`` (zero past a row's length). The kernels never form these weights,
    so they are computed again here, in float32."""
    B, H = q.shape[:2]
    groups = H // k.shape[1]
    out = torch.zeros(B, k.shape[2], dtype=torch.float32, device=q.device)
    for b in range(B):
        n = int(slots.lengths[b])
        positions = torch.arange(n, device=q.device)
        qr = rotate(q[b, :, -1:], positions[-1:], slots.cos, slots.sin)
        kr = rotate(k[b, :, :n], positions, slots.cos, slots.sin).repeat_interleave(groups, dim=0)
        out[b, :n] = torch.softmax((qr @ kr.transpose(-1, -2))[:, 0] * scale, dim=-1).sum(dim=0)
    return out


def _attend(q, k, v, slots: Slots, scale: float) -> torch.Tensor:
    ops = ops_for(q.device.type)
    op = ops.decode_attention if q.shape[2] == 1 else ops.chunk_attention
    return op(q, k, v, slots.lengths, slots.cos, slots.sin, scale)


def comma_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                    comma_slots: Slots | None = None, **kwargs):
    if comma_slots is None:
        raise RuntimeError("the 'comma' attention runs only inside a Comma cache's forward pass")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = _attend(query, key, value, comma_slots, scale)
    if comma_slots.paid is not None and query.shape[2] == 1:
        comma_slots.paid += attention_paid(query, key, comma_slots, scale)
    # transformers wants [B, L, H, D]; the kernels already write that layout.
    return out.transpose(1, 2), None


def no_mask(*args, **kwargs):
    return None


class PreRoPE(nn.Module):
    """Stands in for a model's rotary module: cos 1 and sin 0 leave queries and keys unrotated."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*position_ids.shape, self.head_dim)
        return (torch.ones(shape, dtype=x.dtype, device=x.device),
                torch.zeros(shape, dtype=x.dtype, device=x.device))


AttentionInterface.register(NAME, comma_attention)
AttentionMaskInterface.register(NAME, no_mask)
