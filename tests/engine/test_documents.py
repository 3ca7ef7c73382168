"""Reading documents: clean text, a page map that citations can trust, and clear refusals."""

import hashlib
import sys
from pathlib import Path

import pymupdf
import pytest

from engine.documents.document import SUPPORTED_SUFFIXES, TEXT_PAGE_CHARS, Document, read_document
from engine.documents.limits import Limits
from engine.errors import DocumentError
from tests.fakes import scanned_pdf, set_raw_pdf_title

REAL_PDF = Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")

FRENCH = (
    "Le café était déjà plein quand nous sommes arrivés. « Voilà », dit-il, en souriant à la serveuse. "
    "Elle nous apporta deux crèmes et une tarte aux pêches. Ça coûte cher à Noël, mais c'est la fête.\n\n"
) * 3
PORTUGUESE = "Ele disse: não há razão para preocupação. A canção é bonita, e a informação está correta.\n" * 3


def make_pdf(path, pages, header=None, footer=None):
    """One PDF page per list of lines, 14 points apart; an empty string leaves a blank line."""
    doc = pymupdf.open()
    for number, lines in enumerate(pages, start=1):
        page = doc.new_page()
        if header:
            for x, text in header(number):
                page.insert_text((x, 40), text)
        for y, line in enumerate(lines):
            page.insert_text((72, 90 + 14 * y), line)
        if footer:
            page.insert_text((280, 800), footer(number))
    doc.save(path)
    return path


def refused(path) -> str:
    with pytest.raises(DocumentError) as caught:
        read_document(path)
    message = str(caught.value)
    assert Path(path).name in message
    return message


def test_pdf_page_map_and_hash(tmp_path):
    path = make_pdf(tmp_path / "a.pdf", [["First page words."], ["Second page words."], [], ["Fourth page."]])
    doc = read_document(path)
    assert isinstance(doc, Document) and doc.kind == "pdf" and doc.pages == 4
    assert doc.path == path.resolve() and doc.title == "First page words."
    assert doc.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    offset = doc.text.index("Second page")
    assert doc.page_at(offset) == 2 and doc.page_at(offset + 5) == 2
    assert doc.page_text(2).strip() == "Second page words."
    assert doc.page_text(3) == ""
    assert doc.page_at(doc.text.index("Fourth")) == 4
    assert doc.page_at(-1) == 1 and doc.page_at(len(doc.text) + 10) == 4
    assert "".join(doc.page_text(p) for p in range(1, doc.pages + 1)) == doc.text
    with pytest.raises(ValueError):
        doc.page_text(5)


def test_pdf_metadata_title_wins(tmp_path):
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "Some body text that is not the title.")
    pdf.set_metadata({"title": "Master Services Agreement"})
    pdf.save(tmp_path / "m.pdf")
    assert read_document(tmp_path / "m.pdf").title == "Master Services Agreement"


def test_pdf_joins_hyphenation_and_soft_line_breaks(tmp_path):
    lines = ["The infor-", "mation is here and", "it continues, as Jean-", "Paul said.", "", "New paragraph."]
    text = read_document(make_pdf(tmp_path / "h.pdf", [lines])).text
    assert "The information is here and it continues, as Jean- Paul said." in text
    assert text.endswith("said.\n\nNew paragraph.")


def test_pdf_drops_repeated_header_and_page_footer(tmp_path):
    openings = ["The buyer pays on delivery.", "The seller keeps the risk.", "Either party may end it.",
                "Disputes go to arbitration.", "This text is the whole agreement."]
    pages = [[opening, "Signed.", "", "Further terms follow below.", "They bind both parties."] for opening in openings]
    doc = read_document(make_pdf(
        tmp_path / "c.pdf", pages,
        header=lambda n: [(72, "ACME Contract - Confidential")], footer=lambda n: f"Page {n} of 5",
    ))
    assert "Confidential" not in doc.text and "of 5" not in doc.text
    for page, opening in enumerate(openings, start=1):
        assert doc.page_text(page).startswith(f"{opening} Signed.\n\nFurther terms")
    assert doc.text.count("Signed.") == 5  # repeated, but not at an edge of the page


