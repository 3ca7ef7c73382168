"""OCR of scanned pages: how right (character error rate) and how fast (seconds per page), on CPU.

Method: real text PDFs that ship with Debian packages (bench/data/R-intro.pdf and
bench/data/reportlab-userguide.pdf, see bench/data/SOURCES.md). From each document, --pages pages
evenly spaced over those whose text layer holds at least MIN_CHARS characters (so no blank,
title-only or figure-only pages). Each page is rendered at --dpi (150) to an RGB picture, and a
new PDF page of the same size holds that picture alone: a clean scan with no text layer.
engine.documents.ocr.needs_ocr must say so, and engine.documents.ocr.PageReader reads it (rendering it again at
OCR_DPI, RapidOCR, columns and lines). Its lines, joined with newlines, are compared with the
original page's own text layer: ``cer`` against ``page.get_text(sort=True)`` (blocks top to
bottom, left to right: the order a person reads, which OCR also follows; running heads first),
``cer_stream`` against ``page.get_text()`` (the order the file stores its text, which may put
running heads last), ``cer_no_spaces`` against the sorted text with all whitespace removed
(letters only: what is left when missing or extra spaces are forgiven), and, blind to order,
``word_miss_rate`` and ``word_extra_rate``: the reference's words (split at whitespace, as a
multiset) that OCR lacks, and OCR's words the reference lacks, over the reference's words (a
passage that both have, but in another place, costs CER twice its length and these nothing). Both texts are normalized
first: dot leaders (4 or more dots, as an index has them) become a space, then NFKC (ligatures,
full-width signs), and runs of whitespace become one space. CER is Levenshtein
distance over the reference's length; the totals are total edits over total reference
characters. Seconds are wall time of ``PageReader.lines`` alone (rendering, detection,
recognition, layout), after one warm-up page; the engine's import and load are timed apart.
Lines below engine.documents.ocr.MIN_CONFIDENCE are kept during the run (MIN_CONFIDENCE is set to 0) so
that ``confidence_sweep`` can say what each threshold would give; the headline figures drop,
as the reader does, the lines below MIN_CONFIDENCE. Run it with the CPU to yourself: the
1-minute load average is sampled after every page and reported.

    python bench/ocr.py [--pages 10] [--dpi 150] [--documents R-intro.pdf,reportlab-userguide.pdf]
                        [--ocr-dpi 150] [--unclip-ratio 2.0] [--threads 2] [--out FILE] [--note TEXT]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import sys
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pymupdf  # noqa: E402

import engine.documents.ocr as ocr  # noqa: E402
from bench import text_distance  # noqa: E402
from bench.report import emit  # noqa: E402

DATA = ROOT / "bench" / "data"
MIN_CHARS = 500
LEADERS = re.compile(r"(?:\. ?){4,}")  # an index's or a contents page's dot leaders
TARGET_CER = 0.03
TARGET_SECONDS = 3.0
THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.9)
PACKAGES = ("rapidocr-onnxruntime", "onnxruntime", "opencv-python", "pymupdf", "numpy", "shapely", "pyclipper")


class Timed:
    """RapidOCR's engine, keeping the seconds it reports for detection and recognition of each page."""

    def __init__(self, engine):
        self.engine, self.last = engine, (0.0, 0.0)

    def __call__(self, *args, **kwargs):
        found, elapsed = self.engine(*args, **kwargs)
        self.last = (elapsed[0], elapsed[-1]) if elapsed and len(elapsed) == 3 else (sum(elapsed or [0.0]), 0.0)
        return found, elapsed


def words(text: str) -> Counter:
    return Counter(prepared(text).split())


def choose_pages(doc: pymupdf.Document, count: int) -> list[int]:
    """``count`` page indexes spread evenly over the pages with at least MIN_CHARS of text."""
    full = [i for i in range(doc.page_count) if len(prepared(doc[i].get_text())) >= MIN_CHARS]
    if len(full) <= count:
        return full
    return [full[int((k + 0.5) * len(full) / count)] for k in range(count)]


