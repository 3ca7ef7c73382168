"""Build every kernel for an H100 (sm_90) without a GPU and print what the compiler reports.

Run as its own process (the tests run the kernels under the interpreter, which must be off
here). Each kernel is built with the block sizes its wrapper chooses on CUDA; for each build
this prints one JSON line with its shared memory and whether the PTX uses Hopper's wgmma.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import triton
from triton.backends.compiler import GPUTarget

from kernels import chunk_attention, compaction, decode_attention

HOPPER = GPUTarget("cuda", 90, 32)
TRITON_TYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def build(kernel, pointers: dict[str, str], constants: dict, warps: int, stages: int, label: str) -> dict:
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers[name]
        elif name == "qk_scale":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constants)
    compiled = triton.compile(source, target=HOPPER, options={"num_warps": warps, "num_stages": stages})
    registers, stack = resources(compiled.asm["cubin"])
    return {"kernel": label, "shared_bytes": compiled.metadata.shared, "wgmma": "wgmma" in compiled.asm["ptx"],
            "registers": registers, "stack_bytes": stack}


def resources(cubin: bytes) -> tuple[int, int]:
    """Registers per thread and stack bytes (spills) of a cubin, read by Triton's own cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True,
                                check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", report)
    return int(found.group(1)), int(found.group(2))


def attention_pointers(dtype: torch.dtype, extra: tuple[str, ...]) -> dict[str, str]:
    t = TRITON_TYPE[dtype]
    return {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "o_ptr": f"*{t}", "len_ptr": "*i32",
            "cos_ptr": "*fp32", "sin_ptr": "*fp32", **{name: "*fp32" for name in extra}}


def main() -> None:
    for dtype in (torch.bfloat16, torch.float16):
        for heads, groups, dim in ((9, 3, 64), (32, 4, 128)):
            block_m, block_n, warps, stages = chunk_attention._blocks(4096, dim)
            print(json.dumps(build(
                chunk_attention._chunk_attention_kernel, attention_pointers(dtype, ()),
                {"H": heads, "GROUPS": groups, "HEAD_DIM": dim, "BLOCK_M": block_m, "BLOCK_N": block_n,
                 "PRECISION": "tf32"}, warps, stages, f"chunk_attention {TRITON_TYPE[dtype]} d{dim}")))
            block_n, warps, stages = decode_attention._config(dim, dtype)
            print(json.dumps(build(
                decode_attention._decode_split_kernel, attention_pointers(dtype, ("m_ptr", "l_ptr", "acc_ptr")),
                {"GROUPS": groups, "HEAD_DIM": dim, "BLOCK_M": 16, "BLOCK_N": block_n, "PRECISION": "tf32"},
                warps, stages, f"decode_attention {TRITON_TYPE[dtype]} d{dim}")))
    print(json.dumps(build(
        decode_attention._decode_reduce_kernel, {"m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32", "o_ptr": "*bf16"},
        {"HEAD_DIM": 128, "BLOCK_S": 32}, 4, 1, "decode_attention reduce")))
    print(json.dumps(build(
        compaction._compact_kernel, {"kv_ptr": "*bf16", "keep_ptr": "*i64", "counts_ptr": "*i32"},
        {"BLOCK_S": 4096 // 128, "BLOCK_D": 128}, 4, 1, "compaction")))


if __name__ == "__main__":
    main()
