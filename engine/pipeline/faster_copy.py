"""A faster copy of a person's own model: whether one is worth offering on the chosen engine,
making it and measuring both files, and removing it.

llama.cpp reads some weight types far more slowly on a CPU than F16 (engine.backends.gguf.
fast_weights). A copy helps only the gguf engine: the torch engine dequantises the weights when
it loads them, so nothing is offered there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.backends.gguf import fast_weights, probe
from engine.backends.loading import resolve_backend
from engine.errors import CommaError
from engine.models.files import fingerprint
from engine.protocols import Progress


@dataclass(frozen=True)
class Offer:
    """What the Settings row says of a model file: ``note`` alone, or a conversion of
    ``copy_bytes`` that would take the weights off ``weight_type``."""

    note: str = ""
    copy_bytes: int = 0
    weight_type: str = ""

    @property
    def convertible(self) -> bool:
        return self.copy_bytes > 0


def offer(path: Path | None, backend: str) -> Offer | None:
    """What to offer for ``path`` on ``backend``; None where nothing is to be said."""
    if path is None or not path.is_file():
        return None
    try:
        if resolve_backend(backend) != "gguf":
            return None
    except CommaError:
        return None
    if fast_weights.source_fingerprint_of(path):
        return Offer(note="This is a faster copy of a model, made by Comma.")
    try:
        info = fast_weights.inspect(path)
    except CommaError:
        return None
    if not info.worth_converting:
        return None
    return Offer(copy_bytes=info.copy_bytes, weight_type=info.weight_type_name)


def convert_and_measure(source: Path, folder: Path, progress: Progress | None = None) -> tuple[Path, dict]:
    """Make the F16 copy of ``source`` in ``folder`` (``progress`` in bytes) and measure both
    files' reading and answering speed on this CPU (``probe.compare``'s figures)."""
    info = fast_weights.inspect(source)
    copy = fast_weights.convert(source, folder, fingerprint(source), info, progress)
    return copy, probe.compare(source, copy)


def remove_copy(copy: Path) -> None:
    fast_weights.remove_copy(copy)
