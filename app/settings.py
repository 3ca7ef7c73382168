"""Settings a person can change (model file, backend, memory budget, data folder), where they are
kept, and the dialog that edits them.

They are kept with QSettings: in ``$COMMA_HOME/settings.ini`` when ``COMMA_HOME`` is set (so a
test or a portable install keeps everything in one folder), else in the platform's usual place.
The recent-files list and the last document opened live there too.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from app.faster_model import FasterModelRow
from app.model_picker import ModelList
from engine.documents.limits import Limits
from engine.generate import MAX_TEMPERATURE, Sampling
from engine.pipeline.options import ANSWERING, BACKENDS, default_answering
from engine.policy import DEFAULT_CAPACITY, POLICIES
from storage.library import data_folder, models_folder

RECENT_LIMIT = 10


@dataclass
class Settings:
    model_path: str = ""  # empty: the bundled SmolLM2-135M-Instruct
    backend: str = "auto"  # auto | gguf | torch
    answering: str = field(default_factory=default_answering)  # auto: the answering model beside the bundled one | off
    policy: str = "sepllm"  # sepllm | streaming | full
    cache: int = 0  # KV cache capacity in tokens; 0: the policy's default (800)
    notes: bool = True  # section notes while reading, needed for whole-document summaries
    data_folder: str = ""  # empty: COMMA_HOME, else the platform's user data folder
    max_pages: int = Limits.pages
    max_million_chars: int = Limits.chars // 1_000_000
    max_expanded_mb: int = Limits.expanded_bytes // 1_000_000
    max_compression_ratio: int = Limits.compression_ratio
    ask_above_minutes: int = 10  # a reading expected to take longer asks first; 0: never ask
    temperature: float = Sampling.temperature  # 0: greedy, the same answer every time
    top_p: float = Sampling.top_p
    max_answer_tokens: int = Sampling.max_tokens

    def library_folder(self) -> Path:
        return Path(self.data_folder).expanduser() if self.data_folder else data_folder()

    def sampling(self) -> Sampling:
        """How answers are generated; a hand-edited value out of range means the default."""
        try:
            return Sampling(max_tokens=self.max_answer_tokens, temperature=self.temperature, top_p=self.top_p)
        except ValueError:
            return Sampling()

    def limits(self) -> Limits:
        # 0 (or a hand-edited nonsense value) would refuse every file: it means the default.
        default = Limits()
        return Limits(pages=self.max_pages or default.pages,
                      chars=(self.max_million_chars or default.chars // 1_000_000) * 1_000_000,
                      expanded_bytes=(self.max_expanded_mb or default.expanded_bytes // 1_000_000) * 1_000_000,
                      compression_ratio=self.max_compression_ratio or default.compression_ratio)


def store() -> QSettings:
    home = os.environ.get("COMMA_HOME")
    if home:
        return QSettings(str(Path(home).expanduser() / "settings.ini"), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "Comma", "Comma")


def load(qs: QSettings | None = None) -> Settings:
    qs = qs or store()
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = qs.value(f"settings/{f.name}")
        if raw is None:
            continue
        if f.type in ("bool", bool):
            values[f.name] = str(raw).lower() in ("true", "1")
        elif f.type in ("int", int):
            try:
                values[f.name] = max(0, int(raw))
            except ValueError:
                pass
        elif f.type in ("float", float):
            try:
                values[f.name] = max(0.0, float(raw))
            except ValueError:
                pass
        else:
            values[f.name] = str(raw)
    return Settings(**values)  # type: ignore[arg-type]  # each value was converted to its field's type above


def save(settings: Settings, qs: QSettings | None = None) -> None:
    qs = qs or store()
    for name, value in asdict(settings).items():
        qs.setValue(f"settings/{name}", value)
    qs.sync()


def recent_files(qs: QSettings | None = None) -> list[str]:
    value = (qs or store()).value("recent", [])
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def add_recent(path: str, qs: QSettings | None = None) -> list[str]:
    qs = qs or store()
    files = [path] + [p for p in recent_files(qs) if p != path]
    qs.setValue("recent", files[:RECENT_LIMIT])
    qs.sync()
    return files[:RECENT_LIMIT]


def remember(key: str, value: str | None, qs: QSettings | None = None) -> None:
    qs = qs or store()
    qs.setValue(f"last/{key}", value or "")
    qs.sync()


def recall(key: str, qs: QSettings | None = None) -> str:
    return str((qs or store()).value(f"last/{key}", "") or "")


def _bundled_model_label() -> str:
    try:
        from engine.pipeline.catalog import bundled_model_path

        return f"bundled: {bundled_model_path().name}"
    except Exception as exc:  # the dialog still opens, and says why
        return f"bundled model unavailable ({exc})"


class SettingsDialog(QDialog):
    """Edits a copy of the settings; ``result_settings()`` returns it after OK."""

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Comma settings")
        self.model = QLineEdit(settings.model_path)
        self.model.setPlaceholderText(_bundled_model_label())
        self.backend = QComboBox()
        self.backend.addItems(list(BACKENDS))
        self.backend.setCurrentText(settings.backend)
        self.answering = QComboBox()
        self.answering.addItems(list(ANSWERING))
        self.answering.setCurrentText(settings.answering)
        self.answering.setToolTip("auto: with the bundled model, the answering model (Qwen2.5-Coder-1.5B) reads each "
                                  "document again in the background and answers; off: the reading model answers")
        self.policy = QComboBox()
        self.policy.addItems(list(POLICIES))
        self.policy.setCurrentText(settings.policy)
        self.cache = QSpinBox()
        self.cache.setRange(0, 1_000_000)
        self.cache.setSpecialValueText(f"default ({DEFAULT_CAPACITY})")
        self.cache.setSuffix(" tokens")
        self.cache.setValue(settings.cache)
        self.notes = QCheckBox("Take section notes while reading (needed for summaries)")
        self.notes.setChecked(settings.notes)
        self.folder = QLineEdit(settings.data_folder)
        self.folder.setPlaceholderText(str(data_folder()))
        self.max_pages = self._number(settings.max_pages, 1, 1_000_000, " pages")
        self.max_chars = self._number(settings.max_million_chars, 1, 2_000, " million characters")
        self.max_expanded = self._number(settings.max_expanded_mb, 1, 100_000, " MB expanded")
        self.max_ratio = self._number(settings.max_compression_ratio, 2, 100_000, " × compression")
        self.ask_above = self._number(settings.ask_above_minutes, 0, 100_000, " minutes")
        self.ask_above.setSpecialValueText("never ask")
        self.temperature = self._fraction(settings.temperature, 0.0, MAX_TEMPERATURE)
        self.temperature.setSpecialValueText("0 (greedy: the same answer every time)")
        self.top_p = self._fraction(settings.top_p, 0.01, 1.0)
        self.max_answer = self._number(settings.max_answer_tokens, 1, 100_000, " tokens")

        self.models = ModelList(models_folder(settings.library_folder()))
        self.models.chosen.connect(self.model.setText)
        self.faster = FasterModelRow(models_folder(settings.library_folder()), settings.backend)
        self.faster.use_copy.connect(self.model.setText)
        self.model.textChanged.connect(self.faster.check)
        self.backend.currentTextChanged.connect(lambda backend: self.faster.set_backend(backend, self.model.text()))
        self.faster.check(settings.model_path)

        form = QFormLayout(self)
        form.addRow("Model file", self._with_browse(self.model, self._browse_model))
        form.addRow("", self.faster)
        form.addRow("Models", self.models)
        form.addRow("Backend", self.backend)
        form.addRow("Answering model", self.answering)
        form.addRow("Memory policy", self.policy)
        form.addRow("Cache size", self.cache)
        form.addRow("", self.notes)
        form.addRow("Data folder", self._with_browse(self.folder, self._browse_folder))
        form.addRow(QLabel("Limits: a bigger file is refused before it is read"))
        form.addRow("Largest document", self.max_pages)
        form.addRow("Most text", self.max_chars)
        form.addRow("Word files up to", self.max_expanded)
        form.addRow("Word files packed at most", self.max_ratio)
        form.addRow("Ask before readings over", self.ask_above)
        form.addRow(QLabel("Answers"))
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p (with a temperature)", self.top_p)
        form.addRow("Longest answer", self.max_answer)
        form.addRow(QLabel("A new model, backend or data folder applies to the next reading or question;\n"
                           "policy and cache size apply to the next document read."))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    @staticmethod
    def _number(value: int, low: int, high: int, suffix: str) -> QSpinBox:
        box = QSpinBox()
        box.setRange(low, high)
        box.setGroupSeparatorShown(True)
        box.setSuffix(suffix)
        box.setValue(value)
        return box

    @staticmethod
    def _fraction(value: float, low: float, high: float) -> QDoubleSpinBox:
        box = QDoubleSpinBox()
        box.setRange(low, high)
        box.setDecimals(2)
        box.setSingleStep(0.05)
        box.setValue(value)
        return box

    @staticmethod
    def _with_browse(edit: QLineEdit, browse) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit)
        button = QPushButton("Browse…")
        button.clicked.connect(browse)
        row.addWidget(button)
        return box

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", "", "GGUF models (*.gguf);;All files (*)")
        if path:
            self.model.setText(path)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Data folder")
        if path:
            self.folder.setText(path)

    def result_settings(self) -> Settings:
        return Settings(model_path=self.model.text().strip(), backend=self.backend.currentText(),
                        answering=self.answering.currentText(),
                        policy=self.policy.currentText(), cache=self.cache.value(),
                        notes=self.notes.isChecked(), data_folder=self.folder.text().strip(),
                        max_pages=self.max_pages.value(), max_million_chars=self.max_chars.value(),
                        max_expanded_mb=self.max_expanded.value(), max_compression_ratio=self.max_ratio.value(),
                        ask_above_minutes=self.ask_above.value(), temperature=self.temperature.value(),
                        top_p=self.top_p.value(), max_answer_tokens=self.max_answer.value())
