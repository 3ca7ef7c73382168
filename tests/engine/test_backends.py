"""Choosing an engine: the light install (no torch) says how to get the torch engine, and a
backend that does not declare parallel reading (gguf, the fake) refuses it with a message."""

import importlib.util

import pytest

from engine.backends.loading import load_model, resolve_backend
from engine.errors import CommaError, ModelError


def test_torch_engine_without_the_gpu_extra_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("torch", "transformers")
                        else real(name, *a))
    assert resolve_backend("auto") == "gguf"
    with pytest.raises(ModelError, match=r"pip install 'comma\[gpu\]'"):
        load_model("torch")


def test_unknown_backend_is_refused():
    with pytest.raises(ModelError, match="unknown backend"):
        resolve_backend("tpu")


def test_parallel_reading_needs_the_capability(tmp_path):
    from engine.documents.document import read_document
    from engine.policy import make_policy
    from engine.reading.reader import read
    from tests.fakes import FakeModel

    doc = tmp_path / "a.txt"
    doc.write_text("Some words. " * 50)
    with pytest.raises(CommaError, match="cannot read in parallel chunks"):
        read(FakeModel(), read_document(doc), make_policy("sepllm"), parallel=128)