def test_pdf_drops_chapter_running_heads_by_their_page_number(tmp_path):
    # Each chapter's head repeats on two pages only, as in books with short chapters.
    topics = ["apples", "pears", "plums", "cherries", "grapes", "lemons", "melons", "figs"]
    pages = [[f"This page is about {topic}.", "It has a second line.", "", f"More on {topic} here.",
              f"And the last words on {topic}."] for topic in topics]
    doc = read_document(make_pdf(
        tmp_path / "book.pdf", pages,
        header=lambda n: [(72, f"Chapter {(n + 1) // 2}: Part {'ABCD'[(n - 1) // 2]}"), (500, str(n))],
    ))
    assert "Chapter" not in doc.text
    for page, topic in enumerate(topics, start=1):
        assert doc.page_text(page).startswith(f"This page is about {topic}.")
        assert doc.page_text(page).strip().endswith(f"And the last words on {topic}.")


def test_pdf_keeps_clauses_whose_numbers_match_the_page(tmp_path):
    # A reported agreement: a numbered clause at the top of page 3 and a line with two 5s on page
    # 5 looked like page numbers to the old running-head removal and were deleted.
    body = {3: ["3. Termination: either party may end this agreement with 30 days notice."],
            5: ["Section 2 continued: fees of 5 invoices are due within 5 days."],
            4: ["4 Payment", "The client pays monthly."]}
    pages = [body.get(n, [f"Clause text of page {n}, which binds both parties."]) for n in range(1, 7)]
    doc = read_document(make_pdf(
        tmp_path / "acme.pdf", pages,
        header=lambda n: [(72, "ACME Services Agreement")], footer=lambda n: f"Page {n} of 6",
    ))
    assert "ACME Services" not in doc.text and "of 6" not in doc.text
    assert doc.page_text(3).strip() == body[3][0]
    assert doc.page_text(5).strip() == body[5][0]
    assert doc.page_text(4).startswith("4 Payment")


def test_pdf_keeps_body_lines_that_repeat_on_short_pages(tmp_path):
    # Short pages whose every line repeats: once all deleted, and the file refused as empty.
    same = [["The parties agree to the terms below.", "Both sign each page."]] * 4
    doc = read_document(make_pdf(tmp_path / "same.pdf", same))
    assert doc.text.count("The parties agree to the terms below. Both sign each page.") == 4
    headings = [["Schedule of fees"]] * 3
    assert read_document(make_pdf(tmp_path / "schedule.pdf", headings)).text.count("Schedule of fees") == 3


@pytest.mark.parametrize("label", ["{n}", "Page {n}", "Page {n} of 9", "- {n} -", "[{n}]", "{n} / 9"])
def test_pdf_drops_page_labels(tmp_path, label):
    pages = [[f"Body of page {n} says something.", "It goes on."] for n in range(1, 10)]
    doc = read_document(make_pdf(tmp_path / "labels.pdf", pages, footer=lambda n: label.format(n=n)))
    for n in range(1, 10):
        assert doc.page_text(n).strip() == f"Body of page {n} says something. It goes on."


def test_pdf_keeps_bare_numbers_that_are_not_the_page_number(tmp_path):
    # A clause number alone at the top of a page is not a page number when it does not count pages.
    pages = [[str(7 + 3 * n), f"Clause {7 + 3 * n} text follows here."] for n in range(5)]
    doc = read_document(make_pdf(tmp_path / "clauses.pdf", pages))
    assert all(doc.page_text(n + 1).startswith(f"{7 + 3 * n}") for n in range(5))


def test_pdf_roman_front_matter_numbers_are_dropped(tmp_path):
    pages = [[f"Preface text number {n}."] for n in range(1, 5)]
    doc = read_document(make_pdf(tmp_path / "front.pdf", pages, footer=lambda n: ["i", "ii", "iii", "iv"][n - 1]))
    assert doc.text == "\n\n".join(f"Preface text number {n}." for n in range(1, 5))


def test_pdf_columns_are_read_one_after_the_other(tmp_path):
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_text((50, 100), "\n".join(f"left column line {i}" for i in range(5)))
    page.insert_text((320, 100), "\n".join(f"right column line {i}" for i in range(5)))
    pdf.save(tmp_path / "columns.pdf")
    text = read_document(tmp_path / "columns.pdf").text
    assert text.index("left column line 4") < text.index("right column line 0")


