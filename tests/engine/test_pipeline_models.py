"""The pipeline's loaded models: one load per setting, shared, and every model closed once
nothing uses it (settings that replace it, or the end)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.pipeline.models import LoadedModels
from engine.protocols import Available
from tests.fakes import FakeAnswerer, FakeModel


@pytest.fixture
def loads(monkeypatch):
    """Every load makes a new fake model; the list holds them in order."""
    made: list[FakeModel] = []

    def load_model(backend, path=None, **kwargs):
        made.append(FakeModel())
        return made[-1]

    def load_answering_model(answering, backend, reading_path, models_folder, *args):
        if answering == "off" or reading_path:
            return Available(None)
        made.append(FakeAnswerer())
        return Available(made[-1])

    monkeypatch.setattr("engine.backends.loading.load_model", load_model)
    monkeypatch.setattr("engine.backends.loading.load_answering_model", load_answering_model)
    return made


def test_a_model_is_loaded_once_per_setting(loads, tmp_path):
    models = LoadedModels()
    first = models.reading("gguf", None, tmp_path)
    assert models.reading("gguf", None, tmp_path) is first and len(loads) == 1
    assert models.answering("auto", "gguf", None, tmp_path).thing is models.answering("auto", "gguf", None,
                                                                                      tmp_path).thing
    assert len(loads) == 2


def test_a_replaced_model_is_closed_only_once_the_settings_settle(loads, tmp_path):
    models = LoadedModels()
    old = models.reading("gguf", None, tmp_path)
    old_answerer = models.answering("auto", "gguf", None, tmp_path).thing
    new = models.reading("gguf", Path("own.gguf"), tmp_path)  # another thread may still use the old one
    assert new is not old and not old.closed
    models.settle("auto", "gguf", Path("own.gguf"), tmp_path)
    assert old.closed and not new.closed
    assert old_answerer.closed, "beside a person's own model there is no answering model"
    assert models.reading("gguf", Path("own.gguf"), tmp_path) is new and len(loads) == 3


def test_settling_on_unchanged_settings_keeps_the_models(loads, tmp_path):
    models = LoadedModels()
    model = models.reading("gguf", None, tmp_path)
    models.settle("auto", "gguf", None, tmp_path)
    assert not model.closed and models.reading("gguf", None, tmp_path) is model


def test_close_frees_every_model_and_the_next_use_loads_again(loads, tmp_path):
    models = LoadedModels()
    model = models.reading("gguf", None, tmp_path)
    answerer = models.answering("auto", "gguf", None, tmp_path).thing
    models.close()
    assert model.closed and answerer.closed and not models.loaded
    assert models.reading("gguf", None, tmp_path) is not model


def test_a_model_given_by_use_stays_whatever_the_settings(loads, tmp_path):
    models = LoadedModels()
    given = FakeModel()
    models.use(reading=given)
    assert models.reading("torch", Path("other.gguf"), tmp_path) is given and loads == []
    models.settle("off", "torch", Path("other.gguf"), tmp_path)
    assert not given.closed
