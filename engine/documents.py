"""Documents: a file on disk becomes the clean text the model reads, with a page map for citations.

PDF, plain text, Markdown and Word files are read here, and nowhere else. Whatever the format,
the result is a :class:`Document`: its text, the character offset where each page starts, and
the SHA-256 of the file's bytes that identifies it in the library. Anything that cannot be read
raises :class:`~engine.errors.DocumentError` with a sentence a person can act on.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import locale
import re
import zipfile
from bisect import bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import charset_normalizer
import pymupdf

from engine.errors import DocumentError

SUPPORTED_SUFFIXES: tuple[str, ...] = (".pdf", ".txt", ".md", ".markdown", ".docx")
_KINDS = {".pdf": "pdf", ".txt": "txt", ".md": "md", ".markdown": "md", ".docx": "docx"}

TEXT_PAGE_CHARS = 3000  # size of the "pages" cut from formats that have none
TITLE_MAX_CHARS = 100

# Control characters, soft hyphens, stray byte-order marks and replacement characters carry no
# meaning for the model; tab, newline, form feed and carriage return are whitespace instead.
_CONTROLS = "\x00-\x08\x0b\x0e-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{_CONTROLS}]")
_INVISIBLE = re.compile(f"[{_CONTROLS}\u00ad\ufeff\ufffd]")
_BINARY_CONTROL_SHARE = 0.05

# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
_CHAOS_MARGIN = 0.05
_WESTERN = "cp1252"
_DOS_CODE_PAGES = frozenset({
    "cp437", "cp737", "cp775", "cp850", "cp852", "cp855", "cp856", "cp857", "cp858", "cp860", "cp861",
    "cp862", "cp863", "cp864", "cp865", "cp866", "cp869", "mac_iceland", "mac_roman", "mac_latin2",
    "mac_cyrillic", "mac_greek", "mac_turkish",
})

_SMALL_ZIP_BYTES = 1_000_000  # below this a high compression ratio cannot cost much
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # encrypted .docx and legacy .doc files

# MuPDF expands ligatures and turns unknown glyphs into U+FFFD (dropped) with these flags,
# and ignores text placed outside the page.
_PDF_FLAGS = pymupdf.TEXT_MEDIABOX_CLIP
_EDGE_ROWS = 2
_RUNNING_MIN_PAGES = 3
_SAME_PLACE_POINTS = 6  # a running head sits at one height; typesetters move it by less than this
_HEAD_MAX_WORDS = 12
_DIGITS = re.compile(r"\d+")
_ROMAN = r"[ivxlcdm]{1,8}"
_PAGE_LABEL = re.compile(
    rf"(?:(?:page|p\.|pg\.?|seite|p\u00e1gina|pagina)\s*)?[-\u2013\u2014\[(]?\s*(?P<number>\d{{1,5}}|{_ROMAN})\s*"
    r"(?:(?:of|/|von|de|sur)\s*\d{1,5})?\s*[-\u2013\u2014\])]?",
    re.IGNORECASE,
)
_HYPHENS = "-\u2010"


@dataclass(frozen=True)
class Document:
    """A readable document: clean text plus a page map.

    Page ``i`` (1-based) spans ``text[page_starts[i-1]:page_starts[i]]``, the last page runs to the
    end of the text, and a page without text has an empty span. PDFs keep their real pages; TXT,
    Markdown and DOCX files have none, so their text is cut into "pages" of about
    ``TEXT_PAGE_CHARS`` characters at paragraph boundaries, which lets answers cite them the same way.
    """

    path: Path
    title: str
    sha256: str
    text: str
    page_starts: tuple[int, ...]
    kind: str

    @property
    def pages(self) -> int:
        return len(self.page_starts)

    def page_of(self, char_offset: int) -> int:
        """The 1-based page holding ``char_offset``, clamped to the document's pages."""
        return min(max(bisect_right(self.page_starts, char_offset), 1), self.pages)

    def page_text(self, page: int) -> str:
        if not 1 <= page <= self.pages:
            raise ValueError(f"page {page} is outside 1..{self.pages}")
        end = self.page_starts[page] if page < self.pages else len(self.text)
        return self.text[self.page_starts[page - 1]:end]