@pytest.mark.parametrize(("text", "encoding"), [
    (FRENCH, "utf-8"), (FRENCH, "utf-8-sig"), (FRENCH, "cp1252"), (PORTUGUESE, "latin-1"),
    (FRENCH, "utf-16"), ("Привет, мир! Москва — столица России. " * 5, "cp1251"),
])
def test_text_encodings(tmp_path, text, encoding):
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode(encoding))
    doc = read_document(path)
    assert doc.kind == "txt" and doc.text == text.strip() and doc.pages == 1


@pytest.mark.parametrize("text", [
    "Müller trinkt Bier für 5 €", "Déjà vu, señor", "Müller trinkt Bier für 5 €\nDéjà vu, señor\n",
    "Größe: 5 m², Preis 20 € – „gut“",
])
@pytest.mark.parametrize("encoding", ["cp1252", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-16", "utf-32"])
def test_western_text_and_utf16_32_without_bom(tmp_path, text, encoding):
    # Reported strings: cp1252 came out as "M³ller … f³r 5 Ć" and "Déją vu, seńor", and
    # UTF-16 without a byte-order mark was refused as binary.
    path = tmp_path / "w.txt"
    path.write_bytes(text.encode(encoding))
    assert read_document(path).text == text.strip()


def test_binary_with_nul_bytes_is_still_refused(tmp_path):
    path = tmp_path / "b.txt"
    path.write_bytes(bytes(range(256)) * 40)
    assert "binary" in refused(path)


def test_text_is_normalised(tmp_path):
    path = tmp_path / "n.txt"
    path.write_bytes(b"Title line\r\n\r\n\r\n\r\nBody\x07 text   \r\nnext line\x0cafter a form feed\n")
    doc = read_document(path)
    assert doc.text == "Title line\n\nBody text\nnext line\n\nafter a form feed"
    assert doc.title == "Title line"


def test_long_markdown_gets_pages_at_paragraph_ends(tmp_path):
    paragraphs = [f"Paragraph {i}. " + "word " * 100 for i in range(60)]
    path = tmp_path / "long.md"
    path.write_text("# Title here\n\n" + "\n\n".join(paragraphs), encoding="utf-8")
    doc = read_document(path)
    assert doc.kind == "md" and doc.title == "Title here"
    assert doc.pages > 5
    assert all(len(doc.page_text(p)) <= TEXT_PAGE_CHARS for p in range(1, doc.pages + 1))
    assert all(doc.page_text(p).endswith("\n\n") for p in range(1, doc.pages))
    assert all(doc.page_at(doc.page_starts[p - 1]) == p for p in range(1, doc.pages + 1))
    offset = doc.text.index("Paragraph 42.")
    assert "Paragraph 42." in doc.page_text(doc.page_at(offset))


def test_text_without_paragraphs_still_gets_pages(tmp_path):
    path = tmp_path / "one-line.markdown"
    path.write_text("word " * 3000, encoding="utf-8")
    doc = read_document(path)
    assert doc.kind == "md" and doc.pages >= 5
    assert doc.title == "one-line"  # the only line is far too long to be a title
    assert all(doc.page_text(p).endswith(" ") for p in range(1, doc.pages))


def test_docx_paragraphs_and_tables_in_order(tmp_path):
    docx = pytest.importorskip("docx")
    d = docx.Document()
    d.core_properties.title = "Supply Contract"
    d.add_paragraph("A contract between two parties.")
    table = d.add_table(rows=2, cols=3)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text, table.rows[0].cells[2].text = "Item", "Price", "Due"
    merged = table.cell(1, 0).merge(table.cell(1, 1))
    merged.text = "Widgets"
    table.rows[1].cells[2].text = "May"
    d.add_paragraph("Signed by both.")
    d.save(tmp_path / "c.docx")
    doc = read_document(tmp_path / "c.docx")
    assert doc.kind == "docx" and doc.title == "Supply Contract" and doc.pages == 1
    assert doc.text == "A contract between two parties.\n\nItem | Price | Due\nWidgets | May\n\nSigned by both."


def test_docx_refusals(tmp_path, monkeypatch):
    pytest.importorskip("docx")
    (tmp_path / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "locked.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512)
    assert "not a valid Word document" in refused(tmp_path / "broken.docx")
    assert "password-protected" in refused(tmp_path / "locked.docx")
    monkeypatch.setitem(sys.modules, "docx", None)
    assert "needs the python-docx package" in refused(tmp_path / "broken.docx")


def test_refusals(tmp_path):
    (tmp_path / "folder.pdf").mkdir()
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "x.odt").write_text("hi")
    (tmp_path / "nul.txt").write_bytes(b"\x00\x01\x02binary\x00" * 100)
    (tmp_path / "controls.txt").write_bytes(bytes(range(1, 32)) * 50)
    (tmp_path / "blank.md").write_text("   \n\n \t \n")
    cases = {
        "missing.pdf": "no such file",
        "folder.pdf": "is a folder",
        "empty.txt": "is empty",
        "x.odt": "unknown format '.odt'",
        "nul.txt": "looks like binary data, not text",
        "controls.txt": "looks like binary data, not text",
        "blank.md": "contains no readable text",
    }
    for name, message in cases.items():
        assert message in refused(tmp_path / name)
    assert all(suffix in refused(tmp_path / "x.odt") for suffix in SUPPORTED_SUFFIXES)


def test_damaged_encrypted_and_scanned_pdfs(tmp_path):
    whole = make_pdf(tmp_path / "w.pdf", [["Some text on a page."]] * 3).read_bytes()
    (tmp_path / "half.pdf").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "junk.pdf").write_bytes(b"%PDF-1.7 this is not really a pdf")
    (tmp_path / "page.pdf").write_bytes(b"<html><body>A web page saved as .pdf</body></html>")
    locked = pymupdf.open()
    locked.new_page().insert_text((72, 72), "secret")
    locked.save(tmp_path / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="o", user_pw="u")
    drawn = pymupdf.open()
    drawn.new_page().draw_rect(pymupdf.Rect(10, 10, 100, 100))
    drawn.save(tmp_path / "drawn.pdf")
    picture = pymupdf.open()
    pixmap = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 32, 32), False)
    pixmap.clear_with(200)
    picture.new_page().insert_image(pymupdf.Rect(72, 72, 300, 300), pixmap=pixmap)
    picture.save(tmp_path / "scan.pdf")
    make_pdf(tmp_path / "numbers.pdf", [[]] * 3, footer=lambda n: f"- {n} -")
    cases = {
        "half.pdf": "damaged or truncated",
        "junk.pdf": "damaged or truncated",
        "page.pdf": "is not a PDF",
        "locked.pdf": "password-protected",
        "drawn.pdf": "shows no text",
        "scan.pdf": "pictures without words",
        "numbers.pdf": "contains no readable text",
    }
    for name, message in cases.items():
        assert message in refused(tmp_path / name)


