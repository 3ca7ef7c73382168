"""Section notes two ways, on real texts: the sentence Comma takes from each passage, and the
sentence the bundled model writes about it (how notes were made before they came from the text).

Method, one process, 2 threads: each text of bench/texts.py (none written by us), its first
``--tokens`` tokens, cut into the passages a read takes notes on (engine.reading.section_notes,
1,536 tokens each). For each passage:
- extracted: ``engine.reading.section_notes.key_sentence`` (the passage's sentence nearest its tf-idf
  centroid, idf over the text's passages);
- written: the bundled model (its F16 copy, as Comma reads with it) given the passage alone
  (reading prompt, passage, then the question "In one sentence, what is the passage just above
  about?"),
  greedy, up to 48 tokens. This is kinder to the model than reading was: it then wrote from its
  separator memory, where the passage had been compressed.
Figures per way: seconds per note (median), words per note, and two measures of what a note
holds, with content words as the full-text search counts them (engine.recall.question_words):
- grounded: the share of the note's content words found in its passage (a note that says what
  the passage does not scores low); words that only frame the note ("passage", "discusses",
  "describes", "sentence", "text") are not counted;
- key words: the share of the passage's 10 highest-tf-idf words that the note contains.
Prints one JSON object (and writes it to --out), with every note for reading.

    python bench/notes.py [--tokens 12000] [--out bench/results/notes_cpu.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import emit  # noqa: E402
from bench.texts import TEXTS  # noqa: E402
from engine.backends.gguf import fast_weights  # noqa: E402
from engine.backends.gguf.model import GGUFModel  # noqa: E402
from engine.generate import Sampling, generate_text  # noqa: E402
from engine.models.files import bundled_model_path  # noqa: E402
from engine.prompts import document_prefix, question_suffix  # noqa: E402
from engine.protocols import Logits  # noqa: E402
from engine.reading.section_notes import inverse_document_frequency, key_sentence, passage_bounds  # noqa: E402
from engine.recall.question_words import content_words  # noqa: E402

NOTE_REQUEST = "In one sentence, what is the passage just above about?"
FRAME_WORDS = {"passage", "discusses", "describes", "sentence", "text", "document"}


def written_note(model: GGUFModel, passage: np.ndarray) -> str:
    prefix = model.tokenize(document_prefix(model), special=True, add_bos=True)
    request = model.tokenize(question_suffix(model, [], NOTE_REQUEST), special=True)
    tokens = np.concatenate([prefix, passage, request]).astype(np.int32)
    with model.new_cache(len(tokens) + 64) as cache:
        cache.append(tokens[:-1], np.arange(len(tokens) - 1), np.zeros(len(tokens) - 1, bool), Logits.NONE)
        logits = cache.decode_main_tail(tokens[-1:])
        return "".join(generate_text(model, logits, lambda t: cache.decode_main_tail(np.array([t], np.int32)),
                                     Sampling(max_tokens=48))).strip()


def measures(note: str, passage: str, idf: dict[str, float]) -> tuple[float, float]:
    words = [w for w in content_words(note) if w not in FRAME_WORDS]
    there = set(content_words(passage))
    grounded = sum(w in there for w in words) / len(words) if words else 0.0
    counts: dict[str, float] = {}
    for w in content_words(passage):
        counts[w] = counts.get(w, 0.0) + idf.get(w, 0.0)
    key = sorted(counts, key=lambda w: -counts[w])[:10]
    held = set(content_words(note))
    return grounded, sum(w in held for w in key) / len(key)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=12_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path, _ = fast_weights.fast_model_path(bundled_model_path(), Path(tmp))
        model = GGUFModel(path)
        ways: dict[str, dict[str, list]] = {w: {"seconds": [], "words": [], "grounded": [], "key_words": []}
                                            for w in ("extracted", "written")}
        notes = []
        for name, make in TEXTS.items():
            tokens = model.tokenize(make())[:args.tokens]
            bounds = passage_bounds(0, len(tokens))
            texts = [model.detokenize(tokens[s:e]).decode("utf-8", "replace") for s, e in bounds]
            started = time.perf_counter()
            idf = inverse_document_frequency(texts)
            idf_seconds = time.perf_counter() - started
            for (s, e), text in zip(bounds, texts, strict=True):
                started = time.perf_counter()
                extracted = key_sentence(text, idf)
                extracted_s = time.perf_counter() - started + idf_seconds / len(bounds)
                started = time.perf_counter()
                written = written_note(model, tokens[s:e])
                written_s = time.perf_counter() - started
                for way, note, seconds in (("extracted", extracted, extracted_s), ("written", written, written_s)):
                    grounded, key = measures(note, text, idf)
                    for field, value in (("seconds", seconds), ("words", len(note.split())),
                                         ("grounded", grounded), ("key_words", key)):
                        ways[way][field].append(value)
                notes.append({"text": name, "tokens": [s, e], "extracted": extracted, "written": written})
        model.close()

    figures = {
        "tokens_per_text": args.tokens,
        "passages": len(notes),
        "ways": {way: {"seconds_per_note_median": round(statistics.median(v["seconds"]), 4),
                       "words_per_note_mean": round(statistics.mean(v["words"]), 1),
                       "grounded_mean": round(statistics.mean(v["grounded"]), 3),
                       "key_words_mean": round(statistics.mean(v["key_words"]), 3)}
                 for way, v in ways.items()},
        "notes": notes,
    }
    emit("notes", __doc__, model, figures, args.out)


if __name__ == "__main__":
    main()
