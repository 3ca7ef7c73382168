"""Ingest speed: SepLLM against a full-context prefill, and SepLLM's cost as documents grow.

Method:
- ratio: the same ~8K-token real text (GPL-3) is read through the real ingest path
  (``engine.reading.reader.read``: tokenize, chunked prefill under the policy, snapshot; notes off so
  both policies do the same work) with ``full`` and with ``sepllm``, alternating, ``--runs``
  times each in one process; tokens/s are medians, the ratio is of the medians.
- flat: each size (default 8K and 200K tokens of real text, see bench/texts.py) is read with
  ``sepllm`` in a fresh child process that reports tokens/s and its peak resident memory.
- weights: those Comma reads with, the bundled model's faster F16 copy (engine.backends.gguf.fast_weights),
  made in a temporary folder at the start.
Prints one JSON object (and writes it to --out).

    python bench/ingest_speed.py [--runs 3] [--long 200000] [--out bench/results/ingest_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import emit  # noqa: E402
from bench.texts import gpl3, long_text  # noqa: E402
from engine.backends.gguf.model import GGUFModel  # noqa: E402
from engine.backends.loading import load_model  # noqa: E402
from engine.documents.document import read_document  # noqa: E402
from engine.policy import make_policy  # noqa: E402
from engine.reading.reader import read  # noqa: E402


def read_text(model, text: str, policy_name: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doc.txt"
        path.write_text(text)
        document = read_document(path)
        started = time.perf_counter()
        result = read(model, document, make_policy(policy_name), notes=False)
        seconds = time.perf_counter() - started
    tokens = result.memory.header["document_tokens"] + result.memory.header["prompt_tokens"]
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "kept_tokens": result.memory.kept_tokens}


def child(tokens: int, model_file: str) -> None:
    model = GGUFModel(model_file)
    text = gpl3() if tokens <= 8000 else long_text(model, tokens)
    row = read_text(model, text, "sepllm")
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--long", type=int, default=200_000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-file", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.model_file)

    models = tempfile.TemporaryDirectory()
    model = load_model("gguf", None, models_folder=Path(models.name))
    text = gpl3()
    runs = {"full": [], "sepllm": []}
    for _ in range(args.runs):
        for name in runs:
            runs[name].append(read_text(model, text, name))
            print(name, runs[name][-1], file=sys.stderr)
    median = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}

    sizes = {}
    for tokens in (8000, args.long):
        out = subprocess.run([sys.executable, __file__, "--child", str(tokens),
                              "--model-file", str(model.path)], capture_output=True, text=True,
                             check=True).stdout
        sizes[str(tokens)] = json.loads(out.strip().splitlines()[-1])
        print(tokens, sizes[str(tokens)], file=sys.stderr)
    short, long = sizes["8000"], sizes[str(args.long)]
    figures = {
        "ratio": {
            "document": "GPL-3", "tokens": runs["full"][0]["tokens"],
            "full_tokens_per_s": [round(r["tokens_per_s"], 1) for r in runs["full"]],
            "sepllm_tokens_per_s": [round(r["tokens_per_s"], 1) for r in runs["sepllm"]],
            "median_full": round(median["full"], 1), "median_sepllm": round(median["sepllm"], 1),
            "sepllm_over_full": round(median["sepllm"] / median["full"], 3), "target": 1.8,
        },
        "flat": {
            "sizes": sizes,
            "long_over_short_tokens_per_s": round(long["tokens_per_s"] / short["tokens_per_s"], 3),
            "long_over_short_peak_rss": round(long["peak_rss_mb"] / short["peak_rss_mb"], 3),
            "targets": {"tokens_per_s": ">= 0.9", "peak_rss": "<= 1.1"},
        },
    }
    emit("ingest_speed", __doc__, model, figures, args.out)


if __name__ == "__main__":
    main()