def test_real_manual_loses_no_line_but_its_running_heads():
    # R-intro.pdf ships with Debian's r-doc-pdf (bench/data/SOURCES.md): every line of four words
    # or more in its text layer is in Comma's text, except the chapter heads atop the pages.
    path = Path(__file__).parents[2] / "bench" / "data" / "R-intro.pdf"
    doc, pdf = read_document(path), pymupdf.open(path)
    missing = []
    for number, page in enumerate(pdf, start=1):
        ours = " ".join(doc.page_text(number).split())
        for line in page.get_text("text").split("\n"):
            words = line.split()
            if words and words[-1].endswith("-"):  # joined with the next line's word
                words = words[:-1]
            if len(words) >= 4 and " ".join(words) not in ours:
                missing.append((number, line))
    assert len(missing) > 50 and all(line.startswith(("Chapter ", "Appendix ")) for _, line in missing)
    assert sum(doc.page_text(p).startswith(("Chapter ", "Appendix ")) for p in range(1, doc.pages + 1)) < 10


@pytest.mark.skipif(not REAL_PDF.exists(), reason="needs Debian's libtasn1-doc")
def test_real_manual_has_no_running_heads():
    doc = read_document(REAL_PDF)
    assert doc.pages > 10 and doc.title == "Libtasn1"
    firsts = [doc.page_text(p).split("\n", 1)[0] for p in range(1, doc.pages + 1)]
    assert not any(line.startswith(("Chapter ", "Appendix A: ")) for line in firsts)
    assert len(set(firsts)) == len(firsts)
    assert "(DER) manipulation." in doc.page_text(2)  # "manip-" / "ulation" across a line break
    assert doc.page_at(doc.text.rindex("4.2 ASN.1 field functions")) == 11


