"""A very long stream through the compressed cache: perplexity and memory at checkpoints.

Method: real texts that ship with this machine (``bench/texts.py``, one after another, repeated
until the stream is long enough) are tokenized with the bundled model and scored under SepLLM
(4, 64, 256, 800) exactly as a document is read (``engine.reading.scoring.score``). At each checkpoint
(every ``--tokens / 4`` tokens, and at the end) the script records the perplexity of the stretch
since the previous checkpoint, the reading speed so far, and the memory in use: on CUDA the peak
GPU memory allocated by PyTorch since the previous checkpoint, elsewhere the process's resident
set size. A flat memory column is the claim: the cache never grows with the stream. The
full run is 4M tokens on the GPU (``--tokens 4000000``); on a CPU a shorter run shows the same
shape. Prints one JSON object.

    python bench/long_stream.py [--backend torch] [--tokens 4000000] [--out bench/results/long_stream.json]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import emit
from bench.texts import long_text
from engine.backends.loading import load_model
from engine.policy import SepLLM
from engine.reading.scoring import score


def memory_mb(model) -> float:
    torch = sys.modules.get("torch")
    if model.backend == "torch" and torch is not None and torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return peak
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["gguf", "torch"], default="torch")
    parser.add_argument("--tokens", type=int, default=4_000_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = load_model(args.backend)
    tokens = model.tokenize(long_text(model, args.tokens))[: args.tokens]
    policy = SepLLM()
    marks = sorted({*(args.tokens * i // 4 for i in range(1, 4)), len(tokens)})
    checkpoints: list[dict] = []
    started = time.perf_counter()
    memory_mb(model)

    def progress(done: int, total: int) -> None:
        if checkpoints and checkpoints[-1]["tokens"] >= done:
            return
        if done >= marks[len(checkpoints)]:
            checkpoints.append({"tokens": done, "seconds": time.perf_counter() - started,
                                "memory_mb": round(memory_mb(model), 1)})

    scores = score(model, tokens, policy, progress=progress)
    previous = 0
    for mark in checkpoints:
        mark["perplexity_since_previous"] = round(scores.perplexity(previous, mark["tokens"] - 1), 3)
        mark["tokens_per_s"] = round(mark["tokens"] / mark["seconds"], 1)
        previous = mark["tokens"] - 1
    figures = {"backend": model.backend, "policy": policy.describe(), "tokens": len(tokens),
               "max_attended_keys": int(np.max(scores.attended)), "checkpoints": checkpoints}
    method = __doc__.split("Method: ")[1].split("\n\n")[0]
    emit("long_stream", method, model, figures, args.out)


if __name__ == "__main__":
    main()
