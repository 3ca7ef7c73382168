"""The Settings row that offers to make a faster copy of a person's own GGUF model.

A model whose weight type is off llama.cpp's fast CPU path (engine.gguf.fast_weights) can be
converted once, losslessly, to F16. That costs disk and memory, and for a large model answer
speed, so it is never done silently: the row says what it costs, converts in a worker thread
with a progress bar, measures both files on this CPU, shows the speed-ups and lets the person
keep the copy (the model field then points at it) or remove it.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QThread, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from engine.errors import CommaError


class ConvertAndMeasure(QThread):
    """Makes the copy and measures both files; reports by signals."""

    progress = Signal(int, int)  # MB written, MB expected
    measured = Signal(str, dict)  # the copy's path, the figures of engine.gguf.probe.compare
    failed = Signal(str)

    def __init__(self, source: Path, folder: Path):
        super().__init__()
        self.source, self.folder = source, folder

    def run(self) -> None:
        from engine.gguf import fast_weights, probe
        from engine.models import fingerprint

        try:
            info = fast_weights.inspect(self.source)
            copy = fast_weights.convert(self.source, self.folder, fingerprint(self.source), info,
                                        lambda done, total: self.progress.emit(done >> 20, total >> 20))
            self.measured.emit(str(copy), probe.compare(self.source, copy))
        except CommaError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # a bug in a worker must not leave the row busy or reach stderr raw
            self.failed.emit(f"unexpected error ({type(exc).__name__}: {exc}); the original model is used")


def describe_gain(figures: dict) -> str:
    before, after = figures["original"], figures["copy"]
    reading = after["prefill_tokens_per_s"] / before["prefill_tokens_per_s"]
    answers = after["decode_tokens_per_s"] / before["decode_tokens_per_s"]
    return (f"Reading {reading:.2f}× as fast ({before['prefill_tokens_per_s']:.0f} → "
            f"{after['prefill_tokens_per_s']:.0f} tokens/s), answers {answers:.2f}× as fast "
            f"({before['decode_tokens_per_s']:.0f} → {after['decode_tokens_per_s']:.0f} tokens/s), "
            "measured just now on this computer.")


class FasterModelRow(QWidget):
    """Shown under the model field when the chosen file would read faster as a copy."""

    use_copy = Signal(str)

    def __init__(self, models_folder: Path, parent: QWidget | None = None):
        super().__init__(parent)
        self.models_folder = models_folder
        self.source: Path | None = None
        self.copy: Path | None = None
        self.worker: ConvertAndMeasure | None = None
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.convert = QPushButton("Read faster: convert this model once")
        self.keep = QPushButton("Use the faster copy")
        self.remove = QPushButton("Remove the copy")
        self.bar = QProgressBar()
        self.bar.setFormat("%v of %m MB")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        buttons = QHBoxLayout()
        for button in (self.convert, self.keep, self.remove):
            buttons.addWidget(button)
        buttons.addStretch()
        layout.addLayout(buttons)
        self.convert.clicked.connect(self.start)
        self.keep.clicked.connect(self._keep)
        self.remove.clicked.connect(self._remove)
        self._show()

    def _show(self, text: str = "", convert: bool = False, decide: bool = False, busy: bool = False) -> None:
        self.label.setText(text)
        self.label.setVisible(bool(text))
        self.convert.setVisible(convert)
        self.keep.setVisible(decide)
        self.remove.setVisible(decide)
        self.bar.setVisible(busy)
        self.setVisible(bool(text))

    def check(self, path_text: str) -> None:
        """Look at the model file chosen in the dialog (empty: the bundled one)."""
        if self.worker is not None and self.worker.isRunning():
            return
        self.source = self.copy = None
        path = Path(path_text).expanduser() if path_text else None
        if path is None or not path.is_file():
            return self._show()
        from engine.gguf import fast_weights

        if fast_weights.source_fingerprint_of(path):
            return self._show("This is a faster copy of a model, made by Comma.")
        try:
            info = fast_weights.inspect(path)
        except CommaError:
            return self._show()
        if not info.worth_converting:
            return self._show()
        self.source = path
        self.convert.setText(f"Read faster: convert this model once ({info.copy_bytes / 1e6:,.0f} MB)")
        self._show(f"Its weights ({info.weight_type_name}) are off llama.cpp's fast path on this CPU. A lossless "
                   f"F16 copy usually reads documents faster; for a large model it can answer more slowly. "
                   f"Comma measures both before you choose.", convert=True)

    def start(self) -> None:
        if self.source is None:
            return
        self.worker = ConvertAndMeasure(self.source, self.models_folder)
        self.worker.progress.connect(self._progress)
        self.worker.measured.connect(self._measured)
        self.worker.failed.connect(lambda message: self._show(f"No copy was made: {message}"))
        self._show("Converting, then measuring both files…", busy=True)
        self.worker.start()

    def _progress(self, done: int, total: int) -> None:
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(done)

    def _measured(self, copy: str, figures: dict) -> None:
        self.copy = Path(copy)
        self._show(describe_gain(figures), decide=True)

    def _keep(self) -> None:
        if self.copy is not None:
            self.use_copy.emit(str(self.copy))
            self._show(f"The model field now points at the copy ({self.copy.name}). Memories made with "
                       "the original weights are kept; documents are read again for the copy.")

    def _remove(self) -> None:
        from engine.gguf import fast_weights

        if self.copy is not None:
            fast_weights.remove_copy(self.copy)
            self._show("The copy was removed; the original model is used.")
            self.copy = None

    def wait(self) -> None:
        """Let a running conversion finish (a QThread must not be destroyed while it runs)."""
        if self.worker is not None:
            self.worker.wait()
