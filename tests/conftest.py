"""Shared test setup: the repo root is importable, Qt never needs a display, model copies are
shared across the tests' data folders, and without CUDA
the Triton kernels run under Triton's interpreter (it must be set before any kernel module is
imported, so it is set here rather than in tests/kernels)."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# The bundled-model tests run the small model alone, as they did before the answering model
# existed; the tests of the answering model ask for it (tests/engine/test_answering.py).
os.environ["COMMA_ANSWERING"] = "off"
# Every test's data folder shares one faster copy of the bundled model, made once per run
# (tests/engine/test_fast_weights.py makes its own in fresh folders).
if "COMMA_MODELS" not in os.environ:
    os.environ["COMMA_MODELS"] = tempfile.mkdtemp(prefix="comma-models-")
    atexit.register(shutil.rmtree, os.environ["COMMA_MODELS"], True)

from engine.backends.loading import cuda_available

if not cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def bundled_model_copy():
    """Make the shared copy before any test runs, so that no test's output depends on whether
    it happened to be the first to load the model (the first-start notice is tested apart)."""
    from engine.errors import ModelError
    from engine.models.files import bundled_model_path

    try:
        source = bundled_model_path()
    except ModelError:
        return
    from engine.backends.gguf.fast_weights import fast_model_path

    fast_model_path(source, Path(os.environ["COMMA_MODELS"]))


@pytest.fixture
def hub(monkeypatch):
    """A local stand-in for the Hugging Face hub (tests/hub_server.py), for this test alone."""
    from tests.hub_server import serve

    yield from serve(monkeypatch)
