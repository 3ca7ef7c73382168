"""Settings → Model: the models to choose from, and downloading one from Hugging Face.

The list shows the bundled model and every GGUF in the models folder with what it is (family,
size, weight type, context; engine.pipeline.catalog); one Comma cannot use is shown greyed with the
reason and cannot be chosen. "Download a model…" asks for a repository id and file name and
downloads it in a worker thread (engine.models.download) with a progress bar and Cancel; a
cancelled or dropped download resumes where it stopped the next time.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.jobs import Job, start_file_job
from engine.pipeline.catalog import download_model, model_choices

PATH_ROLE = Qt.ItemDataRole.UserRole + 1
class ModelList(QWidget):
    """The models folder's models and the bundled one; ``chosen`` gives the path ("" for the bundled)."""

    chosen = Signal(str)

    def __init__(self, models_folder: Path, parent: QWidget | None = None):
        super().__init__(parent)
        self.models_folder = models_folder
        self.list = QListWidget()
        self.list.setWordWrap(True)
        self.list.itemClicked.connect(self._clicked)
        self.download_button = QPushButton("Download a model…")
        self.download_button.clicked.connect(self.download)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list)
        layout.addWidget(self.download_button)
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        self.list.clear()
        for choice in model_choices(self.models_folder):
            item = QListWidgetItem(choice.summary() if choice.usable else
                                   f"{choice.summary()}\ncannot be used: {choice.problem}")
            item.setData(PATH_ROLE, "" if choice.origin == "bundled" else str(choice.path))
            item.setToolTip(str(choice.path))
            if not choice.usable:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled & ~Qt.ItemFlag.ItemIsSelectable)
            self.list.addItem(item)
            if select is not None and item.data(PATH_ROLE) == select and choice.usable:
                self.list.setCurrentItem(item)

    def paths(self) -> list[str]:
        return [self.list.item(i).data(PATH_ROLE) for i in range(self.list.count())]

    def _clicked(self, item: QListWidgetItem) -> None:
        if item.flags() & Qt.ItemFlag.ItemIsEnabled:
            self.chosen.emit(item.data(PATH_ROLE))

    def download(self) -> None:
        dialog = DownloadDialog(self.models_folder, self)
        if dialog.exec() == QDialog.DialogCode.Accepted and dialog.path is not None:
            self.refresh(select=str(dialog.path))
            self.chosen.emit(str(dialog.path))


class DownloadDialog(QDialog):
    """Repository id, file name and an optional token; Download, with progress, then OK."""

    def __init__(self, models_folder: Path, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Download a model")
        self.models_folder = models_folder
        self.path: Path | None = None
        self.job: Job | None = None
        self.repo = QLineEdit()
        self.repo.setPlaceholderText("owner/name, e.g. bartowski/Qwen2.5-7B-Instruct-GGUF")
        self.filename = QLineEdit()
        self.filename.setPlaceholderText("a .gguf file in it, e.g. Qwen2.5-7B-Instruct-Q4_K_M.gguf")
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("only for gated or private repositories")
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        self.status = QLabel(f"The model goes into {models_folder}.")
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.start_button = self.buttons.addButton("Download", QDialogButtonBox.ButtonRole.ActionRole)
        self.start_button.clicked.connect(self.start)
        self.buttons.rejected.connect(self.cancel)
        form = QFormLayout(self)
        form.addRow("Repository", self.repo)
        form.addRow("File", self.filename)
        form.addRow("Access token", self.token)
        form.addRow(self.bar)
        form.addRow(self.status)
        form.addRow(self.buttons)

    def start(self) -> None:
        self.start_button.setEnabled(False)
        self.bar.setVisible(True)
        self.bar.setRange(0, 0)
        self.status.setText("asking the hub…")
        repo_id, filename = self.repo.text().strip(), self.filename.text().strip()
        token, folder = self.token.text().strip() or None, self.models_folder

        def work(job: Job, _) -> str:
            return str(download_model(repo_id, filename, folder, token=token,
                                      progress=lambda done, total: job.report_progress(done >> 20, total >> 20),
                                      cancelled=job.is_cancelled))

        self.job = Job("download", work, repo_id=repo_id, filename=filename)
        self.job.progress.connect(self._progress)
        self.job.finished.connect(self._done)
        self.job.failed.connect(self._failed)
        start_file_job(self.job)

    def _progress(self, done_mb: int, total_mb: int) -> None:
        self.bar.setRange(0, max(total_mb, 1))
        self.bar.setValue(done_mb)
        self.status.setText(f"{done_mb:,} of {total_mb:,} MB")

    def _done(self, path: str) -> None:
        self.path = Path(path)
        self.accept()

    def _failed(self, message: str) -> None:
        self.bar.setVisible(False)
        self.start_button.setEnabled(True)
        self.status.setText(message)

    def cancel(self) -> None:
        """Stop a download under way (what arrived is kept for next time), then close."""
        if self.job is not None:
            # Seen at the next chunk; a dead connection may take its timeout first, and the
            # window does not wait for it: the job ends on its own lane.
            self.job.cancel()
            for signal in (self.job.progress, self.job.finished, self.job.failed):
                signal.disconnect()
            self.job = None
        self.reject()

    def closeEvent(self, event) -> None:
        self.cancel()
        super().closeEvent(event)
