"""OCR of scanned pages: which pages need it, the text and where it lies, columns and paragraphs.

A "scanned" page here is made the way a scanner makes one: text is typeset on a page, the page is
rendered to a 150-dpi picture, and a new page holds that picture and nothing else (no text layer).
"""

import builtins
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pymupdf
import pytest

from bench.text_distance import char_error_rate, edit_distance
from engine.documents.ocr import OcrUnavailable, PageReader, _reading_order, _Segment, _SplitRecognizer, needs_ocr

ROOT = Path(__file__).resolve().parents[2]
SCAN_DPI = 150
FONT = {"fontsize": 11, "fontname": "helv"}
MAX_CER = 0.05  # per line; RapidOCR misses a space or confuses a letter now and then


@pytest.fixture(scope="module")
def reader():
    with PageReader() as reader:
        yield reader


def typeset(lines: list[tuple[float, float, str]], width: float = 420, height: float = 300) -> pymupdf.Document:
    """A one-page PDF with each text at its (x, baseline y)."""
    doc = pymupdf.open()
    page = doc.new_page(width=width, height=height)
    for x, y, text in lines:
        page.insert_text((x, y), text, **FONT)
    return doc


def scan(source: pymupdf.Page, rotation: int = 0) -> pymupdf.Document:
    """A one-page PDF whose only content is a 150-dpi picture of ``source`` (shown upright, also
    when the page is rotated)."""
    pix = source.get_pixmap(dpi=SCAN_DPI)
    doc = pymupdf.open()
    width, height = source.rect.width, source.rect.height
    page = doc.new_page(width=height if rotation in (90, 270) else width, height=width if rotation in (90, 270) else height)
    page.set_rotation(rotation)
    page.insert_image(pymupdf.Rect(0, 0, page.mediabox.width, page.mediabox.height), pixmap=pix, rotate=rotation)
    return doc


def where(source: pymupdf.Page, text: str) -> pymupdf.Rect:
    found = source.search_for(text)
    assert len(found) == 1
    return found[0]


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Sphinx of black quartz, judge my vow.",
    "Pack my box with five dozen liquor jugs.",
]


def test_a_scan_needs_ocr_and_a_text_page_or_a_blank_page_does_not():
    text = typeset([(40, 60 + 16 * i, s) for i, s in enumerate(SENTENCES)])
    assert not needs_ocr(text[0])
    assert needs_ocr(scan(text[0])[0])

    blank = pymupdf.open()
    blank.new_page(width=420, height=300)
    assert not needs_ocr(blank[0])
    assert not needs_ocr(scan(blank[0])[0])  # a scan of an empty sheet shows nothing either


def test_a_scan_with_a_stamped_page_number_still_needs_ocr():
    scanned = scan(typeset([(40, 60 + 16 * i, s) for i, s in enumerate(SENTENCES)])[0])
    scanned[0].insert_text((200, 290), "Page 3", fontsize=8)
    assert scanned[0].get_text().strip() == "Page 3"
    assert needs_ocr(scanned[0])


def test_the_sentences_come_back_in_order_and_where_they_were_placed(reader):
    source = typeset([(40, 60 + 16 * i, s) for i, s in enumerate(SENTENCES)])
    scanned = scan(source[0])
    assert not scanned[0].get_text().strip()

    lines = reader.lines(scanned[0])

    assert len(lines) == len(SENTENCES)
    for line, sentence in zip(lines, SENTENCES, strict=True):
        assert char_error_rate(line.text, sentence) <= MAX_CER, line.text
        assert 0.5 <= line.confidence <= 1
        placed = where(source[0], sentence)
        x0, y0, x1, y1 = line.rect
        assert abs(x0 - placed.x0) < 3 and abs(x1 - placed.x1) < 3
        assert abs((y0 + y1) / 2 - (placed.y0 + placed.y1) / 2) < 3
    assert len({line.block for line in lines}) == 1  # one paragraph


def test_rects_are_in_the_page_s_own_coordinates_on_a_rotated_page(reader):
    source = typeset([(40, 80, SENTENCES[0])])
    placed = where(source[0], SENTENCES[0])
    scanned = scan(source[0], rotation=90)
    assert scanned[0].mediabox.width == 300 and scanned[0].rect.width == 420  # stored sideways, shown upright

    [line] = reader.lines(scanned[0])

    assert char_error_rate(line.text, SENTENCES[0]) <= MAX_CER
    expected = placed * scanned[0].derotation_matrix  # where MuPDF's own text would lie
    assert all(abs(a - b) < 3 for a, b in zip(line.rect, expected, strict=True)), (line.rect, expected)


LEFT = [
    "Columns are read from the top",
    "of the left one to its very end,",
    "and only after its last line",
    "does the reading move right.",
]
RIGHT = [
    "This right column comes second,",
    "although each of its lines sits",
    "level with a line on the left,",
    "as typeset columns usually do.",
]