def test_limits_refuse_big_files_before_reading_them(tmp_path, monkeypatch):
    pdf = make_pdf(tmp_path / "six.pdf", [[f"Page {n} text."] for n in range(6)])
    message = str(pytest.raises(DocumentError, read_document, pdf, Limits(pages=5)).value)
    assert "has 6 pages" in message and "5 pages" in message and "Settings" in message
    assert read_document(pdf, Limits(pages=6)).pages == 6
    assert "characters" in str(pytest.raises(DocumentError, read_document, pdf, Limits(chars=30)).value)

    text = tmp_path / "big.txt"
    text.write_text("word " * 2_000)
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("a too-big text file was loaded"))
    assert "characters of text" in str(pytest.raises(DocumentError, read_document, text, Limits(chars=2_000)).value)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert "characters of text" in str(pytest.raises(DocumentError, read_document, text, Limits(chars=9_000)).value)
    assert read_document(text, Limits(chars=10_000)).text.startswith("word word")


def _docx_with_part(path, name, data):
    import zipfile

    docx = pytest.importorskip("docx")
    word = docx.Document()
    word.add_paragraph("A short letter.")
    word.save(path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr(name, data)
    return path


def test_docx_that_expands_too_far_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    import os

    import docx

    bomb = _docx_with_part(tmp_path / "bomb.docx", "word/media/zeros.bin", bytes(20_000_000))
    big = _docx_with_part(tmp_path / "big.docx", "word/media/photo.bin", os.urandom(3_000_000))
    fine = _docx_with_part(tmp_path / "fine.docx", "word/media/photo.bin", os.urandom(300_000))
    monkeypatch.setattr(docx, "Document", lambda *a: pytest.fail("python-docx was asked to parse it"))
    message = refused(bomb)
    assert "expands" in message and "zip bomb" in message and "Settings" in message
    assert bomb.stat().st_size < 100_000
    message = str(pytest.raises(DocumentError, read_document, big, Limits(expanded_bytes=2_000_000)).value)
    assert "expands to 4 MB, over the 2 MB" in message
    monkeypatch.undo()
    assert read_document(fine).text == "A short letter."


def _lying_docx(path, claimed: int, expanded: int, crc_of_claimed: bool):
    """A Word file whose main part inflates to ``expanded`` bytes while its zip directory and its
    local header both claim ``claimed``; its CRC is that of the whole part, or of the claimed
    bytes alone (then the part checks out as the truncated bytes the reader would return)."""
    import struct
    import zipfile
    import zlib

    _docx_with_part(path, "word/media/empty.bin", b"")
    with zipfile.ZipFile(path) as zipped:
        parts = {info.filename: zipped.read(info) for info in zipped.infolist()}
    body = b'<?xml version="1.0"?>' + b" " * 1000
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream, crc, done = [deflate.compress(body)], zlib.crc32(body), len(body)
    zeros = bytes(1 << 20)
    while done < expanded:
        stream.append(deflate.compress(zeros))
        crc, done = zlib.crc32(zeros, crc), done + len(zeros)
    stream.append(deflate.flush())
    data = b"".join(stream)
    if crc_of_claimed:
        crc = zlib.crc32(body[:claimed])
    out, central = bytearray(), bytearray()
    for name, blob in parts.items():
        raw, method, size, checksum = zlib.compress(blob, 9)[2:-4], 8, len(blob), zlib.crc32(blob)
        if name == "word/document.xml":
            raw, size, checksum = data, claimed, crc
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, checksum, len(raw), size, len(name), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(out)) \
            + name.encode()
        out += b"PK\x03\x04" + fields + name.encode() + raw
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(parts), len(parts), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


