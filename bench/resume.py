"""Resume: how soon a saved document answers in a fresh process, against reading it again.

Method: ~60K tokens of real text (bench/texts.py) are read once with ``main.py ingest --json
--no-notes`` into a temporary library (the ingest time is that process's own ``seconds``).
Then ``main.py ask`` runs ``--runs`` times, each a fresh process: time to first answer byte is
measured from launching the process to the first byte of streamed answer on stdout (Python
start, imports, model and memory load, prompt, first token all included). The memory file's
size is compared with the full KV cache the same document would need (the memory's bytes per
kept token times the document's tokens). Prints one JSON object.

    python bench/resume.py [--tokens 60000] [--runs 5] [--out bench/results/resume_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import emit  # noqa: E402
from bench.texts import long_text  # noqa: E402
from engine.backends.gguf.model import GGUFModel  # noqa: E402

QUESTION = "What is this document about?"


def first_byte_seconds(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    proc.stdout.read(1)
    elapsed = time.perf_counter() - started
    proc.stdout.read()
    if proc.wait() != 0:
        raise RuntimeError(f"{cmd} failed")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=60_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = GGUFModel()
    with tempfile.TemporaryDirectory() as home:
        doc = Path(home) / "document.txt"
        doc.write_text(long_text(model, args.tokens))
        env = {**os.environ, "COMMA_HOME": home}
        main_py = str(ROOT / "main.py")
        ingest = json.loads(subprocess.run([sys.executable, main_py, "ingest", str(doc), "--json", "--no-notes"],
                                           capture_output=True, text=True, env=env, check=True, cwd=ROOT).stdout)
        ask = [sys.executable, main_py, "ask", ingest["doc_id"], QUESTION]
        ttfb = [first_byte_seconds(ask, env) for _ in range(args.runs)]
        in_process = json.loads(subprocess.run(ask + ["--json"], capture_output=True, text=True, env=env,
                                               check=True, cwd=ROOT).stdout)
    header_bytes_per_token = ingest["memory_bytes"] / ingest["kept_tokens"]
    full_kv = header_bytes_per_token * ingest["tokens"]
    median = statistics.median(ttfb)
    figures = {
        "document_tokens": ingest["tokens"],
        "ingest_seconds": ingest["seconds"],
        "fresh_process_first_byte_s": [round(t, 3) for t in ttfb],
        "median_first_byte_s": round(median, 3),
        "in_process_ttft_s": in_process["ttft_s"],
        "speedup_over_reingest": round(ingest["seconds"] / median, 1),
        "memory_bytes": ingest["memory_bytes"],
        "full_kv_bytes_estimate": int(full_kv),
        "memory_share_of_full_kv": round(ingest["memory_bytes"] / full_kv, 4),
        "targets": {"speedup": ">= 100", "first_byte_s": "< 2", "memory_share": "< 0.05"},
        "answer": in_process["answer"],
    }
    emit("resume", __doc__, model, figures, args.out)


if __name__ == "__main__":
    main()
