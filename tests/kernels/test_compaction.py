"""The in-place compaction kernel against its PyTorch reference (under the interpreter without CUDA)."""

import pytest
import torch
from kernel_cases import DEVICE, randn

from kernels.compaction import compact_, reference_

LAYERS, HKV, CAP, D = 2, 2, 40, 64


def keep_table(rows: list[list[int]], kmax: int, dtype=torch.int32) -> tuple[torch.Tensor, torch.Tensor]:
    """``keep [B, kmax]`` padded with ``CAP`` (a slot of the next plane: reading it would show)."""
    keep = torch.full((len(rows), kmax), CAP, dtype=dtype)
    for b, slots in enumerate(rows):
        keep[b, :len(slots)] = torch.tensor(slots, dtype=dtype)
    counts = torch.tensor([len(s) for s in rows], dtype=torch.int32)
    return keep.to(DEVICE), counts.to(DEVICE)


def random_subset(count: int) -> list[int]:
    return sorted(torch.randperm(CAP)[:count].tolist())


CASES = {
    "keep everything": [list(range(CAP))],
    "keep only the first slot": [[0], [0]],
    "gaps and runs": [[1, 2, 3, 4, 5, 6, 7, 20, 21, 22, 23, 24, 25, 30, 38, 39]],
    "shift by one across blocks": [list(range(1, CAP))],
    "rows with different counts": [random_subset(33), [0, 39], [], list(range(0, CAP, 3))],
}


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("rows", CASES.values(), ids=CASES.keys())
def test_matches_reference(rows, index_dtype):
    kv = randn(LAYERS, 2, len(rows), HKV, CAP, D)
    keep, counts = keep_table(rows, kmax=min(CAP, max(map(len, rows)) + 3), dtype=index_dtype)
    out, ref = kv.clone(), kv.clone()
    compact_(out, keep, counts)
    reference_(ref, keep, counts)
    for b, slots in enumerate(rows):
        wanted = kv[:, :, b][..., slots, :]
        assert torch.equal(ref[:, :, b, :, :len(slots)], wanted), "the reference itself is wrong"
        assert torch.equal(out[:, :, b, :, :len(slots)], wanted)


def test_head_dim_off_the_power_of_two_grid():
    kv = randn(1, 2, 2, HKV, CAP, 24, dtype=torch.float16)
    keep, counts = keep_table([random_subset(17), random_subset(5)], kmax=20, dtype=torch.int64)
    out, ref = kv.clone(), kv.clone()
    compact_(out, keep, counts)
    reference_(ref, keep, counts)
    for b in range(2):
        n = int(counts[b])
        assert torch.equal(out[:, :, b, :, :n], ref[:, :, b, :, :n])


@pytest.mark.parametrize("bad, message", [
    ({"kv": randn(2, 1, HKV, CAP, D)}, r"kv must be \[n_layers, 2, B, Hkv, Cap, D\]"),
    ({"kv": randn(LAYERS, 2, 1, HKV, D, CAP).transpose(-1, -2)}, "kv must be contiguous"),
    ({"keep": torch.zeros(1, 4, device=DEVICE)}, "keep must be int32/int64"),
    ({"keep": torch.zeros(1, CAP + 1, dtype=torch.int32, device=DEVICE)}, "only 40 slots"),
    ({"counts": torch.ones(1, dtype=torch.int64, device=DEVICE)}, "counts must be int32"),
])
def test_argument_errors(bad, message):
    args = {"kv": randn(LAYERS, 2, 1, HKV, CAP, D), "keep": torch.zeros(1, 4, dtype=torch.int32, device=DEVICE),
            "counts": torch.ones(1, dtype=torch.int32, device=DEVICE)} | bad
    with pytest.raises(ValueError, match=message):
        compact_(**args)