@pytest.mark.parametrize("crc_of_claimed", [False, True], ids=["the whole part's CRC", "the claimed bytes' CRC"])
def test_docx_whose_zip_directory_lies_about_sizes_is_refused_in_little_memory(tmp_path, crc_of_claimed):
    """Python's zip reader trusts the directory's sizes and inflates up to 2 GB in one call:
    parts are inflated a chunk at a time, within the limits, and python-docx reads only those."""
    import tracemalloc

    bomb = _lying_docx(tmp_path / "bomb.docx", 500, 400_000_000, crc_of_claimed)
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        message = refused(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "not a valid Word document or is damaged" in message
    assert peak < 100_000_000, f"refusing it took {peak / 1e6:.0f} MB"


def test_docx_parts_are_counted_as_they_are_inflated(tmp_path, monkeypatch):
    """Were the zip reader to return more than the directory claims, the count of what it
    returned stops it at the limit."""
    import copy
    import zipfile

    big = _docx_with_part(tmp_path / "big.docx", "word/media/photo.bin", bytes(3_000_000))
    listed, opened = zipfile.ZipFile.infolist, zipfile.ZipFile.open

    def claimed(self):
        infos = [copy.copy(info) for info in listed(self)]
        for info in infos:
            info.file_size = min(info.file_size, 10)
        return infos

    monkeypatch.setattr(zipfile.ZipFile, "infolist", claimed)
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, part, mode="r", **kw: opened(
        self, part.filename if mode == "r" and isinstance(part, zipfile.ZipInfo) else part, mode, **kw))
    message = str(pytest.raises(DocumentError, read_document, big, Limits(expanded_bytes=2_000_000)).value)
    assert "expands to more than the 2 MB a Word document may take" in message


def test_docx_parts_packed_as_word_never_packs_them_are_refused(tmp_path):
    """bzip2 and LZMA parts inflate without bound in one read of Python's zip reader; two parts
    of one name leave readers disagreeing on which is the document."""
    import warnings
    import zipfile

    packed = _docx_with_part(tmp_path / "bzip2.docx", "word/media/empty.bin", b"")
    with zipfile.ZipFile(packed, "a", compression=zipfile.ZIP_BZIP2) as zipped:
        zipped.writestr("word/media/zeros.bin", bytes(1000))
    assert "packs its parts in a way Word never does" in refused(packed)
    twice = _docx_with_part(tmp_path / "twice.docx", "word/media/empty.bin", b"")
    with zipfile.ZipFile(twice, "a") as zipped, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the second name, as it should
        zipped.writestr("word/document.xml", zipped.read("word/document.xml"))
    assert "not a valid Word document or is damaged" in refused(twice)


def test_pdf_outline_gives_each_page_its_section(tmp_path):
    pdf = pymupdf.open()
    for lines in (["1 Scope", "This agreement covers services."], ["2 Fees", "Fees are due monthly."],
                  ["More about fees.", "Still fees."], ["8 Termination", "Either party may end it."]):
        page = pdf.new_page()
        for y, line in enumerate(lines):
            page.insert_text((72, 90 + 14 * y), line)
    pdf.set_toc([[1, "1 Scope", 1], [1, "2 Fees", 2], [2, "2.1 Late fees (abbreviated)", 3], [1, "8 Termination", 4]])
    pdf.save(tmp_path / "outlined.pdf")
    doc = read_document(tmp_path / "outlined.pdf")
    assert [(s.title, s.level, doc.page_at(s.start)) for s in doc.sections] == [
        ("1 Scope", 1, 1), ("2 Fees", 1, 2), ("2.1 Late fees (abbreviated)", 2, 3), ("8 Termination", 1, 4)]
    assert doc.section_at(doc.text.index("Either party")).title == "8 Termination"
    assert doc.section_at(doc.text.index("Still fees")).title == "2.1 Late fees (abbreviated)"
    assert doc.text[doc.sections[3].start:].startswith("8 Termination")  # placed where its title is


