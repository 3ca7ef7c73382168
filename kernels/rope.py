"""Rotary position embedding as Comma's kernels see it: the reference rotation.

Keys are cached before RoPE; every kernel rotates a query or key by its slot position inside
the compacted cache when it loads it. The tables hold, for slot ``p`` and frequency ``i``,
``cos(p * inv_freq[i]) * scale`` and the same for sin, shape ``[positions, head_dim // 2]``,
float32. The rotation is the half-split one transformers uses (``rotate_half``): a vector
``[x1, x2]`` becomes ``[x1 cos - x2 sin, x2 cos + x1 sin]``.
"""

from __future__ import annotations

import torch


def rotate(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Reference rotation of ``x[..., n, head_dim]`` by ``positions[n]`` (or ``[..., n]``), in float32."""
    half = x.shape[-1] // 2
    c, s = cos[positions], sin[positions]
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
