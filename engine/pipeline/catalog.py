"""The models a person can choose from: the bundled one and every GGUF in the models folder
(``download_model`` adds one).

Each comes with what its header says (family, weight type, size, context; engine.models.gguf_header)
and, where Comma cannot use it, why: a sliding-window or hybrid family, a damaged file. That is
known before any reading, so Settings and ``comma models`` can show it, and a refused model is
never chosen by accident. Files Comma made itself are named for what they are: the answering
model assembled from its packages, a faster copy of a model, a download and where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.backends.gguf.fast_weights import copy_description
from engine.errors import ModelError
from engine.models.answering import FILE_NAME as ANSWERING_FILE
from engine.models.download import download_model
from engine.models.files import bundled_model_path, read_record
from engine.models.gguf_header import ModelInfo, read_model_info, refusal

__all__ = ["ModelChoice", "bundled_model_path", "describe", "download_model", "model_choices"]


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    origin: str  # "bundled", "answering model", "faster copy", "downloaded from owner/name", "added by hand"
    info: ModelInfo | None  # None when the header cannot be read
    problem: str | None  # why Comma cannot use it; None when it can

    @property
    def usable(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        """One line: what the model is, and its weight type, size and context."""
        if self.info is None:
            return f"{self.path.name} ({self.origin})"
        i = self.info
        params = f"{i.n_params / 1e9:.1f}B" if i.n_params >= 1e9 else f"{i.n_params / 1e6:.0f}M"
        context = f" · {i.context_length:,}-token context" if i.context_length else ""
        return (f"{i.name} ({self.origin}) · {i.architecture} {params} · {i.file_type_name} · "
                f"{i.file_size / 1e6:,.0f} MB{context}")

    def as_json(self) -> dict:
        i = self.info
        return {"path": str(self.path), "origin": self.origin, "usable": self.usable, "problem": self.problem,
                "name": i.name if i else None, "architecture": i.architecture if i else None,
                "weight_type": i.file_type_name if i else None, "bytes": i.file_size if i else None,
                "parameters": i.n_params if i else None, "context_length": i.context_length if i else None}


def _origin(path: Path) -> str:
    if path.name == ANSWERING_FILE:
        return "answering model"
    if copy_description(path) is not None:
        return "faster copy"
    record = read_record(path)
    if record is not None and isinstance(record.get("repo_id"), str):
        return f"downloaded from {record['repo_id']}"
    return "added by hand"


def describe(path: Path, origin: str) -> ModelChoice:
    try:
        info = read_model_info(path)
    except ModelError as exc:
        return ModelChoice(path, origin, None, str(exc))
    return ModelChoice(path, origin, info, refusal(info))


def model_choices(models_folder: Path) -> list[ModelChoice]:
    """The bundled model (when installed), then the models folder's GGUF files by name."""
    choices = []
    try:
        choices.append(describe(bundled_model_path(), "bundled"))
    except ModelError:
        pass
    if models_folder.is_dir():
        for path in sorted(models_folder.rglob("*.gguf")):
            if path.is_file():
                choices.append(describe(path, _origin(path)))
    return choices