@dataclass(frozen=True)
class Limits:
    """How much work a file may cause, checked before anything large is allocated. Every real
    contract or manual fits the defaults; a person can raise them (Settings → Limits, or
    ``comma ingest --max-pages …``) for a file that really is that big."""

    pages: int = 5_000
    chars: int = 50_000_000
    expanded_bytes: int = 200_000_000  # a DOCX's parts, uncompressed
    compression_ratio: int = 100  # a DOCX's parts, uncompressed size over compressed size

    def check_pages(self, path: Path, pages: int) -> None:
        if pages > self.pages:
            raise DocumentError(
                f"{path} has {pages:,} pages; Comma reads documents of up to {self.pages:,} pages. "
                f"{_RAISE_LIMIT} (--max-pages) to read it anyway."
            )

    def check_chars(self, path: Path, chars: int) -> None:
        if chars > self.chars:
            raise DocumentError(
                f"{path} holds more than {self.chars:,} characters of text, which would take many hours "
                f"to read. {_RAISE_LIMIT} (--max-chars) to read it anyway."
            )


_RAISE_LIMIT = "Raise the limit in Settings → Limits"


def read_document(path: str | Path, limits: Limits | None = None) -> Document:
    """Read a PDF, TXT, Markdown or DOCX file; raise DocumentError if it cannot be read."""
    limits = limits or Limits()
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise DocumentError(f"Cannot open {path}: no such file.")
    if path.is_dir():
        raise DocumentError(f"{path} is a folder, not a document.")
    if not path.is_file():
        raise DocumentError(f"{path} is not a regular file.")
    suffix = path.suffix.lower()
    if suffix not in _KINDS:
        raise DocumentError(
            f"{path} has an unknown format '{suffix or 'no extension'}'; "
            f"Comma reads {', '.join(SUPPORTED_SUFFIXES)} files."
        )
    kind = _KINDS[suffix]
    if kind == "txt" or kind == "md":
        # No text encoding takes more than four bytes a character.
        limits.check_chars(path, path.stat().st_size // 4)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DocumentError(f"Cannot read {path}: {e.strerror or e}.") from e
    if not data:
        raise DocumentError(f"{path} is empty (0 bytes).")

    if kind == "pdf":
        metadata_title, pages = _read_pdf(path, data, limits)
        text, starts = _join_pages(pages)
    else:
        metadata_title, raw = _read_docx(path, data, limits) if kind == "docx" else ("", _decode(path, data))
        limits.check_chars(path, len(raw))
        text = _clean_text(raw)
        starts = _paginate(text)
    if not text.strip():
        raise DocumentError(f"{path} contains no readable text.")
    return Document(
        path=path, title=_title(text, metadata_title, path.stem), sha256=hashlib.sha256(data).hexdigest(),
        text=text, page_starts=starts, kind=kind,
    )


def _title(text: str, metadata_title: str, fallback: str) -> str:
    if metadata_title.strip():
        return " ".join(metadata_title.split())
    first = re.sub(r"^#+\s+", "", text.lstrip().split("\n", 1)[0]).strip()
    return first if len(first) <= TITLE_MAX_CHARS and any(c.isalnum() for c in first) else fallback


# --- PDF ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    block: int
    baseline: int
    x: float
    text: str


def _read_pdf(path: Path, data: bytes, limits: Limits) -> tuple[str, list[str]]:
    """The metadata title and the clean text of each page."""
    not_pdf = DocumentError(f"{path} is not a PDF, or it is damaged or truncated.")
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as e:  # MuPDF's errors share no public base class
        raise not_pdf from e
    with doc:
        if not doc.is_pdf:  # MuPDF opens images, HTML and e-books whatever the extension says
            raise not_pdf
        if doc.needs_pass:
            raise DocumentError(f"{path} is password-protected; remove the password and add it again.")
        # MuPDF silently repairs a cut-off file and shows only the pages that survived; a repaired
        # file without its end marker is an incomplete download or copy, not a usable document.
        if doc.page_count == 0 or (doc.is_repaired and b"%%EOF" not in data[-1024:]):
            raise DocumentError(f"{path} is damaged or truncated (an incomplete download or copy?).")
        limits.check_pages(path, doc.page_count)
        try:
            pages, chars = [], 0
            for i in range(doc.page_count):
                pages.append(_pdf_lines(doc[i]))
                chars += sum(len(line.text) + 1 for line in pages[-1])
                limits.check_chars(path, chars)
        except DocumentError:
            raise
        except Exception as e:
            raise DocumentError(f"{path} is damaged: MuPDF could not read its text ({e}).") from e
        title = (doc.metadata or {}).get("title") or ""
    if not any(pages):
        raise DocumentError(
            f"{path} has no text layer (it looks scanned or is blank), and Comma cannot read text "
            "from images yet (no OCR)."
        )
    return title, [_paragraphs(lines) for lines in _strip_running_rows(pages)]


def _pdf_lines(page: pymupdf.Page) -> list[_Line]:
    # Blocks in MuPDF's order, not sorted by position: sorting by height interleaves the lines
    # of side-by-side columns.
    lines = []
    for block_no, block in enumerate(page.get_text("dict", flags=_PDF_FLAGS)["blocks"]):
        for line in block.get("lines", ()):
            text = " ".join(_INVISIBLE.sub("", "".join(span["text"] for span in line["spans"])).split())
            if text:
                baseline = round(line["spans"][0]["origin"][1])
                lines.append(_Line(block_no, baseline, line["bbox"][0], text))
    return lines


def _edge_rows(lines: list[_Line]) -> tuple[list[int], list[int]]:
    """Baselines of the top and bottom rows of a page, outermost first."""
    baselines = sorted({line.baseline for line in lines})
    return baselines[:_EDGE_ROWS], baselines[::-1][:_EDGE_ROWS]


def _row_text(lines: list[_Line], baseline: int) -> str:
    return " ".join(line.text for line in sorted(lines, key=lambda line: line.x) if line.baseline == baseline)


def _row_key(text: str, baseline: int) -> tuple[str, int]:
    # Running heads differ from page to page only by their page number, and sit at one height.
    return _DIGITS.sub("#", text.lower()), round(baseline / _SAME_PLACE_POINTS)


def _label_number(text: str) -> int | str | None:
    """The page number of a row that is only a page label ("12", "Page 12 of 40", "- 12 -"),
    as an int, or the numeral of a roman one ("iv"); None for any other row."""
    match = _PAGE_LABEL.fullmatch(text)
    if not match:
        return None
    number = match.group("number")
    return int(number) if number.isdigit() else number.lower()


def _is_plain_label(text: str) -> bool:
    # A bare "12" or "iv" may be a clause or list number; "Page 12", "12 of 40" or "- 12 -" cannot.
    return _DIGITS.fullmatch(text) is not None or re.fullmatch(_ROMAN, text, re.IGNORECASE) is not None


def _sentence_like(text: str) -> bool:
    """Body text rather than a head: a sentence ends in punctuation, and heads are short."""
    words = text.split()
    return len(words) > _HEAD_MAX_WORDS or (len(words) >= 3 and text[-1] in ".!?;:")


def _end_numbers(text: str) -> set[int]:
    # A running head carries its page number first or last ("12 Contents", "Chapter 4: Terms 18").
    words = text.split()
    return {int(word) for word in (words[0], words[-1]) if word.isdigit()}


def _strip_running_rows(pages: list[list[_Line]]) -> list[list[_Line]]:
    """Remove page numbers, running headers and running footers from the top and bottom of pages.

    Only rows within ``_EDGE_ROWS`` of an edge are considered, outermost first, and a sentence is
    never removed. A row goes when it is

    - a page label ("12", "Page 12 of 40", "- 12 -"); a bare number only when it is the printed
      page number the document uses at that edge, a bare roman numeral when that edge numbers at
      least three pages so;
    - the same text (digits aside) at the same place on at least three pages and on at least half
      the pages from its first to its last appearance (a document-wide or chapter head); or
    - a short head whose first or last word is the page number printed at that edge: books
      repeat a chapter's title only over that chapter, often only two pages.

    A page keeps its last row even when that row repeats elsewhere: removing every row of a
    short page is how body text used to be lost.
    """
    edges = [_edge_rows(lines) for lines in pages]
    rows = [
        [{baseline: _row_text(lines, baseline) for baseline in side} for side in page_edges]
        for lines, page_edges in zip(pages, edges, strict=True)
    ]
    offsets = [_page_number_offset(rows, side) for side in (0, 1)]
    roman_edges = [
        sum(any(isinstance(_label_number(t), str) for t in page[side].values()) for page in rows) >= _RUNNING_MIN_PAGES
        for side in (0, 1)
    ]
    running = []
    for side in (0, 1):
        seen = defaultdict(list)
        for number, page in enumerate(rows):
            for key in {_row_key(text, baseline) for baseline, text in page[side].items()}:
                seen[key].append(number)
        running.append({
            key for key, at in seen.items()
            if len(at) >= _RUNNING_MIN_PAGES and 2 * len(at) >= at[-1] - at[0] + 1
        })

    def removable(page_no: int, side: int, baseline: int, text: str) -> bool:
        label = _label_number(text)
        offset = offsets[side]
        if label is not None:
            if isinstance(label, str):
                return roman_edges[side] or not _is_plain_label(text)
            return not _is_plain_label(text) or (offset is not None and label == page_no - offset)
        if _sentence_like(text):
            return False
        if _row_key(text, baseline) in running[side]:
            return True
        return offset is not None and page_no - offset in _end_numbers(text)

    stripped = []
    for page_no, (lines, page) in enumerate(zip(pages, rows, strict=True), start=1):
        dropped: set[int] = set()
        for side in (0, 1):
            for baseline, text in page[side].items():
                if baseline not in dropped and not removable(page_no, side, baseline, text):
                    break
                dropped.add(baseline)
        kept = [line for line in lines if line.baseline not in dropped]
        if not kept:  # every row was an edge row: keep all but the page labels
            labels = {b for side in page for b, text in side.items() if _label_number(text) is not None}
            kept = [line for line in lines if line.baseline not in labels]
        stripped.append(kept)
    return stripped


def _page_number_offset(rows: list[list[dict[int, str]]], side: int) -> int | None:
    """Page index minus printed page number at one edge, when at least half the pages (and at
    least three) print one there, as a page label or at an end of a short head."""
    votes: Counter[int] = Counter()
    for page_no, page in enumerate(rows, start=1):
        numbers: set[int] = set()
        for text in page[side].values():
            label = _label_number(text)
            if isinstance(label, int):
                numbers.add(label)
            elif label is None and not _sentence_like(text):
                numbers |= _end_numbers(text)
        votes.update({page_no - n for n in numbers})
    if not votes:
        return None
    offset, count = votes.most_common(1)[0]
    return offset if count >= _RUNNING_MIN_PAGES and 2 * count >= len(rows) else None


def _paragraphs(lines: list[_Line]) -> str:
    # MuPDF starts a new block at a paragraph's vertical gap, so blocks are the paragraphs and
    # the line breaks inside a block are only where the typesetter ran out of width.
    return "\n\n".join(
        _join_lines([line.text for line in block]) for _, block in groupby(lines, key=lambda line: line.block)
    )


def _join_lines(lines: list[str]) -> str:
    parts = [lines[0]]
    for line in lines[1:]:
        previous = parts[-1]
        if previous[-1] in _HYPHENS and previous[-2:-1].isalpha() and line[0].islower():
            parts[-1] = previous[:-1] + line
        else:
            parts.append(line)
    return " ".join(parts)


def _join_pages(pages: list[str]) -> tuple[str, tuple[int, ...]]:
    """Join pages with blank lines; the separator belongs to the page before it, so a page
    without text starts where the next page's text does and keeps an empty span."""
    text = "\n\n".join(page for page in pages if page)
    starts, offset = [], 0
    for page in pages:
        starts.append(min(offset, len(text)))
        if page:
            offset += len(page) + 2
    return text, tuple(starts)


# --- text, Markdown, Word ----------------------------------------------------------------------


def _decode(path: Path, data: bytes) -> str:
    binary = DocumentError(f"{path} looks like binary data, not text.")
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError:
                raise binary from None
    if b"\x00" in data:  # UTF-16 of ASCII text is valid UTF-8 too
        text = _decode_by_detection(data)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = _decode_by_detection(data)
    if not text or len(_CONTROL.findall(text)) > _BINARY_CONTROL_SHARE * len(text):
        raise binary
    return text


def _decode_by_detection(data: bytes) -> str:
    """The text charset-normalizer finds, or "" when no encoding fits.

    charset-normalizer ranks single-byte code pages by "chaos" alone and often puts a DOS,
    Baltic or Central European one first for Western text: "Müller" comes out "M³ller". Among
    the nearly-as-clean candidates, the one whose letters best fit a language wins, then
    cp1252 or the locale's own encoding, and DOS code pages last. Text with NUL bytes can only be
    UTF-16 or UTF-32 without a byte-order mark.
    """
    matches = list(charset_normalizer.from_bytes(data))
    if b"\x00" in data:
        matches = [m for m in matches if m.encoding.startswith(("utf_16", "utf_32"))]
    if not matches:
        return ""
    least_chaos = min(m.chaos for m in matches)
    preferred = _preferred_encodings()

    def rank(match: charset_normalizer.CharsetMatch) -> tuple[float, bool, bool]:
        names = {match.encoding, *match.could_be_from_charset}
        return round(match.coherence, 2), bool(names & preferred), not names <= _DOS_CODE_PAGES

    best = max((m for m in matches if m.chaos <= least_chaos + _CHAOS_MARGIN), key=rank)
    names = {best.encoding, *best.could_be_from_charset}
    for encoding in (e for e in preferred if e in names):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return str(best)


def _preferred_encodings() -> set[str]:
    names = {_WESTERN}
    try:
        names.add(codecs.lookup(locale.getpreferredencoding(False)).name.replace("-", "_"))
    except LookupError:
        pass
    return names - {"utf_8"}


def _read_docx(path: Path, data: bytes, limits: Limits) -> tuple[str, str]:
    """The core-properties title and the text of paragraphs and tables in document order."""
    try:
        import docx
    except ImportError:
        raise DocumentError(
            f"{path} is a Word document, and reading DOCX needs the python-docx package "
            "(pip install python-docx)."
        ) from None
    if data.startswith(_OLE_MAGIC):
        raise DocumentError(f"{path} is password-protected or an old .doc file, which Comma cannot read.")
    _check_expansion(path, data, limits)
    try:
        word = docx.Document(io.BytesIO(data))
    except Exception as e:  # a broken zip, a missing part or bad XML: all mean the same to a reader
        raise DocumentError(f"{path} is not a valid Word document or is damaged.") from e
    blocks = []
    for item in word.iter_inner_content():
        if isinstance(item, docx.table.Table):
            # A cell spanning several columns is listed once per column.
            rows = (" | ".join(cell.text for cell in dict.fromkeys(row.cells)) for row in item.rows)
            blocks.append("\n".join(rows))
        else:
            blocks.append(item.text)
    return word.core_properties.title or "", "\n\n".join(blocks)


def _check_expansion(path: Path, data: bytes, limits: Limits) -> None:
    """Refuse a DOCX whose parts would expand past the limits, from the sizes its zip directory
    declares (Python's zip reader never returns more than those)."""
    try:
        parts = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # python-docx says what is wrong with it
    expanded = sum(part.file_size for part in parts)
    compressed = max(1, sum(part.compress_size for part in parts))
    if expanded > limits.expanded_bytes:
        raise DocumentError(
            f"{path} expands to {expanded / 1e6:,.0f} MB, over the {limits.expanded_bytes / 1e6:,.0f} MB a Word "
            f"document may take. {_RAISE_LIMIT} (--max-expanded-mb) to read it anyway."
        )
    if expanded > _SMALL_ZIP_BYTES and expanded / compressed > limits.compression_ratio:
        raise DocumentError(
            f"{path} expands {expanded / compressed:,.0f} times ({len(data) / 1e6:,.1f} MB to {expanded / 1e6:,.0f} MB), "
            f"far more than a real Word document (a zip bomb?). {_RAISE_LIMIT} to read it anyway."
        )


def _clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n\n")
    lines = (line.rstrip() for line in _INVISIBLE.sub("", text).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _paginate(text: str) -> tuple[int, ...]:
    """Cut at the last paragraph break, else line break, else space, in the second half of each
    ``TEXT_PAGE_CHARS`` stretch."""
    starts = [0]
    while len(text) - starts[-1] > TEXT_PAGE_CHARS:
        start = starts[-1]
        for separator in ("\n\n", "\n", " "):
            cut = text.rfind(separator, start + TEXT_PAGE_CHARS // 2, start + TEXT_PAGE_CHARS)
            if cut >= 0:
                starts.append(cut + len(separator))
                break
        else:
            starts.append(start + TEXT_PAGE_CHARS)
    return tuple(starts)
