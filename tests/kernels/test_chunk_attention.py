"""The chunk-attention kernel against its PyTorch reference (under the interpreter without CUDA)."""

import pytest
import torch
from kernel_cases import DEVICE, DTYPES, TOLERANCE, randn, relative_error, rope

from kernels.chunk_attention import chunk_attention, reference

# (batch, heads, kv heads, chunk, capacity, head dim, lengths per row)
CASES = {
    "empty cache, chunk only": (1, 2, 2, 20, 20, 64, [20]),
    "cache at capacity": (1, 4, 2, 8, 48, 64, [48]),
    "chunk of one": (2, 3, 1, 1, 33, 64, [1, 33]),
    "lengths off the block grid": (2, 9, 3, 17, 70, 64, [17, 53]),
    "head dim 128": (1, 4, 1, 19, 40, 128, [37]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_reference(case, dtype):
    B, H, Hkv, L, S, D, lengths = case
    q, k, v = randn(B, H, L, D, dtype=dtype), randn(B, Hkv, S, D, dtype=dtype), randn(B, Hkv, S, D, dtype=dtype)
    lengths = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    cos, sin = rope(S, D)
    out = chunk_attention(q, k, v, lengths, cos, sin, D ** -0.5)
    ref = reference(q, k, v, lengths, cos, sin, D ** -0.5)
    assert out.shape == q.shape and out.dtype == dtype
    assert not out.isnan().any(), "an output element was never written"
    assert relative_error(out, ref) < TOLERANCE[dtype]


def test_cache_may_be_a_strided_view_of_all_layers():
    # The engine keeps every layer's keys and values in one [layers, 2, B, Hkv, cap, D] tensor.
    kv = randn(3, 2, 2, 2, 40, 64)
    q = randn(2, 4, 6, 64)
    lengths = torch.tensor([6, 40], dtype=torch.int32, device=DEVICE)
    cos, sin = rope(40, 64)
    out = chunk_attention(q, kv[1, 0], kv[1, 1], lengths, cos, sin, 0.125)
    ref = reference(q, kv[1, 0], kv[1, 1], lengths, cos, sin, 0.125)
    assert relative_error(out, ref) < 1e-5


def test_moving_keys_to_new_slots_needs_no_rerotation():
    # RoPE scores depend on slot distances only, so keys rotated at positions 100.. (where they
    # were read) attend exactly as the same pre-RoPE keys rotated at slots 0.. after a move.
    from kernels.rope import rotate

    q, k, v = randn(1, 2, 3, 64), randn(1, 2, 8, 64), randn(1, 2, 8, 64)
    cos, sin = rope(128, 64)
    out = chunk_attention(q, k, v, torch.tensor([8], dtype=torch.int32, device=DEVICE), cos, sin, 0.125)
    old = torch.arange(100, 108, device=DEVICE)
    qr, kr = rotate(q, old[5:], cos, sin), rotate(k, old, cos, sin)
    allowed = torch.arange(8, device=DEVICE)[None, :] <= torch.arange(5, 8, device=DEVICE)[:, None]
    before = torch.nn.functional.scaled_dot_product_attention(qr, kr, v, attn_mask=allowed, scale=0.125)
    assert relative_error(out, before) < 1e-5


@pytest.mark.parametrize("bad, message", [
    ({"q": randn(1, 3, 4, 64), "k": randn(1, 2, 8, 64)}, "cannot share"),
    ({"k": randn(1, 2, 64, 8).transpose(2, 3)}, "contiguous"),
])
def test_rejects_bad_arguments(bad, message):
    args = {"q": randn(1, 2, 4, 64), "k": randn(1, 2, 8, 64), "v": randn(1, 2, 8, 64)}
    args.update(bad)
    if "v" not in bad and args["k"].shape[1] != 2:
        args["v"] = randn(*args["k"].shape)
    cos, sin = rope(8, 64)
    with pytest.raises(ValueError, match=message):
        chunk_attention(args["q"], args["k"], args["v"], torch.tensor([8], dtype=torch.int32, device=DEVICE),
                        cos, sin, 0.125)