def test_pdf_without_outline_takes_sections_from_its_headings(tmp_path):
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_text((72, 60), "Services Agreement", fontsize=20)
    page.insert_text((72, 100), "Preamble words that open the agreement between the parties.", fontsize=11)
    page.insert_text((72, 140), "Payment", fontsize=15)
    page.insert_text((72, 170), "The client pays each invoice within thirty days.", fontsize=11)
    page.insert_text((72, 210), "8. Termination", fontsize=11, fontname="helvetica-bold")
    page.insert_text((72, 240), "Either party may end this agreement with 30 days notice.", fontsize=11)
    page.insert_text((72, 280), "A short bold aside", fontsize=11, fontname="helvetica-bold")
    pdf.save(tmp_path / "headed.pdf")
    doc = read_document(tmp_path / "headed.pdf")
    assert doc.title == "Services Agreement"
    assert [(s.title, s.level) for s in doc.sections] == [("Services Agreement", 1), ("Payment", 2),
                                                           ("8. Termination", 3)]
    assert doc.section_at(doc.text.index("30 days")).title == "8. Termination"
    assert doc.section_at(doc.text.index("thirty days")).title == "Payment"


def test_pdf_table_rows_stay_rows(tmp_path):
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_text((72, 80), "Fee schedule:")
    for y, row in enumerate([("Service", "Fee", "Due"), ("Setup", "500 EUR", "on signing"),
                             ("Support", "90 EUR", "monthly")]):
        for x, cell in zip((72, 250, 400), row, strict=True):
            page.insert_text((x, 110 + 14 * y), cell)
    pdf.save(tmp_path / "fees.pdf")
    text = read_document(tmp_path / "fees.pdf").text
    assert "Service | Fee | Due\nSetup | 500 EUR | on signing\nSupport | 90 EUR | monthly" in text


@pytest.mark.parametrize("metadata", ["X Desktop Group (http://www.freedesktop.org)", "contract_final_v3.docx",
                                      "Microsoft Word - offer", "untitled", ""])
def test_a_title_that_names_no_document_gives_way_to_the_first_page(tmp_path, metadata):
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_text((72, 60), "Shared Storage Lease", fontsize=22)
    page.insert_text((72, 100), "This lease is made between the landlord and the tenant.", fontsize=11)
    pdf.set_metadata({"title": metadata})
    pdf.save(tmp_path / "lease.pdf")
    assert read_document(tmp_path / "lease.pdf").title == "Shared Storage Lease"


def test_a_title_with_terminal_escapes_is_cleaned(tmp_path):
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "Body text of the lease.")
    set_raw_pdf_title(pdf, "\x1b]0;PWNED\x07\x1b[2JLease of the shop")
    pdf.save(tmp_path / "t.pdf")
    title = read_document(tmp_path / "t.pdf").title
    assert title == "]0;PWNED[2JLease of the shop" and title.isprintable()


SPEC = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")


@pytest.mark.skipif(not SPEC.exists(), reason="needs Debian's shared-mime-info")
def test_real_specification_title_and_sections():
    doc = read_document(SPEC)
    assert doc.title == "Shared MIME-info Database"
    assert doc.sections[0].title == "1. Introduction" and len(doc.sections) > 15
    glob = next(s for s in doc.sections if s.title.endswith("Recommended checking order"))
    assert doc.section_at(glob.start + 50) == glob


def test_docx_and_markdown_headings_are_sections(tmp_path):
    docx = pytest.importorskip("docx")
    word = docx.Document()
    word.add_heading("Consulting Contract", level=0)
    word.add_paragraph("Between us.")
    word.add_heading("Fees", level=1)
    word.add_paragraph("Fees are due monthly.")
    word.add_heading("Late fees", level=2)
    word.add_paragraph("Late fees add two percent.")
    word.save(tmp_path / "c.docx")
    doc = read_document(tmp_path / "c.docx")
    assert doc.title == "Consulting Contract"
    assert [(s.title, s.level) for s in doc.sections] == [("Fees", 1), ("Late fees", 2)]
    assert doc.section_at(doc.text.index("two percent")).title == "Late fees"

    (tmp_path / "n.md").write_text("# Notes\n\nIntro.\n\n## Setup ##\n\nSteps.\n\n```\n# not a heading\n```\n")
    md = read_document(tmp_path / "n.md")
    assert [(s.title, s.level) for s in md.sections] == [("Notes", 1), ("Setup", 2)]
    (tmp_path / "t.txt").write_text("AGREEMENT\n\n1. Scope\n\nWe agree.\n\n8. Termination\n\nIt ends. 2. Not one.\n")
    txt = read_document(tmp_path / "t.txt")
    assert [(s.title, s.level) for s in txt.sections] == [("1. Scope", 1), ("8. Termination", 1)]


