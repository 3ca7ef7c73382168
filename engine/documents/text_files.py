"""Text, Markdown and Word files become clean text: the encoding found, a Word file's parts
checked before they are unpacked, and the headings that mark sections.

engine.documents.document calls these; they raise DocumentError with a sentence a person can act on.
"""

from __future__ import annotations

import codecs
import io
import locale
import re
import zipfile
import zlib
from pathlib import Path

import charset_normalizer

from engine.documents.limits import Limits
from engine.errors import DocumentError

# Control characters, soft hyphens, stray byte-order marks and replacement characters carry no
# meaning for the model; tab, newline, form feed and carriage return are whitespace instead.
_CONTROLS = "\x00-\x08\x0b\x0e-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{_CONTROLS}]")
INVISIBLE = re.compile(f"[{_CONTROLS}\u00ad\ufeff\ufffd]")
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

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # encrypted .docx and legacy .doc files
_MARKDOWN_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_MARKDOWN_FENCE = re.compile(r"^(```|~~~).*?(?:^\1|\Z)", re.MULTILINE | re.DOTALL)
# A plain-text heading stands alone between blank lines: "8. Termination", "ARTICLE 4 - FEES".
_TEXT_HEADING = re.compile(
    r"(?:^|\n\n)((?:\d+(?:\.\d+)*\.?|section \d+\.?|article [\divxlc]+\.?|§ ?\d+)[ \t]+[^\n]{2,80})(?=\n\n|$)",
    re.IGNORECASE,
)
_HEADING_MAX_WORDS = 12


def decode(path: Path, data: bytes) -> str:
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


def read_docx(path: Path, data: bytes, limits: Limits) -> tuple[str, str, list[tuple[str, int]]]:
    """The title (core properties, else the first paragraph in the Title style), the text of
    paragraphs and tables in document order, and the headings with their levels."""
    try:
        import docx
    except ImportError:
        raise DocumentError(
            f"{path} is a Word document, and reading DOCX needs the python-docx package "
            "(pip install python-docx)."
        ) from None
    if data.startswith(_OLE_MAGIC):
        raise DocumentError(f"{path} is password-protected or an old .doc file, which Comma cannot read.")
    unpacked = _unpacked_docx(path, data, limits)
    try:
        word = docx.Document(unpacked)
    except Exception as e:  # a broken zip, a missing part or bad XML: all mean the same to a reader
        raise DocumentError(f"{path} is not a valid Word document or is damaged.") from e
    blocks, headings, styled_title = [], [], ""
    for item in word.iter_inner_content():
        if isinstance(item, docx.table.Table):
            # A cell spanning several columns is listed once per column.
            rows = (" | ".join(cell.text for cell in dict.fromkeys(row.cells)) for row in item.rows)
            blocks.append("\n".join(rows))
            continue
        blocks.append(item.text)
        style = (item.style.name if item.style is not None else "") or ""
        text = " ".join(item.text.split())
        if style == "Title" and text and not styled_title:
            styled_title = text
        elif (level := re.fullmatch(r"Heading (\d)", style)) and text:
            headings.append((text, int(level.group(1))))
    return word.core_properties.title or styled_title, "\n\n".join(blocks), headings


_INFLATE_CHUNK = 1 << 20  # bytes of a part unpacked at a time
_WORD_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # all Word writes; bzip2 and LZMA inflate unbounded


def _unpacked_docx(path: Path, data: bytes, limits: Limits) -> io.BytesIO:
    """The DOCX's parts, unpacked within the limits into a zip that stores them as they are.

    A zip's directory says how large each part is, but a crafted one can lie: python-docx reads a
    part in one call, which inflates up to 2 GB of it before the reader cuts it to the size the
    directory claims. So the parts are inflated here a chunk at a time, counting every byte
    against the limits, and python-docx is given only what was counted, with nothing left to
    inflate."""
    damaged = DocumentError(f"{path} is not a valid Word document or is damaged.")
    try:
        source = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise damaged from e
    unpacked, expanded = io.BytesIO(), 0
    with source:
        parts = source.infolist()
        # What the directory claims, for a clear refusal before anything is inflated; a file holds
        # its parts' compressed bytes, so it bounds them even where the directory lies.
        compressed = min(len(data), sum(part.compress_size for part in parts))
        limits.check_expansion(path, len(data), sum(part.file_size for part in parts), compressed)
        if any(part.compress_type not in _WORD_COMPRESSION for part in parts):
            raise DocumentError(f"{path} packs its parts in a way Word never does (not a Word document, or damaged).")
        if len({part.filename for part in parts}) != len(parts):
            raise damaged  # two parts of one name: readers disagree on which one counts
        try:
            with zipfile.ZipFile(unpacked, "w", zipfile.ZIP_STORED) as out:
                for part in parts:
                    with source.open(part) as inflating, out.open(part.filename, "w", force_zip64=True) as stored:
                        while chunk := inflating.read(_INFLATE_CHUNK):
                            expanded += len(chunk)
                            limits.check_expansion(path, len(data), expanded, compressed, finished=False)
                            stored.write(chunk)
        # A bad checksum or header, a part whose data runs past the file's end, an encrypted part:
        # zipfile's errors share no base class.
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, zlib.error) as e:
            raise damaged from e
    limits.check_expansion(path, len(data), expanded, compressed)
    unpacked.seek(0)
    return unpacked


def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n\n")
    lines = (line.rstrip() for line in INVISIBLE.sub("", text).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def text_headings(text: str, markdown: bool) -> list[tuple[str, int, int]]:
    """Headings of a clean text, as (title, level, offset): Markdown's ``#`` lines, or in plain
    text a short numbered line standing alone ("8. Termination", "Article IV Fees")."""
    if markdown:
        fenced = [(m.start(), m.end()) for m in _MARKDOWN_FENCE.finditer(text)]
        return [(m.group(2).strip(), len(m.group(1)), m.start()) for m in _MARKDOWN_HEADING.finditer(text)
                if not any(begin <= m.start() < end for begin, end in fenced)]
    found = []
    for m in _TEXT_HEADING.finditer(text):
        title = m.group(1).strip()
        if len(title.split()) <= _HEADING_MAX_WORDS and not title.endswith((".", ";", ",")):
            number = title.split()[0].rstrip(".")
            found.append((title, number.count(".") + 1 if number[:1].isdigit() else 1, m.start(1)))
    return found
