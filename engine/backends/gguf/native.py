"""llama.cpp as the gguf backend sees it: the bindings, imported once, with the backend
initialised and its log chatter kept off the person's stderr. Every gguf module takes ``llama``
from here, so no module of the backend needs another one just to reach the library."""

from __future__ import annotations

import ctypes

from engine.errors import ModelError

try:
    import llama_cpp as llama
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ModelError("llama-cpp-python is not installed; see the README's install command") from exc


def _silence_llama_log():
    # llama.cpp writes its loading chatter to stderr; the CLI's stderr is for the person.
    @llama.llama_log_callback
    def _drop(level, text, user_data):
        return None

    llama.llama_log_set(_drop, ctypes.c_void_p())
    return _drop


_LOG_CALLBACK = _silence_llama_log()
llama.llama_backend_init()
