"""The bundled model's faster copy: made once on first use into the models folder, atomically,
reused after, remade when damaged, never made of a person's own model, and a failure to make it
(full disk, a quantizer error) falls back to the original weights with a notice."""

import shutil
from pathlib import Path

import pytest

from engine.backends.gguf import fast_weights
from engine.backends.loading import load_model
from engine.errors import ModelError
from engine.models.files import bundled_model_path, fingerprint

pytestmark = pytest.mark.model


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_first_load_converts_with_progress_and_later_loads_reuse_the_copy(tmp_path):
    notices, progress = [], []
    model = load_model("gguf", None, models_folder=tmp_path, progress=lambda d, t: progress.append((d, t)),
                       notice=notices.append)
    assert model.weight_type == "F16"
    assert model.derived_from == fingerprint(bundled_model_path())
    assert model.fingerprint != model.derived_from
    assert "faster copy" in notices[0] and "Q4_1" in notices[0]
    assert progress[-1][0] == progress[-1][1] and all(d <= t for d, t in progress)
    names = files(tmp_path)
    assert len(names) == 2 and not any(n.endswith(".tmp") for n in names)
    copy = model.path
    stamp = copy.stat().st_mtime_ns
    del model

    again = load_model("gguf", None, models_folder=tmp_path, notice=notices.append)
    assert again.path == copy and copy.stat().st_mtime_ns == stamp
    assert len(notices) == 1  # nothing to say the second time


def test_a_damaged_copy_is_made_again(tmp_path):
    model = load_model("gguf", None, models_folder=tmp_path)
    copy = model.path
    del model
    with copy.open("r+b") as f:
        f.truncate(copy.stat().st_size // 2)
    notices = []
    again = load_model("gguf", None, models_folder=tmp_path, notice=notices.append)
    assert again.weight_type == "F16" and notices
    assert again.path.stat().st_size > bundled_model_path().stat().st_size * 2


def test_a_persons_own_model_is_loaded_as_it_is(tmp_path):
    own = tmp_path / "mine.gguf"
    shutil.copyfile(bundled_model_path(), own)
    folder = tmp_path / "models"
    model = load_model("gguf", own, models_folder=folder)
    assert model.weight_type == "Q4_1" and model.derived_from is None
    assert files(folder) == []


def test_too_little_disk_reads_with_the_original_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(fast_weights.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 10**6))
    notices = []
    model = load_model("gguf", None, models_folder=tmp_path, notice=notices.append)
    assert model.weight_type == "Q4_1" and model.derived_from is None
    assert "not enough free disk" in notices[-1] and "original weights" in notices[-1]
    assert files(tmp_path) == []


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(fast_weights.llama, "llama_model_quantize", lambda src, dst, params: 1)
    notices = []
    model = load_model("gguf", None, models_folder=tmp_path, notice=notices.append)
    assert model.weight_type == "Q4_1"
    assert "could not convert" in notices[-1]
    assert files(tmp_path) == []


def test_only_a_copy_made_here_can_be_removed(tmp_path):
    own = tmp_path / "mine.gguf"
    shutil.copyfile(bundled_model_path(), own)
    with pytest.raises(ModelError, match="not a copy Comma made"):
        fast_weights.remove_copy(own)
    assert own.is_file()