CLAUSES = [["1. Scope: the supplier delivers the goods described below.", "The buyer pays on delivery."],
           ["3. Termination: either party may end this agreement", "with thirty days written notice."],
           ["5. Disputes go to arbitration in Geneva.", "This text is the whole agreement."]]


def test_a_mixed_pdf_reads_its_scanned_page_by_ocr_and_keeps_it(tmp_path, monkeypatch):
    from engine.documents import ocr

    path = scanned_pdf(tmp_path / "mixed.pdf", CLAUSES, scanned={2})
    seen = []
    kept_at = lambda sha256: tmp_path / "ocr" / f"{sha256}.json"  # noqa: E731
    doc = read_document(path, ocr_cache_path=kept_at, progress=lambda done, total: seen.append((done, total)))
    assert doc.ocr_pages == (2,) and doc.pages == 3 and seen[-1] == (1, 1)
    assert doc.page_text(1).startswith("1. Scope") and doc.page_text(3).startswith("5. Disputes")
    scanned = " ".join(doc.page_text(2).split())
    assert "Termination" in scanned and "thirty days" in scanned and doc.page_at(doc.text.index("thirty")) == 2
    kept = (tmp_path / "ocr" / f"{doc.sha256}.json")
    assert kept.is_file()
    # A second reading takes the kept lines: OCR does not run again.
    monkeypatch.setattr(ocr.PageReader, "lines", lambda self, page: pytest.fail("OCR ran again"))
    assert read_document(path, ocr_cache_path=kept_at).text == doc.text
    # A damaged or crafted file of kept lines is not trusted: the page is read again.
    kept.write_text('{"version": 1, "pages": {"2": [["injected", 0, 0, 1, 1, 1.0, "x"]]}}')
    monkeypatch.undo()
    assert read_document(path, ocr_cache_path=kept_at).text == doc.text


def test_ocr_can_be_cancelled_and_keeps_the_pages_it_read(tmp_path, monkeypatch):
    from engine.documents import ocr
    from engine.errors import Cancelled

    path = scanned_pdf(tmp_path / "scan.pdf", CLAUSES, scanned={1, 2, 3})
    kept_at = lambda sha256: tmp_path / "ocr" / f"{sha256}.json"  # noqa: E731
    read = []
    original = ocr.PageReader.lines
    monkeypatch.setattr(ocr.PageReader, "lines", lambda self, page: read.append(page.number) or original(self, page))
    with pytest.raises(Cancelled):
        read_document(path, ocr_cache_path=kept_at, cancelled=lambda: len(read) >= 1)
    assert read == [0]
    doc = read_document(path, ocr_cache_path=kept_at)
    assert doc.ocr_pages == (1, 2, 3) and read == [0, 1, 2]  # the first page was not read twice
    assert "arbitration" in doc.page_text(3)


def test_ocr_missing_is_a_clear_refusal(tmp_path, monkeypatch):
    from engine.documents import ocr

    def unavailable(self, page):
        raise ocr.OcrUnavailable("OCR needs RapidOCR: pip install rapidocr-onnxruntime")

    monkeypatch.setattr(ocr.PageReader, "lines", unavailable)
    message = refused(scanned_pdf(tmp_path / "scan.pdf", CLAUSES[:1], scanned={1}))
    assert "scanned pages" in message and "pip install rapidocr-onnxruntime" in message


def test_an_ocr_failure_on_a_page_is_a_clear_refusal(tmp_path, monkeypatch):
    from engine.documents import ocr

    def broken(self, page):
        raise RuntimeError("onnxruntime: bad allocation")

    monkeypatch.setattr(ocr.PageReader, "lines", broken)
    message = refused(scanned_pdf(tmp_path / "scan.pdf", CLAUSES[:1], scanned={1}))
    assert "OCR could not read page 1" in message and "bad allocation" in message
