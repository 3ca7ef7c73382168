"""The models a Comma uses, loaded on first use and shared by every thread that asks.

Loading one is the slow part of a cold start, so each is loaded once and kept: the reading
model, the answering model beside it (when installed) and the sentence encoder that finds pages
by meaning. The window's worker threads share one holder (llama.cpp serves several contexts from
one set of weights); the CLI has its own. Settings that name another model or engine load that
one and retire the old: a conversation on another thread may still hold a cache of it, so it is
closed by ``settle()`` once every thread has let go of the old settings (the window knows when),
or by ``close()``, which frees them all when the window closes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from engine.backends import loading
from engine.protocols import Available, Model, Progress
from engine.recall import sentence_encoder


class LoadedModels:
    """The reading model, the answering model and the sentence encoder, each loaded once for
    the settings it was asked with; thread-safe."""

    def __init__(self):
        self._lock = threading.RLock()
        self._reading: Model | None = None
        self._reading_key: tuple | None = None
        self._answering: Available[Model] | None = None
        self._answering_key: tuple | None = None
        self._encoder: Available | None = None
        self._retired: list[Model] = []

    def use(self, reading: Model | None = None, answering: Available[Model] | None = None,
            encoder: Available | None = None) -> None:
        """Models loaded elsewhere, used whatever the settings ask (benchmarks and tests that
        share one copy of a model between several Commas)."""
        with self._lock:
            if reading is not None:
                self._reading, self._reading_key = reading, None
            if answering is not None:
                self._answering, self._answering_key = answering, None
            if encoder is not None:
                self._encoder = encoder

    @staticmethod
    def _reading_key_of(backend: str, path: str | Path | None, models_folder: Path) -> tuple:
        return backend, str(path or ""), str(models_folder)

    @staticmethod
    def _answering_key_of(answering: str, backend: str, reading_path: str | Path | None, models_folder: Path) -> tuple:
        return answering, backend, str(reading_path or ""), str(models_folder)

    def reading(self, backend: str, path: str | Path | None, models_folder: Path, progress: Progress | None = None,
                notice: Callable[[str], None] | None = None) -> Model:
        key = self._reading_key_of(backend, path, models_folder)
        with self._lock:
            if self._reading is None or (self._reading_key is not None and self._reading_key != key):
                self._retire(self._reading)
                self._reading = None
                self._reading = loading.load_model(backend, path or None, models_folder=models_folder,
                                                   progress=progress, notice=notice)
                self._reading_key = key
            return self._reading

    def answering(self, answering: str, backend: str, reading_path: str | Path | None, models_folder: Path,
                  progress: Progress | None = None, notice: Callable[[str], None] | None = None) -> Available[Model]:
        """The answering model, or None and why the reading model answers."""
        key = self._answering_key_of(answering, backend, reading_path, models_folder)
        with self._lock:
            if self._answering is None or (self._answering_key is not None and self._answering_key != key):
                if self._answering is not None:
                    self._retire(self._answering.thing)
                self._answering = None
                self._answering = loading.load_answering_model(answering, backend, reading_path or None,
                                                               models_folder, progress, notice)
                self._answering_key = key
            return self._answering

    def encoder(self) -> Available:
        """The sentence encoder that finds pages by meaning, or None and why pages are found by
        their words alone."""
        with self._lock:
            if self._encoder is None:
                self._encoder = sentence_encoder.load_encoder()
            return self._encoder

    @property
    def loaded(self) -> bool:
        """Whether a reading model has been loaded (a bad file is refused before any is)."""
        return self._reading is not None

    def _retire(self, model: Model | None) -> None:
        if model is not None and model not in self._retired:
            self._retired.append(model)

    def settle(self, answering: str, backend: str, path: str | Path | None, models_folder: Path) -> None:
        """Close every model these settings do not use: called once no thread uses the models
        of earlier settings. A model of these settings, loaded already, is kept."""
        reading_key = self._reading_key_of(backend, path, models_folder)
        answering_key = self._answering_key_of(answering, backend, path, models_folder)
        with self._lock:
            # A key of None marks a model given by ``use``: it stays whatever the settings say.
            if self._reading is not None and self._reading_key not in (None, reading_key):
                self._retire(self._reading)
                self._reading = self._reading_key = None
            if self._answering is not None and self._answering_key not in (None, answering_key):
                self._retire(self._answering.thing)
                self._answering = self._answering_key = None
        self._close_retired()

    def _close_retired(self) -> None:
        with self._lock:
            current = {id(self._reading), id(self._answering.thing if self._answering else None)}
            retired = [model for model in self._retired if id(model) not in current]
            self._retired = []
        for model in retired:
            model.close()

    def close(self) -> None:
        """Free every model's weights; the conversations using them are closed first."""
        with self._lock:
            self._retire(self._reading)
            if self._answering is not None:
                self._retire(self._answering.thing)
            self._reading = self._reading_key = self._answering = self._answering_key = None
        self._close_retired()
