"""Documents: a file on disk becomes the clean text the model reads, with a page map for citations.

PDF, plain text, Markdown and Word files are read here, and nowhere else (engine.documents.pdf_text and
engine.documents.text_files do the format's own work). Whatever the format, the result is a
:class:`Document`: its text, the character offset where each page starts, the sections a page
belongs to, and the SHA-256 of the file's bytes that identifies it in the library. Anything that
cannot be read raises :class:`~engine.errors.DocumentError` with a sentence a person can act on.
"""

from __future__ import annotations

import errno
import hashlib
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pymupdf

from engine.documents import ocr, ocr_cache, pdf_text, text_files
from engine.documents.limits import Limits
from engine.errors import DocumentError, stop_reading_if
from engine.protocols import Progress

SUPPORTED_SUFFIXES: tuple[str, ...] = (".pdf", ".txt", ".md", ".markdown", ".docx")
_KINDS = {".pdf": "pdf", ".txt": "txt", ".md": "md", ".markdown": "md", ".docx": "docx"}

TEXT_PAGE_CHARS = 3000  # size of the "pages" cut from formats that have none
TITLE_MAX_CHARS = 100
_OCR_SAVE_EVERY = 10  # pages

# Metadata titles that name no document: a URL or publisher's site, a file name, a placeholder.
_NOT_A_TITLE = re.compile(
    r"https?://|www\.|\.(?:com|org|net)\b|\.(?:pdf|docx?|txt|md|tex|dvi|ps|rtf|odt|indd)$|^microsoft word - "
    r"|^(?:untitled|title|document\d*|no title|slide \d+|\W*)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Section:
    """A part of a document under one heading: it runs from ``start`` (an offset in the text)
    to the next section's start."""

    title: str
    level: int  # 1 for a chapter, 2 for its sections, and so on
    start: int


@dataclass(frozen=True)
class Document:
    """A readable document: clean text plus a page map and its sections.

    Page ``i`` (1-based) spans ``text[page_starts[i-1]:page_starts[i]]``, the last page runs to the
    end of the text, and a page without text has an empty span. PDFs keep their real pages; TXT,
    Markdown and DOCX files have none, so their text is cut into "pages" of about
    ``TEXT_PAGE_CHARS`` characters at paragraph boundaries, which lets answers cite them the same way.
    Sections come from a PDF's outline, else its headings, and from a Word or Markdown file's
    headings; they are in text order.
    """

    path: Path
    title: str
    sha256: str
    text: str
    page_starts: tuple[int, ...]
    kind: str
    sections: tuple[Section, ...] = ()
    ocr_pages: tuple[int, ...] = ()  # the pages whose text OCR read (scanned pages)

    @property
    def pages(self) -> int:
        return len(self.page_starts)

    def page_at(self, char_offset: int) -> int:
        """The 1-based page holding ``char_offset``, clamped to the document's pages."""
        return min(max(bisect_right(self.page_starts, char_offset), 1), self.pages)

    def page_text(self, page: int) -> str:
        if not 1 <= page <= self.pages:
            raise ValueError(f"page {page} is outside 1..{self.pages}")
        end = self.page_starts[page] if page < self.pages else len(self.text)
        return self.text[self.page_starts[page - 1]:end]

    def section_at(self, char_offset: int) -> Section | None:
        """The section that holds ``char_offset`` (the last one begun by then), if any."""
        at = bisect_right([s.start for s in self.sections], char_offset)
        return self.sections[at - 1] if at else None


def read_document(path: str | Path, limits: Limits | None = None, ocr_cache_path: Callable[[str], Path] | None = None,
                  progress: Progress | None = None, cancelled: Callable[[], bool] | None = None) -> Document:
    """Read a PDF, TXT, Markdown or DOCX file; raise DocumentError if it cannot be read.

    A PDF's pages without a text layer are read by OCR, one after another, reporting
    ``progress(done, total)`` in pages and stopping (Cancelled) when ``cancelled()`` turns true;
    with ``ocr_cache_path`` (the file for a document's SHA-256) their lines are kept there and not
    recognised again.
    """
    limits = limits or Limits()
    path = _found(Path(path))
    suffix = path.suffix.lower()
    if suffix not in _KINDS:
        raise DocumentError(
            f"{path} has an unknown format '{suffix or 'no extension'}'; "
            f"Comma reads {', '.join(SUPPORTED_SUFFIXES)} files."
        )
    kind = _KINDS[suffix]
    try:
        if kind == "txt" or kind == "md":
            # No text encoding takes more than four bytes a character.
            limits.check_chars(path, path.stat().st_size // 4)
        data = path.read_bytes()
    except OSError as e:
        raise DocumentError(f"Cannot read {path}: {e.strerror or e}.") from e
    if not data:
        raise DocumentError(f"{path} is empty (0 bytes).")

    if kind == "pdf":
        sha256 = hashlib.sha256(data).hexdigest()
        kept_at = ocr_cache_path(sha256) if ocr_cache_path is not None else None
        pdf = _read_pdf(path, data, limits, _Recognition(kept_at, sha256, progress, cancelled))
        text, starts = _join_pages(pdf.pages)
        sections = _place_on_pages(text, starts, pdf.headings, pdf.from_outline)
        own_titles = [pdf.metadata_title, pdf.first_page_title]
    else:
        if kind == "docx":
            own_title, raw, headings = text_files.read_docx(path, data, limits)
        else:
            own_title, raw, headings = "", text_files.decode(path, data), []
        limits.check_chars(path, len(raw))
        text = text_files.clean_text(raw)
        starts = _paginate(text)
        if kind == "docx":
            sections = _place_in_order(text, headings)
        else:
            sections = tuple(Section(t, level, at) for t, level, at in text_files.text_headings(text, kind == "md"))
        own_titles = [own_title]
    if not text.strip():
        raise DocumentError(f"{path} contains no readable text.")
    return Document(
        path=path, title=_title(own_titles, text, path.stem), sha256=hashlib.sha256(data).hexdigest(),
        text=text, page_starts=starts, kind=kind, sections=sections,
        ocr_pages=pdf.ocr_pages if kind == "pdf" else (),
    )


def _found(given: Path) -> Path:
    """The regular file ``given`` names, with its full path, or a DocumentError that says why not
    (whatever the operating system answers on the way: a symbolic link that leads round in a
    loop, a folder that may not be read)."""
    shown = _shown(str(given))
    try:
        path = given.expanduser().resolve()
        shown = _shown(str(path))
        if not path.exists():
            raise DocumentError(f"Cannot open {shown}: no such file.")
        if path.is_dir():
            raise DocumentError(f"{shown} is a folder, not a document.")
        if not path.is_file():
            raise DocumentError(f"{shown} is not a regular file.")
    # Python 3.11 and 3.12 report a symbolic link loop as a RuntimeError, later ones as ELOOP;
    # expanduser() raises RuntimeError when it finds no home folder.
    except (OSError, RuntimeError) as e:
        loop = getattr(e, "errno", None) == errno.ELOOP or str(e).startswith("Symlink loop")
        reason = "its symbolic links lead round in a loop" if loop else \
            getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise DocumentError(f"Cannot open {shown}: {reason}.") from e
    if shown != str(path):
        # The library, the window and JSON output keep a document's path as text.
        raise DocumentError(f"The file name {shown} is not valid UTF-8 text (shown with ? for the undecodable "
                            "bytes), and Comma keeps file names as text: rename the file to read it.")
    return path


def _shown(text: str) -> str:
    """``text`` with '?' for each byte that was not UTF-8 (Python keeps those as lone surrogates)."""
    return _UNDECODABLE.sub("?", text)


_UNDECODABLE = re.compile("[\ud800-\udfff]")


def _title(candidates: list[str], text: str, fallback: str) -> str:
    """The first candidate that names the document (metadata, then the document's own title),
    else the first line of the text, else the file's name."""
    first_line = re.sub(r"^#+\s+", "", text.lstrip().split("\n", 1)[0]).strip()
    for title in [*candidates, first_line]:
        # A PDF's /Title may hold terminal escapes; printed raw they retitle or clear a terminal.
        title = " ".join(text_files.INVISIBLE.sub("", title).split())
        if title and len(title) <= TITLE_MAX_CHARS and any(c.isalpha() for c in title) \
                and not _NOT_A_TITLE.search(title):
            return title
    return fallback


# --- PDF ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PdfText:
    pages: list[str]
    headings: list[list[tuple[str, int]]]  # per page: (title, level)
    from_outline: bool
    metadata_title: str
    first_page_title: str
    ocr_pages: tuple[int, ...]


@dataclass(frozen=True)
class _Recognition:
    """Where OCR keeps what it found, and how it reports and stops."""

    kept_at: Path | None
    sha256: str
    progress: Progress | None
    cancelled: Callable[[], bool] | None


def _read_pdf(path: Path, data: bytes, limits: Limits, recognition: _Recognition) -> _PdfText:
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
            lines, chars = [], 0
            for i in range(doc.page_count):
                lines.append(pdf_text.page_lines(doc[i]))
                chars += sum(len(line.text) + 1 for line in lines[-1])
                limits.check_chars(path, chars)
            outline = _outline(doc)
            scanned = [i for i, page in enumerate(lines) if not page and ocr.needs_ocr(doc[i])]
        except DocumentError:
            raise
        except Exception as e:
            raise DocumentError(f"{path} is damaged: MuPDF could not read its text ({e}).") from e
        if scanned:
            for i, page_lines in _recognise(path, doc, scanned, recognition).items():
                lines[i] = page_lines
                chars += sum(len(line.text) + 1 for line in page_lines)
            limits.check_chars(path, chars)
        metadata_title = (doc.metadata or {}).get("title") or ""
    if not any(lines):
        raise DocumentError(f"{path} shows no text: its pages are blank, or hold pictures without words.")
    lines = pdf_text.strip_running_rows(lines)
    return _PdfText(
        pages=[pdf_text.paragraphs(page) for page in lines],
        headings=outline or pdf_text.headings(lines), from_outline=bool(outline),
        metadata_title=metadata_title, first_page_title=pdf_text.first_page_title(lines),
        ocr_pages=tuple(i + 1 for i in scanned),
    )


def _recognise(path: Path, doc: pymupdf.Document, scanned: list[int],
               recognition: _Recognition) -> dict[int, list[pdf_text.Line]]:
    """OCR's lines for the scanned pages (0-based), from the folder where they were kept or
    read now; what was read is kept as it goes, so a cancelled reading loses no page."""
    kept = ocr_cache.load(recognition.kept_at, recognition.sha256)
    missing = [i for i in scanned if i + 1 not in kept]
    if missing:
        try:
            with ocr.PageReader() as reader:
                for done, i in enumerate(missing):
                    if recognition.progress is not None:
                        recognition.progress(done, len(missing))
                    stop_reading_if(recognition.cancelled)
                    try:
                        kept[i + 1] = reader.lines(doc[i])
                    except ocr.OcrUnavailable as e:
                        raise DocumentError(f"{path} has scanned pages, and {e}") from e
                    except Exception as e:  # ONNX Runtime and MuPDF errors share no base class
                        raise DocumentError(f"{path}: OCR could not read page {i + 1} ({e}).") from e
                    if done % _OCR_SAVE_EVERY == _OCR_SAVE_EVERY - 1:
                        ocr_cache.save(recognition.kept_at, recognition.sha256, kept)
        finally:  # cancelled or not, a page read is not read again
            ocr_cache.save(recognition.kept_at, recognition.sha256, kept)
        if recognition.progress is not None:
            recognition.progress(len(missing), len(missing))
    return {i: [pdf_text.Line(line.block, round(line.rect[3]), line.rect[0], line.text) for line in kept[i + 1]]
            for i in scanned}


def _outline(doc: pymupdf.Document) -> list[list[tuple[str, int]]]:
    """The outline's entries on each page, or [] when the PDF has none."""
    pages: list[list[tuple[str, int]]] = [[] for _ in range(doc.page_count)]
    found = False
    for level, title, page in doc.get_toc(simple=True):
        title = " ".join(title.split())
        if title and 1 <= page <= doc.page_count:
            pages[page - 1].append((title, level))
            found = True
    return pages if found else []


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


def _find(text: str, title: str, start: int, end: int) -> int | None:
    words = title.split()
    if not words:
        return None
    found = re.compile(r"\s+".join(map(re.escape, words)), re.IGNORECASE).search(text, start, end)
    return found.start() if found else None


def _place_on_pages(text: str, starts: tuple[int, ...], headings: list[list[tuple[str, int]]],
                    at_page_start: bool) -> tuple[Section, ...]:
    """Sections from each page's headings, placed where their title is on the page. An outline
    entry whose title is not found (an abbreviated one) starts at its page; a heading found
    by its type always is."""
    sections = []
    for page, on_page in enumerate(headings):
        begin = starts[page]
        end = starts[page + 1] if page + 1 < len(starts) else len(text)
        cursor = begin
        for title, level in on_page:
            at = _find(text, title, cursor, end)
            if at is None and not at_page_start:
                continue
            cursor = at if at is not None else cursor
            sections.append(Section(title, level, cursor))
    return tuple(sorted(sections, key=lambda s: s.start))


def _place_in_order(text: str, headings: list[tuple[str, int]]) -> tuple[Section, ...]:
    sections, cursor = [], 0
    for title, level in headings:
        at = _find(text, title, cursor, len(text))
        if at is not None:
            sections.append(Section(title, level, at))
            cursor = at + 1
    return tuple(sections)


# --- text, Markdown, Word ----------------------------------------------------------------------


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
