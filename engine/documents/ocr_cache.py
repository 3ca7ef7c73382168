"""The text OCR found on a document's scanned pages, kept in the data folder so that a page is
recognised once: a later reading (the answering model's, a re-read) and the viewer's find and
highlight use the same lines and boxes.

One JSON file per document (the library names it by the SHA-256 of the file's bytes, which the
file also records); written atomically. A file
that cannot be parsed or does not have the expected shape is ignored (its pages are recognised
again), never trusted: it lives in a folder a person may sync or edit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from engine.atomic import write_bytes
from engine.documents.ocr import OCR_DPI, OcrLine

VERSION = 1
MAX_BYTES = 64_000_000  # a 5,000-page scan's lines are a few MB; larger is not ours


def load(path: Path | None, sha256: str) -> dict[int, list[OcrLine]]:
    """The recognised lines of each 1-based page, for the pages recognised before."""
    if path is None:
        return {}
    try:
        if path.stat().st_size > MAX_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION or data.get("dpi") != OCR_DPI \
            or data.get("sha256") != sha256 or not isinstance(data.get("pages"), dict):
        return {}
    pages = {}
    for key, lines in data["pages"].items():
        parsed = _lines(lines)
        if key.isdigit() and parsed is not None:
            pages[int(key)] = parsed
    return pages


def _lines(raw: object) -> list[OcrLine] | None:
    if not isinstance(raw, list):
        return None
    lines = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 7 and isinstance(item[0], str)
                and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in item[1:])):
            return None
        text, x0, y0, x1, y1, confidence, block = item
        lines.append(OcrLine(text, (float(x0), float(y0), float(x1), float(y1)), float(confidence), int(block)))
    return lines


def save(path: Path | None, sha256: str, pages: dict[int, list[OcrLine]]) -> None:
    """Keep ``pages`` (all recognised so far). A failure to write (a full disk) only means the
    pages are recognised again next time."""
    if path is None:
        return
    data = {
        "version": VERSION, "dpi": OCR_DPI, "sha256": sha256,
        "pages": {str(page): [[line.text, *line.rect, line.confidence, line.block] for line in lines]
                  for page, lines in sorted(pages.items())},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, json.dumps(data, ensure_ascii=False).encode("utf-8"))
    except OSError:
        pass