def test_a_two_column_page_is_read_column_by_column(reader):
    title = "Two columns under one title that spans them both"
    placed = [(40, 50, title)]
    placed += [(40, 80 + 14 * i, s) for i, s in enumerate(LEFT)]
    placed += [(230, 80 + 14 * i, s) for i, s in enumerate(RIGHT)]
    scanned = scan(typeset(placed)[0])

    lines = reader.lines(scanned[0])

    assert len(lines) == 1 + len(LEFT) + len(RIGHT), [line.text for line in lines]
    for line, expected in zip(lines, [title, *LEFT, *RIGHT], strict=True):
        assert char_error_rate(line.text, expected) <= MAX_CER, (line.text, expected)
    blocks = [line.block for line in lines]
    assert blocks == sorted(blocks)
    assert len({blocks[0], blocks[1], blocks[-1]}) == 3  # the title, the left and the right column
    assert len(set(blocks[1:1 + len(LEFT)])) == 1 and len(set(blocks[1 + len(LEFT):])) == 1


def test_a_paragraph_gap_starts_a_new_block(reader):
    first, second = SENTENCES[:2], SENTENCES[2:] + ["How vexingly quick daft zebras jump."]
    placed = [(40, 60 + 14 * i, s) for i, s in enumerate(first)]
    placed += [(40, 60 + 14 * (len(first) + 1) + 14 * i, s) for i, s in enumerate(second)]  # a blank line between
    lines = reader.lines(scan(typeset(placed)[0])[0])

    assert all(char_error_rate(line.text, s) <= MAX_CER for line, s in zip(lines, first + second, strict=True))
    blocks = [line.block for line in lines]
    assert blocks == [0, 0, 1, 1]


def segment(x0: float, y0: float, x1: float, text: str, height: float = 20) -> _Segment:
    return _Segment(x0, y0, x1, y0 + height, text, 0.99, [(x0, y0), (x1, y0), (x1, y0 + height), (x0, y0 + height)])


def test_three_columns_are_read_left_to_right_and_a_table_is_read_row_by_row():
    # Layout alone, in pixels: three columns of five lines under a full-width title.
    columns = [segment(100, 0, 1100, "title")]
    columns += [segment(100 + 350 * c, 40 + 24 * i, 400 + 350 * c, f"c{c}l{i}") for c in range(3) for i in range(5)]
    order = _reading_order(columns[::-1])
    assert [line[0].text for line, _ in order] == [s.text for s in columns]
    assert [block for _, block in order] == [0] + [1] * 5 + [2] * 5 + [3] * 5

    # A table of short cells inside full-width prose keeps its rows together.
    table = [segment(100, 0, 1100, "prose before")]
    for i in range(6):
        table += [segment(100, 30 + 24 * i, 180, f"name{i}"), segment(400, 30 + 24 * i, 900, f"what name{i} does")]
    table.append(segment(100, 30 + 24 * 6, 1100, "prose after"))
    order = _reading_order(table[::-1])
    assert [" ".join(s.text for s in line) for line, _ in order] == [s.text for s in table]


def test_a_blank_scan_has_no_lines(reader):
    blank = pymupdf.open()
    blank.new_page(width=420, height=300)
    assert reader.lines(scan(blank[0])[0]) == []


def test_ocr_unavailable_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_rapidocr(name, *args, **kwargs):
        if name.startswith("rapidocr_onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rapidocr)
    page = scan(typeset([(40, 60, SENTENCES[0])])[0])[0]
    with pytest.raises(OcrUnavailable, match="pip install rapidocr-onnxruntime"):
        PageReader().lines(page)


def test_close_releases_the_engine(reader):
    page = scan(typeset([(40, 60, SENTENCES[1])])[0])[0]
    with PageReader(threads=1) as own:
        assert char_error_rate(own.lines(page)[0].text, SENTENCES[1]) <= MAX_CER
        assert not isinstance(own._engine.text_rec, _SplitRecognizer)  # one thread: one recognizer
        own.close()
        assert own._engine is None
    assert own._engine is None
    if reader.threads > 1:  # the shared reader has read pages by now, with recognizers side by side
        assert isinstance(reader._engine.text_rec, _SplitRecognizer) and reader._pool is not None


def test_split_recognition_gives_each_line_its_own_result_in_order():
    shares = []

    def recognize(crops, return_word_box=False):  # RapidOCR's recognizer: results in the crops' order
        shares.append([crop.shape[1] for crop in crops])
        return [(f"w{crop.shape[1]}", 0.9) for crop in crops], 0.0

    widths = [50, 300, 20, 120, 80]
    crops = [np.zeros((10, w, 3), dtype=np.uint8) for w in widths]
    with ThreadPoolExecutor(1) as pool:
        split = _SplitRecognizer([recognize, recognize], pool)
        results, seconds = split(crops)
        assert results == [(f"w{w}", 0.9) for w in widths] and seconds >= 0
        assert sorted(shares) == [[20, 80, 300], [50, 120]]  # dealt out by width, in turn
        assert split(crops[:1])[0] == [("w50", 0.9)]
        assert split([])[0] == []


def test_loading_opencv_leaves_qt_s_plugin_folders_alone():
    # OpenCV's GUI build points Qt at its own Qt 5 plugins when imported, which would break PySide6.
    probe = ("import os, sys; sys.path.insert(0, '.'); from engine.documents.ocr import _load_rapidocr; _load_rapidocr(); "
             "print(os.environ.get('QT_QPA_PLATFORM_PLUGIN_PATH'), os.environ.get('QT_QPA_FONTDIR'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_QPA_")}
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["None", "None"]


def test_edit_distance_and_character_error_rate():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert char_error_rate("a  b\nc", "a b c") == 0  # whitespace runs count as one space
    assert char_error_rate("ﬁne", "fine") == 0  # ligatures unfolded
    assert char_error_rate("abcd", "abce") == 0.25
