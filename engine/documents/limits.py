"""How much work a file may cause: pages, characters and a Word file's unpacked size, checked
before anything large is allocated."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import DocumentError

_SMALL_ZIP_BYTES = 1_000_000  # below this a high compression ratio cannot cost much
_RAISE_LIMIT = "Raise the limit in Settings → Limits"


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
                f"{path} has {pages:,} pages; Comma reads documents of up to {self.pages:,} "
                f"page{'s' if self.pages != 1 else ''}. "
                f"{_RAISE_LIMIT} (--max-pages) to read it anyway."
            )

    def check_chars(self, path: Path, chars: int) -> None:
        if chars > self.chars:
            raise DocumentError(
                f"{path} holds more than {self.chars:,} characters of text, which would take many hours "
                f"to read. {_RAISE_LIMIT} (--max-chars) to read it anyway."
            )

    def check_expansion(self, path: Path, size: int, expanded: int, compressed: int, finished: bool = True) -> None:
        """A zip container (DOCX) of ``size`` bytes whose parts take ``compressed`` bytes and
        would take ``expanded`` unpacked (``finished``: False for the bytes unpacked so far)."""
        more = "" if finished else "more than "
        if expanded > self.expanded_bytes:
            amount = f"{expanded / 1e6:,.0f} MB, over" if finished else "more than"
            raise DocumentError(
                f"{path} expands to {amount} the {self.expanded_bytes / 1e6:,.0f} MB a Word "
                f"document may take. {_RAISE_LIMIT} (--max-expanded-mb) to read it anyway."
            )
        ratio = expanded / max(1, compressed)
        if expanded > _SMALL_ZIP_BYTES and ratio > self.compression_ratio:
            raise DocumentError(
                f"{path} expands {more}{ratio:,.0f} times ({size / 1e6:,.1f} MB to {more}{expanded / 1e6:,.0f} MB), "
                f"far more than a real Word document (a zip bomb?). {_RAISE_LIMIT} to read it anyway."
            )
