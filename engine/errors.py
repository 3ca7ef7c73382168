"""Errors a person can act on: their message is shown as it is, never as a traceback."""


class CommaError(Exception):
    """A problem with the user's input or environment, described in plain words."""


class DocumentError(CommaError):
    """A document that cannot be read (missing, corrupt, encrypted, empty, scanned, unknown format)."""


class ModelError(CommaError):
    """A model file that cannot be used (missing, not GGUF, an architecture whose cache cannot be evicted)."""


class MemoryFileError(CommaError):
    """A memory file that cannot be trusted or written (truncated, altered, another model, disk full)."""


class LibraryError(CommaError):
    """A library lookup that fails (unknown document or session id)."""


class Cancelled(CommaError):
    """Long work stopped at the user's request; nothing half-done is saved."""


def stop_reading_if(cancelled) -> None:
    """Raise ``Cancelled`` when the reader's ``cancelled()`` poll says so (None: never)."""
    if cancelled is not None and cancelled():
        raise Cancelled("reading cancelled; nothing was saved")
