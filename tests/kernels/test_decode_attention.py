"""The decode-attention kernel against chunk attention's reference with one query (interpreter without CUDA)."""

import math

import pytest
import torch
from kernel_cases import DEVICE, DTYPES, TOLERANCE, randn, relative_error, rope

from kernels.chunk_attention import reference
from kernels.decode_attention import decode_attention

# (batch, heads, kv heads, capacity, head dim, lengths per row, num_splits or None for the default)
CASES = {
    "only the query's own key": (1, 2, 2, 16, 64, [1], None),
    "cache at capacity": (1, 4, 2, 48, 64, [48], None),
    "rows of different lengths off the block grid": (3, 4, 1, 70, 64, [17, 70, 1], None),
    "SmolLM2 group of 3": (2, 9, 3, 40, 64, [40, 23], None),
    "group of 1": (1, 3, 3, 33, 64, [33], None),
    "more splits than key blocks": (2, 4, 2, 20, 64, [20, 5], 8),
    "one split walks every block": (1, 4, 1, 64, 64, [61], 1),
    "more splits than one reduce tile": (1, 4, 2, 600, 64, [571], 40),
    "head dim 128": (1, 8, 2, 40, 128, [37], None),
}


@pytest.fixture
def poisoned_buffers(monkeypatch):
    """Every float buffer the op allocates starts as NaN, so an element left unwritten shows."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(math.nan) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))


def run_case(B, H, Hkv, S, D, lengths, num_splits, dtype):
    q, k, v = randn(B, H, 1, D, dtype=dtype), randn(B, Hkv, S, D, dtype=dtype), randn(B, Hkv, S, D, dtype=dtype)
    lengths = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    cos, sin = rope(S, D)
    out = decode_attention(q, k, v, lengths, cos, sin, D ** -0.5, num_splits=num_splits)
    ref = reference(q, k, v, lengths, cos, sin, D ** -0.5)
    assert out.shape == q.shape and out.dtype == dtype
    assert out.transpose(1, 2).is_contiguous(), "the result should be a view of a [B, 1, H, D] tensor"
    assert not out.isnan().any(), "an output element was never written"
    assert relative_error(out, ref) < TOLERANCE[dtype]


@pytest.mark.usefixtures("poisoned_buffers")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_reference(case, dtype):
    run_case(*case, dtype)


@pytest.mark.skipif(DEVICE == "cuda", reason="other head dims are interpreter-only; the GPU takes 64 and 128")
@pytest.mark.parametrize("head_dim", [16, 32])
def test_any_power_of_two_head_dim_under_the_interpreter(head_dim):
    run_case(2, 6, 2, 30, head_dim, [30, 9], None, torch.float32)


def test_cache_may_be_a_strided_view_of_all_layers():
    # The engine keeps every layer's keys and values in one [layers, 2, B, Hkv, cap, D] tensor.
    kv = randn(3, 2, 2, 2, 40, 64)
    q = randn(2, 6, 1, 64)
    lengths = torch.tensor([7, 40], dtype=torch.int32, device=DEVICE)
    cos, sin = rope(40, 64)
    out = decode_attention(q, kv[1, 0], kv[1, 1], lengths, cos, sin, 0.125)
    ref = reference(q, kv[1, 0], kv[1, 1], lengths, cos, sin, 0.125)
    assert relative_error(out, ref) < 1e-5


def test_query_may_be_a_strided_view():
    # A query sliced out of a fused QKV projection has head and batch strides of its own.
    qkv = randn(2, 1, 3, 4, 64)
    q = qkv[:, :, 0].transpose(1, 2)
    k, v = randn(2, 2, 24, 64), randn(2, 2, 24, 64)
    lengths = torch.tensor([24, 11], dtype=torch.int32, device=DEVICE)
    cos, sin = rope(24, 64)
    out = decode_attention(q, k, v, lengths, cos, sin, 0.125)
    assert relative_error(out, reference(q, k, v, lengths, cos, sin, 0.125)) < 1e-5


@pytest.mark.parametrize("bad, message", [
    ({"q": randn(1, 3, 1, 64), "k": randn(1, 2, 8, 64), "v": randn(1, 2, 8, 64)}, "cannot share"),
    ({"q": randn(1, 4, 2, 64)}, r"q must be \[B, H, 1, D\]"),
    ({"k": randn(2, 8, 64)}, r"k and v must both be \[B, Hkv, S, D\]"),
    ({"k": randn(1, 2, 64, 8).transpose(2, 3)}, "last dimension of q, k and v must be contiguous"),
    ({"q": randn(1, 4, 1, 48), "k": randn(1, 2, 8, 48), "v": randn(1, 2, 8, 48)}, "power of two"),
    ({"q": randn(1, 4, 1, 64, dtype=torch.float16)}, "must share one of"),
    ({"lengths": torch.tensor([8], device=DEVICE)}, "lengths must be int32"),
    ({"cos": torch.ones(8, 64, device=DEVICE)}, "rope tables must be float32"),
    ({"num_splits": 0}, "num_splits must be"),
])
def test_argument_errors(bad, message):
    cos, sin = rope(8, 64)
    args = {"q": randn(1, 4, 1, 64), "k": randn(1, 2, 8, 64), "v": randn(1, 2, 8, 64),
            "lengths": torch.tensor([8], dtype=torch.int32, device=DEVICE), "cos": cos, "sin": sin,
            "scale": 0.125} | bad
    with pytest.raises(ValueError, match=message):
        decode_attention(**args)
