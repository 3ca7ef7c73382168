"""How far a recognised text is from the true one: character error rate over Levenshtein
distance, as OCR is judged (bench/ocr.py, tests/engine/test_ocr.py)."""

from __future__ import annotations

import unicodedata

import numpy as np


def normalize(text: str) -> str:
    """Text as OCR is judged on: compatibility forms unfolded (ligatures, full-width signs), runs
    of whitespace one space."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def char_error_rate(hypothesis: str, reference: str) -> float:
    """Levenshtein distance between the normalized texts over the reference's length (0 is perfect)."""
    hyp, ref = normalize(hypothesis), normalize(reference)
    if not ref:
        return float(bool(hyp))
    return edit_distance(hyp, ref) / len(ref)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), one NumPy row per character of a."""
    if not a or not b:
        return len(a) + len(b)
    codes = np.array([ord(c) for c in b], dtype=np.int64)
    steps = np.arange(len(b) + 1)
    row = steps.copy()
    for i, c in enumerate(a, start=1):
        best = np.empty_like(row)
        best[0] = i
        np.minimum(row[:-1] + (codes != ord(c)), row[1:] + 1, out=best[1:])
        # Insertions: best[j] = min over k <= j of best[k] + (j - k), a running minimum.
        row = np.minimum.accumulate(best - steps) + steps
    return int(row[-1])