def scanned(page: pymupdf.Page, dpi: int) -> pymupdf.Document:
    """A one-page PDF whose only content is a ``dpi`` picture of ``page``."""
    pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csRGB, alpha=False)
    doc = pymupdf.open()
    copy = doc.new_page(width=page.rect.width, height=page.rect.height)
    copy.insert_image(copy.rect, pixmap=pix)
    return doc


def prepared(text: str) -> str:
    return text_distance.normalize(LEADERS.sub(" ", text))


def errors(hypothesis: str, reference: str) -> tuple[int, int]:
    hyp, ref = prepared(hypothesis), prepared(reference)
    return text_distance.edit_distance(hyp, ref), len(ref)


def no_spaces(text: str) -> str:
    return "".join(prepared(text).split())


def measure(reader: ocr.PageReader, path: Path, count: int, dpi: int, threshold: float) -> list[dict]:
    rows = []
    with pymupdf.open(path) as doc:
        for index in choose_pages(doc, count):
            page = doc[index]
            scan = scanned(page, dpi)
            start = time.perf_counter()
            lines = reader.lines(scan[0])
            seconds = time.perf_counter() - start
            detection, recognition = reader._engine.last
            kept = [line for line in lines if line.confidence >= threshold]
            text = "\n".join(line.text for line in kept)
            reference, stream = page.get_text(sort=True), page.get_text()
            edits, chars = errors(text, reference)
            row = {
                "document": path.name, "page": index + 1, "reference_chars": chars, "cer": round(edits / chars, 4),
                "edits": edits,
                "cer_stream": round(errors(text, stream)[0] / chars, 4),
                "cer_no_spaces": round(
                    text_distance.edit_distance(no_spaces(text), no_spaces(reference)) / len(no_spaces(reference)), 4),
                "letters": len(no_spaces(reference)),
                "words": sum(words(reference).values()),
                "words_missed": sum((words(reference) - words(text)).values()),
                "words_extra": sum((words(text) - words(reference)).values()),
                "seconds": round(seconds, 3), "detection_s": round(detection, 3), "recognition_s": round(recognition, 3),
                "lines": len(kept), "blocks": len({line.block for line in kept}),
                "needs_ocr": ocr.needs_ocr(scan[0]), "text_page_needs_ocr": ocr.needs_ocr(page),
                "load_1min": round(os.getloadavg()[0], 2),
                "sweep": {str(t): errors("\n".join(line.text for line in lines if line.confidence >= t), reference)[0]
                          for t in THRESHOLDS},
                "dropped": [line.text for line in lines if line.confidence < threshold],
            }
            print(f"{path.name} p{index + 1}: cer {row['cer']:.4f} ({row['cer_no_spaces']:.4f} without spaces), "
                  f"{seconds:.2f} s, load {row['load_1min']}", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    seconds = [row["seconds"] for row in rows]
    chars = sum(row["reference_chars"] for row in rows)
    return {
        "pages": len(rows),
        "cer": round(sum(row["edits"] for row in rows) / chars, 4),
        "cer_median_page": round(statistics.median(row["cer"] for row in rows), 4),
        "cer_worst_page": max(row["cer"] for row in rows),
        "cer_stream": round(sum(row["cer_stream"] * row["reference_chars"] for row in rows) / chars, 4),
        "cer_no_spaces": round(sum(row["cer_no_spaces"] * row["letters"] for row in rows)
                               / sum(row["letters"] for row in rows), 4),
        "word_miss_rate": round(sum(row["words_missed"] for row in rows) / sum(row["words"] for row in rows), 4),
        "word_extra_rate": round(sum(row["words_extra"] for row in rows) / sum(row["words"] for row in rows), 4),
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds_mean": round(statistics.fmean(seconds), 3),
        "seconds_max": max(seconds),
        "detection_s_median": round(statistics.median(row["detection_s"] for row in rows), 3),
        "recognition_s_median": round(statistics.median(row["recognition_s"] for row in rows), 3),
        "reference_chars": chars,
        "scans_that_need_ocr": sum(row["needs_ocr"] for row in rows),
        "text_pages_that_need_ocr": sum(row["text_page_needs_ocr"] for row in rows),
    }


def installed_mb(name: str) -> float | None:
    try:
        files = distribution(name).files or []
    except PackageNotFoundError:
        return None
    return round(sum(f.size or 0 for f in files) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10, help="pages per document")
    parser.add_argument("--dpi", type=int, default=150, help="resolution of the scans")
    parser.add_argument("--documents", default="R-intro.pdf,reportlab-userguide.pdf", type=lambda s: s.split(","))
    parser.add_argument("--ocr-dpi", type=int, default=ocr.OCR_DPI, help="engine.documents.ocr.OCR_DPI for this run")
    parser.add_argument("--unclip-ratio", type=float, default=ocr.UNCLIP_RATIO, help="engine.documents.ocr.UNCLIP_RATIO")
    parser.add_argument("--threads", type=int, default=None, help="PageReader(threads=...)")
    parser.add_argument("--note", default="", help="how the machine was shared, if it was")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ocr_cpu.json")
    args = parser.parse_args()

    threshold = ocr.MIN_CONFIDENCE
    ocr.OCR_DPI, ocr.UNCLIP_RATIO, ocr.MIN_CONFIDENCE = args.ocr_dpi, args.unclip_ratio, 0.0
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reader = ocr.PageReader(threads=args.threads)
    start = time.perf_counter()
    ocr._load_rapidocr()
    imported = time.perf_counter() - start
    reader._engine = Timed(reader._load())
    loaded = time.perf_counter() - start - imported
    with pymupdf.open(DATA / args.documents[0]) as doc:  # warm-up: ONNX Runtime plans its first shapes
        reader.lines(scanned(doc[choose_pages(doc, 1)[0]], args.dpi)[0])
    load_start = os.getloadavg()

    per_document = {name: measure(reader, DATA / name, args.pages, args.dpi, threshold) for name in args.documents}
    rows = [row for found in per_document.values() for row in found]
    total = summary(rows)
    chars = total["reference_chars"]
    loads = [row["load_1min"] for row in rows]
    cores = os.cpu_count() or 1
    note = args.note
    if max(loads) > cores + 0.5:
        note = (note + " " if note else "") + (
            f"The 1-minute load average reached {max(loads)} on {cores} cores during the run (this process "
            f"alone accounts for about {reader.threads}): another process shared the CPU, so the seconds are high.")
    figures = {
        "settings": {"scan_dpi": args.dpi, "ocr_dpi": args.ocr_dpi, "unclip_ratio": args.unclip_ratio,
                     "min_confidence": threshold, "threads": reader.threads,
                     "pages_per_document": args.pages,
                     "min_reference_chars": MIN_CHARS},
        "targets": {"cer": TARGET_CER, "seconds_per_page": TARGET_SECONDS,
                    "cer_met": total["cer"] <= TARGET_CER, "seconds_met": total["seconds_median"] <= TARGET_SECONDS},
        "total": total,
        "documents": {name: summary(found) for name, found in per_document.items()},
        "confidence_sweep": {str(t): round(sum(row["sweep"][str(t)] for row in rows) / chars, 4) for t in THRESHOLDS},
        "engine": {"import_s": round(imported, 2), "load_s": round(loaded, 2),
                   "peak_rss_mb_before": round(rss_start), "peak_rss_mb": round(
                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                   "installed_mb": {name: installed_mb(name) for name in PACKAGES}},
        "load_average": {"before": [round(x, 2) for x in load_start], "after": [round(x, 2) for x in os.getloadavg()],
                         "max_1min_during": max(loads)},
        "note": note,
        "pages": rows,
    }
    emit("ocr", __doc__.split("Method: ", 1)[1].split("\n\n")[0], model_name(), figures, args.out, PACKAGES)


def model_name() -> str:
    import rapidocr_onnxruntime

    folder = Path(rapidocr_onnxruntime.__file__).parent / "models"
    used = sorted(p.name for p in folder.glob("*.onnx") if "_det_" in p.name or "_rec_" in p.name)
    return f"RapidOCR {' + '.join(used)} (angle classifier off)"


if __name__ == "__main__":
    main()
