"""Settings → Model: the models folder's models with what they are, refused ones greyed with the
reason, choosing one, and downloading one from a local stand-in for the Hugging Face hub."""

import json

import pytest
from huggingface_hub import constants
from PySide6.QtCore import Qt

from app.model_picker import DownloadDialog, ModelList
from app.settings import Settings, SettingsDialog
from storage.library import models_folder
from tests.hub_server import FILE, MODEL, REPO
from tests.tiny_gguf import write_gguf


@pytest.fixture
def folder(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    write_gguf(models / "tiny-llama.gguf", "llama", name="Tiny Llama", context=4096)
    write_gguf(models / "windowed.gguf", "gemma3", name="Windowed", metadata={"{arch}.attention.sliding_window": 512})
    (models / "broken.gguf").write_bytes(b"GGUF" + bytes(range(40)))
    return models


def items(widget: ModelList) -> dict[str, tuple[str, bool]]:
    out = {}
    for i in range(widget.list.count()):
        item = widget.list.item(i)
        out[item.toolTip().rsplit("/", 1)[-1]] = (item.text(), bool(item.flags() & Qt.ItemFlag.ItemIsEnabled))
    return out


def test_the_list_says_what_each_model_is_and_greys_what_cannot_be_used(qtbot, folder):
    widget = ModelList(folder)
    qtbot.addWidget(widget)
    shown = items(widget)
    text, usable = shown["tiny-llama.gguf"]
    assert usable and "Tiny Llama (added by hand) · llama" in text and "Q4_K_M" in text and "4,096-token context" in text
    text, usable = shown["windowed.gguf"]
    assert not usable and "cannot be used:" in text and "sliding" in text
    text, usable = shown["broken.gguf"]
    assert not usable and "cannot be used: broken.gguf cannot be used as a GGUF model" in text
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in shown and "(bundled)" in shown["SmolLM2-135M-Instruct.Q4_1.gguf"][0]


def test_choosing_a_model_fills_the_model_field_and_the_bundled_one_empties_it(qtbot, tmp_path, folder, monkeypatch):
    monkeypatch.setenv("COMMA_MODELS", str(folder))
    dialog = SettingsDialog(Settings(data_folder=str(tmp_path / "home")))
    qtbot.addWidget(dialog)
    assert models_folder(tmp_path / "home") == folder
    rows = {dialog.models.list.item(i).toolTip().rsplit("/", 1)[-1]: dialog.models.list.item(i)
            for i in range(dialog.models.list.count())}
    dialog.models.list.itemClicked.emit(rows["tiny-llama.gguf"])
    assert dialog.result_settings().model_path == str(folder / "tiny-llama.gguf")
    dialog.models.list.itemClicked.emit(rows["windowed.gguf"])  # greyed: nothing changes
    assert dialog.result_settings().model_path == str(folder / "tiny-llama.gguf")
    dialog.models.list.itemClicked.emit(rows["SmolLM2-135M-Instruct.Q4_1.gguf"])
    assert dialog.result_settings().model_path == ""


def test_a_model_downloaded_from_the_hub_is_listed_with_where_it_came_from(qtbot, tmp_path, hub, monkeypatch):
    # What HF_ENDPOINT does when it is set before huggingface_hub is imported.
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    models = tmp_path / "models"
    dialog = DownloadDialog(models)
    qtbot.addWidget(dialog)
    dialog.repo.setText(REPO)
    dialog.filename.setText("missing.gguf")
    dialog.start()
    qtbot.waitUntil(lambda: dialog.start_button.isEnabled(), timeout=10_000)
    assert "has no file missing.gguf" in dialog.status.text() and dialog.path is None
    dialog.filename.setText(FILE)
    with qtbot.waitSignal(dialog.accepted, timeout=10_000):
        dialog.start()
    assert dialog.path is not None and dialog.path.read_bytes() == MODEL
    assert json.loads(dialog.path.with_name(FILE + ".json").read_text())["repo_id"] == REPO
    widget = ModelList(models)
    qtbot.addWidget(widget)
    assert f"(downloaded from {REPO})" in items(widget)[FILE][0]
