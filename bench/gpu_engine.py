"""The torch engine end to end on a GPU: ingest speed and MFU, decode bandwidth, parallel chunks.

Method: models of real shapes with random bfloat16 weights built on the device (timing does not
depend on the weights): Llama-3-8B (32 layers, 4096 wide, 32/8 heads, vocab 128256), the bundled
SmolLM2-135M (30 layers, 576 wide, 9/3 heads) and the answering model, Qwen2.5-Coder-1.5B
(Qwen2: 28 layers, 1536 wide, 12/2 heads of 128, vocab 151936; whether it reads fast enough on a
GPU to be the only reader is its ingest rate against the small one's). Token streams are random
ids with every 16th token marked a separator. Everything goes through the engine's own paths:
``reader.prefill`` over a ``SlotCache`` under a SepLLM policy (eviction and compaction
included), the conversation's ``decode_main_tail`` for decoding,
``engine.reading.parallel.prefill_rows`` for parallel chunks. Each figure is the median of
``--runs`` timed runs after one warm-up run (which compiles the Triton kernels), with
``torch.cuda.synchronize`` around each.
- Ingest MFU: (2 × non-embedding parameters per token + 4 · heads · head_dim · layers per attended
  (query, key) pair, counted from the cache lengths the run really had) / time, over the datasheet
  bf16 dense peak (989 TFLOP/s for an H100 SXM) and over an 8192³ bf16 matrix product measured in
  the same run.
- Decode: one token at a time after a cache of N slots, logits included; the bound is (every
  weight byte except the embedding table, plus the cache's K and V bytes) / the device-to-device
  copy bandwidth measured in the same run (bytes read + written).
- Parallel chunks: one document of random tokens cut into chunks, read as one batch of rows versus
  the same chunks read one after another.
``--small`` runs tiny shapes on the CPU to show the script works; its figures mean nothing.

    python bench/gpu_engine.py [--small] [--runs 3] [--out bench/results/gpu_engine_h100.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from bench.report import emit
from engine.backends.torch.model import TorchModel
from engine.policy import SepLLM
from engine.reading.parallel import prefill_rows
from engine.reading.reader import prefill
from engine.reading.stream import TokenStream

CUDA = torch.cuda.is_available()
H100_BF16_PEAK = 989e12

FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
SHAPES = {
    "llama3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                      "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0, "max_position_embeddings": 8192},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                         "num_key_value_heads": 3, "vocab_size": 49152, "rope_theta": 100000.0, "max_position_embeddings": 8192,
                         "tie_word_embeddings": True},
    "qwen2.5-1.5b": {"family": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "rope_theta": 1000000.0, "max_position_embeddings": 32768, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 4096},
}
SHAPES["tiny-qwen2"] = {**SHAPES["tiny"], "family": "qwen2"}


def build(shape: str) -> TorchModel:
    settings = dict(SHAPES[shape])
    config_class, model_class = FAMILIES[settings.pop("family", "llama")]
    config = config_class(**settings)
    dtype = torch.bfloat16 if CUDA else torch.float32
    torch.set_default_dtype(dtype)
    with torch.device("cuda" if CUDA else "cpu"):
        hf = model_class(config)
    torch.set_default_dtype(torch.float32)
    return TorchModel.from_module(hf, name=shape)


def random_stream(n: int, vocab: int, seed: int = 0) -> TokenStream:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, n).astype(np.int32)
    return TokenStream(tokens, np.arange(n) % 16 == 15, 0, [0])


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed(fn, runs: int) -> tuple[float, object]:
    fn()  # warm-up: Triton compiles here
    times, result = [], None
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def matmul_peak() -> float:
    if not CUDA:
        return float("nan")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    import triton.testing

    ms = triton.testing.do_bench(lambda: a @ b, return_mode="median")
    return 2 * 8192 ** 3 / (ms / 1e3)


def copy_bandwidth() -> float:
    if not CUDA:
        return float("nan")
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    import triton.testing

    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() / (ms / 1e3)


def non_embedding_params(model: TorchModel) -> int:
    hf = model.hf
    return sum(p.numel() for name, p in hf.named_parameters()
               if "embed_tokens" not in name and "lm_head" not in name)


def ingest(model: TorchModel, tokens: int, policy: SepLLM, chunk: int, runs: int, peak: float) -> dict:
    stream = random_stream(tokens, model.n_vocab)
    pairs = 0

    def run():
        nonlocal pairs
        cache = model.new_cache(policy.capacity)
        pairs, previous = 0, 0

        def count(end: int) -> None:
            nonlocal pairs, previous
            n = end - previous
            pairs += n * (cache.length - n) + n * (n + 1) // 2
            previous = end

        prefill(cache, stream, policy, chunk, after_chunk=count)

    seconds, _ = timed(run, runs)
    cfg = model.hf.config
    head_dim = model.shape.head_dim
    flops = 2 * non_embedding_params(model) * tokens + 4 * cfg.num_attention_heads * head_dim * cfg.num_hidden_layers * pairs
    return {"tokens": tokens, "policy": policy.describe(), "chunk": policy.max_chunk(chunk),
            "seconds": seconds, "tokens_per_s": tokens / seconds, "tflops": flops / seconds / 1e12,
            "mfu_vs_datasheet_peak": flops / seconds / H100_BF16_PEAK,
            "mfu_vs_measured_matmul": flops / seconds / peak}


def decode(model: TorchModel, cache_tokens: int, steps: int, runs: int, bandwidth: float) -> dict:
    cache = model.new_cache(cache_tokens + steps + 8)
    stream = random_stream(cache_tokens, model.n_vocab)
    cache.append(stream.tokens, np.arange(cache_tokens), stream.separators)
    token = np.array([1], dtype=np.int32)

    def run():
        cache.truncate(cache_tokens)
        for _ in range(steps):
            cache.decode_main_tail(token)

    seconds, _ = timed(run, runs)
    per_token = seconds / steps
    embedding = model.hf.model.embed_tokens.weight
    weight_bytes = sum(p.numel() * p.element_size() for p in model.hf.parameters())
    if not model.hf.config.tie_word_embeddings:
        weight_bytes -= embedding.numel() * embedding.element_size()
    shape = model.shape
    kv_bytes = shape.layers * 2 * shape.kv_heads * shape.head_dim * cache.kv.element_size() * (cache_tokens + steps // 2)
    bound = (weight_bytes + kv_bytes) / bandwidth
    return {"cache_tokens": cache_tokens, "steps": steps, "ms_per_token": per_token * 1e3,
            "tokens_per_s": 1 / per_token, "bytes_per_token": weight_bytes + kv_bytes,
            "bound_ms_per_token": bound * 1e3, "fraction_of_bandwidth_bound": bound / per_token}


def parallel(model: TorchModel, tokens: int, chunk_tokens: int, policy: SepLLM, chunk: int, runs: int) -> dict:
    stream = random_stream(tokens, model.n_vocab)
    rows = [np.arange(s, min(s + chunk_tokens, tokens)) for s in range(0, tokens, chunk_tokens)]
    together, _ = timed(lambda: prefill_rows(model, stream, policy, rows, chunk), runs)
    apart, _ = timed(lambda: [prefill_rows(model, stream, policy, [r], chunk) for r in rows], runs)
    return {"tokens": tokens, "chunk_tokens": chunk_tokens, "chunks": len(rows), "policy": policy.describe(),
            "batched_seconds": together, "sequential_seconds": apart, "speedup": apart / together,
            "batched_tokens_per_s": tokens / together}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes on the CPU (checks the script only)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["ingest", "decode", "parallel"], action="append")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not CUDA and not args.small:
        parser.error("without CUDA only --small runs")
    parts = set(args.only or ["ingest", "decode", "parallel"])
    torch.manual_seed(0)
    published = SepLLM(initial=4, separators=64, window=256, capacity=800)
    wide = SepLLM(initial=4, separators=64, window=256, capacity=4096)
    figures: dict = {}
    if args.small:
        tiny = build("tiny")
        figures["ingest"] = [ingest(tiny, 2000, published, 512, args.runs, float("nan")),
                             ingest(build("tiny-qwen2"), 2000, published, 512, args.runs, float("nan"))]
        figures["decode"] = [decode(tiny, 500, 8, args.runs, float("nan"))]
        figures["parallel"] = parallel(tiny, 4000, 1000, published, 512, args.runs)
    else:
        peak, bandwidth = matmul_peak(), copy_bandwidth()
        figures["measured"] = {"bf16_matmul_8192_tflops": peak / 1e12, "copy_bandwidth_gb_s": bandwidth / 1e9}
        small = build("smollm2-135m")
        if "ingest" in parts:
            figures["ingest_smollm2_135m"] = [ingest(small, 65536, published, 512, args.runs, peak),
                                              ingest(small, 65536, wide, 2048, args.runs, peak)]
        if "parallel" in parts:
            figures["parallel_smollm2_135m"] = parallel(small, 131072, 4096, published, 512, args.runs)
        if "decode" in parts:
            figures["decode_smollm2_135m"] = [decode(small, 800, 64, args.runs, bandwidth)]
        del small
        answering = build("qwen2.5-1.5b")
        if "ingest" in parts:
            figures["ingest_qwen2_5_1_5b"] = [ingest(answering, 65536, published, 512, args.runs, peak),
                                              ingest(answering, 65536, wide, 2048, args.runs, peak)]
        if "decode" in parts:
            figures["decode_qwen2_5_1_5b"] = [decode(answering, 800, 64, args.runs, bandwidth)]
        del answering
        big = build("llama3-8b")
        if "ingest" in parts:
            figures["ingest_llama3_8b"] = [ingest(big, 16384, published, 512, args.runs, peak),
                                           ingest(big, 16384, wide, 2048, args.runs, peak)]
        if "decode" in parts:
            figures["decode_llama3_8b"] = [decode(big, n, 32, args.runs, bandwidth) for n in (800, 8192)]
        if "parallel" in parts:
            figures["parallel_llama3_8b"] = parallel(big, 32768, 4096, published, 512, args.runs)
    method = __doc__.split("Method: ")[1].split("\n\n")[0]
    emit("gpu_engine", method, SimpleNamespace(name="random-weight models of real shapes"), figures, args.out)


if __name__ == "__main__":
    main()
