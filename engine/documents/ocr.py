"""OCR: the text of PDF pages that have no text layer (scans), as lines in reading order.

A scanned page is a picture of text. :func:`needs_ocr` tells such a page from a page with text and
from a blank one; :class:`PageReader` renders it at ``OCR_DPI``, runs RapidOCR (PP-OCRv4 detection
and recognition in ONNX Runtime, models shipped inside the ``rapidocr-onnxruntime`` wheel, so it
works offline), and turns the detected text segments into :class:`OcrLine` s: segments on one
visual line joined, columns read to their end one after the other, and paragraphs numbered as
blocks, with every rectangle in the page's own coordinates (PDF points, as MuPDF's text has them).
Detection runs once over the page on all the reader's threads; the lines it finds are then
recognized by two recognition models side by side, half the lines each, one thread each (see
``RECOGNIZERS``). Measured on 2 cores: bench/ocr.py (bench/results/ocr_cpu.json).
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import pymupdf

from engine.documents.text_files import INVISIBLE
from engine.errors import CommaError

if TYPE_CHECKING:
    from collections.abc import Sequence

# bench/ocr.py, 20 pages of two manuals scanned at 150 dpi: OCR at 150 dpi gave CER 2.7%, at
# 200 dpi 2.8% and 1.1 s more a page (detection time grows with the pixels; recognition scales
# every line to 48 pixels high whatever the resolution), at 120 dpi 4.7% and 18% of words wrong.
OCR_DPI = 150
# A page larger than this many pixels at OCR_DPI (posters, drawings) is rendered at a lower
# resolution, so that memory stays bounded (an A0 page at 150 dpi is 35 Mpx, 105 MB of RGB).
MAX_PIXELS = 12_000_000
# RapidOCR's recognition score, 0..1 (the mean of the characters' probabilities); segments below
# it are dropped. On bench/ocr.py's 20 pages, CER is 2.66% keeping everything, 2.67% from 0.3 or
# 0.5, 2.71% from 0.7 and 4.2% from 0.9 (real lines lost): below 0.5 there were only lone
# signs ("?", "·", "O", "1"), and on a drawing the strokes read as "+" at 0.23. RapidOCR's default.
MIN_CONFIDENCE = 0.5
# RapidOCR's detector grows each found text region by this factor of its area over its perimeter
# before cutting it out for recognition. Its default, 1.6, cuts English lines so tight that the
# recognizer drops many spaces between words ("andonlyafteritslastline"); 2.0 keeps them
# (bench/ocr.py, 20 pages: CER 2.95% -> 2.67%, words wrong 9.1% -> 5.6%; on 8 pages 2.4 and 2.8
# were worse than 2.0 again).
UNCLIP_RATIO = 2.0
BOX_THRESH = 0.5  # the detector's mean probability for a region to count as text (its default)
# Recognition reads one cut-out line at a time (rec_batch_num=1 below), and ONNX Runtime spreads
# such a small input (48 pixels high) poorly over its threads. This many sessions (the reader's
# threads split among them: one each on 2 cores), each reading its share of the page's lines at
# the same time, keep the cores busy instead. bench/ocr.py, 20 pages on 2 cores, three runs in
# turn with one session of 2 threads: recognition 1.9-2.1 -> 1.55-1.63 s a page (median; 15-24%
# less page by page), the whole page 2.5-2.7 -> 2.1-2.2 s, the same text. Each more session costs
# about 25 MB once loaded and, as both read a line at once, 100-150 MB more at the peak.
RECOGNIZERS = 2

# Layout, in units of the page's median text line height (scale-free):
LINE_GAP = 2.0        # segments of one visual line further apart than this stay separate lines
# Extra white space between two lines, over the page's usual, that starts a new block. In the two
# manuals of bench/ocr.py a paragraph's or heading's extra space is 0.33-0.5 line heights and the
# lines of one paragraph (code, formulas, descenders) vary up to 0.23 around the usual, so a rule
# of 1.2 line heights would find only figures and section breaks. Paragraphs set apart by an
# indent alone (TeX's default) stay one block.
PARAGRAPH_GAP = 0.3
GUTTER_MIN = 0.5      # the narrowest white gap between two columns
SPANNING_SHARE = 0.5  # at most this share of the segments may cross a gutter (titles, full-width lines)
COLUMN_MIN_SHARE = 0.15  # each column holds at least this share of the segments in columns,
COLUMN_MIN_WIDTH = 0.2  # and spreads over at least this share of the text's width

# needs_ocr: a text layer with this many letters and digits is a real one; a scan may carry a few
# (a stamped page number, "Scanned with ..."), so below it a page that an image mostly covers
# still needs OCR. A page shows something when enough of a small rendering differs from its paper.
TEXT_LAYER_CHARS = 64
IMAGE_COVER = 0.5
INK_DPI = 36
INK_CONTRAST = 64   # grey levels from the paper's colour (the median pixel)
INK_SHARE = 0.0005  # of the pixels: one line of 9-pt print on a letter page is 0.11%, a page of text 6%

_PIP = "pip install rapidocr-onnxruntime"
# RapidOCR's model reads Chinese and English; in English text it now and then gives a comma or a
# bracket in its full-width form, which lines without CJK characters get back in ASCII.
_CJK = re.compile("[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_FULL_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


class OcrUnavailable(CommaError):
    """OCR cannot run here: RapidOCR or its models are missing. The message says what to install."""


@dataclass(frozen=True)
class OcrLine:
    """One line of recognized text on a page.

    ``rect`` is ``(x0, y0, x1, y1)`` in the page's own (unrotated) coordinates, in PDF points, as
    ``page.get_text("dict")`` gives bounding boxes. ``confidence`` is RapidOCR's recognition score,
    0..1 (for a line joined from several segments, their mean weighted by length). ``block``
    numbers paragraphs and column pieces in reading order; the lines of one paragraph share it.
    """

    text: str
    rect: tuple[float, float, float, float]
    confidence: float
    block: int


@dataclass(eq=False)  # segments are told apart by identity
class _Segment:
    """A detected text segment, in the pixels of the page as it is shown (rotation applied)."""

    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    score: float
    quad: Any  # the 4 corner points (pixels), for the page rectangle

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2


def _load_rapidocr() -> type:
    """RapidOCR's engine class; OcrUnavailable when the package (or OpenCV, ONNX Runtime) is missing."""
    # Importing OpenCV's GUI build (a dependency of rapidocr-onnxruntime) points Qt's plugin and
    # font folders at OpenCV's own Qt 5 files for the whole process, which would break the window's
    # Qt 6 and any Qt program started from here; keep them as they were.
    saved = {name: os.environ.get(name) for name in ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR")}
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as e:
        if sys.version_info >= (3, 13):  # rapidocr-onnxruntime 1.4.4 installs on Python 3.6-3.12 only
            raise OcrUnavailable(
                f"Reading scanned pages needs OCR ({e}), and rapidocr-onnxruntime supports Python up to 3.12; "
                f"run Comma on Python 3.12 and {_PIP}"
            ) from None
        raise OcrUnavailable(
            f"Reading scanned pages needs OCR, which is not installed ({e}); {_PIP}"
        ) from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return RapidOCR


class PageReader:
    """Reads the text of scanned pages with RapidOCR, loaded on first use.

    ``threads`` bounds the CPU threads that ONNX Runtime runs at once (default: every core, as the
    reading model has; at most the machine's cores): detection uses them all, and recognition
    splits them among ``RECOGNIZERS`` sessions that run side by side (one session when there is
    one thread). Reading a letter page at 150 dpi takes the process 500-600 MB above where it was
    at its peak and leaves 150-300 MB held; ``close()`` releases the models and hands that back.
    The reader is also a context manager. One reader may be shared by threads: pages are read one
    at a time.
    """

    def __init__(self, threads: int | None = None):
        cores = os.cpu_count() or 1
        self.threads = max(1, min(threads or cores, cores))
        self._engine: Any = None
        self._pool: ThreadPoolExecutor | None = None  # runs the other recognizers' shares of a page
        self._lock = threading.Lock()

    def __enter__(self) -> PageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            if self._engine is not None:
                self._engine = None
                gc.collect()
                _trim_heap()

    def _load(self) -> Any:
        if self._engine is None:
            RapidOCR = _load_rapidocr()
            try:
                engine = RapidOCR(
                    # One thread pool per model, sized to the cores; the models run one after the other.
                    intra_op_num_threads=self.threads, inter_op_num_threads=1,
                    text_score=0.0,  # every segment comes back; MIN_CONFIDENCE is applied here
                    max_side_len=1 << 16,  # the page is rendered at the size wanted (MAX_PIXELS)
                    # Scans are upright; the angle model turned some upright lines of English
                    # upside down (8 pages of bench/ocr.py's manuals: CER 1.2% -> 4.8% with it on).
                    use_cls=False,
                    # One line at a time: batches of 6 pad every line to the widest of them, and
                    # were 20-30% slower on 2 cores (3 and 8 pages of the manuals, same text).
                    rec_batch_num=1,
                )
                sessions = min(RECOGNIZERS, self.threads)
                if sessions > 1:
                    # RapidOCR gives all its models the same threads; its own recognizer is
                    # replaced (and freed) by sessions that share them out.
                    recognizers = _recognizers(sessions, self.threads // sessions)
                    self._pool = ThreadPoolExecutor(sessions - 1, thread_name_prefix="ocr-recognition")
                    engine.text_rec = _SplitRecognizer(recognizers, self._pool)
            except Exception as e:  # a missing or damaged model file; RapidOCR has no error types
                raise OcrUnavailable(
                    f"OCR could not load RapidOCR's models ({e}); reinstall it: {_PIP} --force-reinstall"
                ) from e
            self._engine = engine
        return self._engine

    def lines(self, page: pymupdf.Page) -> list[OcrLine]:
        """The page's text lines in reading order; an empty list when it shows no text."""
        with self._lock:
            engine = self._load()
            dpi = _render_dpi(page)
            zoom = pymupdf.Matrix(dpi / 72, dpi / 72)
            pix = page.get_pixmap(matrix=zoom, colorspace=pymupdf.csRGB, alpha=False)
            image = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, pix.n)
            # RapidOCR takes an array as OpenCV's BGR.
            found, _ = engine(np.ascontiguousarray(image[:, :, ::-1]),
                              unclip_ratio=UNCLIP_RATIO, box_thresh=BOX_THRESH, text_score=0.0)
        segments = []
        for quad, text, score in found or ():
            text = INVISIBLE.sub("", text)
            text = " ".join((text if _CJK.search(text) else text.translate(_FULL_WIDTH)).split())
            if text and float(score) >= MIN_CONFIDENCE:
                xs, ys = [p[0] for p in quad], [p[1] for p in quad]
                segments.append(_Segment(min(xs), min(ys), max(xs), max(ys), text, float(score), quad))
        # Pixels -> points of the page as shown -> the page's own (unrotated) coordinates.
        to_page = pymupdf.Matrix(1, 0, 0, 1, pix.x, pix.y) * ~zoom * page.derotation_matrix
        return [
            OcrLine(" ".join(s.text for s in line), _page_rect(line, to_page), _confidence(line), block)
            for line, block in _reading_order(segments)
        ]


def _recognizers(count: int, threads: int) -> list[Any]:
    """``count`` RapidOCR line recognizers of ``threads`` threads each, configured as RapidOCR
    configures its own (its bundled config.yaml), one line at a time."""
    from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
    from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
    from rapidocr_onnxruntime.utils import read_yaml, update_model_path

    config = update_model_path(read_yaml(DEFAULT_CFG_PATH))["Rec"]
    config.update(intra_op_num_threads=threads, inter_op_num_threads=1, rec_batch_num=1)
    return [TextRecognizer(config) for _ in range(count)]


class _SplitRecognizer:
    """Stands in for RapidOCR's recognizer (``RapidOCR.text_rec``), so that RapidOCR's own call
    still finds, orders and cuts out the lines and maps them back to the page: it reads the cut-out
    lines with several recognizers at once, the first in the calling thread and the others in
    ``pool``, and gives the results back in the lines' order, as the one recognizer would.
    The seconds it reports are the wall time of the whole (with the lines' scaling, which
    RapidOCR's recognizer leaves out of its own count)."""

    def __init__(self, recognizers: list[Any], pool: ThreadPoolExecutor):
        self.recognizers, self.pool = recognizers, pool

    def __call__(self, crops: Any, return_word_box: bool = False) -> tuple[list[Any], float]:
        start = time.perf_counter()
        if isinstance(crops, np.ndarray):
            crops = [crops]
        # Each line is scaled to 48 pixels high, so its cost grows with its width over its height;
        # dealing the lines out in that order, in turn, gives every recognizer about as much work.
        order = sorted(range(len(crops)), key=lambda i: crops[i].shape[1] / max(crops[i].shape[0], 1))
        shares = [order[k::len(self.recognizers)] for k in range(len(self.recognizers))]
        futures = [self.pool.submit(recognize, [crops[i] for i in share], return_word_box)
                   for recognize, share in zip(self.recognizers[1:], shares[1:], strict=True) if share]
        try:
            found = [self.recognizers[0]([crops[i] for i in shares[0]], return_word_box)[0]]
        finally:
            wait(futures)  # no recognizer is still busy once the page is done, even after an error
        found += [future.result()[0] for future in futures]
        results: list[Any] = [None] * len(crops)
        for share, share_results in zip(shares, found, strict=False):  # empty shares come last
            for i, result in zip(share, share_results, strict=True):
                results[i] = result
        return results, time.perf_counter() - start


def _trim_heap() -> None:
    """Give freed memory back to the system: glibc keeps what ONNX Runtime's large buffers used."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc (macOS, Windows, musl)
        pass


def _render_dpi(page: pymupdf.Page) -> int:
    rect = page.rect
    pixels = rect.width * rect.height * (OCR_DPI / 72) ** 2
    return OCR_DPI if pixels <= MAX_PIXELS else max(1, int(OCR_DPI * (MAX_PIXELS / pixels) ** 0.5))


def _page_rect(line: list[_Segment], to_page: pymupdf.Matrix) -> tuple[float, float, float, float]:
    points = [pymupdf.Point(float(x), float(y)) * to_page for s in line for x, y in s.quad]
    xs, ys = [p.x for p in points], [p.y for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def _confidence(line: list[_Segment]) -> float:
    return sum(s.score * len(s.text) for s in line) / sum(len(s.text) for s in line)


# --- layout ------------------------------------------------------------------------------------


def _reading_order(segments: list[_Segment]) -> list[tuple[list[_Segment], int]]:
    """Lines (each a list of segments, left to right) with their block numbers, in reading order.

    Columns are found as vertical white gutters that (almost) no segment crosses. Segments that do
    cross one (a title, a full-width paragraph) cut the page into horizontal regions; inside a
    region each column is read to its end before the next, top to bottom within a column.
    """
    if not segments:
        return []
    height = statistics.median(s.height for s in segments)
    gutters = _gutters(segments, height)

    def spans(s: _Segment) -> bool:
        return any(s.x0 < right and s.x1 > left for left, right in gutters)

    # Regions, top to bottom: runs of spanning rows (one column) and the column parts between them.
    spanning_rows = _rows([s for s in segments if spans(s)])
    regions: list[tuple[bool, list[_Segment]]] = []
    rest = sorted((s for s in segments if not spans(s)), key=lambda s: s.cy)
    for row in spanning_rows:
        top, bottom = _top(row), _bottom(row)
        above = [s for s in rest if s.cy < top and not _overlaps(s, top, bottom)]
        beside = [s for s in rest if _overlaps(s, top, bottom)]
        rest = [s for s in rest if s not in above and s not in beside]
        if above:
            regions.append((False, above))
        if regions and regions[-1][0]:
            regions[-1][1].extend(row + beside)
        else:
            regions.append((True, row + beside))
    if rest:
        regions.append((False, rest))

    columns = [left for left, _ in gutters]
    pieces: list[list[_Segment]] = []
    for single, members in regions:
        if single:
            pieces.append(members)
        else:
            by_column: dict[int, list[_Segment]] = {}
            for s in members:
                by_column.setdefault(sum((s.x0 + s.x1) / 2 > x for x in columns), []).append(s)
            pieces.extend(by_column[c] for c in sorted(by_column))

    piece_rows = [_rows(piece) for piece in pieces]
    # The white space between a line and the next, usually (leading differs between documents).
    gaps = [_top(below) - _bottom(above) for rows in piece_rows for above, below in pairwise(rows)]
    new_block = (statistics.median(gaps) if gaps else 0.0) + PARAGRAPH_GAP * height

    ordered: list[tuple[list[_Segment], int]] = []
    block = -1
    for rows in piece_rows:
        for i, row in enumerate(rows):
            if i == 0 or _top(row) - _bottom(rows[i - 1]) > new_block:
                block += 1
            ordered.extend((line, block) for line in _split_row(row, height))
    return ordered


def _top(row: list[_Segment]) -> float:
    return min(s.y0 for s in row)


def _bottom(row: list[_Segment]) -> float:
    return max(s.y1 for s in row)


def _overlaps(s: _Segment, top: float, bottom: float) -> bool:
    """Whether most of the segment's height lies between top and bottom (the same visual line)."""
    return min(s.y1, bottom) - max(s.y0, top) >= 0.5 * min(s.height, bottom - top)


def _rows(segments: Sequence[_Segment]) -> list[list[_Segment]]:
    """Segments grouped into visual lines (overlapping vertical extent), top to bottom."""
    rows: list[list[_Segment]] = []
    for s in sorted(segments, key=lambda s: s.cy):
        if rows:
            row = rows[-1]
            if _overlaps(s, _top(row), _bottom(row)) and not any(r.x0 < s.x1 and s.x0 < r.x1 for r in row):
                row.append(s)
                continue
        rows.append([s])
    return [sorted(row, key=lambda s: s.x0) for row in rows]


def _split_row(row: list[_Segment], height: float) -> list[list[_Segment]]:
    """A visual line's segments, left to right, cut where they lie far apart (table cells)."""
    lines = [[row[0]]]
    for s in row[1:]:
        if s.x0 - lines[-1][-1].x1 > LINE_GAP * height:
            lines.append([s])
        else:
            lines[-1].append(s)
    return lines


def _gutters(segments: list[_Segment], height: float) -> list[tuple[float, float]]:
    """The x ranges of white gaps between columns, left to right (empty for one column).

    How many segments cover each x is flat across a column and dips where segments end and others
    begin; a gutter is such a dip, at least GUTTER_MIN lines wide, that at most SPANNING_SHARE of
    the segments cross (titles, full-width paragraphs above or below the columns), with real
    columns on both sides: at least COLUMN_MIN_SHARE of the other segments each, spread over at
    least COLUMN_MIN_WIDTH of the text's width (the cells of a table are not columns).
    """
    n = len(segments)
    left, right = min(s.x0 for s in segments), max(s.x1 for s in segments)
    width = right - left
    if n < 6 or width <= 0:
        return []
    cover = np.zeros(int(width) + 1, dtype=np.int32)
    for s in segments:
        cover[int(s.x0 - left):int(np.ceil(s.x1 - left)) + 1] += 1
    # Runs of equal cover; a run lower than the runs on both sides of it is a dip.
    cuts = np.flatnonzero(np.diff(cover)) + 1
    starts, ends = np.concatenate(([0], cuts)), np.concatenate((cuts, [len(cover)]))
    gutters = []
    for i in range(1, len(starts) - 1):
        level = cover[starts[i]]
        if (level < cover[starts[i - 1]] and level < cover[starts[i + 1]] and level <= SPANNING_SHARE * n
                and ends[i] - starts[i] >= GUTTER_MIN * height):
            gutters.append((left + float(starts[i]), left + float(ends[i] - 1)))
    # Keep a gutter only when real columns lie on both sides of it.
    while gutters:
        bounds = [left, *[x for g in gutters for x in g], right]
        inside = [[s for s in segments if a <= s.x0 and s.x1 <= b] for a, b in zip(bounds[::2], bounds[1::2], strict=True)]
        enough = max(3, COLUMN_MIN_SHARE * sum(map(len, inside)))
        spread = [max(s.x1 for s in column) - min(s.x0 for s in column) if column else 0.0 for column in inside]
        weak = [i for i, column in enumerate(inside) if len(column) < enough or spread[i] < COLUMN_MIN_WIDTH * width]
        if not weak:
            break
        # A narrow column belongs to the text on its left (the page numbers of an index whose dot
        # leaders the detector does not see, the values of a table); the first one, to its right.
        weakest = min(weak, key=lambda i: (spread[i], len(inside[i])))
        del gutters[max(weakest - 1, 0)]
    return gutters


# --- what needs OCR ----------------------------------------------------------------------------


def needs_ocr(page: pymupdf.Page) -> bool:
    """True when the page has no usable text layer but shows something (a scan, text drawn as
    outlines); False for a page with text and for a blank page (a blank scan included)."""
    text = INVISIBLE.sub("", page.get_text("text", flags=pymupdf.TEXT_MEDIABOX_CLIP))
    letters = sum(c.isalnum() for c in text)
    if letters >= TEXT_LAYER_CHARS or (letters and _image_cover(page) < IMAGE_COVER):
        return False
    return _shows_ink(page)


def _image_cover(page: pymupdf.Page) -> float:
    """The share of the page that images cover (at most 1)."""
    area = abs(page.rect)
    if not area:
        return 0.0
    covered = sum(abs(pymupdf.Rect(info["bbox"]) & page.rect) for info in page.get_image_info())
    return min(covered / area, 1.0)


def _shows_ink(page: pymupdf.Page) -> bool:
    pix = page.get_pixmap(dpi=INK_DPI, colorspace=pymupdf.csGRAY, alpha=False)
    grey = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, pix.n)[:, :, 0]
    if not grey.size:
        return False
    paper = int(np.median(grey))
    ink = np.count_nonzero(np.abs(grey.astype(np.int16) - paper) > INK_CONTRAST)
    return bool(ink >= max(1, INK_SHARE * grey.size))
