"""The Settings row that offers to make a faster copy of a person's own GGUF model.

A model whose weight type is off llama.cpp's fast CPU path (``engine.pipeline.faster_copy``
decides, for the chosen engine) can be converted once, losslessly, to F16. That costs disk and
memory, and for a large model answer speed, so it is never done silently: the row says what it costs, converts as a background job
with a progress bar, measures both files on this CPU, shows the speed-ups and lets the person
keep the copy (the model field then points at it) or remove it.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from app.jobs import Job, start_file_job
from engine.pipeline import faster_copy


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

    def __init__(self, models_folder: Path, backend: str = "auto", parent: QWidget | None = None):
        super().__init__(parent)
        self.models_folder = models_folder
        self.backend = backend  # a copy helps only the engine that reads GGUF weights as they are
        self.source: Path | None = None
        self.copy: Path | None = None
        self.job: Job | None = None
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
        if self.job is not None and self.job.state in ("queued", "running"):
            return
        self.source = self.copy = None
        path = Path(path_text).expanduser() if path_text else None
        offered = faster_copy.offer(path, self.backend)
        if offered is None:
            return self._show()
        if not offered.convertible:
            return self._show(offered.note)
        self.source = path
        self.convert.setText(f"Read faster: convert this model once ({offered.copy_bytes / 1e6:,.0f} MB)")
        self._show(f"Its weights ({offered.weight_type}) are off llama.cpp's fast path on this CPU. A lossless "
                   f"F16 copy usually reads documents faster; for a large model it can answer more slowly. "
                   f"Comma measures both before you choose.", convert=True)

    def set_backend(self, backend: str, path_text: str) -> None:
        self.backend = backend
        self.check(path_text)

    def start(self) -> None:
        if self.source is None:
            return
        source, folder = self.source, self.models_folder

        def work(job: Job, _) -> tuple[Path, dict]:
            return faster_copy.convert_and_measure(
                source, folder, lambda done, total: job.report_progress(done >> 20, total >> 20))

        self.job = Job("convert", work, source=str(source))
        self.job.progress.connect(self._progress)
        self.job.finished.connect(self._measured)
        self.job.failed.connect(lambda message: self._show(f"No copy was made: {message}"))
        self._show("Converting, then measuring both files…", busy=True)
        start_file_job(self.job)

    def _progress(self, done: int, total: int) -> None:
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(done)

    def _measured(self, result: tuple[Path, dict]) -> None:
        copy, figures = result
        self.copy = copy
        self._show(describe_gain(figures), decide=True)

    def _keep(self) -> None:
        if self.copy is not None:
            self.use_copy.emit(str(self.copy))
            self._show(f"The model field now points at the copy ({self.copy.name}). Memories made with "
                       "the original weights are kept; documents are read again for the copy.")

    def _remove(self) -> None:
        if self.copy is not None:
            faster_copy.remove_copy(self.copy)
            self._show("The copy was removed; the original model is used.")
            self.copy = None
