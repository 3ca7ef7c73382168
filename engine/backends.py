"""Which engine reads: ``gguf`` (llama.cpp, CPU), ``torch`` (transformers + Comma's Triton
kernels, CUDA or CPU) or ``auto`` (torch when CUDA is present, else gguf).

Each backend's model module is imported only when chosen, so the CPU path never pays for
importing torch and the torch path never loads llama.cpp.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from engine.errors import ModelError

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


def load_model(backend: str = "auto", path: str | os.PathLike | None = None, device: str | None = None):
    """The model for ``backend``; ``device`` (torch only) defaults to CUDA when present."""
    chosen = resolve_backend(backend)
    if chosen == "gguf":
        from engine.gguf.model import GGUFModel

        return GGUFModel(path)
    from engine.torch.model import TorchModel

    return TorchModel(path, device=device)
