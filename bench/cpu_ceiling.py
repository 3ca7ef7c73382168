"""The CPU's ceiling for reading, per weight type, and Comma's reading speed as a fraction of it.

Method, all in one process, one model at a time, 2 threads on this machine's CPU:
- weights: the bundled model as shipped (Q4_1), its F16 copy as Comma makes it on first use
  (``engine.backends.gguf.fast_weights``; the time that takes is reported), and a Q8_0 requantisation
  made here only for comparison.
- ceiling: llama.cpp's own prefill in SepLLM's steady state: ``--cached`` (324) document tokens
  in the cache, then ``--chunk`` (476) more decoded with no logits, then removed again, ``--runs``
  times (median); also ``--chunk`` tokens into an empty cache. Flash attention on and off.
- decode: 64 answer tokens one by one after 800 tokens of context (median of ``--runs``).
- perplexity: GPL-3 tokens 1,000–4,000 (as in README), policies full and sepllm, flash attention on.
- reading: Comma's real read path (``engine.reading.reader.read``, sepllm, section notes on and off) over
  a real text of ``--long`` tokens (bench/texts.py), ``--readings`` times per weight type, notes
  off and on in turn (off first, then on first, and so on); tokens/s of the whole read, and as
  a fraction of that weight type's ceiling (flash on) measured right before and right after that
  reading (their mean), so both come from the same minutes; the medians over the readings, and
  each reading.
``--weights F16`` measures only the weight types whose label holds that text.
Prints one JSON object (and writes it to --out).

    python bench/cpu_ceiling.py [--runs 7] [--long 40000] [--readings 3] [--weights F16]
                                [--out bench/results/cpu_ceiling_cpu.json]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from bench.report import emit  # noqa: E402
from bench.texts import gpl3, long_text  # noqa: E402
from engine.backends.gguf import fast_weights  # noqa: E402
from engine.backends.gguf.model import GGUFModel, llama  # noqa: E402
from engine.backends.gguf.probe import STEADY_CACHED, STEADY_CHUNK, decode_rate, prefill_rate  # noqa: E402
from engine.documents.document import read_document  # noqa: E402
from engine.models.files import bundled_model_path  # noqa: E402
from engine.policy import make_policy  # noqa: E402
from engine.reading.reader import read  # noqa: E402
from engine.reading.scoring import score  # noqa: E402


def reading_rate(model: GGUFModel, path: Path, notes: bool) -> dict:
    document = read_document(path)
    started = time.perf_counter()
    result = read(model, document, make_policy("sepllm"), notes=notes)
    seconds = time.perf_counter() - started
    tokens = result.memory.header["document_tokens"] + result.memory.header["prompt_tokens"]
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "notes": len(result.notes)}


def requantize(source: Path, target: Path, ftype: int) -> None:
    params = llama.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize = ftype, True
    if llama.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"could not requantise to {target}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--cached", type=int, default=STEADY_CACHED)
    parser.add_argument("--chunk", type=int, default=STEADY_CHUNK)
    parser.add_argument("--long", type=int, default=40_000)
    parser.add_argument("--readings", type=int, default=3)
    parser.add_argument("--weights", default="", help="only the weight types whose label holds this text")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    source = bundled_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        f16_path, _ = fast_weights.fast_model_path(source, folder)
        conversion_s = time.perf_counter() - started
        q8_path = folder / "q8_0.gguf"
        requantize(source, q8_path, llama.LLAMA_FTYPE_MOSTLY_Q8_0)

        shipped = GGUFModel(source)
        gpl = shipped.tokenize(gpl3())
        text_path = folder / "long.txt"
        text_path.write_text(long_text(shipped, args.long))
        del shipped

        weights = {"Q4_1 (shipped)": source, "F16 (Comma's copy)": f16_path, "Q8_0 (for comparison)": q8_path}
        rows = {}
        for label, path in weights.items():
            if args.weights not in label:
                continue
            model = GGUFModel(path)
            row = {"weight_type": model.weight_type, "file_mb": round(path.stat().st_size / 1e6, 1)}
            for flash in (False, True):
                key = "flash" if flash else "no_flash"
                row[f"prefill_{args.chunk}_after_{args.cached}_{key}"] = round(
                    prefill_rate(model, gpl, args.cached, args.chunk, args.runs, flash_attn=flash), 1)
                row[f"prefill_{args.chunk}_empty_{key}"] = round(
                    prefill_rate(model, gpl, 0, args.chunk, args.runs, flash_attn=flash), 1)
            row["decode_64_after_800"] = round(decode_rate(model, gpl, runs=max(3, args.runs // 2)), 1)
            window = gpl[:4001]
            row["perplexity_gpl3_1000_4000"] = {
                name: round(score(model, window, make_policy(name)).perplexity(1000), 3)
                for name in ("full", "sepllm")}
            readings: dict[bool, list[dict]] = {False: [], True: []}
            for turn in range(args.readings):
                for notes in ((False, True) if turn % 2 == 0 else (True, False)):
                    # The ceiling is taken again right before and after each reading, so that the
                    # fraction compares figures from the same minutes of a shared machine.
                    before = prefill_rate(model, gpl, args.cached, args.chunk, args.runs)
                    reading = reading_rate(model, text_path, notes)
                    after = prefill_rate(model, gpl, args.cached, args.chunk, args.runs)
                    reading["ceiling_tokens_per_s"] = round((before + after) / 2, 1)
                    reading["fraction_of_ceiling"] = round(reading["tokens_per_s"] / reading["ceiling_tokens_per_s"], 3)
                    readings[notes].append(reading)
            for notes, runs in readings.items():
                row["reading_notes_on" if notes else "reading_notes_off"] = {
                    "tokens": runs[0]["tokens"], "notes": runs[0]["notes"],
                    "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
                    "ceiling_tokens_per_s": statistics.median(r["ceiling_tokens_per_s"] for r in runs),
                    "fraction_of_ceiling": statistics.median(r["fraction_of_ceiling"] for r in runs),
                    "readings": runs}
            rows[label] = row
            print(label, row, file=sys.stderr)
            del model

    figures = {
        "first_start_conversion_s": round(conversion_s, 2),
        "weights": rows,
        "targets": {"reading_notes_on_tokens_per_s": ">= 500", "fraction_of_ceiling": ">= 0.9",
                    "perplexity_change": "within 0.5%", "first_start_conversion_s": "< 30"},
    }
    if "Q4_1 (shipped)" in rows and "F16 (Comma's copy)" in rows:
        shipped, copy = (rows[k]["perplexity_gpl3_1000_4000"] for k in ("Q4_1 (shipped)", "F16 (Comma's copy)"))
        figures["copy_perplexity_change"] = {name: round(copy[name] / shipped[name] - 1, 4)
                                             for name in ("full", "sepllm")}
    emit("cpu_ceiling", __doc__, SimpleNamespace(name=source.stem), figures, args.out)


if __name__ == "__main__":
    main()
