"""Shared test setup: the repo root is importable, Qt never needs a display, and without CUDA
the Triton kernels run under Triton's interpreter (it must be set before any kernel module is
imported, so it is set here rather than in tests/kernels)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from engine.backends import cuda_available

if not cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
